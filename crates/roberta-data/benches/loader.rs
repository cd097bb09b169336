//! Masking + batching throughput on one core: `batch_at` (block assembly, dynamic
//! masking, padding) against the named baseline "copy": assembling the same blocks
//! without masking or collation, measured in the same run.
//!
//!     cargo bench -p roberta-data --bench loader
//!
//! Given a preprocessed directory instead (`cargo bench … -- DATA_DIR`), it streams one
//! epoch of it, or 60 s of it, whichever ends first, through the background [`Loader`],
//! as `scripts/bench_rss.py` does to watch memory.

use std::time::Instant;

use roberta_data::dataset::{FORMAT_VERSION, META_FILE, Meta, SplitMeta, split_sha256};
use roberta_data::loader::{LoaderConfig, LoaderState, batch_at};
use roberta_data::shards::{ShardWriter, TokenWidth};
use roberta_data::{BreakMode, Corpus, Loader, MaskVocab, MaskingConfig, SpecialTokens, Split};

const VOCAB: u32 = 50265;

fn stream(dir: &std::path::Path) {
    let meta = Meta::read(dir).unwrap();
    let split = Split::open(dir, "train", None).unwrap();
    let vocab = MaskVocab::new(meta.specials, meta.vocab_size, |_| None);
    let corpus = std::sync::Arc::new(
        Corpus::open(
            split,
            512,
            BreakMode::FullSentences,
            vocab,
            MaskingConfig::default(),
        )
        .unwrap(),
    );
    let epoch = corpus.len() / 32;
    let config = LoaderConfig {
        batch_size: 32,
        seed: 0,
        rank: 0,
        world: 1,
        pad_to: None,
        queue_depth: 8,
        mask_ramp: None,
    };
    let mut loader = Loader::new(corpus, config, LoaderState::default(), None);
    let start = Instant::now();
    let (mut tokens, mut batches) = (0, 0);
    while batches < epoch && start.elapsed().as_secs() < 60 {
        tokens += std::hint::black_box(loader.next_batch().unwrap()).tokens;
        batches += 1;
    }
    let seconds = start.elapsed().as_secs_f64();
    println!(
        "streamed {batches} batches, {tokens} tokens in {seconds:.1} s ({:.2} M tokens/s)",
        tokens as f64 / seconds / 1e6
    );
}

fn main() {
    if let Some(dir) = std::env::args().skip(1).find(|a| !a.starts_with('-')) {
        return stream(std::path::Path::new(&dir));
    }
    let dir = tempfile::tempdir().unwrap();
    // 20M tokens of documents of 5–60 sentences of 5–40 tokens.
    let mut w = ShardWriter::create(
        dir.path().join("train-00000.bin"),
        dir.path().join("train-00000.idx"),
        TokenWidth::U16,
    )
    .unwrap();
    let mut x = 12345u64;
    let mut next = |m: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % m
    };
    while w.tokens() < 20_000_000 {
        let doc: Vec<Vec<u32>> = (0..5 + next(55))
            .map(|_| {
                (0..5 + next(35))
                    .map(|_| 4 + next(u64::from(VOCAB) - 5) as u32)
                    .collect()
            })
            .collect();
        w.push_document(&doc).unwrap();
    }
    let mut split_meta = SplitMeta {
        shards: vec!["train-00000".into()],
        documents: w.documents(),
        sentences: w.sentences(),
        tokens: w.tokens(),
        sha256: String::new(),
        stamps: Vec::new(),
    };
    split_meta.sha256 = split_sha256(&[w.finish().unwrap()]);
    let specials = SpecialTokens {
        bos: 0,
        pad: 1,
        eos: 2,
        unk: 3,
        mask: VOCAB - 1,
    };
    let meta = Meta {
        format: FORMAT_VERSION,
        token_width: TokenWidth::U16,
        vocab_size: VOCAB as usize,
        tokenizer_sha256: String::new(),
        specials,
        splits: [("train".to_string(), split_meta)].into(),
        sources: vec![],
        options: serde_json::Value::Null,
        skipped_invalid: 0,
    };
    std::fs::write(
        dir.path().join(META_FILE),
        serde_json::to_string(&meta).unwrap(),
    )
    .unwrap();

    let split = Split::open(dir.path(), "train", None).unwrap();
    let vocab = MaskVocab::new(specials, VOCAB as usize, |id| {
        Some(if id % 3 == 0 {
            format!("Ġw{id}")
        } else {
            format!("w{id}")
        })
    });
    let corpus = Corpus::open(
        split,
        512,
        BreakMode::FullSentences,
        vocab,
        MaskingConfig::default(),
    )
    .unwrap();
    let config = LoaderConfig {
        batch_size: 32,
        seed: 0,
        rank: 0,
        world: 1,
        pad_to: None,
        queue_depth: 1,
        mask_ramp: None,
    };
    let batches = corpus.len() / 32;

    let start = Instant::now();
    let mut copied = 0usize;
    let mut buf = Vec::new();
    for block in 0..batches * 32 {
        corpus.block_tokens(block, &mut buf).unwrap();
        copied += std::hint::black_box(&buf).len();
    }
    let copy = copied as f64 / start.elapsed().as_secs_f64();

    let mut state = LoaderState::default();
    let start = Instant::now();
    let mut tokens = 0usize;
    for _ in 0..batches {
        let b = batch_at(&corpus, &config, state, None).unwrap();
        tokens += std::hint::black_box(&b).tokens;
        state = b.next;
    }
    let masked = tokens as f64 / start.elapsed().as_secs_f64();
    println!(
        "{} blocks of ≤512 tokens, batches of 32, one thread",
        batches * 32
    );
    println!("copy (baseline):        {:8.2} M tokens/s", copy / 1e6);
    println!(
        "masking + batching:     {:8.2} M tokens/s  ({:.2}x the copy baseline)",
        masked / 1e6,
        masked / copy
    );
}
