//! `evaluate` end to end on small slices of GLUE and SQuAD from `../shared/data`, laid
//! out as download_glue_data.py lays GLUE out (STS-B is absent there: skipped).

use std::path::Path;

mod common;

use common::{fails, head, mlm_fixture, ok, run, s, shared};
use serde_json::Value;

/// `root/glue_data/{SST-2,RTE,MRPC,CoLA}` and `root/squad` from slices of the shared
/// data; `None` when that data is absent.
fn lay_out(root: &Path) -> Option<()> {
    let glue = |task: &str, train: &Path, dev: &Path, lines: usize| {
        let dir = root.join("glue_data").join(task);
        std::fs::create_dir_all(&dir).unwrap();
        head(train, lines, &dir.join("train.tsv"));
        head(dev, lines, &dir.join("dev.tsv"));
    };
    for (task, name) in [("SST-2", "sst2"), ("RTE", "rte"), ("MRPC", "mrpc")] {
        let data = shared(name)?;
        glue(task, &data.join("train.tsv"), &data.join("dev.tsv"), 25);
    }
    let cola = shared("cola/raw")?;
    glue(
        "CoLA",
        &cola.join("in_domain_train.tsv"),
        &cola.join("in_domain_dev.tsv"),
        24,
    );
    // SQuAD: the dev set's first article, with three paragraphs, as train and dev.
    let squad: Value = serde_json::from_str(
        &std::fs::read_to_string(shared("squad_v1.1")?.join("dev-v1.1.json")).unwrap(),
    )
    .unwrap();
    let mut article = squad["data"][0].clone();
    article["paragraphs"] = Value::Array(article["paragraphs"].as_array().unwrap()[..3].to_vec());
    let slice = serde_json::json!({"version": "1.1", "data": [article]}).to_string();
    let dir = root.join("squad");
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["train-v1.1.json", "dev-v1.1.json"] {
        std::fs::write(dir.join(name), &slice).unwrap();
    }
    Some(())
}

#[test]
fn evaluate_fine_tunes_every_task_and_writes_the_table() {
    let dir = tempfile::tempdir().unwrap();
    if lay_out(dir.path()).is_none() {
        return;
    }
    let out = dir.path().join("out");
    let args = |init: &str| {
        vec![
            "evaluate".to_string(),
            "--init".into(),
            init.into(),
            "--data-dir".into(),
            s(dir.path()).into(),
            "--out".into(),
            s(&out).into(),
            "--set".into(),
            "train.max_steps=2".into(),
            "--set".into(),
            "train.batch_size=8".into(),
            // The fixture model takes 38 tokens: SQuAD's windows must overlap less.
            "--set".into(),
            "task.doc_stride=8".into(),
        ]
    };
    let call = |init: &str| {
        let args = args(init);
        run(&args.iter().map(String::as_str).collect::<Vec<_>>())
    };
    let stdout = ok(&call(&mlm_fixture()));
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    let rows = results["tasks"].as_array().unwrap();
    let status: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["task"].as_str().unwrap(), r["status"].as_str().unwrap()))
        .collect();
    assert_eq!(
        status,
        [
            ("sst2", "done"),
            ("mrpc", "done"),
            ("rte", "done"),
            ("cola", "done"),
            ("stsb", "skipped"),
            ("squad", "done"),
        ]
    );
    for row in rows.iter().filter(|r| r["status"] == "done") {
        assert_eq!(row["updates"], 2, "{row}");
        let dev = row["dev"].as_f64().unwrap();
        assert_eq!(
            dev,
            row["scores"][row["metric"].as_str().unwrap()]
                .as_f64()
                .unwrap()
        );
    }
    assert_eq!(rows[3]["metric"], "mcc");
    assert_eq!(rows[5]["metric"], "f1");
    let table = std::fs::read_to_string(out.join("results.md")).unwrap();
    assert!(
        table.contains("| task | metric | dev | updates | time |"),
        "{table}"
    );
    assert!(table.contains("| stsb | | skipped |"), "{table}");
    assert!(stdout.contains("| sst2 | accuracy |"), "{stdout}");

    // Again: finished tasks are kept, not trained again.
    let again = call(&mlm_fixture());
    ok(&again);
    let log = String::from_utf8_lossy(&again.stderr);
    assert!(log.contains("sst2: done earlier, kept"), "{log}");
    // A call for one task keeps the other tasks' rows.
    let mut one = args(&mlm_fixture());
    one.extend(["--tasks".into(), "rte".into()]);
    ok(&run(&one.iter().map(String::as_str).collect::<Vec<_>>()));
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["tasks"].as_array().unwrap().len(), 5, "{results}");
    // Another model into the same output is refused.
    let err = fails(&call(s(&dir.path().join("glue_data"))));
    assert!(err.contains("holds the results of another model"), "{err}");
    // A model that does not exist, or a bad --set, fails once, before any task.
    let fresh = dir.path().join("fresh");
    let mut bad = args(s(&dir.path().join("absent")));
    bad[6] = s(&fresh).into();
    let err = fails(&run(&bad.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(err.contains("absent: no such directory"), "{err}");
    let mut bad = args(&mlm_fixture());
    bad[6] = s(&fresh).into();
    bad.extend(["--set".into(), "train.bogus=3".into()]);
    let err = fails(&run(&bad.iter().map(String::as_str).collect::<Vec<_>>()));
    assert!(
        err.contains("sst2 recipe") && err.contains("bogus"),
        "{err}"
    );
    assert!(!fresh.join("sst2").exists() && !fresh.join("results.json").exists());
    // No data at all is an error, not an empty success.
    let mut nothing = args(&mlm_fixture());
    nothing[4] = s(&dir.path().join("nowhere")).into();
    nothing[6] = s(&dir.path().join("empty-out")).into();
    let err = fails(&run(&nothing
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()));
    assert!(err.contains("no task had its data"), "{err}");
}
