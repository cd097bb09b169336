//! `preprocess`: raw corpus files → token shards, in parallel, with bounded memory,
//! deterministic output and an atomic finish.
//!
//! One reader thread streams documents in input order and cuts them into numbered chunks;
//! worker threads tokenize chunks; the calling thread writes them back in chunk order, so
//! the output does not depend on the number of workers. Queues are bounded, so memory
//! is too. Everything is written into a temporary sibling directory that is renamed into
//! place after `meta.json`, so a killed run leaves nothing that looks complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::corpus::{ReadOptions, expand_inputs, read_documents};
use crate::dataset::{FORMAT_VERSION, META_FILE, Meta, SourceMeta, SplitMeta};
use crate::error::{DataError, Result};
use crate::rng::KeyedRng;
use crate::shards::{ShardWriter, TokenWidth};
use crate::tokenizer::{RobertaTokenizer, TOKENIZER_FILE};

/// Text bytes per chunk handed to a worker.
const CHUNK_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PreprocessOptions {
    pub inputs: Vec<PathBuf>,
    /// Held-out files; when empty, `valid_fraction` of the documents are held out.
    pub valid: Vec<PathBuf>,
    pub valid_fraction: f64,
    pub read: ReadOptions,
    /// Tokens per shard before a new one is started (at a document boundary).
    pub shard_tokens: u64,
    /// Seeds the document-level train/valid draw.
    pub seed: u64,
    #[serde(skip)]
    pub workers: usize,
}

impl Default for PreprocessOptions {
    fn default() -> Self {
        Self {
            inputs: Vec::new(),
            valid: Vec::new(),
            valid_fraction: 0.0,
            read: ReadOptions::default(),
            shard_tokens: 1 << 28,
            seed: 0,
            workers: std::thread::available_parallelism().map_or(2, |n| n.get()),
        }
    }
}

/// Counters for a progress display.
#[derive(Debug, Clone, Copy, Default)]
pub struct Progress {
    pub bytes: u64,
    pub total_bytes: u64,
    pub documents: u64,
    pub tokens: u64,
}

pub enum Outcome {
    /// Shards were written.
    Written(Meta),
    /// The directory already holds shards of these inputs, tokenizer and options.
    UpToDate(Meta),
}

/// sha256 of the tokenizer's canonical JSON: what shards record and check.
pub fn tokenizer_sha256(tokenizer: &RobertaTokenizer) -> String {
    let json = tokenizer.inner().to_string(false).unwrap_or_default();
    format!("{:x}", Sha256::digest(json.as_bytes()))
}

fn sources(files: &[PathBuf]) -> Result<Vec<SourceMeta>> {
    files
        .iter()
        .map(|path| {
            let m = std::fs::metadata(path).map_err(|source| DataError::Io {
                path: path.clone(),
                source,
            })?;
            let modified = m
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_secs());
            Ok(SourceMeta {
                path: path.clone(),
                bytes: m.len(),
                modified,
            })
        })
        .collect()
}

pub fn preprocess(
    tokenizer: &RobertaTokenizer,
    options: &PreprocessOptions,
    out: &Path,
    force: bool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<Outcome> {
    if !(0.0..1.0).contains(&options.valid_fraction) {
        return Err(DataError::Invalid(format!(
            "--valid-fraction {} must be in [0, 1)",
            options.valid_fraction
        )));
    }
    let train_files = expand_inputs(&options.inputs)?;
    let valid_files = if options.valid.is_empty() {
        Vec::new()
    } else {
        expand_inputs(&options.valid)?
    };
    let mut all_sources = sources(&train_files)?;
    all_sources.extend(sources(&valid_files)?);
    let hash = tokenizer_sha256(tokenizer);
    let options_json = serde_json::to_value(options).expect("options serialise");

    if !force
        && let Ok(existing) = Meta::read(out)
        && existing.sources == all_sources
        && existing.tokenizer_sha256 == hash
        && existing.options == options_json
    {
        return Ok(Outcome::UpToDate(existing));
    }

    let parent = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|source| DataError::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    let name = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "data-bin".into());
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|source| DataError::Io {
        path: tmp.clone(),
        source,
    })?;
    let result = write_all(
        tokenizer,
        options,
        &train_files,
        &valid_files,
        &tmp,
        progress,
    )
    .and_then(|(splits, skipped)| {
        let meta = Meta {
            format: FORMAT_VERSION,
            token_width: TokenWidth::for_vocab(tokenizer.vocab_size()),
            vocab_size: tokenizer.vocab_size(),
            tokenizer_sha256: hash,
            specials: tokenizer.specials(),
            splits,
            sources: all_sources,
            options: options_json,
            skipped_invalid: skipped,
        };
        let tok_path = tmp.join(TOKENIZER_FILE);
        tokenizer
            .inner()
            .save(&tok_path, true)
            .map_err(|e| DataError::Tokenizer {
                path: tok_path.clone(),
                message: e.to_string(),
            })?;
        let meta_path = tmp.join(META_FILE);
        std::fs::write(
            &meta_path,
            serde_json::to_vec_pretty(&meta).expect("meta serialises"),
        )
        .and_then(|_| std::fs::File::open(&meta_path)?.sync_all())
        .map_err(|source| DataError::Io {
            path: meta_path,
            source,
        })?;
        Ok(meta)
    });
    let meta = match result {
        Ok(meta) => meta,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let io = |source| DataError::Io {
        path: out.to_path_buf(),
        source,
    };
    if out.exists() {
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        std::fs::rename(out, &old).map_err(io)?;
        std::fs::rename(&tmp, out).map_err(io)?;
        let _ = std::fs::remove_dir_all(&old);
    } else {
        std::fs::rename(&tmp, out).map_err(io)?;
    }
    Ok(Outcome::Written(meta))
}

/// A chunk of documents, tagged with its split.
struct Chunk {
    index: u64,
    docs: Vec<(bool, Vec<String>)>,
    bytes: u64,
}

struct Tokenized {
    index: u64,
    docs: Vec<(bool, Vec<Vec<u32>>)>,
    bytes: u64,
}

fn write_all(
    tokenizer: &RobertaTokenizer,
    options: &PreprocessOptions,
    train_files: &[PathBuf],
    valid_files: &[PathBuf],
    dir: &Path,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<(BTreeMap<String, SplitMeta>, u64)> {
    let workers = options.workers.max(1);
    let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(workers * 2);
    let (done_tx, done_rx) = sync_channel::<Result<Tokenized>>(workers * 2);
    let chunk_rx = Arc::new(Mutex::new(chunk_rx));
    let total_bytes = sources(train_files)?
        .iter()
        .chain(sources(valid_files)?.iter())
        .map(|s| s.bytes)
        .sum();
    let width = TokenWidth::for_vocab(tokenizer.vocab_size());

    std::thread::scope(|scope| {
        let reader = scope.spawn(move || -> Result<u64> {
            let mut chunk = Chunk {
                index: 0,
                docs: Vec::new(),
                bytes: 0,
            };
            let mut doc_index = 0u64;
            let mut skipped = 0;
            for (files, held_out) in [(train_files, false), (valid_files, true)] {
                for file in files {
                    skipped +=
                        read_documents(file, &options.read, &mut |doc| {
                            let bytes: usize = doc.iter().map(|s| s.len() + 1).sum();
                            let valid = held_out
                                || (valid_files.is_empty()
                                    && options.valid_fraction > 0.0
                                    && KeyedRng::new(&[options.seed, doc_index]).next_f64()
                                        < options.valid_fraction);
                            doc_index += 1;
                            chunk.docs.push((valid, doc));
                            chunk.bytes += bytes as u64;
                            if chunk.bytes as usize >= CHUNK_BYTES {
                                let next = Chunk {
                                    index: chunk.index + 1,
                                    docs: Vec::new(),
                                    bytes: 0,
                                };
                                chunk_tx.send(std::mem::replace(&mut chunk, next)).map_err(
                                    |_| DataError::Invalid("tokenizer workers stopped".into()),
                                )?;
                            }
                            Ok(())
                        })?;
                }
            }
            if !chunk.docs.is_empty() {
                let _ = chunk_tx.send(chunk);
            }
            Ok(skipped)
        });
        for _ in 0..workers {
            let chunk_rx = chunk_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    let next = chunk_rx.lock().expect("queue lock").recv();
                    let Ok(chunk) = next else { return };
                    let result = tokenize_chunk(tokenizer, chunk);
                    if done_tx.send(result).is_err() {
                        return;
                    }
                }
            });
        }
        drop(done_tx);
        let written = write_in_order(
            done_rx,
            dir,
            width,
            options.shard_tokens,
            total_bytes,
            progress,
        );
        let skipped = reader.join().expect("reader thread")?;
        let splits = written?;
        Ok((splits, skipped))
    })
}

fn tokenize_chunk(tokenizer: &RobertaTokenizer, chunk: Chunk) -> Result<Tokenized> {
    let mut docs = Vec::with_capacity(chunk.docs.len());
    for (valid, sentences) in chunk.docs {
        let mut ids = Vec::with_capacity(sentences.len());
        for s in &sentences {
            let encoding = tokenizer
                .inner()
                .encode_fast(s.as_str(), false)
                .map_err(|e| DataError::Tokenizer {
                    path: PathBuf::from("<corpus>"),
                    message: e.to_string(),
                })?;
            ids.push(encoding.get_ids().to_vec());
        }
        docs.push((valid, ids));
    }
    Ok(Tokenized {
        index: chunk.index,
        docs,
        bytes: chunk.bytes,
    })
}

struct SplitWriter {
    name: &'static str,
    current: Option<ShardWriter>,
    meta: SplitMeta,
}

impl SplitWriter {
    fn push(
        &mut self,
        dir: &Path,
        width: TokenWidth,
        shard_tokens: u64,
        doc: &[Vec<u32>],
    ) -> Result<()> {
        if self
            .current
            .as_ref()
            .is_some_and(|w| w.tokens() >= shard_tokens)
        {
            self.close()?;
        }
        if self.current.is_none() {
            let base = format!("{}-{:05}", self.name, self.meta.shards.len());
            self.current = Some(ShardWriter::create(
                dir.join(format!("{base}.bin")),
                dir.join(format!("{base}.idx")),
                width,
            )?);
            self.meta.shards.push(base);
        }
        self.current
            .as_mut()
            .expect("open shard")
            .push_document(doc)
    }

    fn close(&mut self) -> Result<()> {
        if let Some(w) = self.current.take() {
            self.meta.documents += w.documents();
            self.meta.sentences += w.sentences();
            self.meta.tokens += w.tokens();
            w.finish()?;
        }
        Ok(())
    }
}

fn write_in_order(
    done: Receiver<Result<Tokenized>>,
    dir: &Path,
    width: TokenWidth,
    shard_tokens: u64,
    total_bytes: u64,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<BTreeMap<String, SplitMeta>> {
    let empty = SplitMeta {
        shards: Vec::new(),
        documents: 0,
        sentences: 0,
        tokens: 0,
    };
    let mut train = SplitWriter {
        name: "train",
        current: None,
        meta: empty.clone(),
    };
    let mut valid = SplitWriter {
        name: "valid",
        current: None,
        meta: empty,
    };
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    let mut p = Progress {
        total_bytes,
        ..Default::default()
    };
    for result in done {
        let chunk = result?;
        pending.insert(chunk.index, chunk);
        while let Some(chunk) = pending.remove(&next) {
            for (is_valid, doc) in &chunk.docs {
                let split = if *is_valid { &mut valid } else { &mut train };
                split.push(dir, width, shard_tokens, doc)?;
                p.documents += 1;
                p.tokens += doc.iter().map(|s| s.len() as u64).sum::<u64>();
            }
            p.bytes += chunk.bytes;
            progress(p);
            next += 1;
        }
    }
    train.close()?;
    valid.close()?;
    if train.meta.tokens == 0 {
        return Err(DataError::Invalid(
            "the inputs hold no text to train on (empty files?)".into(),
        ));
    }
    let mut splits = BTreeMap::from([("train".to_string(), train.meta)]);
    if valid.meta.tokens > 0 {
        splits.insert("valid".to_string(), valid.meta);
    }
    Ok(splits)
}
