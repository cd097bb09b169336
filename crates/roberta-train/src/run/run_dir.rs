//! A run directory belongs to one process at a time (an OS lock held while the process
//! lives) and holds only what a run writes. Anything else found there is the user's, and
//! a run refuses to start rather than write over it; temporaries that an interrupted
//! run left behind are ours and are removed when the next run starts.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result, bail};

use crate::run::checkpoint;
use crate::run::plot::PLOT_FILE;

/// The lock file; it also holds the PID of the process that has the lock.
pub const LOCK: &str = ".roberta-train.lock";
pub const LOG: &str = "train.log";
/// One JSON object per logged update.
pub const METRICS: &str = "metrics.jsonl";
/// Where fine-tuning exports a checkpoint it starts from.
pub const INIT: &str = "init";
/// TensorBoard's event files, with `log.tensorboard = true`.
pub const TENSORBOARD: &str = "tb";

/// What a run writes at the top of its directory.
fn owned(name: &str) -> bool {
    owned_name(name) || roberta_fs::temporary_of(name).is_some_and(|(stem, _)| owned_name(stem))
}

fn owned_name(name: &str) -> bool {
    [
        checkpoint::CONFIG,
        METRICS,
        LOG,
        PLOT_FILE,
        checkpoint::CHECKPOINTS,
        checkpoint::FINAL,
        checkpoint::BEST,
        INIT,
        TENSORBOARD,
        LOCK,
    ]
    .contains(&name)
}

/// The lock on a run directory, released when the process exits (or this is dropped).
pub struct RunLock {
    _file: File,
}

impl RunLock {
    /// Creates the run directory if needed and takes its lock, or says which process
    /// holds it. A directory that holds anything but was never a run (no lock file, no
    /// checkpoints) is the user's: it is refused before anything is written into it.
    /// `flag` names the option that chose the directory (`--run-dir`, `--out`).
    pub fn acquire(run_dir: &Path, flag: &str) -> Result<Self> {
        if let Ok(entries) = std::fs::read_dir(run_dir) {
            let mut names: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            let ours = names
                .iter()
                .any(|n| n == LOCK || n == checkpoint::CHECKPOINTS);
            if !ours && !names.is_empty() {
                names.sort();
                bail!(
                    "{} holds files that roberta-train did not write ({}): choose another {flag}",
                    run_dir.display(),
                    names.join(", ")
                );
            }
        }
        std::fs::create_dir_all(run_dir)
            .with_context(|| format!("creating {flag} {}", run_dir.display()))?;
        let path = run_dir.join(LOCK);
        let (mut file, _) = roberta_data::input::open_lock_file(&path)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                bail!(
                    "{} is in use by another roberta-train (PID {}): wait for it to finish, or choose another {flag}",
                    run_dir.display(),
                    holder.trim()
                );
            }
            Err(TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()));
            }
        }
        file.set_len(0)
            .and_then(|()| write!(file, "{}", std::process::id()))
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self { _file: file })
    }
}

/// Refuses a run directory that holds files a run does not write, and, for a fresh run
/// (`resuming` false), one that already holds a run. A run killed before its first
/// checkpoint may start over with `--resume auto` (a fine-tuning run's `best/` from
/// then is replaced by the new run's), but a finished one (`final/` with no checkpoint
/// left) may not.
pub fn check_contents(run_dir: &Path, resuming: bool, has_checkpoint: bool) -> Result<()> {
    let mut foreign = Vec::new();
    let mut previous = Vec::new();
    for entry in
        std::fs::read_dir(run_dir).with_context(|| format!("listing {}", run_dir.display()))?
    {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if !owned(&name) {
            foreign.push(name);
        } else if ![LOG, LOCK].contains(&name.as_str()) && roberta_fs::temporary_of(&name).is_none()
        {
            previous.push(name);
        }
    }
    foreign.sort();
    previous.sort();
    if !foreign.is_empty() {
        bail!(
            "{} holds files that roberta-train did not write ({}): choose another --run-dir",
            run_dir.display(),
            foreign.join(", ")
        );
    }
    if !resuming && !previous.is_empty() {
        bail!(
            "{} already holds a run ({}): pass --resume auto to continue it, or choose another --run-dir",
            run_dir.display(),
            previous.join(", ")
        );
    }
    if resuming && !has_checkpoint && previous.iter().any(|n| n == checkpoint::FINAL) {
        bail!(
            "{} holds a finished run's {}/ but no checkpoint to continue from: choose another --run-dir",
            run_dir.display(),
            checkpoint::FINAL
        );
    }
    Ok(())
}

/// Refuses a training run's directory as `evaluate --out`: its results and task
/// directories would sit among the run's files, which would then refuse to resume.
pub fn check_evaluation_dir(out: &Path) -> Result<()> {
    let run_files = [
        checkpoint::CONFIG,
        METRICS,
        checkpoint::CHECKPOINTS,
        checkpoint::FINAL,
        checkpoint::BEST,
    ];
    if let Some(file) = run_files.iter().find(|f| out.join(f).exists()) {
        bail!(
            "--out {}: a training run's directory (it holds {file}): choose another --out",
            out.display()
        );
    }
    Ok(())
}

/// Whether `dir` is a run directory (one that `pretrain`, `finetune` or `evaluate` locked).
pub fn is_run_dir(dir: &Path) -> bool {
    dir.join(LOCK).is_file()
}

/// Removes the temporaries (`.NAME.tmp-PID`) that an interrupted run left in the run
/// directory (of the names it writes there) and in its checkpoints (`step-N`). Called
/// with the lock held, so none is in use.
pub fn remove_stale_temporaries(run_dir: &Path) -> Result<()> {
    let checkpoints = checkpoint::checkpoints_dir(run_dir);
    for dir in [run_dir.to_path_buf(), checkpoints.clone()] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry?.path();
            let name = path.file_name().unwrap_or_default().to_string_lossy();
            let ours = match roberta_fs::temporary_of(&name) {
                Some((stem, _)) if dir == checkpoints => checkpoint::is_step_dir_name(stem),
                Some((stem, _)) => owned_name(stem),
                None => false,
            };
            if !ours {
                continue;
            }
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.with_context(|| format!("removing {}", path.display()))?;
            tracing::info!("removed {}, left by an interrupted run", path.display());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_temporaries_of_our_names_are_ours() {
        assert!(owned(".final.tmp-9") && !owned(".notes.tmp-9"));
        assert!(owned(".curves.png.tmp-77.png") && !owned(".curves.png.tmp-77.jpg"));
        assert!(owned(".final.old-9") && !owned("final.tmp-9"));
    }

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let _held = RunLock::acquire(dir.path(), "--run-dir").unwrap();
        let err = RunLock::acquire(dir.path(), "--run-dir")
            .err()
            .unwrap()
            .to_string();
        assert!(
            err.contains(&format!("PID {}", std::process::id())),
            "{err}"
        );
    }

    #[test]
    fn a_directory_that_was_never_a_run_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("config.toml"), "mine").unwrap();
        let err = RunLock::acquire(dir.path(), "--run-dir")
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("config.toml"), "{err}");
        assert!(!dir.path().join(LOCK).exists(), "nothing written");
    }

    #[test]
    fn foreign_files_and_previous_runs_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(LOG), "").unwrap();
        check_contents(dir.path(), false, false).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "mine").unwrap();
        let err = check_contents(dir.path(), true, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("notes.txt"), "{err}");
        std::fs::remove_file(dir.path().join("notes.txt")).unwrap();
        std::fs::create_dir(dir.path().join(checkpoint::FINAL)).unwrap();
        let err = check_contents(dir.path(), false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--resume auto"), "{err}");
        let err = check_contents(dir.path(), true, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no checkpoint"), "{err}");
        check_contents(dir.path(), true, true).unwrap();
    }

    /// A fine-tuning run killed between its first `best/` and its first checkpoint was
    /// refused both ways: "a finished run" with --resume auto, "already holds a run"
    /// without. It starts over with --resume auto.
    #[test]
    fn best_without_a_checkpoint_starts_over_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(checkpoint::BEST)).unwrap();
        std::fs::write(dir.path().join(METRICS), "").unwrap();
        check_contents(dir.path(), true, false).unwrap();
        let err = check_contents(dir.path(), false, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("--resume auto"), "{err}");
    }
}
