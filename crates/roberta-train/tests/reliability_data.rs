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
    // A dead run's name, but holding a file preprocess never writes: the user's.
    let theirs = format!(".out.tmp-{}", (1 << 22) + 2);
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(&dir.path().join("train.txt"), 100);
    for name in [dead.as_str(), &theirs, ".out.tmp-1", ".outer.tmp-99999999"] {
        std::fs::create_dir(dir.path().join(name)).unwrap();
        std::fs::write(dir.path().join(name).join("train-00000.bin"), "x").unwrap();
    }
    std::fs::write(dir.path().join(&theirs).join("thesis.tex"), "mine").unwrap();
    ok(&preprocess(
        &input,
        &tokenizer(),
        &dir.path().join("out"),
        &[],
    ));
    assert_eq!(
        names(dir.path()),
        [
            ".out.tmp-1",
            theirs.as_str(),
            ".outer.tmp-99999999",
            "out",
            "train.txt"
        ]
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join(&theirs).join("thesis.tex")).unwrap(),
        "mine"
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

fn inspect_into(data: &Path, output: &Path) -> std::process::Output {
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
    let err = fails(&inspect_into(&data, &dir.path().join("i.jsonl")));
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
    common::damage_ids(&data, true);
    let output = dir.path().join("i.jsonl");
    let err = fails(&inspect_into(&data, &output));
    assert!(
        err.contains(s(&data))
            && err.contains("outside the tokenizer's")
            && err.contains("first: 65535"),
        "{err}"
    );
}

/// Runs the binary with the files it writes limited to a block or two and SIGXFSZ
/// ignored, so that a write past the limit fails (EFBIG) as it would on a full disk.
#[cfg(unix)]
fn run_on_a_full_disk(args: &[&str]) -> std::process::Output {
    std::process::Command::new("sh")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 1 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_roberta-train"))
        .args(args)
        .current_dir(repo())
        .output()
        .expect("run roberta-train under sh")
}

fn train_tokenizer(input: &Path, vocab_size: &str, out: &Path) -> std::process::Output {
    run(&[
        "tokenizer",
        "train",
        "--input",
        s(input),
        "--vocab-size",
        vocab_size,
        "--out",
        s(out),
    ])
}

/// Every file under `dir`, relative, with its bytes.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let bytes = std::fs::read(&path).unwrap();
                files.push((path.strip_prefix(dir).unwrap().to_path_buf(), bytes));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn tokenizer_train_writes_a_new_directory_and_replaces_none() {
    let dir = tempfile::tempdir().unwrap();
    let cin = dir.path().join("cin");
    corpus(&cin.join("train.txt"), 300);
    // A directory of the user's, even one holding a tokenizer's file names.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("tokenizer.json"), "my tokenizer").unwrap();
    std::fs::write(mine.join("notes.txt"), "my notes").unwrap();
    let before = snapshot(&mine);
    let err = fails(&train_tokenizer(&cin, "300", &mine));
    assert!(
        err.contains(&format!("--out {}: already exists", mine.display())),
        "{err}"
    );
    assert_eq!(snapshot(&mine), before);

    // Inside the input directory: the first run reads only the corpus, the second is
    // refused rather than reading the first one's files as text or replacing them.
    let out = cin.join("tok");
    ok(&train_tokenizer(&cin, "300", &out));
    assert_eq!(names(&cin), ["tok", "train.txt"]);
    assert_eq!(names(&out), ["merges.txt", "tokenizer.json", "vocab.json"]);
    let other = dir.path().join("other");
    ok(&train_tokenizer(&cin.join("train.txt"), "300", &other));
    assert_eq!(
        std::fs::read(out.join("tokenizer.json")).unwrap(),
        std::fs::read(other.join("tokenizer.json")).unwrap(),
        "trained on the corpus alone"
    );
    let written = snapshot(&out);
    let err = fails(&train_tokenizer(&cin, "300", &out));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(snapshot(&out), written);
}

#[cfg(unix)]
#[test]
fn tokenizer_train_on_a_full_disk_leaves_no_tokenizer() {
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(&dir.path().join("train.txt"), 300);
    let out = dir.path().join("tok");
    let err = fails(&run_on_a_full_disk(&[
        "tokenizer",
        "train",
        "--input",
        s(&input),
        "--vocab-size",
        "300",
        "--out",
        s(&out),
    ]));
    assert!(
        err.contains(&format!(
            "{}: File too large",
            out.join("tokenizer.json").display()
        )),
        "{err}"
    );
    assert_eq!(
        names(dir.path()),
        ["train.txt"],
        "nothing that looks complete"
    );
}

#[test]
fn tokenizer_train_bounds_the_vocabulary_size() {
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(&dir.path().join("train.txt"), 50);
    let out = dir.path().join("tok");
    for huge in ["18446744073709551615", "1099511627776", "16777217"] {
        let err = fails(&train_tokenizer(&input, huge, &out));
        assert!(
            err.contains(&format!(
                "--vocab-size {huge} is too large: give at most 16777216"
            )),
            "{err}"
        );
    }
    let err = fails(&train_tokenizer(&input, "260", &out));
    assert!(
        err.contains("--vocab-size 260 is too small") && err.contains("give at least 261"),
        "{err}"
    );
    assert_eq!(names(dir.path()), ["train.txt"]);
    ok(&train_tokenizer(&input, "261", &out));
}

fn encode(input: &Path, output: &Path) -> std::process::Output {
    run(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        s(&tokenizer()),
        "--input",
        s(input),
        "--output",
        s(output),
    ])
}

#[test]
fn encode_and_inspect_write_new_files_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path());
    let input = dir.path().join("train.txt");
    let text = std::fs::read(&input).unwrap();
    // The input as its own output.
    let err = fails(&encode(&input, &input));
    assert!(
        err.contains(&format!("--output {}: already exists", input.display())),
        "{err}"
    );
    assert_eq!(std::fs::read(&input).unwrap(), text);
    // A user's file named like the old fixed temporary is neither used nor moved.
    for (name, command) in [("e.jsonl", "encode"), ("i.jsonl", "inspect")] {
        let output = dir.path().join(name);
        let theirs = dir.path().join(format!("{name}.tmp"));
        std::fs::write(&theirs, "my notes").unwrap();
        let write = || match command {
            "encode" => encode(&input, &output),
            _ => inspect_into(&data, &output),
        };
        ok(&write());
        assert!(std::fs::read_to_string(&output).unwrap().starts_with('{'));
        assert_eq!(std::fs::read_to_string(&theirs).unwrap(), "my notes");
        let written = std::fs::read(&output).unwrap();
        let err = fails(&write());
        assert!(
            err.contains(&format!("--output {}: already exists", output.display())),
            "{command}: {err}"
        );
        assert_eq!(std::fs::read(&output).unwrap(), written);
    }
    assert_eq!(
        names(dir.path()),
        [
            "data",
            "e.jsonl",
            "e.jsonl.tmp",
            "i.jsonl",
            "i.jsonl.tmp",
            "train.txt"
        ]
    );
}

#[cfg(unix)]
#[test]
fn encode_and_inspect_on_a_full_disk_name_the_output_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let data = data_dir(dir.path());
    let input = dir.path().join("train.txt");
    let output = dir.path().join("out.jsonl");
    let tokenizer = tokenizer();
    let encode = [
        "tokenizer",
        "encode",
        "--tokenizer",
        s(&tokenizer),
        "--input",
        s(&input),
        "--output",
        s(&output),
    ];
    let inspect = [
        "data",
        "inspect",
        "--data",
        s(&data),
        "--batches",
        "2",
        "--block-size",
        "64",
        "--output",
        s(&output),
    ];
    // Inspecting packs the data directory's blocks first (its block index): on a full
    // disk that fails naming the index, leaving no temporary behind.
    let before = names(&data);
    let err = fails(&run_on_a_full_disk(&inspect));
    assert!(
        err.contains(&format!(
            "writing the block index {}: File too large",
            data.join("blocks-train-full-sentences-64.idx").display()
        )),
        "{err}"
    );
    assert_eq!(names(&data), before);
    ok(&inspect_into(&data, &dir.path().join("first.jsonl")));
    std::fs::remove_file(dir.path().join("first.jsonl")).unwrap();
    for args in [&encode[..], &inspect[..]] {
        let err = fails(&run_on_a_full_disk(args));
        assert!(
            err.contains(&format!("writing {}: File too large", output.display())),
            "{err}"
        );
        assert_eq!(names(dir.path()), ["data", "train.txt"], "{}", args[1]);
    }
}

#[cfg(unix)]
#[test]
fn encode_stops_on_sigint_and_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("data/default-corpus/train.txt")).unwrap();
    let input = dir.path().join("big.txt");
    std::fs::write(&input, text.repeat(4)).unwrap();
    let output = dir.path().join("out.jsonl");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_roberta-train"))
        .args([
            "tokenizer",
            "encode",
            "--tokenizer",
            s(&tokenizer()),
            "--input",
            s(&input),
            "--output",
            s(&output),
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = dir.path().join(format!(".out.jsonl.tmp-{}", child.id()));
    let start = Instant::now();
    let mut child = child;
    while !tmp.exists() {
        assert!(
            child.try_wait().unwrap().is_none(),
            "encode ended before it was signalled"
        );
        assert!(start.elapsed() < Duration::from_secs(60), "no {tmp:?}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let kill = std::process::Command::new("kill")
        .args(["-s", "INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output_of = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output_of.stderr);
    assert!(!output_of.status.success(), "exit 0 after SIGINT");
    assert!(
        stderr.contains(&format!(
            "interrupted: nothing written to {}",
            output.display()
        )),
        "{stderr}"
    );
    assert_eq!(names(dir.path()), ["big.txt"]);
}

#[cfg(target_os = "linux")]
#[test]
fn file_names_that_are_not_utf8_are_refused_up_front() {
    use std::os::unix::ffi::OsStrExt;
    let dir = tempfile::tempdir().unwrap();
    let cin = dir.path().join("cin");
    corpus(&cin.join("good.txt"), 100);
    let bad = cin.join(std::ffi::OsStr::from_bytes(b"caf\xe9.txt"));
    std::fs::copy(cin.join("good.txt"), &bad).unwrap();
    let expected = format!(
        "{}: the name is not valid UTF-8, which meta.json and the tokenizer trainer cannot hold: rename it",
        cin.join("caf\u{fffd}.txt").display()
    );
    let err = fails(&preprocess(
        &cin,
        &tokenizer(),
        &dir.path().join("out"),
        &[],
    ));
    assert!(
        err.contains(&expected) && !err.contains("panicked"),
        "{err}"
    );
    let err = fails(&train_tokenizer(&cin, "300", &dir.path().join("tok")));
    assert!(err.contains(&expected), "{err}");
    assert_eq!(names(dir.path()), ["cin"]);
}

#[test]
fn preprocess_refuses_an_output_inside_an_input_directory() {
    let dir = tempfile::tempdir().unwrap();
    let cin = dir.path().join("cin");
    corpus(&cin.join("train.txt"), 100);
    let out = cin.join("bin");
    let err = fails(&preprocess(&cin, &tokenizer(), &out, &[]));
    assert!(
        err.contains(&format!(
            "{} lies inside the input directory {}",
            out.display(),
            cin.display()
        )) && err.contains("choose another --out"),
        "{err}"
    );
    assert_eq!(names(&cin), ["train.txt"]);
    assert_eq!(names(dir.path()), ["cin"]);

    // Pretraining preprocesses through the same function.
    let setup = dir.path().join("setup");
    std::fs::create_dir(&setup).unwrap();
    let config = common::tiny_config(&setup, "");
    let train = format!("data.train={}", cin.display());
    let data_dir = format!("data.data_dir={}", out.display());
    let err = fails(&common::pretrain(
        &config,
        &dir.path().join("run"),
        &["--set", &train, "--set", &data_dir],
    ));
    assert!(
        err.contains(&format!(
            "{} lies inside the input directory {}",
            out.display(),
            cin.display()
        )),
        "{err}"
    );
    assert_eq!(names(&cin), ["train.txt"]);
}

#[test]
fn preprocess_refuses_zero_tokens_per_shard() {
    let dir = tempfile::tempdir().unwrap();
    let input = corpus(&dir.path().join("train.txt"), 100);
    let err = fails(&preprocess(
        &input,
        &tokenizer(),
        &dir.path().join("out"),
        &["--shard-tokens", "0"],
    ));
    assert!(
        err.contains("--shard-tokens 0") && err.contains("at least 1"),
        "{err}"
    );
    assert_eq!(names(dir.path()), ["train.txt"]);
}
