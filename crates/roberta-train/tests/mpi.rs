//! Several processes under `mpirun` (feature `mpi`): one rank per process, on the CPU.
//! Needs Open MPI's `mpirun` (Debian: openmpi-bin).
#![cfg(feature = "mpi")]

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::{
    NO_DROPOUT_THREE_UPDATES, assert_finetune_on_two_equals_one, assert_same_updates, fails,
    first_checkpoint_of, losses, ok, pretrain_args, pretrain_no_dropout, repo, s, tiny_config,
};

/// `mpirun -np N roberta-train ARGS…`, as root and with more ranks than cores allowed.
fn mpirun(ranks: usize, args: &[&str]) -> Command {
    let mut command = Command::new("mpirun");
    command
        .args(["--allow-run-as-root", "--oversubscribe", "-np"])
        .arg(ranks.to_string())
        .arg(env!("CARGO_BIN_EXE_roberta-train"))
        .args(args)
        .current_dir(repo());
    command
}

fn output(mut command: Command) -> Output {
    command.output().expect("run mpirun (Debian: openmpi-bin)")
}

/// The `pretrain_no_dropout` arguments: three updates, a checkpoint after each.
fn no_dropout_args<'a>(config: &'a Path, run_dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    pretrain_args(
        config,
        run_dir,
        &[&NO_DROPOUT_THREE_UPDATES[..], extra].concat(),
    )
}

/// Two ranks × micro-batch 4 take the updates of one process × micro-batch 8; a 2-rank
/// run resumes on one process, and a 1-process run on two ranks, each keeping 8
/// sequences per update.
#[test]
fn two_ranks_equal_one_process_with_twice_the_batch_and_resume_on_either() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let one = dir.path().join("one");
    pretrain_no_dropout(&config, &one, &["--set", "train.batch_size=8"]);
    let two = dir.path().join("two");
    ok(&output(mpirun(
        2,
        &no_dropout_args(&config, &two, &["--set", "train.batch_size=4"]),
    )));
    assert_same_updates(&one, &two);
    // Only rank 0 writes the run directory: one log, one line per update.
    assert_eq!(losses(&two).len(), 3);

    let two_then_one = dir.path().join("two-then-one");
    first_checkpoint_of(&two, &two_then_one);
    let log = pretrain_no_dropout(
        &config,
        &two_then_one,
        &["--set", "train.batch_size=4", "--resume", "auto"],
    );
    assert!(log.contains("train.accumulation 1 → 2"), "{log}");
    assert_same_updates(&two, &two_then_one);

    // A process alone with micro-batch 4 × accumulation 2 resumes on two ranks × 1.
    let accumulated = dir.path().join("accumulated");
    pretrain_no_dropout(
        &config,
        &accumulated,
        &[
            "--set",
            "train.batch_size=4",
            "--set",
            "train.accumulation=2",
        ],
    );
    let one_then_two = dir.path().join("one-then-two");
    first_checkpoint_of(&accumulated, &one_then_two);
    let out = output(mpirun(
        2,
        &no_dropout_args(
            &config,
            &one_then_two,
            &[
                "--set",
                "train.batch_size=4",
                "--set",
                "train.accumulation=2",
                "--resume",
                "auto",
            ],
        ),
    ));
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("on 2 device(s), the checkpoint ran on 1") && log.contains("keeps 8"),
        "{log}"
    );
    assert_same_updates(&one, &one_then_two);
    assert_same_updates(&accumulated, &one_then_two);
}

/// The PIDs of `parent`'s children.
fn children(parent: u32) -> Vec<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid …: comm may hold spaces, so read after its ')'.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(parent) {
            found.push(pid);
        }
    }
    found
}

fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A rank killed mid-run (kill -9) ends the job with a non-zero exit within seconds, and
/// `--resume auto` then takes the updates an uninterrupted run takes.
#[test]
fn a_killed_rank_ends_the_job_and_resume_is_exact() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let long = |run_dir: &Path| -> Command {
        let steps = [
            "--set",
            "schedule.total_steps=60",
            "--set",
            "checkpoint.every=2",
            "--set",
            "checkpoint.keep=3",
        ];
        mpirun(2, &pretrain_args(&config, run_dir, &steps))
    };
    let whole = dir.path().join("whole");
    ok(&output(long(&whole)));

    let killed = dir.path().join("killed");
    let mut job = long(&killed)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !killed.join("checkpoints/step-0000004").exists() {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "no checkpoint appeared"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let rank0 = std::fs::read_to_string(killed.join(".roberta-train.lock")).unwrap();
    let victim = children(job.id())
        .into_iter()
        .find(|pid| pid.to_string() != rank0.trim())
        .expect("rank 1 is a child of mpirun");
    Command::new("kill")
        .args(["-9", &victim.to_string()])
        .status()
        .unwrap();
    let status = wait_with_deadline(&mut job, Duration::from_secs(30))
        .expect("the job ends within 30 s of a rank's death");
    assert!(!status.success());
    let mut stderr = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    assert!(
        stderr.contains("signal 9") || stderr.contains("Killed"),
        "{stderr}"
    );
    assert!(
        !killed.join("final").exists(),
        "the killed run did not finish"
    );

    let mut resume = long(&killed);
    resume.args(["--resume", "auto"]);
    ok(&output(resume));
    let (a, b) = (losses(&whole), losses(&killed));
    assert_eq!(
        a, b,
        "the resumed run takes the uninterrupted run's updates"
    );
}

/// A run refuses to mix MPI ranks with in-process replicas, and an inference command
/// refuses to run as several processes.
#[test]
fn mpi_ranks_refuse_devices_and_inference() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run_dir = dir.path().join("run");
    let err = fails(&output(mpirun(
        2,
        &[
            "pretrain",
            "--config",
            s(&config),
            "--run-dir",
            s(&run_dir),
            "--devices",
            "cpu,cpu",
        ],
    )));
    assert!(err.contains("each process drives one device"), "{err}");
    let err = fails(&output(mpirun(
        2,
        &["fill-mask", "--model", &common::mlm_fixture(), "a <mask>"],
    )));
    assert!(err.contains("only pretrain and finetune"), "{err}");
}

/// Fine-tuning on two ranks × micro-batch 4 takes the updates of one process × micro-batch
/// 8.
#[test]
fn finetune_on_two_ranks_equals_one_process_with_twice_the_batch() {
    assert_finetune_on_two_equals_one(|args| output(mpirun(2, args)));
}
