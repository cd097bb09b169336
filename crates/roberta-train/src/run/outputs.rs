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

/// Refuses `path` inside a run directory (one of its ancestors holds a run's lock
/// file): runs manage what is there, prune checkpoints and replace `final/`, and would
/// take a new directory there for a stranger's. `flag` names the option that gave it.
pub fn refuse_inside_run(path: &Path, flag: &str) -> Result<()> {
    let absolute = std::env::current_dir()
        .map(|d| d.join(path))
        .unwrap_or_else(|_| path.to_path_buf());
    for dir in absolute.ancestors().skip(1) {
        let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        if dir.join(crate::run::run_dir::LOCK).is_file() {
            bail!(
                "{flag} {}: inside the run directory {}, whose contents its runs manage: choose a path outside it",
                path.display(),
                dir.display()
            );
        }
    }
    Ok(())
}

/// The OS error inside a library's error that only carries it as Debug text
/// (`… Os { code: 28, kind: StorageFull, … }`): burn's recorder and plotters' image
/// writer do so. The error of a full or read-only disk then reads as the OS says it.
pub fn os_error_in(debug: &str) -> Option<std::io::Error> {
    let code = debug
        .split_once("code: ")?
        .1
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse::<i32>()
        .ok()?;
    Some(std::io::Error::from_raw_os_error(code))
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
