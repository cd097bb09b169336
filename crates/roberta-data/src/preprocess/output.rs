//! The output directory: its lock, what it holds (nothing, or an earlier output of
//! ours), temporaries left by killed runs, and putting a finished output in place.

use super::*;

/// The lock of an output: `.NAME.lock` beside it, holding its holder's PID, removed
/// when the lock is dropped. Two processes preprocessing into one output (two
/// `preprocess`, or two first pretraining runs sharing a `data.data_dir`) would replace
/// each other's work; the second is refused, naming the first.
pub(super) struct OutputLock {
    pub(super) path: PathBuf,
    _file: std::fs::File,
}

impl OutputLock {
    pub(super) fn acquire(parent: &Path, name: &str, out: &Path) -> Result<Self> {
        use std::io::Write;
        std::fs::create_dir_all(parent).map_err(|source| DataError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        let path = parent.join(format!(".{name}.lock"));
        let io = |source| DataError::Io {
            path: path.clone(),
            source,
        };
        loop {
            let (mut file, _) = crate::input::open_lock_file(&path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    return Err(DataError::InUse {
                        path: out.to_path_buf(),
                        pid: holder.trim().to_string(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
            // The holder before us removes the file as it lets go: if what we locked is
            // no longer at `path`, lock what is there now.
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0)
                .and_then(|()| write!(file, "{}", std::process::id()))
                .map_err(io)?;
            return Ok(Self { path, _file: file });
        }
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(unix)]
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::File, path: &Path) -> bool {
    path.exists()
}

/// Refuses an output inside a directory the corpus is read from, and a corpus file inside
/// the output: either way a run reads `meta.json` and the shards back as text. `target`
/// is the output resolved; inputs are compared resolved too, so links do not hide it.
pub(super) fn refuse_overlap<'a>(
    target: &Path,
    out: &Path,
    inputs: impl Iterator<Item = &'a PathBuf>,
    files: impl Iterator<Item = &'a PathBuf>,
) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let target = resolved(target).map_err(io(out))?;
    for input in inputs.filter(|i| i.is_dir()) {
        if target.starts_with(std::fs::canonicalize(input).map_err(io(input))?) {
            return Err(DataError::OutputInInput {
                path: out.to_path_buf(),
                input: input.clone(),
            });
        }
    }
    for file in files {
        if std::fs::canonicalize(file)
            .map_err(io(file))?
            .starts_with(&target)
        {
            return Err(DataError::InputInOutput {
                path: out.to_path_buf(),
                input: file.clone(),
            });
        }
    }
    Ok(())
}

/// `path` absolute, with symbolic links resolved as far as it exists; the part that does
/// not exist yet holds no links, so `.` and `..` there are applied as written.
fn resolved(path: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let absolute = std::path::absolute(path)?;
    let mut base = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(base) {
            Ok(mut resolved) => {
                for component in rest.iter().rev() {
                    match component {
                        Component::ParentDir => {
                            resolved.pop();
                        }
                        Component::Normal(name) => resolved.push(name),
                        _ => {}
                    }
                }
                return Ok(resolved);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(last)) = (base.parent(), base.components().next_back())
                else {
                    return Err(e);
                };
                rest.push(last);
                base = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the output path holds before a run.
pub(super) enum Existing {
    Absent,
    Empty,
    /// A previous output of `preprocess`, with the names of any files it did not write.
    Ours {
        meta: Meta,
        foreign: Vec<String>,
    },
}

/// `out` with symbolic links resolved, so that a link to a data directory still points
/// at it once it is replaced; a link to nothing is refused rather than replaced.
pub(super) fn resolve_output(out: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(out) {
        Err(_) => Ok(out.to_path_buf()),
        Ok(m) if m.file_type().is_symlink() && !out.exists() => Err(DataError::ForeignOutput {
            path: out.to_path_buf(),
            why: "is a symbolic link to nothing".into(),
        }),
        Ok(_) => std::fs::canonicalize(out).map_err(|source| DataError::Io {
            path: out.to_path_buf(),
            source,
        }),
    }
}

/// What `target` (`out` as the user named it, resolved) holds. Only a directory that
/// `preprocess` wrote itself, recognised by its `meta.json`, may be replaced: anything
/// else is the user's.
pub(super) fn existing_output(target: &Path, out: &Path) -> Result<Existing> {
    let io = |source| DataError::Io {
        path: out.to_path_buf(),
        source,
    };
    let foreign = |why: String| DataError::ForeignOutput {
        path: out.to_path_buf(),
        why,
    };
    let kind = match std::fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Absent),
        Err(e) => return Err(io(e)),
    };
    if !kind.is_dir() {
        return Err(foreign("is a file, not a directory".into()));
    }
    let mut names = std::fs::read_dir(target)
        .map_err(io)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    if names.is_empty() {
        return Ok(Existing::Empty);
    }
    names.sort();
    if !names.iter().any(|n| n == META_FILE) {
        return Err(foreign(format!(
            "holds files that preprocess did not write ({})",
            listing(&names)
        )));
    }
    let meta = Meta::read(target).map_err(|e| {
        foreign(format!(
            "holds a {META_FILE} that this build of preprocess did not write ({e})"
        ))
    })?;
    let written: BTreeSet<String> = [META_FILE.to_string(), TOKENIZER_FILE.to_string()]
        .into_iter()
        .chain(
            meta.splits
                .values()
                .flat_map(|s| &s.shards)
                .flat_map(|base| [format!("{base}.bin"), format!("{base}.idx")]),
        )
        .collect();
    names.retain(|n| !written.contains(n) && !is_index_file_name(n));
    Ok(Existing::Ours {
        meta,
        foreign: names,
    })
}

/// The first few names, for a one-line message.
pub(super) fn listing(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut list = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        list.push_str(", …");
    }
    list
}

/// Enough of a sha256 to tell two tokenizers apart in a message.
pub(super) fn short_hash(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// Whether `dir` holds nothing but plain files with the names `preprocess` gives:
/// `meta.json`, `tokenizer.json`, and the shards `train-NNNNN.bin`/`.idx` (and `valid-…`)
/// with the `.idx` side files a shard writer leaves before it finishes.
pub(super) fn holds_only_our_files(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|e| {
        e.is_ok_and(|e| {
            e.file_type().is_ok_and(|t| t.is_file())
                && e.file_name().to_str().is_some_and(is_our_file_name)
        })
    })
}

fn is_our_file_name(name: &str) -> bool {
    if name == META_FILE || name == TOKENIZER_FILE || is_index_file_name(name) {
        return true;
    }
    let stem = [".bin", ".idx", ".idx.sentences.tmp", ".idx.documents.tmp"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext));
    let Some((split, number)) = stem.and_then(|s| s.split_once('-')) else {
        return false;
    };
    matches!(split, "train" | "valid")
        && number.len() >= 5
        && number.bytes().all(|b| b.is_ascii_digit())
}
