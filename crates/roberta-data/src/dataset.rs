//! A preprocessed corpus (`data-bin/`): `meta.json`, the tokenizer, and per split the
//! shards; plus packing of its sentences into blocks (FULL-SENTENCES or DOC-SENTENCES).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::shards::{Shard, TokenWidth};
use crate::tokenizer::SpecialTokens;

pub const META_FILE: &str = "meta.json";
pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMeta {
    /// Shard base names: `NAME.bin` and `NAME.idx` in the data directory.
    pub shards: Vec<String>,
    pub documents: u64,
    pub sentences: u64,
    pub tokens: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceMeta {
    pub path: PathBuf,
    pub bytes: u64,
    /// Modification time, seconds since the epoch: with `bytes`, how a re-run tells
    /// that an input changed.
    pub modified: u64,
}

/// `meta.json`: what the shards hold and how they were made. Written last, so a
/// directory without it is an unfinished run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Meta {
    pub format: u32,
    pub token_width: TokenWidth,
    pub vocab_size: usize,
    pub tokenizer_sha256: String,
    pub specials: SpecialTokens,
    pub splits: BTreeMap<String, SplitMeta>,
    pub sources: Vec<SourceMeta>,
    /// The preprocessing options, for deciding whether a re-run has anything to do.
    pub options: serde_json::Value,
    pub skipped_invalid: u64,
}

impl Meta {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(META_FILE);
        if !path.exists() {
            return Err(DataError::NotADataDir {
                path: dir.to_path_buf(),
            });
        }
        let text = std::fs::read_to_string(&path).map_err(|source| DataError::Io {
            path: path.clone(),
            source,
        })?;
        let meta: Self = serde_json::from_str(&text).map_err(|e| DataError::BadMeta {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if meta.format != FORMAT_VERSION {
            return Err(DataError::BadMeta {
                path,
                message: format!("format {} (this build reads {FORMAT_VERSION})", meta.format),
            });
        }
        Ok(meta)
    }
}

/// One split of a data directory, memory-mapped.
pub struct Split {
    /// The data directory, for messages.
    pub dir: PathBuf,
    pub name: String,
    pub shards: Vec<Shard>,
    pub specials: SpecialTokens,
    pub vocab_size: usize,
}

impl Split {
    /// Opens `split` of `dir`. `tokenizer_sha256`, when given, must match the hash the
    /// shards were made with: ids from another tokenizer would train garbage silently.
    pub fn open(dir: &Path, split: &str, tokenizer_sha256: Option<&str>) -> Result<Self> {
        let meta = Meta::read(dir)?;
        if let Some(expected) = tokenizer_sha256
            && expected != meta.tokenizer_sha256
        {
            return Err(DataError::TokenizerMismatch {
                path: dir.to_path_buf(),
                shards: meta.tokenizer_sha256.clone(),
                tokenizer: expected.to_string(),
            });
        }
        let split_meta = meta
            .splits
            .get(split)
            .ok_or_else(|| DataError::MissingSplit {
                path: dir.to_path_buf(),
                split: split.to_string(),
                available: meta.splits.keys().cloned().collect::<Vec<_>>().join(", "),
            })?;
        let mut shards = Vec::new();
        for name in &split_meta.shards {
            shards.push(Shard::open(
                &dir.join(format!("{name}.bin")),
                &dir.join(format!("{name}.idx")),
                meta.token_width,
            )?);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            name: split.to_string(),
            shards,
            specials: meta.specials,
            vocab_size: meta.vocab_size,
        })
    }

    pub fn tokens(&self) -> u64 {
        self.shards.iter().map(Shard::tokens).sum()
    }

    /// Refuses shards made with a vocabulary larger than `vocab_size` (the tokenizer's
    /// or the model's): their ids could index past the embeddings. A hash check alone
    /// misses a `meta.json` edited or written by another tool.
    pub fn check_vocab(&self, vocab_size: usize) -> Result<()> {
        if self.vocab_size > vocab_size {
            return Err(DataError::VocabTooLarge {
                path: self.dir.clone(),
                shards: self.vocab_size,
                vocab: vocab_size,
            });
        }
        Ok(())
    }
}

/// How sentences are packed into blocks (the RoBERTa paper, section 4.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BreakMode {
    /// Whole sentences, crossing document boundaries with an extra `</s>` between
    /// documents: RoBERTa's choice.
    #[default]
    FullSentences,
    /// Whole sentences, never crossing a document boundary.
    DocSentences,
}

/// A block: tokens `[start, end)` of one shard, served as `<s> … </s>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub shard: u32,
    pub start: u64,
    pub end: u64,
}

/// Packs every sentence of `split` into blocks of at most `block_size` tokens, counting
/// `<s>`, `</s>` and document separators. A sentence longer than a block is cut into
/// block-sized pieces.
pub fn pack(split: &Split, block_size: usize, mode: BreakMode) -> Vec<Block> {
    assert!(block_size >= 3, "block_size must leave room for a token");
    let capacity = (block_size - 2) as u64;
    let mut blocks = Vec::new();
    for (shard_index, shard) in split.shards.iter().enumerate() {
        let shard_id = shard_index as u32;
        let mut open: Option<(u64, u64)> = None; // (start, length with separators)
        let flush = |open: &mut Option<(u64, u64)>, end: u64, blocks: &mut Vec<Block>| {
            if let Some((start, _)) = open.take() {
                blocks.push(Block {
                    shard: shard_id,
                    start,
                    end,
                });
            }
        };
        for d in 0..shard.documents() {
            let (first, last) = (shard.document_start(d), shard.document_start(d + 1));
            if mode == BreakMode::DocSentences {
                flush(&mut open, shard.sentence_start(first), &mut blocks);
            }
            for s in first..last {
                let (start, end) = (shard.sentence_start(s), shard.sentence_start(s + 1));
                let len = end - start;
                let separator = u64::from(s == first && open.is_some());
                if len > capacity {
                    flush(&mut open, start, &mut blocks);
                    let mut piece = start;
                    while end - piece > capacity {
                        blocks.push(Block {
                            shard: shard_id,
                            start: piece,
                            end: piece + capacity,
                        });
                        piece += capacity;
                    }
                    open = Some((piece, end - piece));
                    continue;
                }
                match open {
                    Some((_, used)) if used + separator + len <= capacity => {
                        open = open.map(|(b, u)| (b, u + separator + len));
                    }
                    Some(_) => {
                        flush(&mut open, start, &mut blocks);
                        open = Some((start, len));
                    }
                    None => open = Some((start, len)),
                }
            }
        }
        flush(&mut open, shard.tokens(), &mut blocks);
    }
    blocks
}

impl Split {
    /// Documents of the block's shard that end strictly inside it: each gets a `</s>`.
    /// Looked up in the mmapped index, so nothing per document is held in memory.
    fn documents_ending_inside(&self, block: Block) -> std::ops::Range<usize> {
        let shard = &self.shards[block.shard as usize];
        let doc_end = |d: usize| shard.sentence_start(shard.document_start(d + 1));
        let first_after = |t: u64| {
            let (mut lo, mut hi) = (0, shard.documents());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if doc_end(mid) <= t {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        first_after(block.start)..first_after(block.end - 1)
    }

    /// Tokens the block is served as, without reading its token data.
    pub fn block_len(&self, block: Block) -> usize {
        (block.end - block.start) as usize + 2 + self.documents_ending_inside(block).len()
    }

    /// `<s> tokens </s>` of a block, with `</s>` after every document that ends inside it.
    pub fn block_tokens(&self, block: Block, out: &mut Vec<u32>) {
        out.clear();
        out.push(self.specials.bos);
        let shard = &self.shards[block.shard as usize];
        let mut at = block.start;
        for d in self.documents_ending_inside(block) {
            let end = shard.sentence_start(shard.document_start(d + 1));
            shard.tokens_into(at, end, out);
            out.push(self.specials.eos);
            at = end;
        }
        shard.tokens_into(at, block.end, out);
        out.push(self.specials.eos);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::shards::ShardWriter;

    /// Writes a one-shard "train" split of the given documents and returns its directory.
    pub(crate) fn write_split(docs: &[Vec<Vec<u32>>]) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let mut w = ShardWriter::create(
            dir.path().join("train-00000.bin"),
            dir.path().join("train-00000.idx"),
            TokenWidth::U16,
        )
        .unwrap();
        for d in docs {
            w.push_document(d).unwrap();
        }
        let split = SplitMeta {
            shards: vec!["train-00000".into()],
            documents: w.documents(),
            sentences: w.sentences(),
            tokens: w.tokens(),
        };
        w.finish().unwrap();
        let meta = Meta {
            format: FORMAT_VERSION,
            token_width: TokenWidth::U16,
            vocab_size: 100,
            tokenizer_sha256: "test".into(),
            specials: SpecialTokens {
                bos: 0,
                pad: 1,
                eos: 2,
                unk: 3,
                mask: 99,
            },
            splits: [("train".to_string(), split)].into(),
            sources: vec![],
            options: serde_json::Value::Null,
            skipped_invalid: 0,
        };
        std::fs::write(
            dir.path().join(META_FILE),
            serde_json::to_string(&meta).unwrap(),
        )
        .unwrap();
        dir
    }

    fn blocks_as_tokens(split: &Split, blocks: &[Block]) -> Vec<Vec<u32>> {
        blocks
            .iter()
            .map(|&b| {
                let mut v = Vec::new();
                split.block_tokens(b, &mut v);
                assert_eq!(split.block_len(b), v.len());
                v
            })
            .collect()
    }

    #[test]
    fn full_sentences_cross_documents_with_a_separator() {
        let dir = write_split(&[
            vec![vec![10, 11], vec![12]],
            vec![vec![20, 21, 22]],
            vec![vec![30; 4]],
        ]);
        let split = Split::open(dir.path(), "train", Some("test")).unwrap();
        let blocks = pack(&split, 9, BreakMode::FullSentences);
        assert_eq!(
            blocks_as_tokens(&split, &blocks),
            vec![
                vec![0, 10, 11, 12, 2, 20, 21, 22, 2],
                vec![0, 30, 30, 30, 30, 2]
            ]
        );
    }

    #[test]
    fn doc_sentences_never_cross() {
        let dir = write_split(&[vec![vec![10, 11], vec![12]], vec![vec![20, 21, 22]]]);
        let split = Split::open(dir.path(), "train", None).unwrap();
        let blocks = pack(&split, 9, BreakMode::DocSentences);
        assert_eq!(
            blocks_as_tokens(&split, &blocks),
            vec![vec![0, 10, 11, 12, 2], vec![0, 20, 21, 22, 2]]
        );
    }

    #[test]
    fn long_sentences_are_split_and_blocks_never_overflow() {
        let dir = write_split(&[
            vec![vec![5; 3], (40..57).collect(), vec![6; 2]],
            vec![vec![7; 6]],
        ]);
        let split = Split::open(dir.path(), "train", None).unwrap();
        for mode in [BreakMode::FullSentences, BreakMode::DocSentences] {
            let blocks = pack(&split, 8, mode);
            let tokens = blocks_as_tokens(&split, &blocks);
            assert!(tokens.iter().all(|t| t.len() <= 8), "{tokens:?}");
            let inner: usize = tokens
                .iter()
                .map(|t| t.iter().filter(|&&x| x >= 5).count())
                .sum();
            assert_eq!(inner, 3 + 17 + 2 + 6, "every token served exactly once");
        }
    }

    #[test]
    fn a_vocabulary_larger_than_the_models_is_refused() {
        let dir = write_split(&[vec![vec![10]]]);
        let split = Split::open(dir.path(), "train", Some("test")).unwrap();
        split.check_vocab(100).unwrap();
        split.check_vocab(5000).unwrap();
        let err = split.check_vocab(99).unwrap_err().to_string();
        assert!(
            err.starts_with(&dir.path().display().to_string())
                && err.contains("100 tokens")
                && err.contains("the 99"),
            "{err}"
        );
    }

    #[test]
    fn another_tokenizer_is_refused() {
        let dir = write_split(&[vec![vec![10]]]);
        let err = Split::open(dir.path(), "train", Some("other"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("another tokenizer"), "{err}");
    }
}
