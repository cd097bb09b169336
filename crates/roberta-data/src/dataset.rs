//! A preprocessed corpus (`data-bin/`): `meta.json`, the tokenizer, and per split the
//! shards; and the blocks its sentences are served in (packed by [`crate::blocks`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{DataError, Result};
use crate::shards::{Shard, TokenWidth};
use crate::tokenizer::SpecialTokens;

pub const META_FILE: &str = "meta.json";
/// 2: a content hash per split, and the validation split drawn from the keyed streams
/// of [`crate::rng`]. Format 1 directories are read only to be rebuilt.
pub const FORMAT_VERSION: u32 = 2;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SplitMeta {
    /// Shard base names: `NAME.bin` and `NAME.idx` in the data directory.
    pub shards: Vec<String>,
    pub documents: u64,
    pub sentences: u64,
    pub tokens: u64,
    /// sha256 over the shards' content hashes (tokens, then index, per shard), computed
    /// as they were written: a run records it, and a resume on other data is caught
    /// without reading the shards again. Empty in format 1.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sha256: String,
    /// Each shard's files as written, in the order of `shards`: a run checks them when it
    /// opens the split, so a shard changed in place afterwards is caught.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stamps: Vec<ShardStamp>,
}

/// A shard's `.bin` and `.idx` as `preprocess` wrote them: sizes, modification times
/// (nanoseconds since the epoch) and the sha256 of their content.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ShardStamp {
    pub bin_bytes: u64,
    pub idx_bytes: u64,
    pub bin_modified_ns: u64,
    pub idx_modified_ns: u64,
    pub sha256: String,
}

impl ShardStamp {
    /// The stamp of a shard's files as they are now, with their content's `sha256`.
    pub fn of(bin: &Path, idx: &Path, sha256: String) -> Result<Self> {
        let (bin_bytes, bin_modified_ns) = file_stamp(bin)?;
        let (idx_bytes, idx_modified_ns) = file_stamp(idx)?;
        Ok(Self {
            bin_bytes,
            idx_bytes,
            bin_modified_ns,
            idx_modified_ns,
            sha256,
        })
    }

    /// Checks a shard's files against this stamp: equal sizes and times pass; equal
    /// sizes with other times (a copy that did not keep them) are checked by content.
    fn check(&self, bin: &Path, idx: &Path) -> Result<()> {
        let (bin_bytes, bin_time) = file_stamp(bin)?;
        let (idx_bytes, idx_time) = file_stamp(idx)?;
        let changed = |path: &Path, what: &str| DataError::ChangedShard {
            path: path.to_path_buf(),
            what: what.to_string(),
        };
        if bin_bytes != self.bin_bytes {
            return Err(changed(bin, "its size"));
        }
        if idx_bytes != self.idx_bytes {
            return Err(changed(idx, "its size"));
        }
        if (bin_time, idx_time) == (self.bin_modified_ns, self.idx_modified_ns) {
            return Ok(());
        }
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for path in [bin, idx] {
            let mut file = crate::input::open(path)?;
            std::io::copy(&mut file, &mut hasher).map_err(|source| DataError::Io {
                path: path.to_path_buf(),
                source,
            })?;
        }
        if format!("{:x}", hasher.finalize()) != self.sha256 {
            return Err(changed(bin, "its content"));
        }
        Ok(())
    }
}

/// A file's size and modification time (since the epoch; zero where unknown).
pub(crate) fn size_and_time(path: &Path) -> Result<(u64, std::time::Duration)> {
    let meta = std::fs::metadata(path).map_err(|source| DataError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let modified = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .unwrap_or_default();
    Ok((meta.len(), modified))
}

fn file_stamp(path: &Path) -> Result<(u64, u64)> {
    let (bytes, modified) = size_and_time(path)?;
    Ok((bytes, modified.as_nanos() as u64))
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SourceMeta {
    pub path: PathBuf,
    pub bytes: u64,
    /// Modification time, seconds since the epoch, and its nanoseconds: with `bytes`,
    /// how a re-run tells that an input changed (an edit within the same second that
    /// keeps the size, such as reordered lines, still moves the nanoseconds).
    pub modified: u64,
    #[serde(default)]
    pub modified_nanos: u32,
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

/// A split's content hash from its shards' ([`crate::shards::ShardWriter::finish`]).
pub fn split_sha256(shard_digests: &[[u8; 32]]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for d in shard_digests {
        h.update(d);
    }
    format!("{:x}", h.finalize())
}

impl Meta {
    pub fn read(dir: &Path) -> Result<Self> {
        let path = dir.join(META_FILE);
        if !path.exists() {
            return Err(DataError::NotADataDir {
                path: dir.to_path_buf(),
            });
        }
        let text = crate::input::read_to_string(&path)?;
        let meta: Self = serde_json::from_str(&text).map_err(|e| DataError::BadMeta {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if !(1..=FORMAT_VERSION).contains(&meta.format) {
            return Err(DataError::BadMeta {
                path,
                message: format!("format {} (this build reads {FORMAT_VERSION})", meta.format),
            });
        }
        Ok(meta)
    }

    /// Made by an earlier release: `preprocess` rebuilds it, a run refuses it.
    pub fn is_outdated(&self) -> bool {
        self.format < FORMAT_VERSION
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
    /// `meta.json`'s content hash of the split.
    pub sha256: String,
}

impl Split {
    /// Opens `split` of `dir`. `tokenizer_sha256`, when given, must match the hash the
    /// shards were made with: ids from another tokenizer would train garbage silently.
    pub fn open(dir: &Path, split: &str, tokenizer_sha256: Option<&str>) -> Result<Self> {
        let meta = Meta::read(dir)?;
        if meta.is_outdated() {
            return Err(DataError::OutdatedData {
                path: dir.to_path_buf(),
                format: meta.format,
            });
        }
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
        for (i, name) in split_meta.shards.iter().enumerate() {
            let (bin, idx) = (
                dir.join(format!("{name}.bin")),
                dir.join(format!("{name}.idx")),
            );
            if let Some(stamp) = split_meta.stamps.get(i) {
                stamp.check(&bin, &idx)?;
            }
            shards.push(Shard::open(&bin, &idx, meta.token_width)?);
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            name: split.to_string(),
            shards,
            specials: meta.specials,
            vocab_size: meta.vocab_size,
            sha256: split_meta.sha256.clone(),
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

impl BreakMode {
    pub fn name(self) -> &'static str {
        match self {
            Self::FullSentences => "full-sentences",
            Self::DocSentences => "doc-sentences",
        }
    }
}

/// A block: tokens `[start, end)` of one shard, served as `<s> … </s>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    pub shard: u32,
    pub start: u64,
    pub end: u64,
}

impl Split {
    fn shard(&self, block: Block) -> Result<&Shard> {
        self.shards
            .get(block.shard as usize)
            .ok_or_else(|| DataError::CorruptShard {
                path: self.dir.clone(),
                message: format!(
                    "block of shard {}, of {} shards",
                    block.shard,
                    self.shards.len()
                ),
            })
    }

    /// Documents of the block's shard that end strictly inside it: each gets a `</s>`.
    /// Looked up in the mmapped index, so nothing per document is held in memory.
    fn documents_ending_inside(&self, block: Block) -> Result<std::ops::Range<usize>> {
        let shard = self.shard(block)?;
        let first_after = |t: u64| {
            let (mut lo, mut hi) = (0, shard.documents());
            while lo < hi {
                let mid = (lo + hi) / 2;
                if shard.document_end(mid) <= t {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            lo
        };
        if block.start >= block.end {
            return Err(shard.corrupt(format!("an empty block at token {}", block.start)));
        }
        let first = first_after(block.start);
        Ok(first..first_after(block.end - 1).max(first))
    }

    /// Tokens the block is served as, without reading its token data.
    pub fn block_len(&self, block: Block) -> Result<usize> {
        Ok((block.end.saturating_sub(block.start)) as usize
            + 2
            + self.documents_ending_inside(block)?.len())
    }

    /// `<s> tokens </s>` of a block, with `</s>` after every document that ends inside it.
    pub fn block_tokens(&self, block: Block, out: &mut Vec<u32>) -> Result<()> {
        out.clear();
        out.push(self.specials.bos);
        let shard = self.shard(block)?;
        let mut at = block.start;
        for d in self.documents_ending_inside(block)? {
            let end = shard.document_end(d);
            shard.tokens_into(at, end, out)?;
            out.push(self.specials.eos);
            at = end;
        }
        shard.tokens_into(at, block.end, out)?;
        out.push(self.specials.eos);
        Ok(())
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
        let mut split = SplitMeta {
            shards: vec!["train-00000".into()],
            documents: w.documents(),
            sentences: w.sentences(),
            tokens: w.tokens(),
            sha256: String::new(),
            stamps: Vec::new(),
        };
        split.sha256 = split_sha256(&[w.finish().unwrap()]);
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
