//! Opening users' input files, the same way for every reader and command: only regular
//! files (a FIFO or a device would be read forever, a link loop is named as one), text
//! without the byte-order mark some editors put first, and lines of bounded length.

use std::fs::File;
use std::io::{BufRead, BufReader, Read, Seek};
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// Longest line a text file may hold. Longer ones are not text a model could use as a
/// sentence, a document or an example, and would be held whole in memory.
pub const MAX_LINE_BYTES: usize = 16 << 20;

/// UTF-8's byte-order mark.
const BOM: &[u8] = b"\xEF\xBB\xBF";

/// What a path leads to: a directory or a regular file, with its identity (device and
/// inode), so that a walk can tell a place it has seen.
pub enum Kind {
    Dir((u64, u64)),
    File((u64, u64)),
}

/// Follows `path` and says what it is; anything but a directory or a regular file is
/// an error that says what it is instead.
pub fn kind(path: &Path) -> Result<Kind> {
    let refused = |message: &str| DataError::Corpus {
        path: path.to_path_buf(),
        message: message.into(),
    };
    let meta = match std::fs::metadata(path) {
        Ok(meta) => meta,
        Err(e) => {
            let link = std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink());
            // ELOOP: 40 on Linux.
            return Err(match (link, e.raw_os_error()) {
                (true, Some(40)) => refused("a symbolic link loop (it leads back to itself)"),
                (true, _) => refused("a symbolic link to nothing"),
                (false, _) if e.kind() == std::io::ErrorKind::NotFound => {
                    refused("no such file or directory")
                }
                _ => DataError::Io {
                    path: path.to_path_buf(),
                    source: e,
                },
            });
        }
    };
    let id = identity(&meta);
    if meta.is_dir() {
        Ok(Kind::Dir(id))
    } else if meta.is_file() {
        Ok(Kind::File(id))
    } else {
        Err(refused(&format!(
            "not a regular file ({}): give a file",
            special_kind(&meta)
        )))
    }
}

#[cfg(unix)]
fn identity(meta: &std::fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

#[cfg(not(unix))]
fn identity(_: &std::fs::Metadata) -> (u64, u64) {
    // No inode numbers: every entry counts as new (cycles are a unix matter here).
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    (0, NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed))
}

#[cfg(unix)]
fn special_kind(meta: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = meta.file_type();
    if t.is_fifo() {
        "a FIFO"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_socket() {
        "a socket"
    } else {
        "neither a file nor a directory"
    }
}

#[cfg(not(unix))]
fn special_kind(_: &std::fs::Metadata) -> &'static str {
    "neither a file nor a directory"
}

/// Opens a regular file; a directory, a FIFO, a device or a broken link is refused.
pub fn open(path: &Path) -> Result<File> {
    if let Kind::Dir(_) = kind(path)? {
        return Err(DataError::Corpus {
            path: path.to_path_buf(),
            message: "a directory, not a file".into(),
        });
    }
    File::open(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })
}

/// A regular file as text: buffered, its byte-order mark skipped.
pub fn text(path: &Path) -> Result<BufReader<File>> {
    let mut reader = BufReader::with_capacity(1 << 20, open(path)?);
    let starts_with_bom = reader
        .fill_buf()
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .starts_with(BOM);
    if starts_with_bom {
        reader.consume(BOM.len());
    }
    Ok(reader)
}

/// The whole of a regular text file (without its byte-order mark), for small files
/// such as configs and SQuAD JSON.
pub fn read_to_string(path: &Path) -> Result<String> {
    let mut out = String::new();
    text(path)?
        .read_to_string(&mut out)
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(out)
}

/// The lines of a text file, numbered from 1, without their line ends; a line over
/// [`MAX_LINE_BYTES`] or one that is not UTF-8 is an error naming it.
pub fn lines(path: &Path) -> Result<Lines> {
    Ok(Lines {
        path: path.to_path_buf(),
        reader: text(path)?,
        number: 0,
        buffer: Vec::new(),
    })
}

pub struct Lines {
    path: PathBuf,
    reader: BufReader<File>,
    number: usize,
    buffer: Vec<u8>,
}

impl Iterator for Lines {
    type Item = Result<(usize, String)>;

    fn next(&mut self) -> Option<Self::Item> {
        self.buffer.clear();
        let limit = MAX_LINE_BYTES as u64 + 1;
        let n = match (&mut self.reader)
            .take(limit)
            .read_until(b'\n', &mut self.buffer)
        {
            Ok(0) => return None,
            Ok(n) => n,
            Err(source) => {
                return Some(Err(DataError::Io {
                    path: self.path.clone(),
                    source,
                }));
            }
        };
        self.number += 1;
        let error = |message: String| {
            Some(Err(DataError::Corpus {
                path: self.path.clone(),
                message,
            }))
        };
        if n as u64 == limit && self.buffer.last() != Some(&b'\n') {
            return error(format!(
                "line {} is over {} MiB: not line-per-record text",
                self.number,
                MAX_LINE_BYTES >> 20
            ));
        }
        while matches!(self.buffer.last(), Some(b'\n' | b'\r')) {
            self.buffer.pop();
        }
        match String::from_utf8(std::mem::take(&mut self.buffer)) {
            Ok(line) => Some(Ok((self.number, line))),
            Err(_) => error(format!("line {} is not UTF-8 text", self.number)),
        }
    }
}

/// Opens (creating it when absent) the lock file at `path` for a process to hold: never
/// through a symbolic link, and only a file that is empty or holds a process id, as this
/// program writes it. Anything else there is the user's file, named in the error.
/// Returns the file and whether this call created it.
pub fn open_lock_file(path: &Path) -> Result<(File, bool)> {
    let io = |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    };
    let not_ours = |why: &str| DataError::Corpus {
        path: path.to_path_buf(),
        message: format!("{why}, not a lock file of roberta-train: move it away"),
    };
    let mut options = File::options();
    options.read(true).write(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // A link at the lock's name is not followed to a file elsewhere.
        options.custom_flags(libc::O_NOFOLLOW);
    }
    let created = match options.clone().create_new(true).open(path) {
        Ok(file) => return Ok((file, true)),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io(e)),
    };
    let meta = std::fs::symlink_metadata(path).map_err(io)?;
    if meta.file_type().is_symlink() {
        return Err(not_ours("a symbolic link"));
    }
    if !meta.is_file() {
        return Err(not_ours("not a regular file"));
    }
    let mut file = options.open(path).map_err(io)?;
    let mut text = String::new();
    let ours = meta.len() <= 20
        && file.read_to_string(&mut text).is_ok()
        && text.trim().bytes().all(|b| b.is_ascii_digit());
    if !ours {
        return Err(not_ours("a file holding something else than a process id"));
    }
    // The holder writes its id from the start.
    file.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
    Ok((file, created))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_skip_the_bom_and_name_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.txt");
        std::fs::write(&p, b"\xEF\xBB\xBFfirst\r\nsecond\n\xFF\n").unwrap();
        let got: Vec<Result<(usize, String)>> = lines(&p).unwrap().collect();
        assert_eq!(got[0].as_ref().unwrap(), &(1, "first".to_string()));
        assert_eq!(got[1].as_ref().unwrap(), &(2, "second".to_string()));
        let err = got[2].as_ref().unwrap_err().to_string();
        assert!(
            err.contains("a.txt") && err.contains("line 3 is not UTF-8"),
            "{err}"
        );
        std::fs::write(&p, b"\xEF\xBB\xBF{}").unwrap();
        assert_eq!(read_to_string(&p).unwrap(), "{}");
    }

    #[cfg(unix)]
    #[test]
    fn lock_files_are_ours_or_refused() {
        let dir = tempfile::tempdir().unwrap();
        let lock = dir.path().join(".x.lock");
        assert!(open_lock_file(&lock).unwrap().1, "created");
        std::fs::write(&lock, "1234").unwrap();
        assert!(
            !open_lock_file(&lock).unwrap().1,
            "a lock left by a process"
        );
        std::fs::write(&lock, "my notes").unwrap();
        let err = open_lock_file(&lock).unwrap_err().to_string();
        assert!(err.contains("not a lock file of roberta-train"), "{err}");
        let precious = dir.path().join("precious.txt");
        std::fs::write(&precious, "mine").unwrap();
        let link = dir.path().join(".y.lock");
        std::os::unix::fs::symlink(&precious, &link).unwrap();
        assert!(open_lock_file(&link).is_err());
        assert_eq!(std::fs::read_to_string(&precious).unwrap(), "mine");
    }

    #[cfg(unix)]
    #[test]
    fn only_regular_files_are_opened() {
        let dir = tempfile::tempdir().unwrap();
        for (path, says) in [
            (
                PathBuf::from("/dev/zero"),
                "not a regular file (a character device)",
            ),
            (dir.path().to_path_buf(), "a directory, not a file"),
            (dir.path().join("absent"), "no such file or directory"),
        ] {
            let err = open(&path).unwrap_err().to_string();
            assert!(err.contains(says), "{err}");
        }
    }
}
