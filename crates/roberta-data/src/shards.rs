//! Token shards: documents as contiguous little-endian token ids in `.bin` (u16 when the
//! vocabulary fits, else u32), sentence and document offsets in `.idx`, both read through
//! mmap so that a corpus of any size costs no RAM.
//!
//! `.idx` layout, all u64 little-endian: magic, sentence count S, document count D, then
//! S + 1 token offsets of sentence starts, then D + 1 sentence offsets of document starts.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{DataError, Result};

const IDX_MAGIC: u64 = u64::from_le_bytes(*b"RBIDX001");

/// Width of the stored token ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenWidth {
    U16,
    U32,
}

impl TokenWidth {
    pub fn for_vocab(vocab_size: usize) -> Self {
        if vocab_size <= u16::MAX as usize + 1 {
            Self::U16
        } else {
            Self::U32
        }
    }

    pub fn bytes(self) -> usize {
        match self {
            Self::U16 => 2,
            Self::U32 => 4,
        }
    }
}

/// Writes one shard: documents of sentences of token ids. The offsets stream to two
/// side files that `finish` appends to the index, so memory does not grow with the shard.
pub struct ShardWriter {
    bin: BufWriter<File>,
    bin_path: PathBuf,
    idx_path: PathBuf,
    width: TokenWidth,
    sentence_offsets: BufWriter<File>,
    document_offsets: BufWriter<File>,
    sentences: u64,
    documents: u64,
    tokens: u64,
    /// Everything written to `.bin`, then `.idx`: the shard's content hash.
    digest: Sha256,
}

fn side_file(idx_path: &Path, what: &str) -> PathBuf {
    let mut name = idx_path.file_name().unwrap_or_default().to_os_string();
    name.push(format!(".{what}.tmp"));
    idx_path.with_file_name(name)
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
    move |source| DataError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ShardWriter {
    pub fn create(bin_path: PathBuf, idx_path: PathBuf, width: TokenWidth) -> Result<Self> {
        let open = |path: &Path| -> Result<BufWriter<File>> {
            let mut w =
                BufWriter::with_capacity(1 << 20, File::create(path).map_err(io_error(path))?);
            w.write_all(&0u64.to_le_bytes()).map_err(io_error(path))?;
            Ok(w)
        };
        let bin = BufWriter::with_capacity(
            1 << 20,
            File::create(&bin_path).map_err(io_error(&bin_path))?,
        );
        Ok(Self {
            bin,
            sentence_offsets: open(&side_file(&idx_path, "sentences"))?,
            document_offsets: open(&side_file(&idx_path, "documents"))?,
            bin_path,
            idx_path,
            width,
            sentences: 0,
            documents: 0,
            tokens: 0,
            digest: Sha256::new(),
        })
    }

    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    pub fn bin_path(&self) -> &Path {
        &self.bin_path
    }

    pub fn idx_path(&self) -> &Path {
        &self.idx_path
    }

    pub fn documents(&self) -> u64 {
        self.documents
    }

    pub fn sentences(&self) -> u64 {
        self.sentences
    }

    /// Appends a document; empty sentences are dropped and an empty document is skipped.
    pub fn push_document(&mut self, sentences: &[Vec<u32>]) -> Result<()> {
        let before = self.sentences;
        for sentence in sentences.iter().filter(|s| !s.is_empty()) {
            for &id in sentence {
                let r = match self.width {
                    TokenWidth::U16 => {
                        self.digest.update((id as u16).to_le_bytes());
                        self.bin.write_all(&(id as u16).to_le_bytes())
                    }
                    TokenWidth::U32 => {
                        self.digest.update(id.to_le_bytes());
                        self.bin.write_all(&id.to_le_bytes())
                    }
                };
                r.map_err(io_error(&self.bin_path))?;
            }
            self.tokens += sentence.len() as u64;
            self.sentences += 1;
            self.sentence_offsets
                .write_all(&self.tokens.to_le_bytes())
                .map_err(io_error(&self.idx_path))?;
        }
        if self.sentences > before {
            self.documents += 1;
            self.document_offsets
                .write_all(&self.sentences.to_le_bytes())
                .map_err(io_error(&self.idx_path))?;
        }
        Ok(())
    }

    /// Flushes and fsyncs the token file, then writes the index from the side files.
    /// Returns the sha256 of the token file's bytes followed by the index's: what
    /// `meta.json` records so that a run can tell its data from other data cheaply.
    pub fn finish(mut self) -> Result<[u8; 32]> {
        self.bin.flush().map_err(io_error(&self.bin_path))?;
        self.bin
            .get_ref()
            .sync_all()
            .map_err(io_error(&self.bin_path))?;
        let mut idx = HashingWriter {
            inner: BufWriter::new(File::create(&self.idx_path).map_err(io_error(&self.idx_path))?),
            digest: &mut self.digest,
        };
        for v in [IDX_MAGIC, self.sentences, self.documents] {
            idx.write_all(&v.to_le_bytes())
                .map_err(io_error(&self.idx_path))?;
        }
        for (side, what) in [
            (self.sentence_offsets, "sentences"),
            (self.document_offsets, "documents"),
        ] {
            let path = side_file(&self.idx_path, what);
            drop(side.into_inner().map_err(|e| DataError::Io {
                path: path.clone(),
                source: e.into_error(),
            })?);
            let mut file = File::open(&path).map_err(io_error(&path))?;
            std::io::copy(&mut file, &mut idx).map_err(io_error(&self.idx_path))?;
            std::fs::remove_file(&path).map_err(io_error(&path))?;
        }
        let file = idx.inner.into_inner().map_err(|e| DataError::Io {
            path: self.idx_path.clone(),
            source: e.into_error(),
        })?;
        file.sync_all().map_err(io_error(&self.idx_path))?;
        Ok(self.digest.finalize().into())
    }
}

/// A writer that hashes what passes through it.
struct HashingWriter<'a, W> {
    inner: W,
    digest: &'a mut Sha256,
}

impl<W: Write> Write for HashingWriter<'_, W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.digest.update(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// A memory-mapped shard.
pub struct Shard {
    /// The index file, named in errors about either file.
    path: PathBuf,
    bin: Mmap,
    idx: Mmap,
    width: TokenWidth,
    sentences: usize,
    documents: usize,
}

impl Shard {
    pub fn open(bin_path: &Path, idx_path: &Path, width: TokenWidth) -> Result<Self> {
        let map = |path: &Path| -> Result<Mmap> {
            let file = File::open(path).map_err(|source| DataError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            // SAFETY: shards are written once and never modified in place (they are
            // replaced by rename), so the mapping stays valid and unchanging.
            unsafe { Mmap::map(&file) }.map_err(|source| DataError::Io {
                path: path.to_path_buf(),
                source,
            })
        };
        let bin = map(bin_path)?;
        let idx = map(idx_path)?;
        let corrupt = |message: String| DataError::CorruptShard {
            path: idx_path.to_path_buf(),
            message,
        };
        if idx.len() < 24 || read_u64(&idx, 0) != IDX_MAGIC {
            return Err(corrupt("not a roberta-rs index (bad magic)".into()));
        }
        let sentences = read_u64(&idx, 1);
        let documents = read_u64(&idx, 2);
        let expected = sentences
            .checked_add(documents)
            .and_then(|n| n.checked_add(5))
            .and_then(|n| n.checked_mul(8));
        if expected != Some(idx.len() as u64) {
            return Err(corrupt(format!(
                "{} bytes, but its header counts {sentences} sentences and {documents} documents",
                idx.len(),
            )));
        }
        let (sentences, documents) = (sentences as usize, documents as usize);
        let shard = Self {
            path: idx_path.to_path_buf(),
            bin,
            idx,
            width,
            sentences,
            documents,
        };
        // The ends of both offset tables: O(1) checks here; the offsets in between are
        // checked where they are read (packing, and every served block).
        if read_u64(&shard.idx, 3) != 0
            || shard.document_start(0).ok() != Some(0)
            || shard.document_start(documents).ok() != Some(sentences)
        {
            return Err(corrupt(
                "its offset tables do not start at 0 or do not end at its sentence count".into(),
            ));
        }
        let tokens = shard.tokens();
        if Some(shard.bin.len() as u64) != tokens.checked_mul(width.bytes() as u64) {
            return Err(DataError::CorruptShard {
                path: bin_path.to_path_buf(),
                message: format!("{} bytes, the index says {tokens} tokens", shard.bin.len()),
            });
        }
        Ok(shard)
    }

    pub fn sentences(&self) -> usize {
        self.sentences
    }

    pub fn documents(&self) -> usize {
        self.documents
    }

    pub fn tokens(&self) -> u64 {
        read_u64(&self.idx, 3 + self.sentences)
    }

    /// Token offset where sentence `s` starts (`s == sentences()` gives the end); an
    /// offset past the tokens, or a sentence past the table, is a corrupt index.
    pub fn sentence_start(&self, s: usize) -> Result<u64> {
        if s > self.sentences {
            return Err(self.corrupt(format!(
                "sentence {s} asked of a shard of {} sentences",
                self.sentences
            )));
        }
        let offset = read_u64(&self.idx, 3 + s);
        if s > 0 && offset > self.tokens() {
            return Err(self.corrupt(format!(
                "sentence {s} starts at token {offset}, past its {} tokens",
                self.tokens()
            )));
        }
        Ok(offset)
    }

    /// Sentence index where document `d` starts (`d == documents()` gives the end).
    pub fn document_start(&self, d: usize) -> Result<usize> {
        if d > self.documents {
            return Err(self.corrupt(format!(
                "document {d} asked of a shard of {} documents",
                self.documents
            )));
        }
        let sentence = read_u64(&self.idx, 3 + self.sentences + 1 + d);
        if sentence > self.sentences as u64 {
            return Err(self.corrupt(format!(
                "document {d} starts at sentence {sentence}, past its {} sentences",
                self.sentences
            )));
        }
        Ok(sentence as usize)
    }

    /// The token offset where document `d` ends, for serving blocks: read with every
    /// index clamped into its table, so a corrupt index gives wrong offsets (which
    /// [`Self::tokens_into`] refuses) rather than a read outside the file; no branch
    /// to report, as it runs several times per served block.
    #[inline]
    pub fn document_end(&self, d: usize) -> u64 {
        let first = 3 + self.sentences + 1;
        let sentence = read_u64(&self.idx, first + (d + 1).min(self.documents));
        read_u64(&self.idx, 3 + sentence.min(self.sentences as u64) as usize)
    }

    /// An error naming this shard: its offsets point where they cannot.
    pub fn corrupt(&self, message: String) -> DataError {
        DataError::CorruptShard {
            path: self.path.clone(),
            message,
        }
    }

    /// Appends tokens `[start, end)` to `out`; offsets outside the shard (a corrupt
    /// index) are an error, not a panic.
    pub fn tokens_into(&self, start: u64, end: u64, out: &mut Vec<u32>) -> Result<()> {
        if start > end || end > self.tokens() {
            return Err(self.corrupt(format!(
                "tokens {start}..{end} asked of a shard of {} tokens",
                self.tokens()
            )));
        }
        let (start, end) = (start as usize, end as usize);
        match self.width {
            TokenWidth::U16 => out.extend(
                self.bin[start * 2..end * 2]
                    .chunks_exact(2)
                    .map(|b| u16::from_le_bytes([b[0], b[1]]) as u32),
            ),
            TokenWidth::U32 => out.extend(
                self.bin[start * 4..end * 4]
                    .chunks_exact(4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            ),
        }
        Ok(())
    }
}

fn read_u64(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_u16_and_u32() {
        for width in [TokenWidth::U16, TokenWidth::U32] {
            let dir = tempfile::tempdir().unwrap();
            let (bin, idx) = (dir.path().join("s.bin"), dir.path().join("s.idx"));
            let mut w = ShardWriter::create(bin.clone(), idx.clone(), width).unwrap();
            w.push_document(&[vec![5, 6, 7], vec![], vec![8]]).unwrap();
            w.push_document(&[]).unwrap();
            w.push_document(&[vec![9, 65_535]]).unwrap();
            w.finish().unwrap();
            let s = Shard::open(&bin, &idx, width).unwrap();
            assert_eq!((s.sentences(), s.documents(), s.tokens()), (3, 2, 6));
            assert_eq!(s.document_start(1).unwrap(), 2);
            let mut out = Vec::new();
            s.tokens_into(0, 6, &mut out).unwrap();
            assert_eq!(out, vec![5, 6, 7, 8, 9, 65_535]);
            assert!(s.tokens_into(2, 7, &mut out).is_err());
            assert!(s.tokens_into(3, 2, &mut out).is_err());
        }
    }

    #[test]
    fn truncated_shard_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let (bin, idx) = (dir.path().join("s.bin"), dir.path().join("s.idx"));
        let mut w = ShardWriter::create(bin.clone(), idx.clone(), TokenWidth::U16).unwrap();
        w.push_document(&[vec![5, 6, 7]]).unwrap();
        w.finish().unwrap();
        let data = std::fs::read(&bin).unwrap();
        std::fs::write(&bin, &data[..4]).unwrap();
        let err = Shard::open(&bin, &idx, TokenWidth::U16)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("s.bin"), "{err}");
    }
}
