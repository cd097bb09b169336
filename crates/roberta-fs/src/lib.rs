//! Every output of roberta-rs is written the same way, so that no reader ever sees half
//! of one and a process that dies leaves nothing that looks complete:
//!
//! - a file or directory NAME is written under the temporary name `.NAME.tmp-PID`
//!   beside its place (the PID says whose it is), every file synced;
//! - it takes its place by a rename that replaces an earlier output of ours
//!   ([`Publish::Replace`]), or by a hard link that fails if anything appeared there
//!   meanwhile ([`Publish::New`]); the parent directory is synced after;
//! - a directory that replaces another moves the old one aside first (`.NAME.old-PID`),
//!   so that a crash between the two renames loses neither: the next writer puts the
//!   old one back;
//! - temporaries of processes that are gone are this program's and nobody will finish
//!   them: the next writer of the same name removes them ([`remove_dead_temporaries`]).
//!
//! The crate knows nothing of models, corpora or runs; the crates above it decide what
//! is theirs to replace.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

/// An I/O error with the path it happened on.
#[derive(Debug, thiserror::Error)]
#[error("{}: {source}", path.display())]
pub struct IoError {
    pub path: PathBuf,
    #[source]
    pub source: io::Error,
}

impl IoError {
    fn at(path: &Path) -> impl FnOnce(io::Error) -> IoError + '_ {
        move |source| IoError {
            path: path.to_path_buf(),
            source,
        }
    }
}

pub type Result<T, E = IoError> = std::result::Result<T, E>;

/// How a finished temporary takes its place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Publish {
    /// Replaces what is there: an earlier output of the caller's (checked by the
    /// caller), or nothing.
    Replace,
    /// Only where nothing is: a file or directory that appeared meanwhile (another
    /// process's, or the user's) is never replaced.
    New,
}

/// The temporary a process writes NAME through: `.NAME.tmp-PID` beside `path`.
pub fn temporary(path: &Path) -> PathBuf {
    beside(path, "tmp", std::process::id())
}

fn beside(path: &Path, kind: &str, pid: u32) -> PathBuf {
    path.with_file_name(format!(".{}.{kind}-{pid}", name_of(path)))
}

fn name_of(path: &Path) -> String {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn parent_of(path: &Path) -> &Path {
    path.parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The output name and writer's PID of a temporary's file name: `.NAME.tmp-PID` (or
/// the old copy `.NAME.old-PID`), or `.NAME.tmp-PID.EXT` where EXT is NAME's own
/// extension (for writers that choose a format by extension, as an image encoder does).
pub fn temporary_of(file_name: &str) -> Option<(&str, u32)> {
    parse_temporary(file_name).map(|(stem, pid, _)| (stem, pid))
}

/// [`temporary_of`], and whether it is an old copy.
fn parse_temporary(file_name: &str) -> Option<(&str, u32, bool)> {
    let rest = file_name.strip_prefix('.')?;
    let (stem, pid, old) = match rest.rsplit_once(".tmp-") {
        Some((stem, pid)) => (stem, pid, false),
        None => rest
            .rsplit_once(".old-")
            .map(|(stem, pid)| (stem, pid, true))?,
    };
    let pid = match pid.split_once('.') {
        Some((pid, ext)) if Path::new(stem).extension().is_some_and(|e| e == ext) => pid,
        Some(_) => return None,
        None => pid,
    };
    let pid = pid.parse().ok().filter(|_| !stem.is_empty())?;
    Some((stem, pid, old))
}

/// Whether process `pid` may still be running (and finish its temporaries). The
/// current process counts as gone: its own temporaries of an earlier, failed write are
/// dead. Without `/proc` nobody can tell, so every other process counts as alive.
pub fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
}

/// Removes the temporaries of `name` in `dir` whose writer is gone and that `ours`
/// recognises (a file where the output is a file; a directory holding only what this
/// program writes there). An old copy whose output is missing (a crash between a
/// directory's two renames) is put back in place instead.
pub fn remove_dead_temporaries(dir: &Path, name: &str, ours: impl Fn(&Path) -> bool) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let target = dir.join(name);
    let mut dead: Vec<(PathBuf, bool)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let file = e.file_name();
            let (stem, pid, old) = parse_temporary(file.to_str()?)?;
            (stem == name && !process_alive(pid)).then(|| (e.path(), old))
        })
        .collect();
    // The old copies last, so that one can take the place the others leave.
    dead.sort_by_key(|(_, old)| *old);
    for (path, old) in dead.into_iter().filter(|(path, _)| ours(path)) {
        if old && target.symlink_metadata().is_err() {
            let _ = std::fs::rename(&path, &target);
        } else if path.is_dir() {
            let _ = std::fs::remove_dir_all(&path);
        } else {
            let _ = std::fs::remove_file(&path);
        }
    }
}

/// fsync of a file or a directory (a directory's entries: a rename into it).
pub fn sync(path: &Path) -> Result<()> {
    File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(IoError::at(path))
}

/// A file being written under its temporary name; dropped unpublished, it is removed.
pub struct TempFile {
    path: PathBuf,
    tmp: PathBuf,
    file: Option<File>,
}

impl TempFile {
    /// Starts `path`'s temporary, after removing the dead temporaries of the same name.
    pub fn create(path: &Path) -> Result<Self> {
        remove_dead_temporaries(parent_of(path), &name_of(path), |p| p.is_file());
        let tmp = temporary(path);
        // Readable too: a caller may map what it wrote.
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(IoError::at(&tmp))?;
        Ok(Self {
            path: path.to_path_buf(),
            tmp,
            file: Some(file),
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("open until published")
    }

    /// Where it will be published.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Syncs the file and puts it in place; the file stays open for reading.
    pub fn publish(mut self, how: Publish) -> Result<File> {
        let file = self.file.take().expect("open until published");
        file.sync_all().map_err(IoError::at(&self.path))?;
        place_file(&self.tmp, &self.path, how)?;
        Ok(file)
    }
}

/// Moves the synced file `tmp` to `path` as `how` says, and syncs the parent (best
/// effort: not every file system syncs directories).
fn place_file(tmp: &Path, path: &Path, how: Publish) -> Result<()> {
    let placed = match how {
        Publish::Replace => std::fs::rename(tmp, path),
        // A hard link, unlike a rename, fails on a file that appeared meanwhile. A file
        // system without hard links gets a rename where nothing is.
        Publish::New => match std::fs::hard_link(tmp, path) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Err(io::Error::new(
                e.kind(),
                "a file appeared there while this command ran; it was not replaced",
            )),
            Err(_) if path.symlink_metadata().is_err() => std::fs::rename(tmp, path),
            placed => placed,
        },
    };
    placed.map_err(IoError::at(path))?;
    let _ = sync(parent_of(path));
    Ok(())
}

impl Drop for TempFile {
    fn drop(&mut self) {
        // After a rename nothing is left to remove; after a hard link, the temporary name.
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// Writes `path` through its temporary: `write` fills the file (it may seek back to
/// fill in a header), then it is synced and published. On any error nothing is left.
pub fn write_file<E: From<IoError>>(
    path: &Path,
    how: Publish,
    write: impl FnOnce(&mut File) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let mut temp = TempFile::create(path)?;
    write(temp.file())?;
    temp.publish(how)?;
    Ok(())
}

/// [`write_file`] for a writer that takes a path, not an open file: an image encoder,
/// which picks its format by the extension (the temporary keeps NAME's,
/// `.NAME.tmp-PID.EXT`).
pub fn write_path<E: From<IoError>>(
    path: &Path,
    how: Publish,
    write: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    remove_dead_temporaries(parent_of(path), &name_of(path), |p| p.is_file());
    let mut tmp = temporary(path).into_os_string();
    if let Some(ext) = path.extension() {
        tmp.push(".");
        tmp.push(ext);
    }
    let tmp = PathBuf::from(tmp);
    let result = write(&tmp).and_then(|()| {
        sync(&tmp)?;
        Ok(place_file(&tmp, path, how)?)
    });
    let _ = std::fs::remove_file(&tmp);
    result
}

/// Writes `bytes` as `path`, replacing an earlier output of the caller's there.
pub fn replace_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_bytes(path, Publish::Replace, bytes)
}

/// Writes `bytes` as the new file `path`: a file there is never replaced.
pub fn create_file(path: &Path, bytes: &[u8]) -> Result<()> {
    write_bytes(path, Publish::New, bytes)
}

fn write_bytes(path: &Path, how: Publish, bytes: &[u8]) -> Result<()> {
    write_file(path, how, |file| {
        io::Write::write_all(file, bytes).map_err(IoError::at(path))
    })
}

/// Writes directory `dir` through its temporary: `fill` writes its files, which are
/// then synced with the directory itself, and the directory takes its place:
/// [`Publish::Replace`] moves a directory there aside first and removes it after;
/// [`Publish::New`] fails on any path there. On any error nothing is left.
pub fn write_dir<E: From<IoError>>(
    dir: &Path,
    how: Publish,
    fill: impl FnOnce(&Path) -> std::result::Result<(), E>,
) -> std::result::Result<(), E> {
    let parent = parent_of(dir);
    remove_dead_temporaries(parent, &name_of(dir), |p| p.is_dir());
    let tmp = temporary(dir);
    let result = (|| {
        std::fs::create_dir_all(&tmp).map_err(IoError::at(&tmp))?;
        fill(&tmp)?;
        sync_tree(&tmp)?;
        Ok(put_in_place(&tmp, dir, how)?)
    })();
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// Syncs every file of `dir` (one level: outputs are flat, but a subdirectory's files
/// are synced too) and the directory.
fn sync_tree(dir: &Path) -> Result<()> {
    for entry in std::fs::read_dir(dir).map_err(IoError::at(dir))? {
        let path = entry.map_err(IoError::at(dir))?.path();
        if path.is_dir() {
            sync_tree(&path)?;
        } else {
            sync(&path)?;
        }
    }
    sync(dir)
}

/// Renames the finished directory `tmp` to `dir`, as `how` says, and syncs the parent.
pub fn put_in_place(tmp: &Path, dir: &Path, how: Publish) -> Result<()> {
    let exists = dir.symlink_metadata().is_ok();
    if exists && how == Publish::New {
        return Err(IoError {
            path: dir.to_path_buf(),
            source: io::Error::new(
                io::ErrorKind::AlreadyExists,
                "already exists; it was not replaced",
            ),
        });
    }
    if !exists {
        std::fs::rename(tmp, dir).map_err(IoError::at(dir))?;
    } else {
        let old = beside(dir, "old", std::process::id());
        std::fs::rename(dir, &old).map_err(IoError::at(dir))?;
        if let Err(source) = std::fs::rename(tmp, dir) {
            let _ = std::fs::rename(&old, dir);
            return Err(IoError {
                path: dir.to_path_buf(),
                source,
            });
        }
        let _ = std::fs::remove_dir_all(&old);
    }
    let _ = sync(parent_of(dir));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temporary_names_carry_the_output_and_the_writer() {
        assert_eq!(
            temporary_of(".step-0000004.tmp-123"),
            Some(("step-0000004", 123))
        );
        assert_eq!(temporary_of(".final.old-9"), Some(("final", 9)));
        assert_eq!(
            parse_temporary(".my.old-x.tmp-4"),
            Some(("my.old-x", 4, false))
        );
        assert_eq!(
            temporary_of(".curves.png.tmp-77.png"),
            Some(("curves.png", 77))
        );
        assert_eq!(temporary_of(".curves.png.tmp-77.jpg"), None);
        assert_eq!(temporary_of(".final.tmp-9.png"), None);
        assert_eq!(temporary_of("final.tmp-9"), None);
        assert_eq!(temporary_of(".notes.tmp-x"), None);
        assert_eq!(temporary_of("..tmp-3"), None);
        let t = temporary(Path::new("/a/b/model.safetensors"));
        assert_eq!(
            temporary_of(t.file_name().unwrap().to_str().unwrap()),
            Some(("model.safetensors", std::process::id()))
        );
    }

    #[test]
    fn a_dead_writers_temporary_is_removed_and_a_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let dead = dir.path().join(".out.bin.tmp-4194303");
        let live = dir.path().join(".out.bin.tmp-1");
        let other = dir.path().join(".other.bin.tmp-4194303");
        for p in [&dead, &live, &other] {
            std::fs::write(p, "partial").unwrap();
        }
        create_file(&dir.path().join("out.bin"), b"done").unwrap();
        assert!(!dead.exists(), "no process 4194303: its temporary goes");
        assert!(live.exists(), "process 1 is alive: its temporary stays");
        assert!(
            other.exists(),
            "another file's temporary is not this write's"
        );
    }

    /// A new file never replaces one that is there; a replacing write does; a failed
    /// write leaves neither the file nor its temporary.
    #[test]
    fn files_are_published_whole_or_not_at_all() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out.bin");
        create_file(&path, b"one").unwrap();
        let err = create_file(&path, b"two").unwrap_err();
        assert_eq!(err.source.kind(), io::ErrorKind::AlreadyExists);
        assert!(err.to_string().contains("was not replaced"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), b"one");
        replace_file(&path, b"three").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"three");
        let failed: std::result::Result<(), IoError> =
            write_file(&dir.path().join("half"), Publish::New, |f| {
                io::Write::write_all(f, b"half").unwrap();
                Err(IoError {
                    path: "half".into(),
                    source: io::Error::other("disk full"),
                })
            });
        assert!(failed.is_err());
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["out.bin"]);
    }

    /// A replaced directory is swapped whole; a dead writer's temporaries go, and an
    /// old copy left by a crash between the two renames comes back.
    #[test]
    fn directories_are_swapped_whole_and_dead_temporaries_cleaned() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("final");
        let fill = |text: &'static str| {
            move |tmp: &Path| std::fs::write(tmp.join("a.txt"), text).map_err(IoError::at(tmp))
        };
        write_dir(&out, Publish::New, fill("1")).unwrap();
        assert!(write_dir(&out, Publish::New, fill("2")).is_err());
        write_dir(&out, Publish::Replace, fill("3")).unwrap();
        assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "3");
        // A writer killed while filling, and one killed between the renames: the output
        // moved aside, the new one not yet in place. PID 0 is never a user process.
        std::fs::create_dir(dir.path().join(".final.tmp-0")).unwrap();
        std::fs::rename(&out, dir.path().join(".final.old-0")).unwrap();
        std::fs::write(dir.path().join(".final.tmp-0.x"), "").unwrap();
        remove_dead_temporaries(dir.path(), "final", |p| p.is_dir());
        assert_eq!(std::fs::read_to_string(out.join("a.txt")).unwrap(), "3");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [".final.tmp-0.x", "final"]);
    }
}
