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

/// A file of `../shared/data`, or `None` (with the reason printed) where it is absent.
pub fn shared(path: &str) -> Option<PathBuf> {
    let p = repo().join("../shared/data").join(path);
    if p.exists() {
        Some(p)
    } else {
        eprintln!("skipped: {} is absent", p.display());
        None
    }
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
    let mut args = vec!["pretrain", "--config", s(config), "--run-dir", s(run_dir)];
    args.extend(extra);
    run(&args)
}
