//! Files a command writes outside a run directory (`--output`, `--out`) are new: a path
//! that already exists (a file, a directory, a link, the command's own input) belongs to
//! the user, and the command refuses it rather than replace it.

use std::path::Path;

use anyhow::{Result, bail};

/// Refuses `path` if anything exists there; `flag` names the option that gave it.
pub fn refuse_existing(path: &Path, flag: &str) -> Result<()> {
    if std::fs::symlink_metadata(path).is_ok() {
        bail!(
            "{flag} {}: already exists; this command writes a new file and replaces nothing: choose another path or move that one away",
            path.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn existing_files_directories_and_links_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("out.jsonl");
        refuse_existing(&file, "--output").unwrap();
        std::fs::write(&file, "mine").unwrap();
        let err = refuse_existing(&file, "--output").unwrap_err().to_string();
        assert!(
            err.contains("--output") && err.contains("already exists"),
            "{err}"
        );
        refuse_existing(dir.path(), "--out").unwrap_err();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(dir.path().join("nowhere"), &link).unwrap();
        refuse_existing(&link, "--output").unwrap_err();
    }
}
