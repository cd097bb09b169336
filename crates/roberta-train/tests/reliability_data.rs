//! End-to-end tests of the data commands against hostile input: outputs that hold the
//! user's files, shards of another tokenizer, signals, leftovers of killed runs, empty
//! files, half a tokenizer, and shards whose ids the tokenizer does not have.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{fails, ok, repo, run, s};

/// The first `lines` lines of the embedded corpus, as `path`.
fn corpus(path: &Path, lines: usize) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("data/default-corpus/train.txt")).unwrap();
    let part: Vec<&str> = text.lines().take(lines).collect();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, part.join("\n") + "\n").unwrap();
    path.to_path_buf()
}

fn tokenizer() -> PathBuf {
    repo().join("data/tokenizer")
}

fn preprocess(input: &Path, tokenizer: &Path, out: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "preprocess",
        "--input",
        s(input),
        "--tokenizer",
        s(tokenizer),
        "--out",
        s(out),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn preprocess_never_replaces_what_it_did_not_write() {
    let dir = tempfile::tempdir().unwrap();
    let c = dir.path().join("c");
    let input = corpus(&c.join("train.txt"), 100);
    let text = std::fs::read(&input).unwrap();
    let err = fails(&preprocess(&input, &tokenizer(), &c, &["--force"]));
    assert!(
        err.contains(&format!(
            "{} holds files that preprocess did not write (train.txt): choose another --out",
            c.display()
        )),
        "{err}"
    );
    assert_eq!(std::fs::read(&input).unwrap(), text, "the corpus is intact");

    let file = dir.path().join("data-bin");
    std::fs::write(&file, "my notes").unwrap();
    let err = fails(&preprocess(&input, &tokenizer(), &file, &["--force"]));
    assert!(
        err.contains(&format!("{} is a file, not a directory", file.display())),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "my notes");
    assert_eq!(names(dir.path()), ["c", "data-bin"], "nothing moved aside");

    // An empty directory is filled; the output then replaced by a rebuild.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    ok(&preprocess(&input, &tokenizer(), &empty, &[]));
    assert!(empty.join("meta.json").exists());
    ok(&preprocess(&input, &tokenizer(), &empty, &["--force"]));
    assert_eq!(names(dir.path()), ["c", "data-bin", "empty"]);
}

#[test]
fn preprocess_refuses_shards_of_another_tokenizer_unless_forced() {
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(&dir.path().join("train.txt"), 300);
    let other = dir.path().join("other-tokenizer");
    ok(&run(&[
        "tokenizer",
        "train",
        "--input",
        s(&input),
        "--vocab-size",
        "300",
        "--out",
        s(&other),
    ]));
    let out = dir.path().join("out");
    ok(&preprocess(&input, &tokenizer(), &out, &[]));
    let meta = std::fs::read(out.join("meta.json")).unwrap();
    let err = fails(&preprocess(&input, &other, &out, &[]));
    assert!(
        err.contains(&format!(
            "{} was preprocessed with another tokenizer",
            out.display()
        )) && err.contains("--force"),
        "{err}"
    );
    assert_eq!(std::fs::read(out.join("meta.json")).unwrap(), meta);
    ok(&preprocess(&input, &other, &out, &["--force"]));
    assert_ne!(std::fs::read(out.join("meta.json")).unwrap(), meta);
}

#[cfg(unix)]
#[test]
fn preprocess_stops_on_sigint_and_sigterm_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Long enough (~20 MB on one worker) that the signal lands while tokenizing.
    let text = std::fs::read_to_string(repo().join("data/default-corpus/train.txt")).unwrap();
    let input = dir.path().join("big.txt");
    std::fs::write(&input, text.repeat(8)).unwrap();
    let out = dir.path().join("out");
    for signal in ["INT", "TERM"] {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_roberta-train"))
            .args([
                "preprocess",
                "--input",
                s(&input),
                "--tokenizer",
                s(&tokenizer()),
                "--out",
                s(&out),
                "--workers",
                "1",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // The temporary output exists once the handler is installed and work started.
        let tmp = dir.path().join(format!(".out.tmp-{}", child.id()));
        let start = Instant::now();
        while !tmp.exists() {
            assert!(
                child.try_wait().unwrap().is_none(),
                "preprocess ended before it was signalled"
            );
            assert!(start.elapsed() < Duration::from_secs(60), "no {tmp:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        let sent = Instant::now();
        let kill = std::process::Command::new("kill")
            .args(["-s", signal, &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "SIG{signal}: exit 0");
        assert!(
            stderr.contains(&format!(
                "interrupted: nothing written to {}",
                out.display()
            )),
            "SIG{signal}: {stderr}"
        );
        assert!(
            sent.elapsed() < Duration::from_secs(10),
            "SIG{signal}: stopped after {:?}",
            sent.elapsed()
        );
        assert_eq!(names(dir.path()), ["big.txt"], "SIG{signal}");
    }
}

#[cfg(target_os = "linux")]
#[test]
fn preprocess_removes_temporaries_of_dead_runs_only() {
    // Above any pid_max Linux allows (2^22): never a live process. Pid 1 always is.
    let dead = format!(".out.tmp-{}", (1 << 22) + 1);
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(&dir.path().join("train.txt"), 100);
    for name in [dead.as_str(), ".out.tmp-1", ".outer.tmp-99999999"] {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("train-00000.bin"), "x").unwrap();
    }
    ok(&preprocess(
        &input,
        &tokenizer(),
        &dir.path().join("out"),
        &[],
    ));
    assert_eq!(
        names(dir.path()),
        [".out.tmp-1", ".outer.tmp-99999999", "out", "train.txt"]
    );
}

#[test]
fn tokenizer_train_refuses_files_without_text() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let blank = dir.path().join("blank.txt");
    std::fs::write(&blank, "\n  \n").unwrap();
    let out = dir.path().join("tok");
    let err = fails(&run(&[
        "tokenizer",
        "train",
        "--input",
        s(&empty),
        s(&blank),
        "--vocab-size",
        "300",
        "--out",
        s(&out),
    ]));
    assert!(
        err.contains(s(&empty)) && err.contains(s(&blank)) && err.contains("no text"),
        "{err}"
    );
    assert!(!out.exists());
}

#[test]
fn a_vocab_json_or_merges_txt_alone_is_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(&dir.path().join("train.txt"), 20);
    for file in ["vocab.json", "merges.txt"] {
        let path = tokenizer().join(file);
        let err = fails(&preprocess(&input, &path, &dir.path().join("out"), &[]));
        assert!(
            err.contains(s(&path))
                && err.contains(
                    "pass the directory that holds vocab.json and merges.txt (or a tokenizer.json)"
                ),
            "{err}"
        );
    }
}

#[test]
fn an_empty_tsv_or_csv_is_named_empty() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["empty.tsv", "empty.csv"] {
        let empty = dir.path().join(name);
        std::fs::write(&empty, "").unwrap();
        let config = dir.path().join("task.toml");
        std::fs::write(
            &config,
            format!(
                "[task]\ntype = \"classification\"\n\n[data]\ntrain = \"{0}\"\nvalid = \"{0}\"\n",
                s(&empty)
            ),
        )
        .unwrap();
        let err = fails(&run(&[
            "finetune",
            "--config",
            s(&config),
            "--init",
            &common::mlm_fixture(),
            "--run-dir",
            s(&dir.path().join("run")),
        ]));
        assert!(
            err.contains(&format!("{} is empty", empty.display())),
            "{err}"
        );
    }
}

/// A data directory of the embedded tokenizer for `data inspect`.
fn data_dir(dir: &Path) -> PathBuf {
    let input = corpus(&dir.join("train.txt"), 300);
    let out = dir.join("data");
    ok(&preprocess(&input, &tokenizer(), &out, &[]));
    out
}

fn inspect(data: &Path, output: &Path) -> std::process::Output {
    run(&[
        "data",
        "inspect",
        "--data",
        s(data),
        "--batches",
        "2",
        "--block-size",
        "64",
        "--output",
        s(output),
    ])
}

#[test]
fn data_inspect_refuses_a_vocabulary_larger_than_the_tokenizers() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path());
    let meta_path = data.join("meta.json");
    let mut meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_path).unwrap()).unwrap();
    let vocab = meta["vocab_size"].as_u64().unwrap();
    meta["vocab_size"] = (vocab + 1000).into();
    std::fs::write(&meta_path, meta.to_string()).unwrap();
    let err = fails(&inspect(&data, &dir.path().join("i.jsonl")));
    assert!(
        err.contains(s(&data))
            && err.contains(&format!("{} tokens", vocab + 1000))
            && err.contains(&format!("the {vocab}")),
        "{err}"
    );
}

#[test]
fn data_inspect_reports_ids_outside_the_vocabulary() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path());
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(data.join("meta.json")).unwrap()).unwrap();
    assert_eq!(meta["token_width"], "u16", "{meta}");
    // Every token becomes id 65535, far past the embedded tokenizer's vocabulary.
    let bin = data.join("train-00000.bin");
    let len = std::fs::metadata(&bin).unwrap().len() as usize;
    std::fs::write(&bin, vec![0xff; len]).unwrap();
    let output = dir.path().join("i.jsonl");
    let err = fails(&inspect(&data, &output));
    assert!(
        err.contains(s(&data))
            && err.contains("outside the tokenizer's")
            && err.contains("first: 65535"),
        "{err}"
    );
}
