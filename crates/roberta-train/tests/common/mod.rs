//! Helpers shared by the end-to-end tests: run the binary from the repository root.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_roberta-train"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run roberta-train")
}

pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn fails(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "unexpected success: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

pub fn mlm_fixture() -> String {
    repo()
        .join("crates/roberta-model/tests/fixtures/mlm")
        .to_string_lossy()
        .into_owned()
}

pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A file of `../shared/data`, or `None` where it is absent (the skip is reported).
pub fn shared(path: &str) -> Option<PathBuf> {
    roberta_data::test_data::shared(path)
}

/// The first `n` lines of `path` (its header included) written to `out`.
pub fn head(path: &Path, n: usize, out: &Path) -> PathBuf {
    let text = std::fs::read_to_string(path).unwrap();
    let lines: Vec<&str> = text.lines().take(n).collect();
    std::fs::write(out, lines.join("\n") + "\n").unwrap();
    out.to_path_buf()
}

/// Copies the files of `from` (not its subdirectories) into `to`.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, to.join(path.file_name().unwrap())).unwrap();
    }
}

/// The first `lines` lines of the embedded corpus, in a temp dir.
pub fn small_corpus(dir: &Path, lines: usize) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("data/default-corpus/train.txt")).unwrap();
    let part: Vec<&str> = text.lines().take(lines).collect();
    let path = dir.join("corpus.txt");
    std::fs::write(&path, part.join("\n") + "\n").unwrap();
    path
}

/// A tiny pretraining config (hidden 32, 2 layers, blocks of 32) on 800 lines of the
/// embedded corpus, with the embedded tokenizer; `extra` is appended.
pub fn tiny_config(dir: &Path, extra: &str) -> PathBuf {
    let corpus = small_corpus(dir, 800);
    let config = format!(
        r#"
[model]
preset = "tiny"
hidden_size = 32
num_hidden_layers = 2
num_attention_heads = 2
intermediate_size = 64
[data]
train = ["{corpus}"]
valid_fraction = 0.05
data_dir = "{data}"
tokenizer = "{tok}"
block_size = 32
[optim]
lr = 1e-3
clip_norm = 1.0
[schedule]
warmup_steps = 2
total_steps = 8
[train]
batch_size = 4
seed = 1
[checkpoint]
every = 2
keep = 10
[log]
every = 1
[eval]
every = 4
batches = 2
{extra}
"#,
        corpus = corpus.display(),
        data = dir.join("data-bin").display(),
        tok = repo().join("data/tokenizer").display(),
    );
    let path = dir.join("tiny.toml");
    std::fs::write(&path, config).unwrap();
    path
}

/// `roberta-train pretrain --config CONFIG --run-dir RUN_DIR EXTRA…`.
pub fn pretrain(config: &Path, run_dir: &Path, extra: &[&str]) -> std::process::Output {
    run(&pretrain_args(config, run_dir, extra))
}

/// The arguments of [`pretrain`].
pub fn pretrain_args<'a>(config: &'a Path, run_dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["pretrain", "--config", s(config), "--run-dir", s(run_dir)];
    args.extend(extra);
    args
}

/// Nothing in `dir` is a temporary (`.NAME.tmp-PID`) left by a failed write.
pub fn assert_no_temporaries(dir: &Path) {
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

/// The (step, loss as written) of every metrics line.
pub fn losses(run_dir: &Path) -> Vec<(u64, String)> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].to_string())
        })
        .collect()
}

pub fn weights(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = file
        .tensors()
        .into_iter()
        .map(|(k, v)| {
            (
                k,
                v.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect(),
            )
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Two runs took the same updates: per-step losses within 1e-5 relative (`b` may have
/// resumed from one of `a`'s checkpoints), final weights within 1e-5 of each tensor's
/// scale.
pub fn assert_same_updates(a: &Path, b: &Path) {
    let (la, lb) = (losses(a), losses(b));
    // `b` may have resumed from a checkpoint of `a`: it logs `a`'s last steps.
    assert!(!lb.is_empty() && la.last().map(|l| l.0) == lb.last().map(|l| l.0));
    let la = &la[la.len() - lb.len()..];
    for ((sa, x), (sb, y)) in la.iter().zip(&lb) {
        assert_eq!(sa, sb);
        let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "step {sa}: loss {x} vs {y}"
        );
    }
    for ((ka, wa), (kb, wb)) in weights(&a.join("final"))
        .iter()
        .zip(&weights(&b.join("final")))
    {
        assert_eq!(ka, kb);
        let scale = wa.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let diff = wa
            .iter()
            .zip(wb)
            .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
        // The key bias adds a constant to every score of a query, which softmax ignores:
        // its true gradient is zero and what it gets is rounding noise (~1e-10 here).
        // Parameters that start at zero (biases, LayerNorm β) hold only a few lr-sized
        // steps, and Adam's normalised step turns the rounding noise of their smallest
        // gradients into differences of ~1e-8: below a scale of 0.01 they are compared
        // at 1e-7 absolute.
        if ka.ends_with("attention.self.key.bias") {
            assert!(diff <= 1e-8, "{ka}: diff {diff}");
        } else {
            let tolerance = 1e-5 * scale.max(0.01);
            assert!(diff <= tolerance, "{ka}: diff {diff}, scale {scale}");
        }
    }
}

/// Starts `to` as a run whose only checkpoint is `from`'s first.
pub fn first_checkpoint_of(from: &Path, to: &Path) {
    let step = "checkpoints/step-0000001";
    copy_dir(&from.join(step), &to.join(step));
}

/// `pretrain` with dropout off and the given extra arguments, into `run_dir`; its log.
pub fn pretrain_no_dropout(config: &Path, run_dir: &Path, extra: &[&str]) -> String {
    let out = pretrain_no_dropout_output(config, run_dir, extra);
    ok(&out);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Three updates with dropout off, checkpointed after each.
pub fn pretrain_no_dropout_output(
    config: &Path,
    run_dir: &Path,
    extra: &[&str],
) -> std::process::Output {
    let mut args = NO_DROPOUT_THREE_UPDATES.to_vec();
    args.extend(extra);
    pretrain(config, run_dir, &args)
}

/// `--set`s for three updates with dropout off, checkpointed after each.
pub const NO_DROPOUT_THREE_UPDATES: [&str; 10] = [
    "--set",
    "model.hidden_dropout_prob=0.0",
    "--set",
    "model.attention_probs_dropout_prob=0.0",
    "--set",
    "schedule.total_steps=3",
    "--set",
    "checkpoint.every=1",
    "--set",
    "checkpoint.keep=5",
];

/// A finetune config for `task` (a TOML `[task]` body) on `train`/`valid`.
pub fn finetune_config(dir: &Path, task: &str, train: &Path, valid: &Path, extra: &str) -> PathBuf {
    let text = format!(
        r#"
[task]
{task}

[data]
train = "{}"
valid = "{}"

[optim]
lr = 1e-3

[train]
epochs = 1
batch_size = 8
max_steps = 6
seed = 3

[log]
every = 1

[eval]
every = 3
batch_size = 16

[checkpoint]
keep = 5
{extra}
"#,
        s(train),
        s(valid)
    );
    let path = dir.join("task.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `roberta-train finetune` from the MLM fixture.
pub fn finetune(config: &Path, run_dir: &Path, extra: &[&str]) -> std::process::Output {
    run(&finetune_args(config, run_dir, extra))
}

/// The arguments of [`finetune`].
pub fn finetune_args<'a>(config: &'a Path, run_dir: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "finetune",
        "--config",
        s(config),
        "--init",
        "crates/roberta-model/tests/fixtures/mlm",
        "--run-dir",
        s(run_dir),
    ];
    args.extend(extra);
    args
}

/// Fine-tunes 60 SST-2 examples, every dropout off, in one process with micro-batch 8
/// and through `two` (given the arguments) on two replicas with micro-batch 4: both take
/// the same updates, the last of the epoch included, where the second replica's share is
/// empty (the eighth update holds 4 examples).
pub fn assert_finetune_on_two_equals_one(two: impl Fn(&[&str]) -> Output) {
    let Some(sst2) = shared("sst2") else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = head(&sst2.join("train.tsv"), 61, &dir.path().join("train.tsv"));
    let cfg = finetune_config(
        dir.path(),
        "type = \"classification\"",
        &train,
        &train,
        NO_DROPOUT,
    );
    let schedule = ["--set", "train.max_steps=0", "--set", "eval.every=0"];
    let (one_dir, two_dir) = (dir.path().join("one"), dir.path().join("two"));
    let batch = |b: &'static [&'static str; 2]| [&schedule[..], &b[..]].concat();
    ok(&run(&finetune_args(
        &cfg,
        &one_dir,
        &batch(&["--set", "train.batch_size=8"]),
    )));
    ok(&two(&finetune_args(
        &cfg,
        &two_dir,
        &batch(&["--set", "train.batch_size=4"]),
    )));
    let one = jsonl(&one_dir.join("metrics.jsonl"));
    let two = jsonl(&two_dir.join("metrics.jsonl"));
    assert_eq!(two.len(), 8, "60 examples in updates of 8");
    for (a, b) in two.iter().zip(&one) {
        let (x, y) = (a["loss"].as_f64().unwrap(), b["loss"].as_f64().unwrap());
        assert!(
            (x - y).abs() <= 1e-5 * x.abs(),
            "step {}: {x} vs {y}",
            a["step"]
        );
    }
    let accuracy = |lines: &[serde_json::Value]| lines.last().unwrap()["valid_accuracy"].as_f64();
    assert_eq!(accuracy(&two), accuracy(&one));
}

/// A config section that turns every dropout off, for runs compared number by number.
pub const NO_DROPOUT: &str = "[model]\nhidden_dropout_prob = 0.0\nattention_probs_dropout_prob = 0.0\nclassifier_dropout = 0.0";

/// The JSON objects of a JSON-lines file.
pub fn jsonl(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

/// Overwrites every token id of `data/train-00000.bin` with 65535, the file's size kept.
/// With `restamp`, meta.json's record of the shard's files is dropped as well (a data
/// directory written by another tool), so only the ids themselves can tell.
pub fn damage_ids(data: &Path, restamp: bool) {
    let bin = data.join("train-00000.bin");
    let len = std::fs::metadata(&bin).unwrap().len() as usize;
    std::fs::write(&bin, vec![0xFF; len]).unwrap();
    if restamp {
        let path = data.join("meta.json");
        let mut meta: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        for split in meta["splits"].as_object_mut().unwrap().values_mut() {
            split.as_object_mut().unwrap().remove("stamps");
        }
        std::fs::write(&path, meta.to_string()).unwrap();
    }
}
