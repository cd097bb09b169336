//! Token ids and character offsets equal HF's Python `tokenizers` on real text, with the
//! real roberta-base tokenizer, loaded from tokenizer.json and from vocab.json +
//! merges.txt (vectors from `scripts/make_tokenizer_vectors.py`).

use std::path::{Path, PathBuf};

use roberta_data::RobertaTokenizer;
use roberta_data::tokenizer::{MERGES_FILE, TOKENIZER_FILE, VOCAB_FILE};

#[derive(serde::Deserialize)]
struct Vector {
    source: String,
    text: String,
    ids: Vec<u32>,
    offsets: Vec<(usize, usize)>,
    pair_ids: Vec<u32>,
}

fn roberta_base() -> Option<PathBuf> {
    let file =
        roberta_data::test_data::shared(&format!("roberta_base_tokenizer/{TOKENIZER_FILE}"))?;
    file.parent().map(Path::to_path_buf)
}

fn vectors() -> Vec<Vector> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tokenizer_vectors.jsonl");
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn check(tokenizer: &RobertaTokenizer, how: &str) {
    let vectors = vectors();
    assert!(vectors.len() > 200);
    for v in &vectors {
        let e = tokenizer.encode(&v.text, true).unwrap();
        assert_eq!(e.ids, v.ids, "{how}, {}: ids of {:?}", v.source, v.text);
        assert_eq!(
            e.offsets, v.offsets,
            "{how}, {}: offsets of {:?}",
            v.source, v.text
        );
        let pair = tokenizer
            .encode_pair(&v.text, "and a second segment")
            .unwrap();
        assert_eq!(
            pair.ids, v.pair_ids,
            "{how}, {}: pair ids of {:?}",
            v.source, v.text
        );
    }
}

#[test]
fn equal_to_hf_from_tokenizer_json() {
    let Some(dir) = roberta_base() else { return };
    check(
        &RobertaTokenizer::from_file(&dir.join(TOKENIZER_FILE)).unwrap(),
        "tokenizer.json",
    );
}

#[test]
fn equal_to_hf_from_vocab_and_merges() {
    let Some(dir) = roberta_base() else { return };
    let t =
        RobertaTokenizer::from_vocab_merges(&dir.join(VOCAB_FILE), &dir.join(MERGES_FILE)).unwrap();
    check(&t, "vocab.json + merges.txt");
}
