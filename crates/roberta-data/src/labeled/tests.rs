use super::*;
use crate::test_data::shared;
use std::sync::Arc;

use arrow_array::builder::{Int32Builder, ListBuilder, StringBuilder};
use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, StructArray};

fn write_parquet(path: &Path, batch: &RecordBatch) {
    let mut w = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(path).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

fn write_arrow_stream(path: &Path, batch: &RecordBatch) {
    let mut w = arrow_ipc::writer::StreamWriter::try_new(
        std::fs::File::create(path).unwrap(),
        &batch.schema(),
    )
    .unwrap();
    w.write(batch).unwrap();
    w.finish().unwrap();
}

/// GLUE as HF `datasets` stores it: text columns and an integer `label`.
#[test]
fn parquet_and_arrow_rows_are_examples_with_integer_labels() {
    let dir = tempfile::tempdir().unwrap();
    let text: ArrayRef = Arc::new(StringArray::from(vec!["good film", "dull", "fine"]));
    let other: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some("b"), None]));
    let label: ArrayRef = Arc::new(Int64Array::from(vec![1, 0, 1]));
    let batch =
        RecordBatch::try_from_iter([("sentence", text), ("sentence2", other), ("label", label)])
            .unwrap();
    let pq = dir.path().join("train-00000-of-00001.parquet");
    write_parquet(&pq, &batch);
    let arrow = dir.path().join("data-00000-of-00001.arrow");
    write_arrow_stream(&arrow, &batch);
    // Feather as pandas and pyarrow write it by default: the file format, LZ4.
    let feather = dir.path().join("frame.feather");
    let options = arrow_ipc::writer::IpcWriteOptions::default()
        .try_with_compression(Some(arrow_ipc::CompressionType::LZ4_FRAME))
        .unwrap();
    let mut w = arrow_ipc::writer::FileWriter::try_new_with_options(
        std::fs::File::create(&feather).unwrap(),
        &batch.schema(),
        options,
    )
    .unwrap();
    w.write(&batch).unwrap();
    w.finish().unwrap();
    for p in [&pq, &arrow, &feather] {
        let ex = read_examples(p, &Columns::default()).unwrap();
        assert_eq!(ex.len(), 3);
        assert_eq!(
            (ex[0].text_a.as_str(), ex[0].label.as_deref()),
            ("good film", Some("1"))
        );
        assert_eq!(ex[2].line, 3);
        assert_eq!(label_set(&ex), vec!["0", "1"]);
        let missing = Columns {
            text_a: "text".into(),
            ..Columns::default()
        };
        let err = read_examples(p, &missing).unwrap_err().to_string();
        assert!(
            err.contains("no column \"text\"") && err.contains("sentence, sentence2, label"),
            "{err}"
        );
        let pairs = Columns {
            text_b: Some("sentence2".into()),
            ..Columns::default()
        };
        let err = read_examples(p, &pairs).unwrap_err().to_string();
        assert!(err.contains("row 3: column \"sentence2\" is null"), "{err}");
    }
}

/// SQuAD as HF `datasets` stores it: `answers` a struct of lists, or flattened.
#[test]
fn squad_from_parquet_struct_or_flattened_answers() {
    let dir = tempfile::tempdir().unwrap();
    let context = "Paris is the capital of France.";
    let mut texts = ListBuilder::new(StringBuilder::new());
    let mut starts = ListBuilder::new(Int32Builder::new());
    texts.values().append_value("Paris");
    texts.values().append_value("Paris");
    texts.append(true);
    starts.values().append_value(0);
    starts.values().append_value(0);
    starts.append(true);
    texts.append(true);
    starts.append(true);
    let (texts, starts): (ArrayRef, ArrayRef) =
        (Arc::new(texts.finish()), Arc::new(starts.finish()));
    let strings = |v: [&str; 2]| -> ArrayRef { Arc::new(StringArray::from(v.to_vec())) };
    let common = [
        ("id", strings(["q1", "q2"])),
        ("question", strings(["Capital?", "Largest city?"])),
        ("context", strings([context, context])),
    ];
    let answers: ArrayRef = Arc::new(StructArray::from(vec![
        (
            Arc::new(arrow_schema::Field::new(
                "text",
                texts.data_type().clone(),
                true,
            )),
            texts.clone(),
        ),
        (
            Arc::new(arrow_schema::Field::new(
                "answer_start",
                starts.data_type().clone(),
                true,
            )),
            starts.clone(),
        ),
    ]));
    let nested =
        RecordBatch::try_from_iter(common.iter().cloned().chain([("answers", answers)])).unwrap();
    let flat = RecordBatch::try_from_iter(
        common
            .iter()
            .cloned()
            .chain([("answers.text", texts), ("answers.answer_start", starts)]),
    )
    .unwrap();
    for (name, batch) in [("nested", nested), ("flat", flat)] {
        let p = dir.path().join(format!("{name}.parquet"));
        write_parquet(&p, &batch);
        let ex = read_squad(&p).unwrap();
        assert_eq!(ex.len(), 2, "{name}");
        assert_eq!(ex[0].answers, vec![(0, 5, "Paris".to_string()); 2]);
        assert!(!ex[0].is_impossible && ex[1].is_impossible && ex[1].answers.is_empty());
    }
    let wrong = RecordBatch::try_from_iter(
        common
            .iter()
            .cloned()
            .chain([("answers", strings(["Paris", "x"]))]),
    )
    .unwrap();
    let p = dir.path().join("wrong.parquet");
    write_parquet(&p, &wrong);
    let err = read_squad(&p).unwrap_err().to_string();
    assert!(err.contains("expected a struct of lists"), "{err}");
}

#[test]
fn glue_sst2_and_mrpc() {
    let Some(sst2) = shared("sst2/dev.tsv") else {
        return;
    };
    let ex = read_examples(&sst2, &Columns::default()).unwrap();
    assert_eq!(ex.len(), 872);
    assert_eq!(label_set(&ex), vec!["0", "1"]);
    let Some(mrpc) = shared("mrpc/dev.tsv") else {
        return;
    };
    let cols = Columns {
        text_a: "#1 String".into(),
        text_b: Some("#2 String".into()),
        label: Some("Quality".into()),
        header: true,
    };
    let ex = read_examples(&mrpc, &cols).unwrap();
    assert_eq!(ex.len(), 408);
    assert!(
        ex[0]
            .text_b
            .as_deref()
            .unwrap()
            .starts_with("\"The foodservice"),
        "quotes kept verbatim"
    );
}

/// The hostile campaign's labeled inputs, each once accepted: non-finite regression
/// labels, an empty label, a row wider than its header, a CoNLL line short of a
/// column, and a byte-order mark in JSONL.
#[test]
fn hostile_labels_rows_and_columns_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cols = Columns {
        text_a: "text".into(),
        ..Default::default()
    };
    let p = dir.path().join("r.tsv");
    for bad in ["nan", "inf", "-inf", "1e999"] {
        std::fs::write(&p, format!("text\tlabel\nfine\t0.5\nodd\t{bad}\n")).unwrap();
        let ex = read_examples(&p, &cols).unwrap();
        let err = regression_targets(&p, &ex).unwrap_err().to_string();
        assert!(
            err.contains("line 3") && err.contains("not a finite number"),
            "{err}"
        );
    }
    std::fs::write(&p, "text\tlabel\nfine\t1\nblank\t\n").unwrap();
    let err = read_examples(&p, &cols).unwrap_err().to_string();
    assert!(err.contains("line 3: the label is empty"), "{err}");
    std::fs::write(&p, "text\tlabel\n\"a quoted\ttab inside\"\t1\n").unwrap();
    let err = read_examples(&p, &cols).unwrap_err().to_string();
    assert!(
        err.contains("line 2: 3 fields where the header has 2 (a tab inside a text field?)"),
        "{err}"
    );
    let conll = dir.path().join("t.conll");
    std::fs::write(&conll, "EU NNP B-ORG\nrejects VBZ O\n\nGerman JJ\n").unwrap();
    let err = read_conll(&conll).err().unwrap().to_string();
    assert!(
        err.contains("line 4: 2 columns where line 1 has 3"),
        "{err}"
    );
    let j = dir.path().join("b.jsonl");
    std::fs::write(&j, "\u{feff}{\"text\": \"a\", \"label\": \"x\"}\n").unwrap();
    assert_eq!(read_examples(&j, &cols).unwrap()[0].text_a, "a");
}

#[test]
fn bad_columns_labels_and_empty_splits_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("d.tsv");
    std::fs::write(&p, "text\tlabel\ngood\tpos\nbad\tneg\nodd\tmaybe\n").unwrap();
    let err = read_examples(&p, &Columns::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("\"sentence\"") && err.contains("text, label"),
        "{err}"
    );
    let cols = Columns {
        text_a: "text".into(),
        ..Default::default()
    };
    let ex = read_examples(&p, &cols).unwrap();
    let err = label_ids(&p, &ex, &["neg".into(), "pos".into()])
        .unwrap_err()
        .to_string();
    assert!(err.contains("line 4") && err.contains("maybe"), "{err}");
    assert!(
        regression_targets(&p, &ex)
            .unwrap_err()
            .to_string()
            .contains("line 2")
    );
    for (name, text) in [("e.tsv", ""), ("e.csv", ""), ("b.tsv", "\n\n")] {
        let empty = dir.path().join(name);
        std::fs::write(&empty, text).unwrap();
        let err = read_examples(&empty, &cols).unwrap_err().to_string();
        let expected = if text.is_empty() {
            format!("{} is empty", empty.display())
        } else {
            format!("{}: no header line", empty.display())
        };
        assert!(err.starts_with(&expected), "{err}");
    }
    std::fs::write(&p, "text\tlabel\n").unwrap();
    assert!(
        read_examples(&p, &cols)
            .unwrap_err()
            .to_string()
            .contains("empty split")
    );
    let j = dir.path().join("d.jsonl");
    std::fs::write(&j, "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\"}\n").unwrap();
    assert!(
        read_examples(&j, &cols)
            .unwrap_err()
            .to_string()
            .contains("line 2: no field \"label\"")
    );
}

#[test]
fn squad_offsets_become_token_spans() {
    let Some(squad) = shared("squad_v1.1/dev-v1.1.json") else {
        return;
    };
    let Some(tok) = shared("roberta_base_tokenizer") else {
        return;
    };
    let tokenizer = RobertaTokenizer::load(&tok).unwrap();
    let examples = read_squad(&squad).unwrap();
    assert_eq!(examples.len(), 10570);
    let subset = &examples[..200];
    let features = qa_features(&tokenizer, subset, 128, 32).unwrap();
    assert!(
        features.len() > subset.len(),
        "long contexts are split into windows"
    );
    let mut found = 0;
    for f in &features {
        assert!(f.input_ids.len() <= 128);
        if f.start > 0 {
            found += 1;
            let ex = &subset[f.example];
            let (a, _) = f.offsets[f.start].unwrap();
            let (_, b) = f.offsets[f.end].unwrap();
            let span: String = ex.context.chars().skip(a).take(b - a).collect();
            assert!(
                span.contains(ex.answers[0].2.trim()),
                "{span:?} vs {:?}",
                ex.answers[0].2
            );
        }
    }
    assert!(
        found >= 200,
        "every example has a window holding its answer"
    );
}

#[test]
fn squad_answer_at_the_wrong_offset_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("s.json");
    std::fs::write(
        &p,
        r#"{"version":"2.0","data":[{"paragraphs":[{"context":"Paris is in France.","qas":[
        {"id":"q1","question":"Where?","answers":[{"text":"France","answer_start":12}]},
        {"id":"q2","question":"Why?","answers":[],"is_impossible":true},
        {"id":"q3","question":"What?","answers":[{"text":"Paris","answer_start":3}]}]}]}]}"#,
    )
    .unwrap();
    let err = read_squad(&p).unwrap_err().to_string();
    assert!(err.contains("question q3"), "{err}");
}

#[test]
fn conll_tags_land_on_first_subwords() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("c.txt");
    std::fs::write(
        &p,
        "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n",
    )
    .unwrap();
    let s = read_conll(&p).unwrap();
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].tags, vec!["B-ORG", "O"]);
    let Some(tok) = shared("roberta_base_tokenizer") else {
        return;
    };
    let tokenizer = RobertaTokenizer::load(&tok).unwrap();
    let (ids, labels) =
        encode_words(&tokenizer, &["Huggingface".into(), "rocks".into()], &[3, 0]).unwrap();
    assert_eq!(ids.len(), labels.len());
    assert_eq!(labels[1], 3);
    assert_eq!(labels.iter().filter(|&&l| l != IGNORE_INDEX).count(), 2);
    std::fs::write(&p, "lonely\n").unwrap();
    assert!(read_conll(&p).unwrap_err().to_string().contains("line 1"));
}

#[test]
fn rows_count_lines_from_the_header_with_either_line_ending() {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in [
        ("lf.csv", ",text,label\n0,\"a, b\",1\n\n1,c,0\n"),
        ("crlf.csv", ",text,label\r\n0,\"a, b\",1\r\n\r\n1,c,0\r\n"),
        (
            "crlf.tsv",
            "id\ttext\tlabel\r\n0\ta, b\t1\r\n\r\n1\tc\t0\r\n",
        ),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        let rows = read_rows(&path, &["label", "text"], true).unwrap();
        let row = |label: &str, text: &str, line| Row {
            fields: vec![label.into(), text.into()],
            line,
        };
        assert_eq!(rows, vec![row("1", "a, b", 2), row("0", "c", 4)], "{name}");
    }
}
