//! End-to-end tests of the `roberta-train` binary.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;

use common::{
    assert_no_temporaries, assert_same_updates, fails, first_checkpoint_of, jsonl, losses,
    mlm_fixture, ok, pretrain, pretrain_args, pretrain_no_dropout, pretrain_no_dropout_output,
    repo, run, s, small_corpus, tiny_config, weights,
};

/// A model directory with only `pytorch_model.bin` (torch.save) fills masks as its
/// safetensors twin does.
#[test]
fn a_pytorch_model_directory_is_read_without_conversion() {
    let fill = |model: &str| {
        ok(&run(&[
            "fill-mask",
            "--model",
            model,
            "--top-k",
            "3",
            "Hello <mask> world",
        ]))
    };
    let pickled = repo().join("crates/roberta-model/tests/fixtures/mlm-pytorch");
    // The pickled fixture has no tokenizer of its own: lay it beside a copy.
    let dir = tempfile::tempdir().unwrap();
    common::copy_dir(&pickled, dir.path());
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(Path::new(&mlm_fixture()).join(file), dir.path().join(file)).unwrap();
    }
    assert_eq!(fill(s(dir.path())), fill(&mlm_fixture()));
}

#[test]
fn fill_mask_prints_top_k_per_mask() {
    let out = ok(&run(&[
        "fill-mask",
        "--model",
        &mlm_fixture(),
        "--top-k",
        "3",
        "The cat sat on the <mask>.",
    ]));
    let candidates = out
        .lines()
        .filter(|l| l.starts_with("  ") && l.contains("The cat sat"))
        .count();
    assert_eq!(candidates, 3, "{out}");
    let err = fails(&run(&[
        "fill-mask",
        "--model",
        &mlm_fixture(),
        "no mask here",
    ]));
    assert!(err.contains("no <mask>"), "{err}");
    let err = fails(&run(&[
        "--device",
        "cuda:0",
        "fill-mask",
        "--model",
        &mlm_fixture(),
        "<mask>",
    ]));
    assert!(
        err.contains("--features cuda") || err.contains("cuda"),
        "{err}"
    );
}

#[test]
fn embed_writes_every_input_and_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("in.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"The cat sat.\"}\n\n{\"input_ids\": [0, 100, 101, 2]}\n",
    )
    .unwrap();
    let output = dir.path().join("out.safetensors");
    ok(&run(&[
        "embed",
        "--model",
        &mlm_fixture(),
        "--input",
        s(&input),
        "--output",
        s(&output),
        "--all-layers",
    ]));
    let bytes = std::fs::read(&output).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(
        file.tensor("1.last_hidden_state").unwrap().shape(),
        &[4, 32]
    );
    assert_eq!(file.tensor("1.hidden_states").unwrap().shape(), &[3, 4, 32]);
    assert!(file.tensor("0.input_ids").is_ok());
    let npy = dir.path().join("tokens.npy");
    let err = fails(&embed(&mlm_fixture(), &input, &npy, &[]));
    assert!(err.contains("written as safetensors"), "{err}");
    let ids: Vec<u8> = [0i64, 100, 101, 2]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    assert_eq!(file.tensor("1.input_ids").unwrap().data(), ids);
    // The last layer's output is the last hidden state.
    let layers = file.tensor("1.hidden_states").unwrap().data().to_vec();
    let last = file.tensor("1.last_hidden_state").unwrap().data().to_vec();
    assert_eq!(&layers[2 * 4 * 32 * 4..], &last[..]);

    std::fs::write(&input, "{\"text\": \"ok\"}\n{\"txt\": \"typo\"}\n").unwrap();
    let bad = dir.path().join("bad.safetensors");
    let err = fails(&run(&[
        "embed",
        "--model",
        &mlm_fixture(),
        "--input",
        s(&input),
        "--output",
        s(&bad),
    ]));
    assert!(err.contains("in.jsonl:2"), "{err}");
    assert!(!bad.exists(), "no output after an error");
}

/// Texts of several lengths, so that a batch pads and the length sort reorders.
const TEXTS: [&str; 5] = [
    "The cat sat on the mat.",
    "Dynamic masking draws a fresh mask every time.",
    "Café",
    "A robustly optimized approach.",
    "The dog sat on the log and the cat sat on the mat.",
];

fn write_texts(dir: &Path) -> PathBuf {
    let input = dir.join("texts.jsonl");
    let lines: Vec<String> = TEXTS
        .iter()
        .enumerate()
        .map(|(i, t)| serde_json::json!({"text": t, "id": format!("t{i}")}).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    input
}

fn embed(model: &str, input: &Path, output: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec![
        "embed",
        "--model",
        model,
        "--input",
        s(input),
        "--output",
        s(output),
    ];
    args.extend(extra);
    run(&args)
}

fn npy(path: &Path) -> (usize, usize, Vec<f32>) {
    let bytes = std::fs::read(path).unwrap();
    let header_len = u16::from_le_bytes([bytes[8], bytes[9]]) as usize;
    let header = std::str::from_utf8(&bytes[10..10 + header_len]).unwrap();
    let shape = header
        .split("'shape': (")
        .nth(1)
        .unwrap()
        .split(')')
        .next()
        .unwrap();
    let dims: Vec<usize> = shape
        .split(',')
        .map(|d| d.trim().parse().unwrap())
        .collect();
    let values = bytes[10 + header_len..]
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    (dims[0], dims[1], values)
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Mean pooling equals the mean of the per-token states `embed` writes without --pool;
/// the three formats hold the same vectors in input order; --normalize gives unit rows.
#[test]
fn embed_pools_into_every_format_in_input_order() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_texts(dir.path());
    let model = mlm_fixture();
    let tokens = dir.path().join("tokens.safetensors");
    ok(&embed(&model, &input, &tokens, &[]));
    let bytes = std::fs::read(&tokens).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let hidden = 32;
    let mut means = Vec::new();
    for i in 0..TEXTS.len() {
        let t = file.tensor(&format!("{i}.last_hidden_state")).unwrap();
        let values: Vec<f32> = t
            .data()
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        let n = t.shape()[0];
        for d in 0..hidden {
            means.push((0..n).map(|r| values[r * hidden + d]).sum::<f32>() / n as f32);
        }
    }
    let as_npy = dir.path().join("mean.npy");
    ok(&embed(
        &model,
        &input,
        &as_npy,
        &["--pool", "mean", "--batch-size", "2"],
    ));
    let (rows, width, pooled) = npy(&as_npy);
    assert_eq!((rows, width), (TEXTS.len(), hidden));
    let diff = max_diff(&pooled, &means);
    assert!(
        diff < 1e-5,
        "mean pooling vs the mean of token states: {diff:e}"
    );

    let as_safetensors = dir.path().join("mean.safetensors");
    ok(&embed(&model, &input, &as_safetensors, &["--pool", "mean"]));
    let bytes = std::fs::read(&as_safetensors).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let e = file.tensor("embeddings").unwrap();
    assert_eq!(e.shape(), [TEXTS.len(), hidden]);
    let values: Vec<f32> = e
        .data()
        .chunks(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert!(max_diff(&values, &pooled) < 1e-5);
    let ids: Vec<i64> = file
        .tensor("ids")
        .unwrap()
        .data()
        .chunks(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(ids, [1, 2, 3, 4, 5]);

    let as_jsonl = dir.path().join("max.jsonl");
    ok(&embed(
        &model,
        &input,
        &as_jsonl,
        &["--pool", "max", "--normalize", "--layer", "1"],
    ));
    let lines = common::jsonl(&as_jsonl);
    assert_eq!(lines.len(), TEXTS.len());
    for (i, line) in lines.iter().enumerate() {
        assert_eq!(line["id"], format!("t{i}"));
        assert_eq!(line["line"], i + 1);
        let v: Vec<f64> = serde_json::from_value(line["embedding"].clone()).unwrap();
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        assert!((norm - 1.0).abs() < 1e-5, "row {i}: norm {norm}");
    }

    // A labeled file by column, pairs included; errors named, nothing half-written.
    let tsv = dir.path().join("pairs.tsv");
    std::fs::write(&tsv, "a\tb\tlabel\nThe cat.\tThe dog.\t1\nCafé\tmat\t0\n").unwrap();
    let pairs = dir.path().join("pairs.npy");
    ok(&embed(
        &model,
        &tsv,
        &pairs,
        &["--pool", "cls", "--text-a", "a", "--text-b", "b"],
    ));
    assert_eq!(npy(&pairs).0, 2);
    let refused: [(&Path, &str, &[&str], &str); 5] = [
        (
            &tsv,
            "x.npy",
            &["--pool", "cls", "--text-a", "c"],
            "no column \"c\"",
        ),
        (&input, "x.npy", &["--normalize"], "--pool"),
        (
            &input,
            "x.bin",
            &["--pool", "mean"],
            ".safetensors, .npy or .jsonl",
        ),
        (&input, "mean.npy", &["--pool", "mean"], "exists"),
        (
            &input,
            "x.npy",
            &["--pool", "mean", "--layer", "3"],
            "--layer 3",
        ),
    ];
    for (from, to, flags, expected) in refused {
        let err = fails(&embed(&model, from, &dir.path().join(to), flags));
        assert!(err.contains(expected), "{flags:?}: {err}");
    }
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.') || n.starts_with("x."))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// The sentence-transformers export holds the encoder and the module files, and `embed`
/// on it gives what `embed` on its source gives.
#[test]
fn export_as_sentence_transformers_keeps_the_vectors() {
    let dir = tempfile::tempdir().unwrap();
    let input = write_texts(dir.path());
    let out = dir.path().join("st");
    ok(&run(&[
        "export",
        "--sentence-transformers",
        "--pool",
        "max",
        "--normalize",
        "--checkpoint",
        &mlm_fixture(),
        "--out",
        s(&out),
    ]));
    let read = |p: &str| -> serde_json::Value {
        serde_json::from_slice(&std::fs::read(out.join(p)).unwrap()).unwrap()
    };
    assert_eq!(read("config.json")["architectures"][0], "RobertaModel");
    assert_eq!(read("modules.json").as_array().unwrap().len(), 3);
    assert_eq!(
        read("1_Pooling/config.json")["pooling_mode_max_tokens"],
        true
    );
    assert_eq!(read("sentence_bert_config.json")["max_seq_length"], 40 - 2);
    assert!(out.join("tokenizer.json").exists());
    let from_source = dir.path().join("a.npy");
    let from_export = dir.path().join("b.npy");
    let flags = ["--pool", "max", "--normalize"];
    ok(&embed(&mlm_fixture(), &input, &from_source, &flags));
    ok(&embed(s(&out), &input, &from_export, &flags));
    assert_eq!(npy(&from_source).2, npy(&from_export).2);
    let err = fails(&run(&[
        "export",
        "--pool",
        "mean",
        "--checkpoint",
        &mlm_fixture(),
        "--out",
        s(&dir.path().join("x")),
    ]));
    assert!(err.contains("--sentence-transformers"), "{err}");
}

/// A linear probe finds a label the texts spell out; one class and labels only in valid
/// are refused by file and line.
#[test]
fn probe_scores_a_label_the_text_tells() {
    let dir = tempfile::tempdir().unwrap();
    let (good, bad) = (
        ["great", "wonderful", "superb"],
        ["awful", "terrible", "dreadful"],
    );
    let write = |name: &str, n: usize, shift: usize| {
        let mut text = String::from("sentence\tlabel\n");
        for i in 0..n {
            let (word, label) = if i % 2 == 0 {
                (good[(i + shift) % 3], 1)
            } else {
                (bad[(i + shift) % 3], 0)
            };
            text += &format!("{word} {word} {word}\t{label}\n");
        }
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path
    };
    let (train, valid) = (write("train.tsv", 60, 0), write("valid.tsv", 20, 1));
    let output = dir.path().join("probe.json");
    let stdout = ok(&run(&[
        "probe",
        "--model",
        &mlm_fixture(),
        "--train",
        s(&train),
        "--valid",
        s(&valid),
        "--output",
        s(&output),
    ]));
    let printed: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let written: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&output).unwrap()).unwrap();
    assert_eq!(printed["metrics"], written["metrics"]);
    assert_eq!(written["train_examples"], 60);
    let accuracy = written["metrics"]["accuracy"].as_f64().unwrap();
    assert!(accuracy >= 0.9, "probe accuracy {accuracy}");

    let one = dir.path().join("one.tsv");
    std::fs::write(&one, "sentence\tlabel\na\t1\nb\t1\n").unwrap();
    let err = fails(&run(&[
        "probe",
        "--model",
        &mlm_fixture(),
        "--train",
        s(&one),
        "--valid",
        s(&valid),
    ]));
    assert!(
        err.contains("one.tsv") && err.contains("two classes"),
        "{err}"
    );
    let other = dir.path().join("other.tsv");
    std::fs::write(&other, "sentence\tlabel\na\t1\nb\t7\n").unwrap();
    let err = fails(&run(&[
        "probe",
        "--model",
        &mlm_fixture(),
        "--train",
        s(&train),
        "--valid",
        s(&other),
    ]));
    assert!(err.contains("other.tsv:3"), "{err}");
}

/// `[eval.probe]` puts the probe's accuracy beside the validation loss at every evaluation.
#[test]
fn pretraining_probes_the_encoder_at_each_evaluation() {
    let dir = tempfile::tempdir().unwrap();
    let tsv = dir.path().join("probe.tsv");
    let mut text = String::from("sentence\tlabel\n");
    for i in 0..24 {
        text += &format!(
            "{} the cat sat\t{}\n",
            if i % 2 == 0 { "yes" } else { "no" },
            i % 2
        );
    }
    std::fs::write(&tsv, text).unwrap();
    let extra = format!(
        "[eval.probe]\ntrain = \"{t}\"\nvalid = \"{t}\"\nmax_examples = 16\n",
        t = tsv.display()
    );
    let config = tiny_config(dir.path(), &extra);
    let run_dir = dir.path().join("run");
    ok(&pretrain(&config, &run_dir, &[]));
    let lines = common::jsonl(&run_dir.join("metrics.jsonl"));
    let probed: Vec<_> = lines
        .iter()
        .filter(|l| l.get("valid_probe_acc").is_some())
        .collect();
    assert_eq!(probed.len(), 2, "steps 4 and 8: {lines:?}");
    assert!(probed.iter().all(|l| l.get("valid_loss").is_some()));
}

#[test]
fn tokenizer_train_then_encode_with_char_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("t.txt");
    std::fs::write(
        &text,
        "Café au lait, s'il vous plaît.\nThe cat sat on the mat.\n".repeat(40),
    )
    .unwrap();
    let tok = dir.path().join("tok");
    ok(&run(&[
        "tokenizer",
        "train",
        "--input",
        s(&text),
        "--vocab-size",
        "300",
        "--out",
        s(&tok),
    ]));
    for f in ["tokenizer.json", "vocab.json", "merges.txt"] {
        assert!(tok.join(f).exists(), "{f}");
    }
    let lines = dir.path().join("l.txt");
    std::fs::write(&lines, "Café <mask>\n").unwrap();
    let out = dir.path().join("o.jsonl");
    ok(&run(&[
        "tokenizer",
        "encode",
        "--tokenizer",
        s(&tok),
        "--input",
        s(&lines),
        "--output",
        s(&out),
    ]));
    let v: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&out)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let offsets = v["offsets"].as_array().unwrap();
    let last_word = offsets[offsets.len() - 2].as_array().unwrap();
    // "Café <mask>": characters, not bytes: <mask> spans 4..11 with its lstrip'd space.
    assert_eq!(last_word[1].as_u64(), Some(11), "{v}");
}

#[test]
fn preprocess_is_deterministic_idempotent_and_inspectable() {
    let dir = tempfile::tempdir().unwrap();
    let corpus = small_corpus(dir.path(), 600);
    let tok = repo().join("data/tokenizer");
    let a = dir.path().join("a");
    let b = dir.path().join("b");
    let out = ok(&run(&[
        "preprocess",
        "--input",
        s(&corpus),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&a),
        "--valid-fraction",
        "0.1",
        "--workers",
        "1",
    ]));
    assert!(out.contains("train:") && out.contains("valid:"), "{out}");
    ok(&run(&[
        "preprocess",
        "--input",
        s(&corpus),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&b),
        "--valid-fraction",
        "0.1",
        "--workers",
        "2",
    ]));
    for f in [
        "train-00000.bin",
        "train-00000.idx",
        "valid-00000.bin",
        "meta.json",
    ] {
        let (x, y) = (
            std::fs::read(a.join(f)).unwrap(),
            std::fs::read(b.join(f)).unwrap(),
        );
        assert!(
            x == y || f == "meta.json",
            "{f} differs between 1 and 2 workers"
        );
    }
    let again = ok(&run(&[
        "preprocess",
        "--input",
        s(&corpus),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&a),
        "--valid-fraction",
        "0.1",
    ]));
    assert!(again.contains("up to date"), "{again}");

    let jsonl = dir.path().join("inspect.jsonl");
    let out = ok(&run(&[
        "data",
        "inspect",
        "--data",
        s(&a),
        "--batches",
        "3",
        "--block-size",
        "64",
        "--output",
        s(&jsonl),
    ]));
    assert!(
        out.contains("mask rate") && out.contains("<mask>") && out.contains("fill rate"),
        "{out}"
    );
    let first: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&jsonl)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(first["tokens"][0], "<s>");

    // Bad input: an empty file, an invalid UTF-8 file; nothing left behind.
    let empty = dir.path().join("empty.txt");
    std::fs::write(&empty, "").unwrap();
    let c = dir.path().join("c");
    let err = fails(&run(&[
        "preprocess",
        "--input",
        s(&empty),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&c),
    ]));
    assert!(err.contains("no text"), "{err}");
    let binary = dir.path().join("bin.txt");
    std::fs::write(&binary, b"fine\n\xff\xfe\x00\x01\n").unwrap();
    let err = fails(&run(&[
        "preprocess",
        "--input",
        s(&binary),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&c),
    ]));
    assert!(err.contains("bin.txt") && err.contains("byte 5"), "{err}");
    assert!(!c.exists(), "a failed preprocess leaves no output");
    // An output directory that cannot be created (its parent is a file).
    let blocked = empty.join("out");
    let err = fails(&run(&[
        "preprocess",
        "--input",
        s(&corpus),
        "--tokenizer",
        s(&tok),
        "--out",
        s(&blocked),
    ]));
    assert!(err.contains("empty.txt"), "{err}");
    assert_no_temporaries(dir.path());
}

#[test]
fn pretrain_runs_and_its_final_model_fills_masks() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run_dir = dir.path().join("run");
    let out = pretrain(&config, &run_dir, &[]);
    ok(&out);
    // Piped stderr: plain lines, one per log interval, and no colour escapes.
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("step 1/8 loss") && log.contains("step 8 valid") && !log.contains('\x1b'),
        "{log}"
    );
    let l = losses(&run_dir);
    assert_eq!(
        l.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        (1..=8).collect::<Vec<_>>()
    );
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    assert!(metrics.contains("valid_loss") && metrics.contains("masked_acc"));
    assert!(run_dir.join("train.log").exists() && run_dir.join("config.toml").exists());
    let out = ok(&run(&[
        "fill-mask",
        "--model",
        s(&run_dir.join("final")),
        "The cat <mask> at night.",
    ]));
    assert!(out.lines().count() >= 6, "{out}");
    // A second start on the same run directory must not overwrite it silently.
    let err = fails(&pretrain(&config, &run_dir, &[]));
    assert!(err.contains("--resume"), "{err}");
}

#[test]
fn resume_after_kill_9_repeats_the_uninterrupted_losses_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let straight = dir.path().join("straight");
    ok(&pretrain(&config, &straight, &[]));

    let killed = dir.path().join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_roberta-train"))
        .args(["pretrain", "--config", s(&config), "--run-dir", s(&killed)])
        .current_dir(repo())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let checkpoint = killed.join("checkpoints/step-0000004");
    while !checkpoint.exists() && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().ok(); // SIGKILL: no chance to save
    child.wait().unwrap();
    // Whatever the kill interrupted, go back to step 4.
    for entry in std::fs::read_dir(killed.join("checkpoints")).unwrap() {
        let p = entry.unwrap().path();
        if p.file_name().unwrap().to_string_lossy().as_ref() > "step-0000004" {
            std::fs::remove_dir_all(p).unwrap();
        }
    }
    let _ = std::fs::remove_dir_all(killed.join("final"));
    let clock = std::time::Instant::now();
    let out = pretrain(&config, &killed, &["--resume", "auto"]);
    ok(&out);
    // Start-up and half the run: kill instants are drawn below twice this.
    let half_run_ms = clock.elapsed().as_millis() as u64;
    assert!(String::from_utf8_lossy(&out.stderr).contains("resumed from"));
    assert_eq!(losses(&killed), losses(&straight));

    // A longer run killed at seeded random instants (in start-up, an update, a metrics
    // write or a checkpoint write), resumed each time until it finishes: the losses of
    // the same run never stopped.
    let longer = [
        "--set",
        "schedule.total_steps=40",
        "--set",
        "checkpoint.every=3",
    ];
    let straight = dir.path().join("straight-40");
    let mut args = vec![
        "pretrain",
        "--config",
        s(&config),
        "--run-dir",
        s(&straight),
    ];
    args.extend(longer);
    ok(&run(&args));
    let again = dir.path().join("random-kills");
    let mut args = vec!["pretrain", "--config", s(&config), "--run-dir", s(&again)];
    args.extend(longer);
    let kills = until_done_with_random_kills(&args, &dir.path().join("stderr.log"), half_run_ms);
    eprintln!("finished after {kills} kills");
    assert_eq!(losses(&again), losses(&straight));
}

/// Runs `args` with `--resume auto` again and again, each run killed (SIGKILL) at a
/// seeded random instant within `2 × half_run_ms` (in start-up, an update, a metrics
/// write or a checkpoint write), until one finishes; returns the number of kills.
fn until_done_with_random_kills(args: &[&str], log: &Path, half_run_ms: u64) -> u32 {
    let mut lcg = 0x2545_f491_4f6c_dd1du64;
    let mut kills = 0;
    loop {
        let mut child = Command::new(env!("CARGO_BIN_EXE_roberta-train"))
            .args(args)
            .args(["--resume", "auto"])
            .current_dir(repo())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap();
        lcg = lcg
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let delay = (lcg >> 33) % (2 * half_run_ms).max(1);
        let started = std::time::Instant::now();
        while started.elapsed().as_millis() < u128::from(delay)
            && child.try_wait().unwrap().is_none()
        {
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        if let Some(status) = child.try_wait().unwrap() {
            let stderr = std::fs::read_to_string(log).unwrap();
            assert!(status.success(), "after {kills} kills: {stderr}");
            return kills;
        }
        child.kill().ok();
        child.wait().unwrap();
        kills += 1;
        assert!(kills < 50, "never finished");
    }
}

/// With two phases (shorter blocks, more of them, more masking, then the config's with
/// a learning-rate cycle of its own and its new positions copied from the trained
/// ones), a batch-size warmup, a masking rate that decays within each phase, the
/// weights' moving average on and TensorBoard files written, a run killed at random
/// instants resumes bitwise: the same metrics (evaluated on the average), the same
/// `final/` (the average), and TensorBoard's files hold each line's numbers once, at its
/// step, whatever was logged past a checkpoint before a kill. Resuming from the last
/// checkpoint of the first phase starts the second as the uninterrupted run did.
#[test]
fn random_kills_across_phases_with_the_weights_average_and_tensorboard_resume_bitwise() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(
        dir.path(),
        "[[schedule.phases]]\nuntil_step = 32\nblock_size = 16\nbatch_size = 8\nmask_prob = 0.3\n\
         [[schedule.phases]]\nuntil_step = 60\nwarmup_steps = 3\n",
    );
    let settings = [
        "--set",
        "schedule.total_steps=60",
        "--set",
        "checkpoint.every=4",
        "--set",
        "train.ema_decay=0.9",
        "--set",
        "log.tensorboard=true",
        "--set",
        "train.accumulation=2",
        "--set",
        "schedule.batch_warmup_steps=10",
        "--set",
        "schedule.batch_warmup_start=4",
        "--set",
        "schedule.mask_prob_end=0.1",
        "--set",
        "schedule.mask_prob_shape=cosine",
        "--set",
        "schedule.extend_positions=copy",
    ];
    let straight = dir.path().join("straight");
    let clock = std::time::Instant::now();
    let straight_out = pretrain(&config, &straight, &settings);
    ok(&straight_out);
    let half_run_ms = clock.elapsed().as_millis() as u64 / 2;
    let killed = dir.path().join("killed");
    let args = pretrain_args(&config, &killed, &settings);
    // One kill for certain, mid-phase, after a checkpoint; then at random instants.
    let mut child = Command::new(env!("CARGO_BIN_EXE_roberta-train"))
        .args(&args)
        .current_dir(repo())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    while !killed.join("checkpoints/step-0000024").exists() && child.try_wait().unwrap().is_none() {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    child.kill().ok();
    child.wait().unwrap();
    let kills = until_done_with_random_kills(&args, &dir.path().join("stderr.log"), half_run_ms);
    eprintln!("finished after {kills} kills");

    let without_speed = |run: &Path| -> Vec<serde_json::Value> {
        let mut lines = jsonl(&run.join("metrics.jsonl"));
        for l in &mut lines {
            l.as_object_mut().unwrap().remove("tokens_per_s");
        }
        lines
    };
    let same_as_straight = |run: &Path| {
        assert_eq!(without_speed(run), without_speed(&straight));
        assert_eq!(
            weights(&run.join("final")),
            weights(&straight.join("final"))
        );
        let scalars = roberta_train::run::tensorboard::read_scalars(&run.join("tb")).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        for (step, tag, _) in &scalars {
            assert!(
                seen.insert((*step, tag.clone())),
                "{tag} twice at step {step}"
            );
        }
        for line in jsonl(&run.join("metrics.jsonl")) {
            let step = line["step"].as_u64().unwrap();
            for (key, value) in line.as_object().unwrap() {
                let Some(value) = value.as_f64().filter(|_| key != "step") else {
                    continue;
                };
                let logged = scalars
                    .iter()
                    .find(|(s, t, _)| *s == step && t == key)
                    .unwrap_or_else(|| panic!("{key} at step {step} not in TensorBoard's files"));
                assert_eq!(logged.2, value as f32, "{key} at step {step}");
            }
        }
    };
    same_as_straight(&killed);
    let log = String::from_utf8_lossy(&straight_out.stderr);
    assert!(
        log.contains("phase 2 of 2 from update 33: blocks of 32 tokens")
            && log.contains("30% → 10% masked (cosine)")
            && log.contains("positions 18–33 started as copies of 2–17")
            && log.contains("a new learning-rate cycle warming up over 3 updates")
            && log.contains("batch-size warmup: 4 sequences per update at update 1"),
        "{log}"
    );
    // The first cycle ends at zero with the first phase; the second warms up again.
    let lr: Vec<f64> = jsonl(&straight.join("metrics.jsonl"))
        .iter()
        .filter(|l| l["lr"].is_number())
        .filter(|l| (31..=36).contains(&l["step"].as_u64().unwrap()))
        .map(|l| l["lr"].as_f64().unwrap())
        .collect();
    let expected = [
        1e-3 / 30.0,
        0.0,
        1e-3 / 3.0,
        2e-3 / 3.0,
        1e-3,
        1e-3 * 24.0 / 25.0,
    ];
    assert_eq!(lr.len(), expected.len(), "{lr:?}");
    for (got, want) in lr.iter().zip(expected) {
        assert!((got - want).abs() < 1e-9, "{lr:?}");
    }
    // `data inspect --step` replays the loader: where it says update N starts is where
    // the checkpoint after update N − 1 left it (at the boundary, the next phase's start).
    for (step, next_phase) in [(28, false), (32, true), (40, false)] {
        let state: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                straight.join(format!("checkpoints/step-{step:07}/trainer.json")),
            )
            .unwrap(),
        )
        .unwrap();
        let (epoch, cursor) = match next_phase {
            true => (state["loader"]["epoch"].as_u64().unwrap() + 1, 0),
            false => (
                state["loader"]["epoch"].as_u64().unwrap(),
                state["loader"]["cursor"].as_u64().unwrap(),
            ),
        };
        let next = (step + 1).to_string();
        let output = dir.path().join(format!("inspect-{next}.jsonl"));
        let mut args = vec!["data", "inspect", "--config", s(&config), "--step", &next];
        args.extend(settings);
        args.extend(["--output", s(&output)]);
        let out = ok(&run(&args));
        assert!(
            out.contains(&format!("from epoch {epoch} position {cursor}")),
            "update {next}: {out}"
        );
    }
    // Steps 33–60 logged, then taken again from the last checkpoint of the first phase:
    // each once.
    let boundary = killed.join("checkpoints/step-0000032");
    let mut again = args.clone();
    again.extend(["--resume", s(&boundary), "--force"]);
    ok(&run(&again));
    same_as_straight(&killed);
    // The average, not the raw weights, is final/.
    let raw = dir.path().join("raw");
    ok(&run(&[
        "export",
        "--checkpoint",
        s(&straight.join("checkpoints/step-0000060")),
        "--out",
        s(&raw),
    ]));
    assert_ne!(weights(&raw), weights(&straight.join("final")));
}

#[test]
fn a_corrupt_newest_checkpoint_is_named_and_the_previous_one_used() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run_dir = dir.path().join("run");
    ok(&pretrain(
        &config,
        &run_dir,
        &["--set", "schedule.total_steps=6"],
    ));
    let newest = run_dir.join("checkpoints/step-0000006/model.bin");
    let bytes = std::fs::read(&newest).unwrap();
    std::fs::write(&newest, &bytes[..bytes.len() / 2]).unwrap();
    let out = pretrain(
        &config,
        &run_dir,
        &["--resume", "auto", "--set", "schedule.total_steps=6"],
    );
    ok(&out);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("step-0000006") && err.contains("checksum"),
        "{err}"
    );
    assert!(
        err.contains("resumed from") && err.contains("step-0000004"),
        "{err}"
    );
    // A change that breaks exactness is refused.
    let err = fails(&pretrain(
        &config,
        &run_dir,
        &["--resume", "auto", "--set", "train.seed=2"],
    ));
    assert!(
        err.contains("train.seed") && err.contains("--force"),
        "{err}"
    );
}

#[test]
fn accumulation_equals_one_big_batch() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let (accumulated, big) = (dir.path().join("b4k2"), dir.path().join("b8k1"));
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
    pretrain_no_dropout(&config, &big, &["--set", "train.batch_size=8"]);
    assert_same_updates(&accumulated, &big);
}

/// An update reads the device once (loss, gradient norm and masked accuracy together),
/// whatever the accumulation: on a GPU each read waits for all queued work. It read
/// 2 × accumulation + 1 times before (a loss and an accuracy per micro-batch, a norm).
#[test]
fn an_update_reads_the_device_once() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run_dir = dir.path().join("run");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roberta-train"))
        .args(["pretrain", "--config", s(&config), "--run-dir", s(&run_dir)])
        .args([
            "--set",
            "train.accumulation=3",
            "--set",
            "schedule.total_steps=5",
        ])
        .env("RUST_LOG", "roberta_train::trainer=debug")
        .current_dir(repo())
        .output()
        .unwrap();
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(
        log.contains("5 device-to-host reads in the training loop over 5 updates"),
        "{log}"
    );
}

/// `log.profile_every = 2` times every second update phase by phase into the metrics
/// line that follows it.
#[test]
fn profiled_updates_write_their_phases() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run_dir = dir.path().join("run");
    ok(&pretrain(
        &config,
        &run_dir,
        &["--set", "log.profile_every=2"],
    ));
    let metrics = std::fs::read_to_string(run_dir.join("metrics.jsonl")).unwrap();
    for line in metrics.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap();
        let step = v["step"].as_u64().unwrap();
        let profile = v.get("profile");
        assert_eq!(
            profile.is_some(),
            step.is_multiple_of(2),
            "step {step}: {line}"
        );
        if let Some(p) = profile {
            for phase in [
                "data_s",
                "forward_s",
                "backward_s",
                "optimizer_s",
                "total_s",
            ] {
                assert!(
                    p[phase].as_f64().is_some_and(|t| t >= 0.0),
                    "{phase}: {line}"
                );
            }
        }
    }
}

/// Two replicas (two burn-collective peers on the one CPU device, each on its own
/// thread) × micro-batch 4 take the updates of one device × micro-batch 8; a run on two
/// replicas resumes exactly on two, and on one with the accumulation doubled.
#[test]
fn two_replicas_equal_one_device_with_twice_the_batch_and_resume_on_either() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let one = dir.path().join("one");
    pretrain_no_dropout(&config, &one, &["--set", "train.batch_size=8"]);
    let two = dir.path().join("two");
    pretrain_no_dropout(
        &config,
        &two,
        &["--set", "train.batch_size=4", "--devices", "cpu,cpu"],
    );
    assert_same_updates(&one, &two);
    // `data inspect --devices 2` replays the two-replica loader: update 3 starts where
    // the checkpoint after update 2 left it.
    let state: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(two.join("checkpoints/step-0000002/trainer.json")).unwrap(),
    )
    .unwrap();
    let mut args = vec!["data", "inspect", "--config", s(&config), "--step", "3"];
    args.extend(common::NO_DROPOUT_THREE_UPDATES);
    let output = dir.path().join("inspect.jsonl");
    args.extend(["--set", "train.batch_size=4", "--devices", "2"]);
    args.extend(["--output", s(&output)]);
    let out = ok(&run(&args));
    let expected = format!(
        "from epoch {} position {}",
        state["loader"]["epoch"], state["loader"]["cursor"]
    );
    assert!(out.contains(&expected), "{out} vs {expected}");

    // Resume from update 1 on two replicas: bitwise the same losses.
    let resume_on = |name: &str, devices: &str| {
        let dir2 = dir.path().join(name);
        first_checkpoint_of(&two, &dir2);
        let log = pretrain_no_dropout(
            &config,
            &dir2,
            &[
                "--set",
                "train.batch_size=4",
                "--devices",
                devices,
                "--resume",
                "auto",
            ],
        );
        (dir2, log)
    };
    let (again, _) = resume_on("again", "cpu,cpu");
    assert_eq!(losses(&again), losses(&two)[1..].to_vec());
    // On one device the accumulation doubles, keeping 8 sequences per update.
    let (single, log) = resume_on("single", "cpu");
    assert!(
        log.contains("train.accumulation 1 → 2") && log.contains("keeps 8 sequences"),
        "{log}"
    );
    for ((sa, la), (sb, lb)) in losses(&single).iter().zip(&losses(&two)[1..]) {
        assert_eq!(sa, sb);
        let (x, y): (f64, f64) = (la.parse().unwrap(), lb.parse().unwrap());
        assert!((x - y).abs() <= 1e-5 * x.abs(), "step {sa}: {x} vs {y}");
    }
}

/// `train.precision = "bf16"` on the CPU: the losses follow fp32's within bf16's
/// rounding, the checkpoints hold fp32 master weights, a resume repeats the losses
/// bitwise, and switching precision on resume is refused without --force.
#[test]
fn bf16_tracks_fp32_and_resumes_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let fp32 = dir.path().join("fp32");
    pretrain_no_dropout(&config, &fp32, &[]);
    let bf16 = dir.path().join("bf16");
    pretrain_no_dropout(&config, &bf16, &["--set", "train.precision=bf16"]);
    let (a, b) = (losses(&fp32), losses(&bf16));
    assert_eq!(a.len(), 3);
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        let (x, y): (f64, f64) = (x.parse().unwrap(), y.parse().unwrap());
        assert!(
            x != y && (x - y).abs() <= 1e-2 * x,
            "step {step}: fp32 {x} vs bf16 {y}"
        );
    }
    let bytes = std::fs::read(bf16.join("final/model.safetensors")).unwrap();
    let saved = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(
        saved
            .tensors()
            .iter()
            .all(|(_, t)| t.dtype() == safetensors::Dtype::F32),
        "fp32 master weights saved"
    );

    let again = dir.path().join("again");
    first_checkpoint_of(&bf16, &again);
    let refused = fails(&pretrain_no_dropout_output(
        &config,
        &again,
        &["--resume", "auto"],
    ));
    assert!(
        refused.contains("train.precision: bf16 → fp32"),
        "{refused}"
    );
    pretrain_no_dropout(
        &config,
        &again,
        &["--set", "train.precision=bf16", "--resume", "auto"],
    );
    assert_eq!(losses(&again), b[1..].to_vec());
}

#[test]
fn config_errors_are_named_before_any_work() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run_dir = dir.path().join("run");
    let err = fails(&pretrain(
        &config,
        &run_dir,
        &["--set", "train.batchsize=3"],
    ));
    assert!(err.contains("batchsize"), "{err}");
    let err = fails(&pretrain(
        &config,
        &run_dir,
        &["--set", "masking.mask_prob=1.5"],
    ));
    assert!(err.contains("mask_prob"), "{err}");
    assert!(
        !dir.path().join("data-bin").exists(),
        "no work before validation"
    );
}

/// `config` turned into one that continues pretraining the HF model in `model_dir`.
fn continue_from(config: &Path, model_dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(config).unwrap();
    let shape = "hidden_size = 32\nnum_hidden_layers = 2\nnum_attention_heads = 2\nintermediate_size = 64\n";
    assert!(text.contains(shape));
    let from = config.with_file_name("from.toml");
    let init = format!("init = \"{}\"\n", model_dir.display());
    std::fs::write(&from, text.replace(shape, &init)).unwrap();
    from
}

#[test]
fn continuing_a_model_takes_the_configs_dropout() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let start = dir.path().join("start");
    let two_steps = ["--set", "schedule.total_steps=2"];
    let mut args = vec!["pretrain", "--config", s(&config), "--run-dir", s(&start)];
    args.extend(two_steps);
    ok(&run(&args));
    let from = continue_from(&config, &start.join("final"));
    let next = dir.path().join("next");
    let mut args = vec!["pretrain", "--config", s(&from), "--run-dir", s(&next)];
    args.extend(two_steps);
    args.extend(["--set", "model.hidden_dropout_prob=0.0"]);
    ok(&run(&args));
    let saved: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(next.join("final/config.json")).unwrap())
            .unwrap();
    assert_eq!(saved["hidden_dropout_prob"], 0.0);
    assert_eq!(
        saved["attention_probs_dropout_prob"], 0.1,
        "kept from the model"
    );
    assert_eq!(
        saved["hidden_size"], 32,
        "the architecture comes from the model"
    );
}

/// A few updates on wgpu (lavapipe in CI) from the same initial weights as on cpu, with
/// dropout off: the losses agree closely (see the tolerances below).
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_takes_updates_matching_cpu() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let start = dir.path().join("start");
    ok(&pretrain(
        &config,
        &start,
        &["--set", "schedule.total_steps=2"],
    ));
    // Continue from that model on each device (the architecture comes from its directory).
    let from = continue_from(&config, &start.join("final"));
    let mut results = Vec::new();
    for device in ["cpu", "wgpu"] {
        let run_dir = dir.path().join(device);
        ok(&pretrain(
            &from,
            &run_dir,
            &[
                "--device",
                device,
                "--set",
                "schedule.total_steps=4",
                "--set",
                "model.hidden_dropout_prob=0.0",
                "--set",
                "model.attention_probs_dropout_prob=0.0",
            ],
        ));
        results.push(losses(&run_dir));
    }
    assert_eq!(results[0].len(), 4);
    // Measured on lavapipe: at most 1.5e-7 relative over the four updates.
    for (i, ((_, c), (_, w))) in results[0].iter().zip(&results[1]).enumerate() {
        let (c, w): (f64, f64) = (c.parse().unwrap(), w.parse().unwrap());
        let tolerance = 1e-5;
        assert!(
            (c - w).abs() <= tolerance * c.abs(),
            "update {}: cpu {c} vs wgpu {w}",
            i + 1
        );
    }
}

/// Two updates of the tiny config on `wgpu` with `set`: `None` where the device trains,
/// else the refusal (stderr). A setting lavapipe cannot run may work on a real GPU.
#[cfg(feature = "wgpu")]
fn wgpu_two_updates_or_refusal(dir: &Path, set: &str) -> Option<String> {
    let config = tiny_config(dir, "");
    let run_dir = dir.join("run");
    let args = [
        "--device",
        "wgpu",
        "--set",
        "schedule.total_steps=2",
        "--set",
        set,
    ];
    let out = pretrain(&config, &run_dir, &args);
    if out.status.success() {
        assert_eq!(losses(&run_dir).len(), 2);
        return None;
    }
    assert!(!run_dir.join("checkpoints").exists());
    Some(String::from_utf8_lossy(&out.stderr).into_owned())
}

/// wgpu's shaders have no bf16 on lavapipe (nor in WGSL): `train.precision = "bf16"` is
/// refused before the config is saved or the corpus read. A device whose wgpu backend has bf16 trains.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_bf16_is_refused_before_any_work_or_trains() {
    let dir = tempfile::tempdir().unwrap();
    if let Some(err) = wgpu_two_updates_or_refusal(dir.path(), "train.precision=bf16") {
        assert!(err.contains("train.precision = \"bf16\""), "{err}");
        let run_dir = dir.path().join("run");
        assert!(!run_dir.join("config.toml").exists() && !dir.path().join("data-bin").exists());
    }
}

/// A weight larger than the wgpu device's largest buffer (lavapipe's is 128 MiB) is
/// refused in one line before the first update, not in a panic inside wgpu's validation;
/// a device that allows it trains.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_refuses_a_weight_past_the_devices_largest_buffer() {
    let dir = tempfile::tempdir().unwrap();
    // × hidden 32 × 4 bytes: 134.3 MiB.
    if let Some(err) = wgpu_two_updates_or_refusal(dir.path(), "model.intermediate_size=1100000") {
        assert!(
            err.contains("model: a feed-forward weight (1100000 × 32 in fp32, 134.3 MiB) would not fit in one buffer of device wgpu, whose largest is"),
            "{err}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A binary without the `mpi` feature, started by an MPI launcher as one of several
/// ranks, refuses to run: each rank would train alone on the same run directory.
#[cfg(not(feature = "mpi"))]
#[test]
fn a_binary_without_mpi_refuses_to_run_as_one_of_several_ranks() {
    let out = Command::new(env!("CARGO_BIN_EXE_roberta-train"))
        .args(["fill-mask", "--model", &mlm_fixture(), "a <mask>"])
        .env("OMPI_COMM_WORLD_SIZE", "2")
        .output()
        .unwrap();
    let err = fails(&out);
    assert!(
        err.contains("without the `mpi` feature") && err.contains("OMPI_COMM_WORLD_SIZE=2"),
        "{err}"
    );
}

/// `data.seed` moves the data order and the masks and nothing else; `train.init_seed`
/// moves the initial weights and nothing else; both default to `train.seed`, and the
/// saved config records all three.
#[test]
fn data_and_init_seeds_vary_one_thing_each() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let go = |name: &str, sets: &[&str]| -> PathBuf {
        let run_dir = dir.path().join(name);
        let mut extra = vec!["--set", "optim.lr=1e-9"];
        for set in sets {
            extra.extend(["--set", set]);
        }
        pretrain_no_dropout(&config, &run_dir, &extra);
        run_dir
    };
    let base = go("base", &[]); // train.seed = 1 in tiny_config
    let other_data = go("other-data", &["data.seed=7"]);
    let other_init = go("other-init", &["train.init_seed=7"]);
    let swapped = go("swapped", &["train.seed=7", "data.seed=1"]);
    // lr 1e-9: the final weights are the initial ones to ~1e-8.
    let close = |a: &Path, b: &Path| {
        weights(&a.join("final"))
            .iter()
            .zip(weights(&b.join("final")))
            .all(|((_, x), (_, y))| x.iter().zip(&y).all(|(p, q)| (p - q).abs() < 1e-6))
    };
    assert!(
        close(&base, &other_data),
        "data.seed changed the initialisation"
    );
    assert_ne!(
        losses(&base),
        losses(&other_data),
        "data.seed changed nothing"
    );
    assert!(
        !close(&base, &other_init),
        "train.init_seed changed nothing"
    );
    // Initialised from 7 and fed from 1 either way, with dropout off: the same run.
    assert_eq!(losses(&other_init), losses(&swapped));
    let saved = std::fs::read_to_string(base.join("config.toml")).unwrap();
    let table: toml::Table = toml::from_str(&saved).unwrap();
    assert_eq!(table["data"]["seed"].as_integer(), Some(1));
    assert_eq!(table["train"]["init_seed"].as_integer(), Some(1));
    // A resume that changes the data seed is refused.
    let err = fails(&pretrain(
        &config,
        &base,
        &["--resume", "auto", "--set", "data.seed=2"],
    ));
    assert!(err.contains("data.seed: 1 → 2"), "{err}");
}

/// `average` writes the element-wise mean of checkpoints (checkpoint or HF directories,
/// or a run's last N) as an HF directory, equal to the mean computed here in f64 within
/// 1e-7; checkpoints of another architecture, too few checkpoints and an existing output
/// are refused, leaving nothing behind.
#[test]
fn average_is_the_mean_of_the_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let run_dir = dir.path().join("run");
    ok(&pretrain(&config, &run_dir, &[]));
    let averaged = dir.path().join("averaged");
    let out = ok(&run(&[
        "average",
        "--last",
        "3",
        "--run",
        s(&run_dir),
        "--out",
        s(&averaged),
    ]));
    assert!(out.contains("averaged 3 checkpoints"), "{out}");
    let mut exported = Vec::new();
    for step in [4, 6, 8] {
        let out = dir.path().join(format!("export-{step}"));
        let checkpoint = run_dir.join(format!("checkpoints/step-{step:07}"));
        ok(&run(&[
            "export",
            "--checkpoint",
            s(&checkpoint),
            "--out",
            s(&out),
        ]));
        exported.push(weights(&out));
    }
    let mean = weights(&averaged);
    assert_eq!(mean.len(), exported[0].len());
    let mut worst = 0f64;
    for (i, (key, values)) in mean.iter().enumerate() {
        assert_eq!(key, &exported[0][i].0);
        for (j, v) in values.iter().enumerate() {
            let exact = exported.iter().map(|w| f64::from(w[i].1[j])).sum::<f64>() / 3.0;
            worst = worst.max((f64::from(*v) - exact).abs());
        }
    }
    assert!(worst <= 1e-7, "{worst}");
    let fill = ok(&run(&[
        "fill-mask",
        "--model",
        s(&averaged),
        "The cat <mask> at night.",
    ]));
    assert!(fill.lines().count() >= 5, "{fill}");
    // Checkpoint and HF directories mix.
    let mixed = dir.path().join("mixed");
    ok(&run(&[
        "average",
        "--checkpoints",
        s(&run_dir.join("checkpoints/step-0000008")),
        s(&dir.path().join("export-8")),
        "--out",
        s(&mixed),
    ]));
    assert_eq!(weights(&mixed), exported[2]);

    let err = fails(&run(&[
        "average",
        "--last",
        "3",
        "--run",
        s(&run_dir),
        "--out",
        s(&averaged),
    ]));
    assert!(err.contains("already exists"), "{err}");
    for last in ["0", "1"] {
        let err = fails(&run(&[
            "average",
            "--last",
            last,
            "--run",
            s(&run_dir),
            "--out",
            s(&dir.path().join("few")),
        ]));
        assert!(err.contains("at least two"), "{err}");
    }
    let eight = run_dir.join("checkpoints/step-0000008");
    let alias = run_dir.join("checkpoints/step-0000006/../step-0000008");
    let err = fails(&run(&[
        "average",
        "--checkpoints",
        s(&eight),
        s(&alias),
        "--out",
        s(&dir.path().join("twice")),
    ]));
    assert!(err.contains("the same checkpoint"), "{err}");
    let inside = run_dir.join("checkpoints/averaged");
    let err = fails(&run(&[
        "average",
        "--last",
        "2",
        "--run",
        s(&run_dir),
        "--out",
        s(&inside),
    ]));
    assert!(err.contains("inside the run directory"), "{err}");
    assert!(!inside.exists());
    let err = fails(&run(&[
        "average",
        "--last",
        "9",
        "--run",
        s(&run_dir),
        "--out",
        s(&dir.path().join("nine")),
    ]));
    assert!(err.contains("4 checkpoint(s)"), "{err}");
    let wider = dir.path().join("wider");
    ok(&pretrain(
        &config,
        &wider,
        &[
            "--set",
            "model.hidden_size=64",
            "--set",
            "schedule.total_steps=2",
        ],
    ));
    let err = fails(&run(&[
        "average",
        "--checkpoints",
        s(&run_dir.join("checkpoints/step-0000002")),
        s(&wider.join("checkpoints/step-0000002")),
        "--out",
        s(&dir.path().join("refused")),
    ]));
    assert!(
        err.contains("different architectures") && err.contains("hidden_size"),
        "{err}"
    );
    assert!(!dir.path().join("refused").exists());
    assert_no_temporaries(dir.path());
}

/// `log.tensorboard` naming a directory that holds someone else's files, and a
/// `train.ema_decay` outside (0, 1), are refused before any work.
#[test]
fn a_foreign_tensorboard_directory_and_a_bad_ema_decay_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let config = tiny_config(dir.path(), "");
    let tb = dir.path().join("dashboards");
    std::fs::create_dir(&tb).unwrap();
    std::fs::write(tb.join("notes.txt"), "mine").unwrap();
    let set = format!("log.tensorboard={}", tb.display());
    let run_dir = dir.path().join("run");
    let err = fails(&pretrain(&config, &run_dir, &["--set", &set]));
    assert!(
        err.contains("log.tensorboard") && err.contains("notes.txt"),
        "{err}"
    );
    assert!(!run_dir.join("checkpoints").exists());
    assert_eq!(std::fs::read_dir(&tb).unwrap().count(), 1);
    for bad in ["0", "1", "1.5"] {
        let set = format!("train.ema_decay={bad}");
        let err = fails(&pretrain(&config, &run_dir, &["--set", &set]));
        assert!(
            err.contains("train.ema_decay") && err.contains("(0, 1)"),
            "{err}"
        );
    }
    let inside = format!("log.tensorboard={}", run_dir.join("final").display());
    let err = fails(&pretrain(&config, &run_dir, &["--set", &inside]));
    assert!(err.contains("inside the run directory"), "{err}");
    let quoted = "log.tensorboard=\"true\"";
    let err = fails(&pretrain(&config, &run_dir, &["--set", quoted]));
    assert!(err.contains("without quotes"), "{err}");
    let file = dir.path().join("tb-file");
    std::fs::write(&file, "mine").unwrap();
    let set = format!("log.tensorboard={}", file.display());
    let err = fails(&pretrain(&config, &run_dir, &["--set", &set]));
    assert!(err.contains("is not a directory"), "{err}");
    assert!(
        !run_dir.join("metrics.jsonl").exists(),
        "refused before any work"
    );
}
