//! Packing a split's sentences into blocks (FULL-SENTENCES or DOC-SENTENCES), and the
//! block index that holds the result on disk, memory-mapped like the shards, so that a
//! loader's memory does not grow with the corpus.
//!
//! The index is built once per (split, block size, break mode) into the data directory
//! as `blocks-SPLIT-MODE-SIZE.idx`, written to a temporary file, synced and renamed. It
//! records the split's content hash, so shards made again are packed again. Where the
//! data directory cannot be written (a read-only share), it is built into an unnamed
//! temporary file instead, and packed again by the next run.
//!
//! Layout, all u64 little-endian: magic, block size, break mode, shard count S, block
//! count B, tokens served over all blocks, the split's sha256 as 64 hex bytes (8 words),
//! the sha256 of everything after the header (4 words); then S + 1 cumulative block
//! counts (the first block of each shard); then, shard by shard, the token offset where
//! each of its blocks starts followed by the shard's end: B + S offsets. Blocks tile their
//! shard, so a block ends where the next one starts. The body's hash is checked when the
//! index is opened (one pass over it, 8 bytes a block), so a damaged index is packed
//! again rather than served.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use memmap2::Mmap;

use crate::dataset::{Block, BreakMode, Split};
use crate::error::{DataError, Result};

const MAGIC: u64 = u64::from_le_bytes(*b"RBBLK002");
const HEADER_WORDS: usize = 18;
/// Where the body's sha256 sits in the header.
const BODY_HASH: std::ops::Range<usize> = 14 * 8..18 * 8;

/// Block sizes a run may use: room for `<s>`, `</s>` and a few tokens, and at most
/// what position embeddings are ever made for.
pub const BLOCK_SIZES: std::ops::RangeInclusive<usize> = 8..=8192;

/// The one check of a block size, for every command and key that takes one (`name`).
pub fn check_block_size(name: &str, block_size: usize) -> std::result::Result<(), String> {
    if BLOCK_SIZES.contains(&block_size) {
        return Ok(());
    }
    let given = if name.starts_with("--") {
        format!("{name} {block_size}")
    } else {
        format!("{name} = {block_size}")
    };
    Err(format!(
        "{given} must be in [{}, {}]",
        BLOCK_SIZES.start(),
        BLOCK_SIZES.end()
    ))
}

/// The file name of a split's block index, which `preprocess` recognises as its own.
pub fn index_file_name(split: &str, mode: BreakMode, block_size: usize) -> String {
    format!("blocks-{split}-{}-{block_size}.idx", mode.name())
}

/// Whether `name` is a block index or one of its temporaries (`.NAME.tmp-PID`).
pub fn is_index_file_name(name: &str) -> bool {
    let name = match roberta_fs::temporary_of(name) {
        Some((base, _)) => base,
        None if name.starts_with('.') => return false,
        None => name,
    };
    let Some(rest) = name
        .strip_prefix("blocks-")
        .and_then(|r| r.strip_suffix(".idx"))
    else {
        return false;
    };
    let Some((rest, size)) = rest.rsplit_once('-') else {
        return false;
    };
    !size.is_empty()
        && size.bytes().all(|b| b.is_ascii_digit())
        && [BreakMode::FullSentences, BreakMode::DocSentences]
            .iter()
            .any(|m| {
                rest.strip_suffix(m.name())
                    .and_then(|s| s.strip_suffix('-'))
                    .is_some_and(|split| matches!(split, "train" | "valid"))
            })
}

/// Packs every sentence of `split` into blocks of at most `block_size` tokens, counting
/// `<s>`, `</s>` and document separators, and hands each to `emit` in order. A sentence
/// longer than a block is cut into block-sized pieces. Blocks tile each shard. Offsets
/// that go backwards (a corrupt index) are an error.
pub fn pack(
    split: &Split,
    block_size: usize,
    mode: BreakMode,
    mut emit: impl FnMut(Block) -> Result<()>,
) -> Result<()> {
    check_block_size("the block size", block_size).map_err(DataError::Invalid)?;
    let capacity = (block_size - 2) as u64;
    for (shard_index, shard) in split.shards.iter().enumerate() {
        let shard_id = shard_index as u32;
        let block = |start, end| Block {
            shard: shard_id,
            start,
            end,
        };
        let mut open: Option<(u64, u64)> = None; // (start, length with separators)
        let mut flush = |open: &mut Option<(u64, u64)>, end: u64| -> Result<()> {
            match open.take() {
                Some((start, _)) => emit(block(start, end)),
                None => Ok(()),
            }
        };
        let mut last_sentence = 0;
        for d in 0..shard.documents() {
            let (first, last) = (shard.document_start(d)?, shard.document_start(d + 1)?);
            if first < last_sentence || last < first {
                return Err(shard.corrupt(format!(
                    "document {d} spans sentences {first}..{last}, after sentence {last_sentence}"
                )));
            }
            last_sentence = last;
            if mode == BreakMode::DocSentences {
                flush(&mut open, shard.sentence_start(first)?)?;
            }
            for s in first..last {
                let (start, end) = (shard.sentence_start(s)?, shard.sentence_start(s + 1)?);
                if end < start {
                    return Err(shard.corrupt(format!("sentence {s} spans tokens {start}..{end}")));
                }
                let len = end - start;
                let separator = u64::from(s == first && open.is_some());
                if len > capacity {
                    flush(&mut open, start)?;
                    let mut piece = start;
                    while end - piece > capacity {
                        flush(&mut Some((piece, 0)), piece + capacity)?;
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
                        flush(&mut open, start)?;
                        open = Some((start, len));
                    }
                    None => open = Some((start, len)),
                }
            }
        }
        flush(&mut open, shard.tokens())?;
    }
    Ok(())
}

/// A split's blocks, memory-mapped.
pub struct BlockIndex {
    map: Mmap,
    /// Where the index lives, for messages (the data directory's file, or a note that
    /// it is a temporary file).
    path: PathBuf,
    shards: usize,
    blocks: u64,
    served_tokens: u64,
}

impl BlockIndex {
    /// The block index of `split` for this block size and break mode: the one in the
    /// data directory when it is current, else packed now and written there.
    pub fn open(split: &Split, block_size: usize, mode: BreakMode) -> Result<Self> {
        let path = split
            .dir
            .join(index_file_name(&split.name, mode, block_size));
        if let Ok(file) = File::open(&path)
            && let Ok(index) = Self::map(file, &path)
            && index.matches(split, block_size, mode)
        {
            return Ok(index);
        }
        match build_in_place(split, block_size, mode, &path) {
            Ok(file) => Self::map(file, &path),
            Err(DataError::WriteIndex { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::PermissionDenied | std::io::ErrorKind::ReadOnlyFilesystem
                ) =>
            {
                let temporary = std::env::temp_dir();
                let mut file = tempfile::tempfile().map_err(|source| DataError::WriteIndex {
                    path: temporary.clone(),
                    source,
                })?;
                write_index(split, block_size, mode, &mut file).map_err(|e| match e {
                    WriteError::Io(source) => DataError::WriteIndex {
                        path: temporary,
                        source,
                    },
                    WriteError::Data(e) => e,
                })?;
                Self::map(file, &path)
            }
            Err(e) => Err(e),
        }
    }

    fn map(file: File, path: &Path) -> Result<Self> {
        // SAFETY: the index is written once into a temporary file and renamed into
        // place, never modified in place; a new one replaces it by rename.
        let map = unsafe { Mmap::map(&file) }.map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let corrupt = |message: String| DataError::CorruptBlockIndex {
            path: path.to_path_buf(),
            message,
        };
        if map.len() < HEADER_WORDS * 8 || word(&map, 0) != MAGIC {
            return Err(corrupt("not a block index (bad magic)".into()));
        }
        let (shards, blocks) = (word(&map, 3), word(&map, 4));
        let expected = shards
            .checked_mul(2)
            .and_then(|w| w.checked_add(blocks))
            .and_then(|w| w.checked_add(HEADER_WORDS as u64 + 1))
            .and_then(|w| w.checked_mul(8));
        if expected != Some(map.len() as u64) {
            return Err(corrupt(format!(
                "{} bytes, but its header counts {shards} shards and {blocks} blocks",
                map.len()
            )));
        }
        Ok(Self {
            path: path.to_path_buf(),
            shards: shards as usize,
            blocks,
            served_tokens: word(&map, 5),
            map,
        })
    }

    /// Whether this index was packed from `split`'s current shards with these settings,
    /// and is whole.
    fn matches(&self, split: &Split, block_size: usize, mode: BreakMode) -> bool {
        use sha2::{Digest, Sha256};
        word(&self.map, 1) == block_size as u64
            && word(&self.map, 2) == mode_word(mode)
            && self.shards == split.shards.len()
            && self.map[6 * 8..14 * 8] == hash_bytes(&split.sha256)
            && self.first_block(self.shards) == self.blocks
            && self.map[BODY_HASH] == Sha256::digest(&self.map[HEADER_WORDS * 8..])[..]
    }

    pub fn len(&self) -> u64 {
        self.blocks
    }

    pub fn is_empty(&self) -> bool {
        self.blocks == 0
    }

    /// Tokens served over all blocks, separators included.
    pub fn served_tokens(&self) -> u64 {
        self.served_tokens
    }

    fn first_block(&self, shard: usize) -> u64 {
        word(&self.map, HEADER_WORDS + shard)
    }

    /// Block `b` (`b < len()`). A corrupt table gives a block whose offsets fail when
    /// its tokens are read, never a read outside the file.
    pub fn get(&self, b: u64) -> Block {
        debug_assert!(b < self.blocks, "block {b} of {}", self.blocks);
        // The last shard whose first block is at or before `b`.
        let (mut lo, mut hi) = (0, self.shards);
        while lo + 1 < hi {
            let mid = (lo + hi) / 2;
            if self.first_block(mid) <= b {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let offsets = HEADER_WORDS + self.shards + 1;
        let at = (b as usize + lo).min(self.blocks as usize + self.shards - 1);
        Block {
            shard: lo as u32,
            start: word(&self.map, offsets + at),
            end: word(&self.map, offsets + at + 1),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

fn word(bytes: &[u8], i: usize) -> u64 {
    u64::from_le_bytes(bytes[i * 8..i * 8 + 8].try_into().expect("8 bytes"))
}

fn mode_word(mode: BreakMode) -> u64 {
    match mode {
        BreakMode::FullSentences => 0,
        BreakMode::DocSentences => 1,
    }
}

/// The split's hash as the 64 bytes the header holds (zeros for a split without one).
fn hash_bytes(sha256: &str) -> [u8; 64] {
    let mut out = [0u8; 64];
    for (o, b) in out.iter_mut().zip(sha256.bytes()) {
        *o = b;
    }
    out
}

/// Packs into the index's temporary (see [`roberta_fs`]), syncs it and renames it into
/// place. An error names the index, whatever step failed, and leaves no temporary.
fn build_in_place(split: &Split, block_size: usize, mode: BreakMode, path: &Path) -> Result<File> {
    let io = |e: roberta_fs::IoError| DataError::WriteIndex {
        path: path.to_path_buf(),
        source: e.source,
    };
    let mut temp = roberta_fs::TempFile::create(path).map_err(io)?;
    write_index(split, block_size, mode, temp.file()).map_err(|e| match e {
        WriteError::Io(source) => DataError::WriteIndex {
            path: path.to_path_buf(),
            source,
        },
        WriteError::Data(e) => e,
    })?;
    temp.publish(roberta_fs::Publish::Replace).map_err(io)
}

/// Why writing an index failed: the file, or the shards it was packed from.
enum WriteError {
    Io(std::io::Error),
    Data(DataError),
}

impl From<std::io::Error> for WriteError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<DataError> for WriteError {
    fn from(e: DataError) -> Self {
        Self::Data(e)
    }
}

/// Packs `split` and writes the index to `file` (from its start).
fn write_index(
    split: &Split,
    block_size: usize,
    mode: BreakMode,
    file: &mut File,
) -> std::result::Result<(), WriteError> {
    let shards = split.shards.len();
    // Pass 1: the blocks per shard and the tokens served, for the header and the table.
    let mut per_shard = vec![0u64; shards];
    let mut served = 0u64;
    pack(split, block_size, mode, |b| {
        per_shard[b.shard as usize] += 1;
        served += split.block_len(b)? as u64;
        Ok(())
    })?;
    let blocks: u64 = per_shard.iter().sum();
    let mut w = BufWriter::with_capacity(1 << 20, &mut *file);
    for v in [
        MAGIC,
        block_size as u64,
        mode_word(mode),
        shards as u64,
        blocks,
        served,
    ] {
        w.write_all(&v.to_le_bytes())?;
    }
    w.write_all(&hash_bytes(&split.sha256))?;
    w.write_all(&[0u8; 32])?;
    let mut first = 0u64;
    for n in per_shard.iter().chain([&0]) {
        w.write_all(&first.to_le_bytes())?;
        first += n;
    }
    // Pass 2: the offsets, each shard's blocks' starts followed by its end. Write
    // errors are kept aside: packing's own errors are data errors.
    let mut shard = 0;
    let mut failed = None;
    pack(split, block_size, mode, |b| {
        let mut put = |v: u64| {
            if failed.is_none()
                && let Err(e) = w.write_all(&v.to_le_bytes())
            {
                failed = Some(e);
            }
        };
        while shard < b.shard as usize {
            put(split.shards[shard].tokens());
            shard += 1;
        }
        put(b.start);
        Ok(())
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    for s in &split.shards[shard..] {
        w.write_all(&s.tokens().to_le_bytes())?;
    }
    w.flush()?;
    drop(w);
    // The body's hash, read back from the file just written (no copy of it in memory).
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    file.seek(SeekFrom::Start((HEADER_WORDS * 8) as u64))?;
    std::io::copy(
        &mut std::io::BufReader::with_capacity(1 << 20, &mut *file),
        &mut hasher,
    )?;
    file.seek(SeekFrom::Start(BODY_HASH.start as u64))?;
    file.write_all(&hasher.finalize())?;
    file.seek(SeekFrom::Start(0))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::tests::write_split;

    fn packed(split: &Split, block_size: usize, mode: BreakMode) -> Vec<Block> {
        let mut blocks = Vec::new();
        pack(split, block_size, mode, |b| {
            blocks.push(b);
            Ok(())
        })
        .unwrap();
        blocks
    }

    fn blocks_as_tokens(split: &Split, blocks: &[Block]) -> Vec<Vec<u32>> {
        blocks
            .iter()
            .map(|&b| {
                let mut v = Vec::new();
                split.block_tokens(b, &mut v).unwrap();
                assert_eq!(split.block_len(b).unwrap(), v.len());
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
        let blocks = packed(&split, 9, BreakMode::FullSentences);
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
        let blocks = packed(&split, 9, BreakMode::DocSentences);
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
            let blocks = packed(&split, 8, mode);
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
    fn the_index_on_disk_holds_what_packing_gives_and_is_reused() {
        let docs: Vec<Vec<Vec<u32>>> = (0..50u32)
            .map(|d| vec![vec![10 + d % 50; 1 + (d % 7) as usize], vec![11; 3]])
            .collect();
        let dir = write_split(&docs);
        let split = Split::open(dir.path(), "train", None).unwrap();
        for mode in [BreakMode::FullSentences, BreakMode::DocSentences] {
            let expected = packed(&split, 12, mode);
            let index = BlockIndex::open(&split, 12, mode).unwrap();
            assert_eq!(
                index.path(),
                dir.path().join(index_file_name("train", mode, 12))
            );
            let got: Vec<Block> = (0..index.len()).map(|b| index.get(b)).collect();
            assert_eq!(got, expected);
            let served: usize = expected.iter().map(|&b| split.block_len(b).unwrap()).sum();
            assert_eq!(index.served_tokens(), served as u64);
            // Opened again: the same file, not rewritten.
            let modified = std::fs::metadata(index.path()).unwrap().modified().unwrap();
            let again = BlockIndex::open(&split, 12, mode).unwrap();
            assert_eq!(again.len(), index.len());
            assert_eq!(
                std::fs::metadata(index.path()).unwrap().modified().unwrap(),
                modified
            );
        }
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.starts_with("blocks-") || n.starts_with('.'))
            .collect();
        names.sort();
        assert_eq!(
            names,
            [
                "blocks-train-doc-sentences-12.idx",
                "blocks-train-full-sentences-12.idx"
            ]
        );
        assert!(names.iter().all(|n| is_index_file_name(n)));
    }

    #[test]
    fn a_stale_or_damaged_index_is_packed_again() {
        let dir = write_split(&[vec![vec![10, 11], vec![12]], vec![vec![20, 21, 22]]]);
        let split = Split::open(dir.path(), "train", None).unwrap();
        let path = BlockIndex::open(&split, 9, BreakMode::FullSentences)
            .unwrap()
            .path()
            .to_path_buf();
        // Another split hash (shards made again), and a truncated file.
        let mut other = Split::open(dir.path(), "train", None).unwrap();
        other.sha256 = "f".repeat(64);
        let index = BlockIndex::open(&other, 9, BreakMode::FullSentences).unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(&std::fs::read(&path).unwrap()[48..49], b"f");
        let bytes = std::fs::read(&path).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 8]).unwrap();
        let index = BlockIndex::open(&other, 9, BreakMode::FullSentences).unwrap();
        assert_eq!(index.get(0).end, 6);
        // A block start moved, the file's size unchanged: the body's hash tells.
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 16;
        bytes[last] ^= 1;
        std::fs::write(&path, &bytes).unwrap();
        let index = BlockIndex::open(&other, 9, BreakMode::FullSentences).unwrap();
        assert_eq!((index.get(0).start, index.get(0).end), (0, 6));
    }

    #[cfg(unix)]
    #[test]
    fn a_read_only_data_directory_packs_into_a_temporary_file() {
        use std::os::unix::fs::PermissionsExt;
        let dir = write_split(&[vec![vec![10, 11], vec![12]], vec![vec![20, 21, 22]]]);
        let split = Split::open(dir.path(), "train", None).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        // Root writes anyway: then the index lands in the directory as usual.
        let writable = std::fs::File::create(dir.path().join("probe")).is_ok();
        let index = BlockIndex::open(&split, 9, BreakMode::FullSentences);
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let index = index.unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(index.path().exists(), writable);
    }

    #[test]
    fn index_names_are_recognised() {
        for name in [
            "blocks-train-full-sentences-512.idx",
            "blocks-valid-doc-sentences-8.idx",
            ".blocks-train-full-sentences-512.idx.tmp-123",
        ] {
            assert!(is_index_file_name(name), "{name}");
        }
        for name in [
            "blocks-test-full-sentences-512.idx",
            "blocks-train-full-512.idx",
            "blocks-train-full-sentences-.idx",
            ".blocks-train-full-sentences-512.idx.tmp-",
            "train-00000.idx",
        ] {
            assert!(!is_index_file_name(name), "{name}");
        }
    }
}
