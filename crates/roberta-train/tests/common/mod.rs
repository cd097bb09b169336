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
