//! Faults and bad input against training runs: whatever happens, a user's files are
//! never changed, nothing panics, and the error names its culprit in one line.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::{fails, mlm_fixture, ok, pretrain, s, tiny_config};

fn assert_no_panic(stderr: &str) {
    assert!(
        !stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"),
        "{stderr}"
    );
}

/// What a directory holds, file by file, for before/after comparisons.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let name = path
                    .strip_prefix(dir)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                files.push((name, std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn a_run_directory_with_user_files_or_a_finished_run_is_not_trained_over() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");

    // The user's own files.
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), "my notes").unwrap();
    std::fs::write(mine.join("config.toml"), "my config").unwrap();
    let before = snapshot(&mine);
    for extra in [&[][..], &["--resume", "auto"][..]] {
        let err = fails(&pretrain(&config, &mine, extra));
        assert!(
            err.contains("notes.txt") && err.contains("--run-dir"),
            "{err}"
        );
        assert_no_panic(&err);
    }
    assert_eq!(snapshot(&mine), before, "nothing written, nothing changed");

    // A finished run whose checkpoints are gone: neither a new run nor a resume writes
    // over its final/, config.toml and metrics.
    let run = dir.path().join("run");
    ok(&pretrain(
        &config,
        &run,
        &["--set", "schedule.total_steps=2"],
    ));
    std::fs::remove_dir_all(run.join("checkpoints")).unwrap();
    let before = snapshot(&run.join("final"));
    let metrics = std::fs::read(run.join("metrics.jsonl")).unwrap();
    let err = fails(&pretrain(&config, &run, &[]));
    assert!(err.contains("already holds a run"), "{err}");
    let err = fails(&pretrain(&config, &run, &["--resume", "auto"]));
    assert!(err.contains("no checkpoint"), "{err}");
    assert_eq!(snapshot(&run.join("final")), before);
    assert_eq!(std::fs::read(run.join("metrics.jsonl")).unwrap(), metrics);
}

#[test]
fn a_second_process_on_a_run_directory_is_refused_with_the_holders_pid() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run = dir.path().join("run");
    // A long first run; the second starts once the first holds the lock.
    let mut first = Command::new(env!("CARGO_BIN_EXE_roberta-train"))
        .args(["pretrain", "--config", s(&config), "--run-dir", s(&run)])
        .args(["--set", "schedule.total_steps=100000"])
        .current_dir(common::repo())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lock = run.join(".roberta-train.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while std::fs::read_to_string(&lock).unwrap_or_default().trim() != first.id().to_string() {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never took the lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let err = fails(&pretrain(&config, &run, &["--resume", "auto"]));
    first.kill().unwrap();
    first.wait().unwrap();
    assert!(
        err.contains("in use") && err.contains(&format!("PID {}", first.id())),
        "{err}"
    );
    // The lock goes with the process: a resume now works.
    ok(&pretrain(
        &config,
        &run,
        &["--resume", "auto", "--set", "schedule.total_steps=2"],
    ));
}

/// `--resume DIR --force` from a checkpoint older than others of the run removes the
/// newer ones: they belong to the abandoned line of updates, and `--resume auto` would
/// otherwise go back to them.
#[test]
fn a_forced_resume_from_an_older_checkpoint_removes_the_newer_ones() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run = dir.path().join("run");
    ok(&pretrain(&config, &run, &[]));
    let four = run.join("checkpoints/step-0000004");
    let err = fails(&pretrain(&config, &run, &["--resume", s(&four)]));
    assert!(
        err.contains("step-0000006") && err.contains("--force"),
        "{err}"
    );
    ok(&pretrain(
        &config,
        &run,
        &[
            "--resume",
            s(&four),
            "--force",
            "--set",
            "checkpoint.every=5",
        ],
    ));
    let left: std::collections::BTreeSet<String> = std::fs::read_dir(run.join("checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        left.into_iter().collect::<Vec<_>>(),
        [
            "step-0000002",
            "step-0000004",
            "step-0000005",
            "step-0000008"
        ],
        "the old line's 6 and 8 removed; the new line's 5 and 8 written"
    );
}

#[test]
fn a_forced_resume_cannot_change_the_architecture_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run = dir.path().join("run");
    ok(&pretrain(
        &config,
        &run,
        &["--set", "schedule.total_steps=2"],
    ));
    // A temporary left by a run killed while it wrote a checkpoint.
    let stale = run.join("checkpoints/.step-0000004.tmp-999999");
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join("model.bin"), b"partial").unwrap();
    // And one killed while it drew the loss curves (their temporary keeps `.png`).
    let stale_plot = run.join(".curves.png.tmp-999999.png");
    std::fs::write(&stale_plot, b"partial").unwrap();
    let config_toml = std::fs::read(run.join("config.toml")).unwrap();
    let err = fails(&pretrain(
        &config,
        &run,
        &[
            "--resume",
            "auto",
            "--force",
            "--set",
            "model.hidden_size=64",
            "--set",
            "schedule.total_steps=4",
        ],
    ));
    assert!(
        err.contains("hidden_size 32 → 64") && err.contains("cannot change"),
        "{err}"
    );
    assert_no_panic(&err);
    assert_eq!(std::fs::read(run.join("config.toml")).unwrap(), config_toml);
    assert!(!stale.exists(), "the stale temporary is removed");
    assert!(!stale_plot.exists(), "the stale plot is removed");
}

#[test]
fn a_missing_checkpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let missing = dir.path().join("nowhere");
    let err = fails(&pretrain(
        &config,
        &dir.path().join("run"),
        &["--resume", s(&missing)],
    ));
    assert!(
        err.contains("no such directory") && err.contains("nowhere"),
        "{err}"
    );
    // A directory that is not a checkpoint.
    let err = fails(&pretrain(
        &config,
        &dir.path().join("run"),
        &["--resume", s(dir.path())],
    ));
    assert!(err.contains("not a checkpoint"), "{err}");
}

#[test]
fn a_model_directory_that_is_not_roberta_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let gpt2 = dir.path().join("gpt2");
    common::copy_dir(Path::new(&mlm_fixture()), &gpt2);
    let config_json = std::fs::read_to_string(gpt2.join("config.json")).unwrap();
    let mut config: serde_json::Value = serde_json::from_str(&config_json).unwrap();
    config["model_type"] = "gpt2".into();
    config["architectures"] = serde_json::json!(["GPT2LMHeadModel"]);
    std::fs::write(gpt2.join("config.json"), config.to_string()).unwrap();
    let err = fails(&common::run(&[
        "fill-mask",
        "--model",
        s(&gpt2),
        "Hello <mask>.",
    ]));
    assert!(err.contains("gpt2") && err.contains("not RoBERTa"), "{err}");
}

#[test]
fn export_does_not_write_into_a_directory_it_did_not_create() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run = dir.path().join("run");
    ok(&pretrain(
        &config,
        &run,
        &["--set", "schedule.total_steps=2"],
    ));
    let out = dir.path().join("mine");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "my notes").unwrap();
    let export = |out: &Path| common::run(&["export", "--checkpoint", s(&run), "--out", s(out)]);
    let err = fails(&export(&out));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(
        snapshot(&out),
        [("notes.txt".to_string(), b"my notes".to_vec())]
    );
    ok(&export(&dir.path().join("new")));
    assert!(dir.path().join("new/model.safetensors").exists());
    // fill-mask takes a run directory for its final/.
    ok(&common::run(&[
        "fill-mask",
        "--model",
        s(&run),
        "The <mask> sat.",
    ]));
}

#[test]
fn outputs_that_exist_are_refused_the_input_included() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(&input, "{\"text\": \"The cat sat.\"}\n").unwrap();
    let before = std::fs::read(&input).unwrap();
    let embed = |output: &Path| {
        common::run(&[
            "embed",
            "--model",
            &mlm_fixture(),
            "--input",
            s(&input),
            "--output",
            s(output),
        ])
    };
    let err = fails(&embed(&input));
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(std::fs::read(&input).unwrap(), before);
    let model_file = Path::new(&mlm_fixture()).join("model.safetensors");
    let weights = std::fs::read(&model_file).unwrap();
    fails(&embed(&model_file));
    assert_eq!(std::fs::read(&model_file).unwrap(), weights);
    ok(&embed(&dir.path().join("new.safetensors")));
}

#[test]
fn a_tokenizer_larger_than_the_model_and_a_classifier_in_fill_mask_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    common::copy_dir(Path::new(&mlm_fixture()), &model);
    std::fs::copy(
        common::repo().join("data/tokenizer/tokenizer.json"),
        model.join("tokenizer.json"),
    )
    .unwrap();
    let err = fails(&common::run(&[
        "fill-mask",
        "--model",
        s(&model),
        "a <mask> b",
    ]));
    assert!(err.contains("vocabulary only 320"), "{err}");
    assert_no_panic(&err);
    let classifier = common::repo().join("crates/roberta-model/tests/fixtures/seqcls");
    let err = fails(&common::run(&[
        "fill-mask",
        "--model",
        s(&classifier),
        "a <mask> b",
    ]));
    assert!(
        err.contains("holds a RobertaForSequenceClassification"),
        "{err}"
    );
}

#[test]
fn plot_draws_a_diverged_run() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("metrics.jsonl"),
        "{\"step\":1,\"epoch\":0,\"loss\":1e308,\"lr\":0.1}\n{\"step\":2,\"epoch\":0,\"loss\":-1e308,\"lr\":0.1}\n{\"step\":3,\"epoch\":0,\"loss\":2.5,\"lr\":0.1}\n",
    )
    .unwrap();
    ok(&common::run(&["plot", "--run", s(dir.path())]));
    assert!(dir.path().join("curves.png").exists());
    let err = fails(&common::run(&[
        "plot",
        "--run",
        s(dir.path()),
        "--output",
        s(&dir.path().join("metrics.jsonl")),
    ]));
    assert!(err.contains("already exists"), "{err}");
}

#[test]
fn token_ids_outside_the_models_vocabulary_are_refused_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    // A model with a smaller vocabulary than the corpus's tokenizer.
    let text = std::fs::read_to_string(&config).unwrap();
    let shapeless: Vec<&str> = text
        .lines()
        .filter(|l| {
            ![
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
            ]
            .iter()
            .any(|k| l.starts_with(k))
        })
        .collect();
    let continued = dir.path().join("continued.toml");
    std::fs::write(&continued, shapeless.join("\n")).unwrap();
    let err = fails(&pretrain(
        &continued,
        &dir.path().join("small"),
        &["--set", &format!("model.init={}", mlm_fixture())],
    ));
    assert!(err.contains("vocabulary"), "{err}");
    assert_no_panic(&err);
    // Shards whose ids were damaged after preprocessing: every id becomes 65535.
    ok(&pretrain(
        &config,
        &dir.path().join("run"),
        &["--set", "schedule.total_steps=2"],
    ));
    // Changed in place after preprocessing: meta.json's record of the files tells.
    common::damage_ids(&dir.path().join("data-bin"), false);
    let err = fails(&pretrain(&config, &dir.path().join("changed"), &[]));
    assert!(
        err.contains("train-00000.bin was changed after preprocess wrote it"),
        "{err}"
    );
    assert_no_panic(&err);
    // Without that record, the ids themselves.
    common::damage_ids(&dir.path().join("data-bin"), true);
    let err = fails(&pretrain(&config, &dir.path().join("damaged"), &[]));
    assert!(
        err.contains("token id 65535") && err.contains("vocabulary"),
        "{err}"
    );
    assert_no_panic(&err);
}

#[test]
fn inference_errors_stay_one_line_and_name_the_mismatch() {
    let long = format!("{} <mask>.", "word ".repeat(2000));
    let err = fails(&common::run(&[
        "fill-mask",
        "--model",
        &mlm_fixture(),
        &long,
    ]));
    assert!(err.contains("tokens long") && err.len() < 400, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("squad.json");
    std::fs::write(&data, "{}").unwrap();
    let err = fails(&common::run(&[
        "eval",
        "--model",
        &mlm_fixture(),
        "--data",
        s(&data),
        "--task",
        "qa",
    ]));
    assert!(
        err.contains("holds a RobertaForMaskedLM") && err.contains("RobertaForQuestionAnswering"),
        "{err}"
    );
}

/// SIGINT while pretraining tokenizes its corpus: it stops there, exits non-zero, and
/// leaves neither shards nor a run that looks started.
#[cfg(unix)]
#[test]
fn sigint_during_pretrainings_preprocessing_stops_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let text =
        std::fs::read_to_string(common::repo().join("data/default-corpus/train.txt")).unwrap();
    let big = dir.path().join("big.txt");
    std::fs::write(&big, text.repeat(8)).unwrap();
    let data_dir = dir.path().join("shards");
    let run = dir.path().join("run");
    let child = Command::new(env!("CARGO_BIN_EXE_roberta-train"))
        .args(["pretrain", "--config", s(&config), "--run-dir", s(&run)])
        .args(["--set", &format!("data.train={}", s(&big))])
        .args(["--set", &format!("data.data_dir={}", s(&data_dir))])
        .current_dir(common::repo())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let tmp = dir.path().join(format!(".shards.tmp-{}", child.id()));
    let start = std::time::Instant::now();
    while !tmp.exists() {
        assert!(
            start.elapsed().as_secs() < 60,
            "preprocessing never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let kill = Command::new("kill")
        .args(["-s", "INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("interrupted: nothing written"), "{stderr}");
    assert!(!data_dir.exists() && !tmp.exists());
    for started in ["metrics.jsonl", "checkpoints", "config.toml", "final"] {
        assert!(!run.join(started).exists(), "{started}");
    }
}

#[test]
fn a_pytorch_model_directory_whose_weights_are_not_a_checkpoint_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("torch");
    common::copy_dir(Path::new(&mlm_fixture()), &model);
    std::fs::rename(
        model.join("model.safetensors"),
        model.join("pytorch_model.bin"),
    )
    .unwrap();
    let err = fails(&common::run(&[
        "fill-mask",
        "--model",
        s(&model),
        "a <mask>",
    ]));
    assert!(
        err.contains("pytorch_model.bin: not a readable PyTorch checkpoint"),
        "{err}"
    );
}

#[test]
fn integer_weights_are_refused_not_run() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    common::copy_dir(Path::new(&mlm_fixture()), &model);
    let bytes = std::fs::read(model.join("model.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let tensors: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(key, view)| {
            let weight = key.ends_with("word_embeddings.weight");
            let dtype = if weight {
                safetensors::Dtype::I32
            } else {
                view.dtype()
            };
            (key, dtype, view.shape().to_vec(), view.data().to_vec())
        })
        .collect();
    let views = tensors.iter().map(|(key, dtype, shape, data)| {
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap();
        (key.clone(), view)
    });
    std::fs::write(
        model.join("model.safetensors"),
        safetensors::serialize(views, None).unwrap(),
    )
    .unwrap();
    let err = fails(&common::run(&[
        "fill-mask",
        "--model",
        s(&model),
        "a <mask> b",
    ]));
    assert!(
        err.contains("word_embeddings.weight: stored as integers"),
        "{err}"
    );
}

/// A run's metrics lines without their throughput (a timing).
fn metrics_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("tokens_per_s");
            v
        })
        .collect()
}

/// Keeps only checkpoint `step` of a run (and no `final/`), as if it had been killed
/// just after writing it.
fn back_to(run_dir: &Path, step: u64) {
    for entry in std::fs::read_dir(run_dir.join("checkpoints")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().as_ref() > format!("step-{step:07}").as_str() {
            std::fs::remove_dir_all(p).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(run_dir.join("final"));
}

/// Edits a checkpoint's trainer state and writes its manifest entry anew, as a
/// checkpoint of an earlier release would read.
fn edit_trainer_state(checkpoint: &Path, edit: impl FnOnce(&mut serde_json::Value)) {
    use sha2::Digest;
    let path = checkpoint.join("trainer.json");
    let mut state: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    edit(&mut state);
    let bytes = serde_json::to_vec_pretty(&state).unwrap();
    std::fs::write(&path, &bytes).unwrap();
    let manifest_path = checkpoint.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&manifest_path).unwrap()).unwrap();
    manifest["files"]["trainer.json"] = format!("{:x}", sha2::Sha256::digest(&bytes)).into();
    std::fs::write(&manifest_path, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

/// A resume continues at the checkpoint's loader position, with its masks, orders and
/// embeddings: on an edited corpus, after a swapped tokenizer, or from a checkpoint whose
/// masks came from the first (defective) random streams, it is refused without --force
/// and says what changed. These once resumed without a word.
#[test]
fn resumes_on_other_data_another_tokenizer_or_old_streams_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let tokenizer = dir.path().join("tokenizer");
    common::copy_dir(&common::repo().join("data/tokenizer"), &tokenizer);
    let config = tiny_config(dir.path(), "");
    let text = std::fs::read_to_string(&config).unwrap().replace(
        common::repo().join("data/tokenizer").to_str().unwrap(),
        tokenizer.to_str().unwrap(),
    );
    std::fs::write(&config, text).unwrap();
    let run_dir = dir.path().join("run");
    ok(&pretrain(&config, &run_dir, &[]));
    let step4 = run_dir.join("checkpoints/step-0000004");

    // The corpus edited: its lines reversed.
    let corpus = dir.path().join("corpus.txt");
    let original = std::fs::read_to_string(&corpus).unwrap();
    let reversed: Vec<&str> = original.lines().rev().collect();
    std::fs::write(&corpus, reversed.join("\n") + "\n").unwrap();
    back_to(&run_dir, 4);
    let err = fails(&pretrain(&config, &run_dir, &["--resume", "auto"]));
    assert_no_panic(&err);
    let last = err.lines().last().unwrap();
    assert!(
        last.contains(&step4.display().to_string())
            && last.contains("the training data changed")
            && last.contains("--force"),
        "{err}"
    );
    let out = pretrain(&config, &run_dir, &["--resume", "auto", "--force"]);
    ok(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("resuming anyway (--force)"));
    std::fs::write(&corpus, &original).unwrap();

    // The tokenizer swapped for one of the same size (two tokens' ids exchanged), the
    // shards rebuilt with it as preprocess's own hint says.
    let fresh = dir.path().join("fresh");
    ok(&pretrain(&config, &fresh, &[]));
    let file = tokenizer.join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    let vocab = json["model"]["vocab"].as_object_mut().unwrap();
    let (a, b) = (vocab["Ġthe"].clone(), vocab["Ġand"].clone());
    vocab.insert("Ġthe".into(), b);
    vocab.insert("Ġand".into(), a);
    std::fs::write(&file, serde_json::to_string(&json).unwrap()).unwrap();
    std::fs::remove_dir_all(dir.path().join("data-bin")).unwrap();
    back_to(&fresh, 4);
    let err = fails(&pretrain(&config, &fresh, &["--resume", "auto"]));
    assert!(
        err.lines()
            .last()
            .unwrap()
            .contains("the tokenizer is another one"),
        "{err}"
    );

    // A checkpoint of an earlier release: no streams version, no data fingerprint.
    let old = dir.path().join("old");
    common::copy_dir(&common::repo().join("data/tokenizer"), &tokenizer);
    std::fs::remove_dir_all(dir.path().join("data-bin")).unwrap();
    ok(&pretrain(&config, &old, &[]));
    back_to(&old, 4);
    edit_trainer_state(&old.join("checkpoints/step-0000004"), |state| {
        let state = state.as_object_mut().unwrap();
        state.remove("streams");
        state.remove("data");
    });
    let err = fails(&pretrain(&config, &old, &["--resume", "auto"]));
    let last = err.lines().last().unwrap();
    assert!(
        last.contains("random streams of version 1") && last.contains("--force"),
        "{err}"
    );
    ok(&pretrain(&config, &old, &["--resume", "auto", "--force"]));
}

/// The metrics file of a run killed after a checkpoint between two metrics lines and
/// resumed reads like the uninterrupted run's, line for line and value for value
/// (throughput aside). Its first line after the resume once averaged only the updates
/// after the resume, and a checkpoint due between two metrics lines was not written.
#[test]
fn metrics_of_a_resumed_run_equal_the_uninterrupted_runs() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let every = [
        "--set",
        "log.every=4",
        "--set",
        "checkpoint.every=3",
        "--set",
        "schedule.total_steps=12",
    ];
    let straight = dir.path().join("straight");
    ok(&pretrain(&config, &straight, &every));
    let resumed = dir.path().join("resumed");
    ok(&pretrain(&config, &resumed, &every));
    assert!(resumed.join("checkpoints/step-0000003").exists());
    back_to(&resumed, 3);
    let mut args = vec!["--resume", "auto"];
    args.extend(every);
    ok(&pretrain(&config, &resumed, &args));
    let expected = metrics_lines(&straight);
    assert_eq!(
        expected
            .iter()
            .map(|v| v["step"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        [4, 8, 12]
    );
    assert_eq!(metrics_lines(&resumed), expected);
}

/// The campaign's messages, each once naming the wrong thing or spreading over lines.
#[test]
fn messages_name_their_culprit_in_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| common::run(args);
    let one_line = |err: &str| {
        assert_no_panic(err);
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
        err.trim_end().to_string()
    };
    // evaluate's output directory is --out.
    let out = dir.path().join("ev");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("notes.txt"), "mine").unwrap();
    let err = one_line(&fails(&run(&[
        "evaluate",
        "--init",
        &mlm_fixture(),
        "--out",
        s(&out),
        "--tasks",
        "sst2",
    ])));
    assert!(err.ends_with("choose another --out"), "{err}");
    // predict's --max-length is the flag, with the one range of every length.
    let tsv = dir.path().join("p.tsv");
    std::fs::write(&tsv, "sentence\tlabel\nhello\t1\n").unwrap();
    let seqcls = common::repo().join("crates/roberta-model/tests/fixtures/seqcls");
    let err = one_line(&fails(&run(&[
        "predict",
        "--model",
        s(&seqcls),
        "--input",
        s(&tsv),
        "--output",
        s(&dir.path().join("p.jsonl")),
        "--max-length",
        "1",
    ])));
    assert!(
        err.ends_with("--max-length 1 must be in [8, 8192]"),
        "{err}"
    );
    // data inspect's --block-size once panicked below 3.
    let err = one_line(&fails(&run(&[
        "data",
        "inspect",
        "--data",
        s(dir.path()),
        "--block-size",
        "1",
        "--batches",
        "1",
        "--output",
        s(&dir.path().join("i.jsonl")),
    ])));
    assert!(err.contains("--block-size 1 must be in [8, 8192]"), "{err}");
    // export of an HF directory, and of a checkpoint without its optimizer files.
    let config = tiny_config(dir.path(), "");
    let run_dir = dir.path().join("run");
    ok(&pretrain(
        &config,
        &run_dir,
        &["--set", "schedule.total_steps=2"],
    ));
    let err = one_line(&fails(&run(&[
        "export",
        "--checkpoint",
        s(&run_dir.join("final")),
        "--out",
        s(&dir.path().join("x")),
    ])));
    assert!(err.contains("is already an HF model directory"), "{err}");
    let step = run_dir.join("checkpoints/step-0000002");
    for entry in std::fs::read_dir(&step).unwrap() {
        let path = entry.unwrap().path();
        if path
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("optim-")
        {
            std::fs::remove_file(path).unwrap();
        }
    }
    ok(&run(&[
        "export",
        "--checkpoint",
        s(&run_dir),
        "--out",
        s(&dir.path().join("x")),
    ]));
    // A plot that cannot be written names the PNG and the OS's reason.
    let blocked = dir.path().join("file");
    std::fs::write(&blocked, "mine").unwrap();
    let png = blocked.join("curves.png");
    let err = one_line(&fails(&run(&[
        "plot",
        "--run",
        s(&run_dir),
        "--output",
        s(&png),
    ])));
    assert!(
        err.ends_with(&format!(
            "writing {}: Not a directory (os error 20)",
            png.display()
        )),
        "{err}"
    );
    // A config.json whose sizes do not fit the weights: one summary line.
    let model = dir.path().join("model");
    common::copy_dir(Path::new(&mlm_fixture()), &model);
    let path = model.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["hidden_size"] = 64.into();
    std::fs::write(&path, json.to_string()).unwrap();
    let err = one_line(&fails(&run(&[
        "fill-mask",
        "--model",
        s(&model),
        "a <mask> b",
    ])));
    assert!(
        err.contains("tensors have other shapes (first: ") && err.len() < 400,
        "{err}"
    );
}

/// Inputs that are not regular files once read as "no such file", or as empty, or hung.
#[cfg(unix)]
#[test]
fn inputs_that_are_not_files_are_named_for_what_they_are() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let me = dir.path().join("me");
    std::os::unix::fs::symlink(&me, &me).unwrap();
    // A classifier with the MLM fixture's tokenizer (the same vocabulary).
    let seqcls = dir.path().join("seqcls");
    common::copy_dir(
        &common::repo().join("crates/roberta-model/tests/fixtures/seqcls"),
        &seqcls,
    );
    std::fs::copy(
        Path::new(&mlm_fixture()).join("tokenizer.json"),
        seqcls.join("tokenizer.json"),
    )
    .unwrap();
    let out = dir.path().join("out");
    for input in [fifo.as_path(), Path::new("/dev/zero"), me.as_path()] {
        for args in [
            vec![
                "preprocess",
                "--input",
                s(input),
                "--tokenizer",
                "data/tokenizer",
                "--out",
                s(&out),
            ],
            vec![
                "tokenizer",
                "train",
                "--input",
                s(input),
                "--vocab-size",
                "300",
                "--out",
                s(&out),
            ],
            vec![
                "tokenizer",
                "encode",
                "--tokenizer",
                "data/tokenizer",
                "--input",
                s(input),
                "--output",
                s(&out),
            ],
            vec![
                "predict",
                "--model",
                s(&seqcls),
                "--input",
                s(input),
                "--output",
                s(&out),
            ],
            vec![
                "embed",
                "--model",
                &mlm_fixture(),
                "--input",
                s(input),
                "--output",
                s(&out),
            ],
        ] {
            let err = fails(&common::run(&args));
            assert_no_panic(&err);
            let says = if input == me {
                "a symbolic link loop"
            } else {
                "not a regular file"
            };
            assert!(err.contains(says), "{}: {err}", args[0]);
            assert!(!out.exists());
        }
    }
}

/// A signal during an evaluation stops the run within seconds (the evaluation looks at
/// the stop flag between batches); the update whose line the evaluation kept from being
/// written travels in the checkpoint, and the resumed run writes it, evaluated again, so
/// its metrics equal an uninterrupted run's. The evaluation once ran to its end first.
#[cfg(unix)]
#[test]
fn a_signal_during_an_evaluation_is_honoured_and_the_resume_logs_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    // A validation split of ~20,000 blocks, all evaluated: seconds per evaluation.
    let valid = common::repo().join("data/default-corpus/train.txt");
    let valid_set = format!("data.valid=[\"{}\"]", valid.display());
    let sets = [
        "--set",
        valid_set.as_str(),
        "--set",
        "eval.batches=0",
        "--set",
        "eval.every=4",
        "--set",
        "log.every=1",
    ];
    let straight = dir.path().join("straight");
    ok(&pretrain(&config, &straight, &sets));
    let stopped = dir.path().join("stopped");
    let log = dir.path().join("stderr.log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_roberta-train"))
        .args(common::pretrain_args(&config, &stopped, &sets))
        .current_dir(common::repo())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The line of update 4 is printed as its evaluation starts.
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&log).unwrap().contains("step 4/8") {
        assert!(started.elapsed().as_secs() < 120, "never reached update 4");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let signalled = std::time::Instant::now();
    assert!(
        Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    let took = signalled.elapsed().as_secs_f64();
    assert!(
        status.success(),
        "{}",
        std::fs::read_to_string(&log).unwrap()
    );
    assert!(took < 2.0, "stopped {took:.1} s after the signal");
    ok(&pretrain(
        &config,
        &stopped,
        &[&["--resume", "auto"][..], &sets[..]].concat(),
    ));
    assert_eq!(metrics_lines(&stopped), metrics_lines(&straight));
}

/// The second campaign's inputs, each once a panic, an abort, an unbounded allocation or
/// an endless read: now one line naming the culprit.
#[cfg(unix)]
#[test]
fn the_campaigns_oversized_and_special_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run = |args: &[&str]| common::run(args);
    let check = |out: std::process::Output, says: &str| {
        let err = fails(&out);
        assert_no_panic(&err);
        assert!(err.contains(says), "{says}: {err}");
    };
    // A model no memory here holds, from the config or from a config.json.
    check(
        pretrain(
            &config,
            &dir.path().join("big"),
            &["--set", "model.hidden_size=65536"],
        ),
        "more than this machine's",
    );
    let model = dir.path().join("model");
    common::copy_dir(Path::new(&mlm_fixture()), &model);
    let path = model.join("config.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["vocab_size"] = 1_000_000_000u64.into();
    std::fs::write(&path, json.to_string()).unwrap();
    check(
        run(&["fill-mask", "--model", s(&model), "a <mask>"]),
        "more than this machine's",
    );
    // A checkpoint edited to zero devices.
    let run_dir = dir.path().join("run");
    ok(&pretrain(
        &config,
        &run_dir,
        &["--set", "schedule.total_steps=2"],
    ));
    back_to(&run_dir, 2);
    edit_trainer_state(&run_dir.join("checkpoints/step-0000002"), |state| {
        state["devices"] = 0.into();
    });
    // (`--resume auto` names it and starts over; it once panicked.)
    let out = pretrain(
        &config,
        &run_dir,
        &["--resume", "auto", "--set", "schedule.total_steps=4"],
    );
    let log = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_no_panic(&log);
    assert!(log.contains("trainer.json: \"devices\": 0"), "{log}");
    // A batch no memory holds in data inspect.
    let data = dir.path().join("data-bin");
    check(
        run(&[
            "data",
            "inspect",
            "--data",
            s(&data),
            "--block-size",
            "64",
            "--batch-size",
            "100000000",
            "--output",
            s(&dir.path().join("i.jsonl")),
        ]),
        "--batch-size 100000000",
    );
    // A tokenizer that is a device, a training text of one 17 MiB line.
    check(
        run(&[
            "tokenizer",
            "encode",
            "--tokenizer",
            "/dev/zero",
            "--input",
            s(&config),
            "--output",
            s(&dir.path().join("o.jsonl")),
        ]),
        "/dev/zero: not a regular file",
    );
    let long = dir.path().join("long.txt");
    std::fs::write(&long, "a".repeat(17 << 20)).unwrap();
    check(
        run(&[
            "tokenizer",
            "train",
            "--input",
            s(&long),
            "--vocab-size",
            "300",
            "--out",
            s(&dir.path().join("tok")),
        ]),
        "line 1 is over 16 MiB",
    );
    // A labeled text of 2 MiB.
    let tsv = dir.path().join("huge.tsv");
    std::fs::write(
        &tsv,
        format!("sentence\tlabel\n{}\t1\n", "word ".repeat(400_000)),
    )
    .unwrap();
    let mut seqcls = dir.path().join("seqcls");
    common::copy_dir(
        &common::repo().join("crates/roberta-model/tests/fixtures/seqcls"),
        &seqcls,
    );
    std::fs::copy(
        Path::new(&mlm_fixture()).join("tokenizer.json"),
        seqcls.join("tokenizer.json"),
    )
    .unwrap();
    check(
        run(&[
            "predict",
            "--model",
            s(&seqcls),
            "--input",
            s(&tsv),
            "--output",
            s(&dir.path().join("p.jsonl")),
        ]),
        "line 2: the text is 2000000 bytes",
    );
    seqcls.push("unused");
}
