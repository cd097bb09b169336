//! End-to-end tests of `finetune`, `eval`, `predict` and `export` on a tiny model
//! (the MLM parity fixture: 2 layers, hidden 32, its own 320-token BPE) and real data
//! from ../shared/data where it is present.

mod common;

use std::path::{Path, PathBuf};

use common::{
    NO_DROPOUT, assert_finetune_on_two_equals_one, copy_dir, fails, finetune,
    finetune_config as config, head, jsonl, mlm_fixture, ok, run, s, shared,
};
use serde_json::Value;

/// `roberta-train eval` of `model` on `data`, metrics written to `output`.
fn eval(model: &Path, data: &Path, output: &Path) -> std::process::Output {
    run(&[
        "eval",
        "--model",
        s(model),
        "--data",
        s(data),
        "--output",
        s(output),
    ])
}

/// `roberta-train predict` of `model` on `input`, one JSON line per input in `output`.
fn predict(model: &Path, input: &Path, output: &Path) -> std::process::Output {
    run(&[
        "predict",
        "--model",
        s(model),
        "--input",
        s(input),
        "--output",
        s(output),
    ])
}

/// A model directory as transformers writes it (the parity fixture `name`: no saved
/// task) with the fixtures' tokenizer, at `dir`.
fn elsewhere(name: &str, dir: &Path) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let fixtures = common::repo().join("crates/roberta-model/tests/fixtures");
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(fixtures.join(name).join(f), dir.join(f)).unwrap();
    }
    std::fs::copy(
        fixtures.join("mlm/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    dir.to_path_buf()
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

#[test]
fn sst2_trains_keeps_the_best_evaluates_predicts_and_exports() {
    let Some(sst2) = shared("sst2") else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = head(&sst2.join("train.tsv"), 201, &dir.path().join("train.tsv"));
    let valid = head(&sst2.join("dev.tsv"), 61, &dir.path().join("dev.tsv"));
    let cfg = config(dir.path(), "type = \"classification\"", &train, &valid, "");
    let run_dir = dir.path().join("run");
    let out = finetune(&cfg, &run_dir, &[]);
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("newly initialised") && log.contains("classifier.out_proj.weight"),
        "{log}"
    );
    let lines = jsonl(&run_dir.join("metrics.jsonl"));
    assert_eq!(lines.len(), 6);
    let evaluated: Vec<&Value> = lines
        .iter()
        .filter(|l| l.get("valid_accuracy").is_some())
        .collect();
    assert_eq!(evaluated.len(), 2, "evaluations at steps 3 and 6");
    for key in ["valid_f1", "valid_mcc", "valid_f1_macro"] {
        assert!(evaluated[0].get(key).is_some(), "{key}");
    }
    let best = run_dir.join("best");
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "vocab.json",
        "merges.txt",
        "eval_results.json",
    ] {
        assert!(best.join(f).exists(), "best/{f}");
    }
    let config_json = json(&best.join("config.json"));
    assert_eq!(
        config_json["architectures"][0],
        "RobertaForSequenceClassification"
    );
    assert_eq!(config_json["id2label"]["1"], "1");
    assert_eq!(config_json["roberta_train_task"]["type"], "classification");
    let best_accuracy = json(&best.join("eval_results.json"))["accuracy"]
        .as_f64()
        .unwrap();
    let best_logged = evaluated
        .iter()
        .map(|l| l["valid_accuracy"].as_f64().unwrap())
        .fold(0.0, f64::max);
    assert_eq!(best_accuracy, best_logged);

    // eval on the run (its best/) gives the accuracy it was kept for.
    let results = dir.path().join("eval.json");
    let printed = ok(&eval(&run_dir, &valid, &results));
    let printed: Value = serde_json::from_str(&printed).unwrap();
    assert!((printed["accuracy"].as_f64().unwrap() - best_accuracy).abs() < 1e-12);
    assert_eq!(json(&results), printed);

    // predict: one line per input, the label with the highest probability.
    let predictions = dir.path().join("pred.jsonl");
    ok(&predict(&best, &valid, &predictions));
    let predicted = jsonl(&predictions);
    assert_eq!(predicted.len(), 60);
    for p in &predicted {
        let probs = p["probabilities"].as_object().unwrap();
        let total: f64 = probs.values().map(|v| v.as_f64().unwrap()).sum();
        assert!((total - 1.0).abs() < 1e-5);
        let top = probs
            .iter()
            .max_by(|a, b| a.1.as_f64().unwrap().total_cmp(&b.1.as_f64().unwrap()))
            .unwrap()
            .0;
        assert_eq!(p["label"].as_str().unwrap(), top);
    }
    assert_eq!(predicted[0]["line"], 2, "line numbers count the header");

    // export of the last checkpoint = final/, as eval sees it.
    let exported = dir.path().join("exported");
    ok(&run(&[
        "export",
        "--checkpoint",
        s(&run_dir.join("checkpoints/step-0000006")),
        "--out",
        s(&exported),
    ]));
    let scores = |model: &Path| -> Value {
        let name = model.file_name().unwrap().to_string_lossy();
        let out = dir.path().join(format!("scores-{name}.json"));
        serde_json::from_str(&ok(&eval(model, &valid, &out))).unwrap()
    };
    assert_eq!(scores(&exported), scores(&run_dir.join("final")));
    assert_eq!(
        std::fs::read(exported.join("model.safetensors")).unwrap(),
        std::fs::read(run_dir.join("final/model.safetensors")).unwrap()
    );

    // Resuming from checkpoint 3 repeats steps 4–6 bitwise.
    let resumed = dir.path().join("resumed");
    std::fs::create_dir_all(resumed.join("checkpoints")).unwrap();
    copy_dir(
        &run_dir.join("checkpoints/step-0000003"),
        &resumed.join("checkpoints/step-0000003"),
    );
    ok(&finetune(&cfg, &resumed, &["--resume", "auto"]));
    let again = jsonl(&resumed.join("metrics.jsonl"));
    let loss = |l: &Value| l["loss"].to_string();
    assert_eq!(
        again.iter().map(loss).collect::<Vec<_>>(),
        lines[3..].iter().map(loss).collect::<Vec<_>>()
    );
}

#[test]
fn mrpc_pairs_and_other_column_layouts() {
    let Some(mrpc) = shared("mrpc") else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = head(&mrpc.join("train.tsv"), 101, &dir.path().join("train.tsv"));
    let valid = head(&mrpc.join("dev.tsv"), 41, &dir.path().join("dev.tsv"));
    let cfg = config(
        dir.path(),
        "type = \"pair-classification\"\ntext_a = \"#1 String\"\ntext_b = \"#2 String\"\nlabel = \"Quality\"\nmax_length = 38",
        &train,
        &valid,
        "",
    );
    let run_dir = dir.path().join("run");
    ok(&finetune(&cfg, &run_dir, &["--set", "train.max_steps=3"]));
    let saved = json(&run_dir.join("best/eval_results.json"));
    assert!(saved.get("f1").is_some() && saved.get("accuracy").is_some());

    // The same pairs as headerless CSV with the columns in another order.
    let text = std::fs::read_to_string(&valid).unwrap();
    let mut csv = String::new();
    for line in text.lines().skip(1) {
        let f: Vec<&str> = line.split('\t').collect();
        let quote = |t: &str| format!("\"{}\"", t.replace('"', "\"\""));
        csv += &format!("{},{},{}\n", quote(f[4]), f[0], quote(f[3]));
    }
    let other = dir.path().join("other.csv");
    std::fs::write(&other, csv).unwrap();
    let out = dir.path().join("m.json");
    let printed: Value = serde_json::from_str(&ok(&run(&[
        "eval",
        "--model",
        s(&run_dir),
        "--data",
        s(&other),
        "--no-header",
        "--text-a",
        "2",
        "--text-b",
        "0",
        "--label",
        "1",
        "--output",
        s(&out),
    ])))
    .unwrap();
    assert_eq!(
        printed, saved,
        "same pairs, same metrics, whatever the layout"
    );
}

const STS_TASK: &str =
    "type = \"regression\"\ntext_a = \"sentence1\"\ntext_b = \"sentence2\"\nlabel = \"score\"";

#[test]
fn regression_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let mut tsv = String::from("sentence1\tsentence2\tscore\n");
    for i in 0..24 {
        tsv += &format!(
            "The cat sat {i} times.\tA cat sat down {} times.\t{}\n",
            i % 5,
            (i % 6) as f64 * 0.8
        );
    }
    let train = dir.path().join("train.tsv");
    std::fs::write(&train, &tsv).unwrap();
    let cfg = config(dir.path(), STS_TASK, &train, &train, "");
    let run_dir = dir.path().join("run");
    ok(&finetune(&cfg, &run_dir, &[]));
    let config_json = json(&run_dir.join("best/config.json"));
    assert_eq!(config_json["problem_type"], "regression");
    let predictions = dir.path().join("p.jsonl");
    ok(&predict(&run_dir, &train, &predictions));
    let p = jsonl(&predictions);
    assert_eq!(p.len(), 24);
    assert!(p[0]["score"].is_f64());

    // bf16 mixed precision follows fp32 within bf16's rounding.
    let bf16 = dir.path().join("bf16");
    ok(&finetune(&cfg, &bf16, &["--set", "train.precision=bf16"]));
    let loss = |run: &Path| -> Vec<f64> {
        jsonl(&run.join("metrics.jsonl"))
            .iter()
            .filter_map(|l| l["loss"].as_f64())
            .collect()
    };
    let (a, b) = (loss(&run_dir), loss(&bf16));
    assert_eq!(a.len(), b.len());
    assert!(
        a[0] != b[0] && (a[0] - b[0]).abs() <= 2e-2 * a[0],
        "{a:?} vs {b:?}"
    );

    // A label that is not a number names its line; nothing is written for the run.
    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, tsv.replace("\t1.6\n", "\thigh\n")).unwrap();
    let cfg_bad = config(dir.path(), STS_TASK, &bad, &train, "");
    let bad_run = dir.path().join("bad-run");
    let err = fails(&finetune(&cfg_bad, &bad_run, &[]));
    assert!(
        err.contains("bad.tsv") && err.contains("line 4") && err.contains("high"),
        "{err}"
    );
    assert!(!bad_run.join("checkpoints").exists() && !bad_run.join("best").exists());

    // A missing label column lists the columns there are.
    let cfg_col = config(
        dir.path(),
        &STS_TASK.replace("score", "similarity"),
        &train,
        &train,
        "",
    );
    let err = fails(&finetune(&cfg_col, &dir.path().join("r2"), &[]));
    assert!(
        err.contains("similarity") && err.contains("sentence1, sentence2, score"),
        "{err}"
    );

    // An empty split.
    let empty = dir.path().join("empty.tsv");
    std::fs::write(&empty, "sentence1\tsentence2\tscore\n").unwrap();
    let cfg_empty = config(dir.path(), STS_TASK, &train, &empty, "");
    let err = fails(&finetune(&cfg_empty, &dir.path().join("r3"), &[]));
    assert!(
        err.contains("empty.tsv") && err.contains("empty split"),
        "{err}"
    );

    // A model directory without a tokenizer.
    let bare = dir.path().join("bare");
    std::fs::create_dir_all(&bare).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(Path::new(&mlm_fixture()).join(f), bare.join(f)).unwrap();
    }
    let err = fails(&run(&[
        "finetune",
        "--config",
        s(&cfg),
        "--init",
        s(&bare),
        "--run-dir",
        s(&dir.path().join("r4")),
    ]));
    assert!(err.contains("tokenizer") && err.contains("bare"), "{err}");

    // A checkpoint of another task and label count: the regression head has one output,
    // a 3-label classifier needs three.
    let mut three = String::from("sentence\tlabel\n");
    for i in 0..12 {
        three += &format!("Sentence number {i}.\t{}\n", ["a", "b", "c"][i % 3]);
    }
    let three_path = dir.path().join("three.tsv");
    std::fs::write(&three_path, three).unwrap();
    let cfg3 = config(
        dir.path(),
        "type = \"classification\"",
        &three_path,
        &three_path,
        "",
    );
    let err = fails(&run(&[
        "finetune",
        "--config",
        s(&cfg3),
        "--init",
        s(&run_dir.join("best")),
        "--run-dir",
        s(&dir.path().join("r5")),
    ]));
    assert!(
        err.contains("classifier.out_proj") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn squad_subset_trains_and_answers_with_character_spans() {
    let Some(squad) = shared("squad_v1.1/dev-v1.1.json") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut file = json(&squad);
    let article = &mut file["data"][0];
    let paragraphs = article["paragraphs"].as_array_mut().unwrap();
    paragraphs.truncate(1);
    paragraphs[0]["qas"].as_array_mut().unwrap().truncate(4);
    file["data"].as_array_mut().unwrap().truncate(1);
    let subset = dir.path().join("squad.json");
    std::fs::write(&subset, file.to_string()).unwrap();
    let cfg = config(
        dir.path(),
        "type = \"qa\"\nmax_length = 38\ndoc_stride = 8",
        &subset,
        &subset,
        "",
    );
    let run_dir = dir.path().join("run");
    ok(&finetune(&cfg, &run_dir, &["--set", "train.max_steps=3"]));
    let scores = json(&run_dir.join("best/eval_results.json"));
    assert!(scores["exact_match"].as_f64().unwrap() >= 0.0);
    assert!(scores["f1"].as_f64().unwrap() >= scores["exact_match"].as_f64().unwrap());
    let predictions = dir.path().join("answers.jsonl");
    ok(&predict(&run_dir, &subset, &predictions));
    let answers = jsonl(&predictions);
    assert_eq!(answers.len(), 4);
    let context: Vec<char> = file["data"][0]["paragraphs"][0]["context"]
        .as_str()
        .unwrap()
        .chars()
        .collect();
    for a in &answers {
        let (start, end) = (
            a["start"].as_u64().unwrap() as usize,
            a["end"].as_u64().unwrap() as usize,
        );
        let span: String = context[start..end].iter().collect();
        assert_eq!(a["answer"].as_str().unwrap(), span);
        assert!(a["id"].is_string());
    }

    // An answer whose offset does not match its context names the question.
    let mut broken = file.clone();
    broken["data"][0]["paragraphs"][0]["qas"][1]["answers"][0]["answer_start"] = 3.into();
    let id = broken["data"][0]["paragraphs"][0]["qas"][1]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let broken_path = dir.path().join("broken.json");
    std::fs::write(&broken_path, broken.to_string()).unwrap();
    let err = fails(&eval(&run_dir, &broken_path, &dir.path().join("x.json")));
    assert!(err.contains(&id) && err.contains("broken.json"), "{err}");
}

#[test]
fn token_classification_tags_words() {
    let dir = tempfile::tempdir().unwrap();
    let mut conll = String::new();
    let people = ["Alice", "Bob", "Carol"];
    let places = ["Paris", "Rome", "Oslo"];
    for i in 0..18 {
        conll += &format!(
            "{} NNP B-PER\nvisited VBD O\n{} NNP B-LOC\nyesterday NN O\n\n",
            people[i % 3],
            places[(i / 3) % 3]
        );
    }
    let train = dir.path().join("train.conll");
    std::fs::write(&train, &conll).unwrap();
    let cfg = config(
        dir.path(),
        "type = \"token-classification\"",
        &train,
        &train,
        "",
    );
    let run_dir = dir.path().join("run");
    ok(&finetune(&cfg, &run_dir, &[]));
    let config_json = json(&run_dir.join("best/config.json"));
    assert_eq!(
        config_json["architectures"][0],
        "RobertaForTokenClassification"
    );
    let labels: Vec<&str> = (0..3)
        .map(|i| config_json["id2label"][i.to_string()].as_str().unwrap())
        .collect();
    assert_eq!(labels, vec!["B-LOC", "B-PER", "O"]);
    let scores = json(&run_dir.join("best/eval_results.json"));
    for key in ["f1", "precision", "recall", "accuracy"] {
        assert!(scores.get(key).is_some(), "{key}");
    }
    let predictions = dir.path().join("tags.jsonl");
    ok(&predict(&run_dir, &train, &predictions));
    let tagged = jsonl(&predictions);
    assert_eq!(tagged.len(), 18);
    assert_eq!(tagged[0]["words"].as_array().unwrap().len(), 4);
    assert_eq!(tagged[0]["tags"].as_array().unwrap().len(), 4);

    // A tag outside the training label set names its line.
    let valid = dir.path().join("valid.conll");
    std::fs::write(&valid, "Alice NNP B-PER\nsmiled VBD B-MISC\n").unwrap();
    let err = fails(&eval(&run_dir, &valid, &dir.path().join("x.json")));
    assert!(err.contains("line 2") && err.contains("B-MISC"), "{err}");
}

/// SWAG's layout (`tests/fixtures/swag.csv`: SWAG's columns, 24 made-up rows whose right
/// ending is the sound of the animal in the context), fine-tuned, evaluated, predicted
/// and exported like the other heads.
#[test]
fn multiple_choice_reads_swag_and_trains_evaluates_predicts_and_exports() {
    let dir = tempfile::tempdir().unwrap();
    let swag = common::repo().join("crates/roberta-train/tests/fixtures/swag.csv");
    let task = "type = \"multiple-choice\"\ntext_b = \"sent2\"";
    let cfg = config(dir.path(), task, &swag, &swag, "");
    let run_dir = dir.path().join("run");
    let out = finetune(&cfg, &run_dir, &[]);
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("newly initialised") && log.contains("roberta.pooler.dense.weight"),
        "the MLM fixture has no pooler: it starts fresh with the classifier\n{log}"
    );
    let config_json = json(&run_dir.join("best/config.json"));
    assert_eq!(config_json["architectures"][0], "RobertaForMultipleChoice");
    assert_eq!(config_json["roberta_train_task"]["type"], "multiple-choice");
    let scores = json(&run_dir.join("best/eval_results.json"));
    assert_eq!(
        scores.as_object().unwrap().keys().collect::<Vec<_>>(),
        vec!["accuracy"]
    );
    let results = dir.path().join("scores.json");
    let printed: Value = serde_json::from_str(&ok(&eval(&run_dir, &swag, &results))).unwrap();
    let accuracy = printed["accuracy"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&accuracy) && (accuracy * 24.0).fract() == 0.0);

    let predictions = dir.path().join("choices.jsonl");
    ok(&predict(&run_dir, &swag, &predictions));
    let predicted = jsonl(&predictions);
    assert_eq!(predicted.len(), 24);
    assert_eq!(predicted[0]["line"], 2, "line numbers count the header");
    let mut right = 0;
    let labels: Vec<String> = std::fs::read_to_string(&swag)
        .unwrap()
        .lines()
        .skip(1)
        .map(|l| l.rsplit(',').next().unwrap().to_string())
        .collect();
    for (p, label) in predicted.iter().zip(&labels) {
        let probs: Vec<f64> = p["probabilities"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap())
            .collect();
        assert_eq!(probs.len(), 4);
        assert!((probs.iter().sum::<f64>() - 1.0).abs() < 1e-5);
        let choice = p["choice"].as_u64().unwrap() as usize;
        assert!(probs.iter().all(|&q| q <= probs[choice]));
        assert_eq!(p["column"], format!("ending{choice}"));
        right += usize::from(choice.to_string() == *label);
    }
    assert_eq!(right as f64 / 24.0, accuracy, "predict agrees with eval");

    let exported = dir.path().join("exported");
    ok(&run(&[
        "export",
        "--checkpoint",
        s(&run_dir),
        "--out",
        s(&exported),
    ]));
    assert_eq!(
        std::fs::read(exported.join("model.safetensors")).unwrap(),
        std::fs::read(run_dir.join("final/model.safetensors")).unwrap()
    );
    let keys: Vec<String> = roberta_model::hf::HfWeights::read(&exported.join("model.safetensors"))
        .unwrap()
        .keys()
        .map(str::to_string)
        .collect();
    for key in [
        "roberta.pooler.dense.weight",
        "classifier.weight",
        "classifier.bias",
    ] {
        assert!(keys.iter().any(|k| k == key), "{key} in {keys:?}");
    }

    // A label that is not the index of a choice names its line; choices are checked.
    let bad = dir.path().join("bad.csv");
    let text = std::fs::read_to_string(&swag).unwrap();
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    lines[3] = lines[3].rsplit_once(',').unwrap().0.to_string() + ",4";
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let err = fails(&eval(&run_dir, &bad, &dir.path().join("x.json")));
    assert!(
        err.contains("line 4") && err.contains("label \"4\" is not the index of a choice"),
        "{err}"
    );
    for (extra, message) in [
        (
            "choices = [\"ending0\"]",
            "task.choices must name at least two distinct columns",
        ),
        ("choices = [\"ending0\", \"nope\"]", "no column \"nope\""),
    ] {
        let cfg = config(dir.path(), &format!("{task}\n{extra}"), &swag, &swag, "");
        let err = fails(&finetune(&cfg, &dir.path().join("bad-run"), &[]));
        assert!(err.contains(message), "{extra}: {err}");
    }
    let cfg = config(
        dir.path(),
        "type = \"classification\"\nchoices = [\"a\", \"b\"]",
        &swag,
        &swag,
        "",
    );
    let err = fails(&finetune(&cfg, &dir.path().join("bad-run"), &[]));
    assert!(
        err.contains("task.choices is for multiple-choice, not classification"),
        "{err}"
    );

    // A model fine-tuned elsewhere (transformers' fixture, no saved task) reads another
    // layout by flags: JSONL, three choices under other names.
    let hf = elsewhere("multiple-choice", &dir.path().join("hf"));
    let three = dir.path().join("three.jsonl");
    let rows: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"story": "The cat sat on the mat {i} times.", "x": "It slept.", "y": "It ran.", "z": "It sang.", "answer": {i}}}"#
            )
        })
        .collect();
    std::fs::write(&three, rows.join("\n") + "\n").unwrap();
    let flags = [
        "--text-a",
        "story",
        "--choices",
        "x,y,z",
        "--label",
        "answer",
    ];
    let mut args = vec!["eval", "--model", s(&hf), "--data", s(&three)];
    args.extend(flags);
    let scores = dir.path().join("three.json");
    args.extend(["--output", s(&scores)]);
    let accuracy = serde_json::from_str::<Value>(&ok(&run(&args))).unwrap()["accuracy"]
        .as_f64()
        .unwrap();
    assert!((accuracy * 3.0).fract().abs() < 1e-9, "{accuracy}");
    let mut args = vec!["predict", "--model", s(&hf), "--input", s(&three)];
    args.extend(flags);
    let choices = dir.path().join("three-choices.jsonl");
    args.extend(["--output", s(&choices)]);
    ok(&run(&args));
    for p in jsonl(&choices) {
        assert_eq!(p["probabilities"].as_array().unwrap().len(), 3);
        assert!(["x", "y", "z"].contains(&p["column"].as_str().unwrap()));
    }
}

#[test]
fn early_stopping_after_patience_evaluations_without_gain() {
    let dir = tempfile::tempdir().unwrap();
    let mut tsv = String::from("sentence\tlabel\n");
    for i in 0..32 {
        tsv += &format!("Sentence {i} is here.\t{}\n", i % 2);
    }
    let train = dir.path().join("train.tsv");
    std::fs::write(&train, &tsv).unwrap();
    let cfg = config(dir.path(), "type = \"classification\"", &train, &train, "");
    let run_dir = dir.path().join("run");
    // A rate too small to move any weight: every evaluation after the first ties.
    let out = finetune(
        &cfg,
        &run_dir,
        &[
            "--set",
            "optim.lr=1e-30",
            "--set",
            "eval.every=1",
            "--set",
            "eval.patience=2",
        ],
    );
    ok(&out);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(log.contains("early stop"), "{log}");
    let lines = jsonl(&run_dir.join("metrics.jsonl"));
    assert_eq!(
        lines.last().unwrap()["step"],
        3,
        "stopped after evaluations 2 and 3"
    );
    assert!(run_dir.join("final/model.safetensors").exists());
}

/// A classifier fine-tuned elsewhere (HF's generic LABEL_i names, no task saved): eval
/// and predict read a pair file given its columns, labels 0, 1, 2 meaning LABEL_0…2.
#[test]
fn a_model_fine_tuned_elsewhere_reads_files_by_flags() {
    let dir = tempfile::tempdir().unwrap();
    let model = elsewhere("seqcls", &dir.path().join("hf"));
    let mut tsv = String::from("id\tfirst\tsecond\tgold\n");
    for i in 0..9 {
        tsv += &format!("{i}\tA cat sat {i}.\tA dog ran.\t{}\n", i % 3);
    }
    let data = dir.path().join("pairs.tsv");
    std::fs::write(&data, &tsv).unwrap();
    let flags = ["--text-a", "first", "--text-b", "second", "--label", "gold"];
    let (m1, m2) = (dir.path().join("m.json"), dir.path().join("m2.json"));
    let mut args = vec!["eval", "--model", s(&model), "--data", s(&data)];
    args.extend(flags);
    args.extend(["--output", s(&m1)]);
    let printed: Value = serde_json::from_str(&ok(&run(&args))).unwrap();
    assert!(printed["accuracy"].as_f64().unwrap() >= 0.0);
    let predictions = dir.path().join("p.jsonl");
    let mut args = vec!["predict", "--model", s(&model), "--input", s(&data)];
    args.extend(flags);
    args.extend(["--output", s(&predictions)]);
    ok(&run(&args));
    let first = &jsonl(&predictions)[0];
    assert_eq!(first["probabilities"].as_object().unwrap().len(), 3);
    assert!(first["label"].as_str().unwrap().starts_with("LABEL_"));
    // A label beyond the model's three.
    std::fs::write(&data, tsv.replace("\t2\n", "\t7\n")).unwrap();
    let mut args = vec!["eval", "--model", s(&model), "--data", s(&data)];
    args.extend(flags);
    args.extend(["--output", s(&m2)]);
    let err = fails(&run(&args));
    assert!(err.contains("\"7\"") && err.contains("line 4"), "{err}");
}

/// Accumulation in fine-tuning: micro-batch 4 × 2 takes the updates of one batch of 8
/// (every dropout off through its config key), and `task.labels` fixes the label order.
#[test]
fn finetune_accumulation_dropout_keys_and_label_order() {
    let Some(sst2) = shared("sst2") else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = head(&sst2.join("train.tsv"), 65, &dir.path().join("train.tsv"));
    let cfg = config(
        dir.path(),
        "type = \"classification\"\nlabels = [\"1\", \"0\"]",
        &train,
        &train,
        NO_DROPOUT,
    );
    let losses = |name: &str, batch: &str, accumulation: &str| {
        let run_dir = dir.path().join(name);
        ok(&finetune(
            &cfg,
            &run_dir,
            &[
                "--set",
                &format!("train.batch_size={batch}"),
                "--set",
                &format!("train.accumulation={accumulation}"),
                "--set",
                "train.max_steps=4",
            ],
        ));
        let config_json = json(&run_dir.join("final/config.json"));
        assert_eq!(config_json["id2label"]["0"], "1", "task.labels order");
        jsonl(&run_dir.join("metrics.jsonl"))
            .iter()
            .map(|l| l["loss"].as_f64().unwrap())
            .collect::<Vec<_>>()
    };
    let (accumulated, big) = (losses("b4k2", "4", "2"), losses("b8k1", "8", "1"));
    assert_eq!(accumulated.len(), 4);
    for (a, b) in accumulated.iter().zip(&big) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "loss {a} vs {b}");
    }
}

/// Two CPU replicas with micro-batch 4 take the updates of one device with micro-batch 8.
#[test]
fn finetune_on_two_replicas_equals_one_device_with_twice_the_batch() {
    assert_finetune_on_two_equals_one(|args| run(&[args, &["--devices", "cpu,cpu"]].concat()));
}

/// A resume that would change the head (2 labels → 3) is refused, --force or not,
/// rather than training a 2-output head that the log calls 3.
#[test]
fn a_forced_resume_cannot_change_the_labels() {
    let Some(sst2) = shared("sst2") else { return };
    let dir = tempfile::tempdir().unwrap();
    let train = head(&sst2.join("train.tsv"), 33, &dir.path().join("train.tsv"));
    let cfg = config(dir.path(), "type = \"classification\"", &train, &train, "");
    let run_dir = dir.path().join("run");
    ok(&finetune(&cfg, &run_dir, &["--set", "train.max_steps=2"]));
    let err = common::fails(&finetune(
        &cfg,
        &run_dir,
        &[
            "--resume",
            "auto",
            "--force",
            "--set",
            "task.labels=[\"0\", \"1\", \"2\"]",
            "--set",
            "train.max_steps=4",
        ],
    ));
    assert!(
        err.contains("labels 2 → 3") && err.contains("cannot change"),
        "{err}"
    );
}

/// A GLUE TSV as HF `datasets` writes it to Parquet: its text columns, and `label` as
/// an integer (the index of the label in `names`).
fn tsv_to_parquet(tsv: &Path, text: &[&str], names: &[&str], out: &Path) -> PathBuf {
    use std::sync::Arc;
    let content = std::fs::read_to_string(tsv).unwrap();
    let mut lines = content.lines();
    let header: Vec<&str> = lines.next().unwrap().split('\t').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split('\t').collect()).collect();
    let column = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let mut columns: Vec<(&str, arrow_array::ArrayRef)> = text
        .iter()
        .map(|name| {
            let i = column(name);
            let values: Vec<&str> = rows.iter().map(|r| r[i]).collect();
            let array: arrow_array::ArrayRef = Arc::new(arrow_array::StringArray::from(values));
            (*name, array)
        })
        .collect();
    let l = column("label");
    let labels: Vec<i64> = rows
        .iter()
        .map(|r| names.iter().position(|n| *n == r[l]).unwrap() as i64)
        .collect();
    columns.push(("label", Arc::new(arrow_array::Int64Array::from(labels))));
    let batch = arrow_array::RecordBatch::try_from_iter(columns).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(out).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
    out.to_path_buf()
}

/// `datasets` Parquet files train and evaluate like their TSVs; integer labels match a
/// model's named labels by index (RTE: 0 entailment, 1 not_entailment).
#[test]
fn parquet_labeled_data_trains_and_evaluates_like_tsv() {
    let (Some(sst2), Some(rte)) = (shared("sst2"), shared("rte")) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let train = head(&sst2.join("train.tsv"), 33, &d.join("train.tsv"));
    let train_pq = tsv_to_parquet(&train, &["sentence"], &["0", "1"], &d.join("train.parquet"));
    let cfg = config(
        d,
        "type = \"classification\"",
        &train_pq,
        &train_pq,
        NO_DROPOUT,
    );
    let (from_tsv, from_parquet) = (d.join("tsv"), d.join("parquet"));
    let steps = ["--set", "train.max_steps=2"];
    ok(&finetune(&cfg, &from_parquet, &steps));
    let tsv_cfg = config(d, "type = \"classification\"", &train, &train, NO_DROPOUT);
    ok(&finetune(&tsv_cfg, &from_tsv, &steps));
    let losses = |run_dir: &Path| -> Vec<f64> {
        jsonl(&run_dir.join("metrics.jsonl"))
            .iter()
            .map(|l| l["loss"].as_f64().unwrap())
            .collect()
    };
    assert_eq!(losses(&from_parquet), losses(&from_tsv));

    let rte_train = head(&rte.join("train.tsv"), 17, &d.join("rte.tsv"));
    let rte_dev = head(&rte.join("dev.tsv"), 41, &d.join("rte-dev.tsv"));
    let names = ["entailment", "not_entailment"];
    let rte_pq = tsv_to_parquet(
        &rte_dev,
        &["sentence1", "sentence2"],
        &names,
        &d.join("rte.parquet"),
    );
    let pair = "type = \"pair-classification\"\ntext_a = \"sentence1\"\ntext_b = \"sentence2\"";
    let rte_cfg = config(d, pair, &rte_train, &rte_dev, "");
    let rte_run = d.join("rte");
    ok(&finetune(&rte_cfg, &rte_run, &steps));
    let scores = |data: &Path, name: &str| {
        let out = d.join(name);
        ok(&eval(&rte_run.join("final"), data, &out));
        json(&out)["accuracy"].as_f64().unwrap()
    };
    assert_eq!(scores(&rte_pq, "pq.json"), scores(&rte_dev, "tsv.json"));
}

/// A shipped config names GLUE's download layout; without the files there, the error
/// says which key to set, and no run directory is made.
#[test]
fn a_shipped_config_without_its_data_names_the_key_to_set() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = dir.path().join("run");
    let err = fails(&run(&[
        "finetune",
        "--config",
        "configs/finetune/rte.toml",
        "--run-dir",
        s(&run_dir),
    ]));
    assert!(
        err.contains("data.train = \"glue_data/RTE/train.tsv\": no such file")
            && err.contains("--set data.train=PATH"),
        "{err}"
    );
    assert!(!run_dir.exists());
}
