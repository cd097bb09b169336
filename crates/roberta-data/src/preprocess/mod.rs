//! `preprocess`: raw corpus files → token shards, in parallel, with bounded memory,
//! deterministic output and an atomic finish.
//!
//! One reader thread streams documents in input order and cuts them into numbered chunks;
//! worker threads tokenize chunks; the calling thread writes them back in chunk order, so
//! the output does not depend on the number of workers. Queues are bounded, so memory
//! is too. Everything is written into a temporary sibling directory that is renamed into
//! place after `meta.json`, so a killed run leaves nothing that looks complete; the next
//! run removes what it left. The output path is owned: it may be absent, empty, or a
//! previous output of `preprocess` (its `meta.json` says so); anything else is the
//! user's and is refused, `force` or not.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::blocks::is_index_file_name;
use crate::corpus::{ReadOptions, expand_inputs, read_documents};
use crate::dataset::{
    FORMAT_VERSION, META_FILE, Meta, ShardStamp, SourceMeta, SplitMeta, split_sha256,
};
use crate::error::{DataError, Result};
use crate::rng::{Purpose, stream};
use crate::shards::{ShardWriter, TokenWidth};
use crate::tokenizer::{RobertaTokenizer, TOKENIZER_FILE};

mod output;
#[cfg(test)]
mod tests;
mod write;

use output::*;
use write::write_all;

/// Text bytes per chunk handed to a worker.
const CHUNK_BYTES: usize = 256 * 1024;

#[derive(Debug, Clone, Serialize, Deserialize)]
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
    /// Set (by a signal handler) to stop early: the reader, the workers and the writer
    /// look at it between documents and chunks, the temporary output is removed and
    /// `preprocess` returns [`DataError::Interrupted`].
    #[serde(skip)]
    pub stop: Option<Arc<AtomicBool>>,
}

impl PreprocessOptions {
    fn stopped(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(Ordering::Relaxed))
    }
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
            stop: None,
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
    /// Shards were written in place of an earlier output of `preprocess`, for the
    /// reason given.
    Rebuilt { meta: Meta, why: String },
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
            let (bytes, modified) = crate::dataset::size_and_time(path)?;
            Ok(SourceMeta {
                path: path.clone(),
                bytes,
                modified: modified.as_secs(),
                modified_nanos: modified.subsec_nanos(),
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
    options.check()?;
    let (train_files, valid_files) = input_files(options, out)?;
    let mut all_sources = sources(&train_files)?;
    all_sources.extend(sources(&valid_files)?);
    let hash = tokenizer_sha256(tokenizer);
    let options_json = serde_json::to_value(options)
        .map_err(|e| DataError::Invalid(format!("recording the options: {e}")))?;

    let target = resolve_output(out)?;
    let (parent, name) = parent_and_name(&target, out)?;
    // What the output holds decides whether it may be written at all (checked again
    // under the lock, which is taken only for an output that may be).
    existing_output(&target, out)?;
    refuse_overlap(
        &target,
        out,
        options.inputs.iter().chain(&options.valid),
        train_files.iter().chain(&valid_files),
    )?;
    let _lock = OutputLock::acquire(parent, &name, out)?;
    // Left by runs killed before they finished: directories of processes that are gone,
    // holding only files preprocess writes (anything else there is not ours). An old
    // output moved aside just before the new one took its place goes back.
    roberta_fs::remove_dead_temporaries(parent, &name, holds_only_our_files);
    let existing = existing_output(&target, out)?;
    let rebuild = match &existing {
        Existing::Ours { meta, foreign } => {
            match rebuild_reason(
                meta,
                foreign,
                force,
                &hash,
                &all_sources,
                &options_json,
                out,
            )? {
                Some(why) => Some(why),
                None => return Ok(Outcome::UpToDate(meta.clone())),
            }
        }
        _ => None,
    };

    let tmp = new_temporary(parent, &target)?;
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
        write_meta(&tmp, tokenizer, &meta, out)?;
        Ok(meta)
    });
    let result = if options.stopped() {
        Err(DataError::Interrupted {
            path: out.to_path_buf(),
        })
    } else {
        result
    };
    let meta = result
        .and_then(|meta| {
            roberta_fs::sync(&tmp)?;
            roberta_fs::put_in_place(&tmp, &target, roberta_fs::Publish::Replace)?;
            Ok(meta)
        })
        .inspect_err(|_| {
            let _ = std::fs::remove_dir_all(&tmp);
        })?;
    Ok(match rebuild {
        Some(why) => Outcome::Rebuilt { meta, why },
        None => Outcome::Written(meta),
    })
}

/// The directory an output goes into, and its name there.
fn parent_and_name<'a>(target: &'a Path, out: &Path) -> Result<(&'a Path, String)> {
    let parent = target
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| DataError::ForeignOutput {
            path: out.to_path_buf(),
            why: "names no directory".into(),
        })?;
    Ok((parent, name))
}

/// The new directory the output is written into before it takes its place.
fn new_temporary(parent: &Path, target: &Path) -> Result<PathBuf> {
    std::fs::create_dir_all(parent).map_err(|source| DataError::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    let tmp = roberta_fs::temporary(target);
    std::fs::create_dir(&tmp).map_err(|source| DataError::Io {
        path: tmp.clone(),
        source,
    })?;
    Ok(tmp)
}

impl PreprocessOptions {
    fn check(&self) -> Result<()> {
        // The range pretraining's data.valid_fraction has: half the corpus held out at
        // most.
        if !(0.0..0.5).contains(&self.valid_fraction) {
            return Err(DataError::Invalid(format!(
                "--valid-fraction {} must be in [0, 0.5)",
                self.valid_fraction
            )));
        }
        if self.shard_tokens == 0 {
            return Err(DataError::Invalid(
                "--shard-tokens 0: a shard holds at least 1 token; give at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// The training and validation files the inputs name (directories walked); a file
/// both trained and validated on is refused: validation would measure memorisation.
fn input_files(options: &PreprocessOptions, out: &Path) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    let stopped = || options.stopped();
    let expand = |inputs: &[PathBuf]| {
        expand_inputs(inputs, &stopped).map_err(|e| match e {
            DataError::Interrupted { .. } => DataError::Interrupted {
                path: out.to_path_buf(),
            },
            e => e,
        })
    };
    let train_files = expand(&options.inputs)?;
    let valid_files = if options.valid.is_empty() {
        Vec::new()
    } else {
        expand(&options.valid)?
    };
    let trained: BTreeSet<PathBuf> = train_files
        .iter()
        .filter_map(|t| std::fs::canonicalize(t).ok())
        .collect();
    if let Some(both) = valid_files
        .iter()
        .find(|v| std::fs::canonicalize(v).is_ok_and(|v| trained.contains(&v)))
    {
        return Err(DataError::Invalid(format!(
            "{} is both a training and a validation input (--input and --valid, or data.train and data.valid)",
            both.display()
        )));
    }
    Ok((train_files, valid_files))
}

/// Why an output of ours is written again, or `None` when it is up to date. Refused:
/// shards of another tokenizer (without `force`), and an output holding files
/// preprocess did not write. `hash`, `sources` and `options` are this call's.
fn rebuild_reason(
    meta: &Meta,
    foreign: &[String],
    force: bool,
    hash: &str,
    sources: &[SourceMeta],
    options: &serde_json::Value,
    out: &Path,
) -> Result<Option<String>> {
    if !force && meta.tokenizer_sha256 != hash && !meta.is_outdated() {
        return Err(DataError::TokenizerChanged {
            path: out.to_path_buf(),
            shards: short_hash(&meta.tokenizer_sha256),
            tokenizer: short_hash(hash),
        });
    }
    let why = if meta.is_outdated() {
        format!(
            "it was made by an earlier roberta-train (data format {}; this one writes {FORMAT_VERSION}: content hashes, and the validation split drawn from new random streams)",
            meta.format
        )
    } else if force {
        "--force".to_string()
    } else if meta.sources != sources {
        "its inputs changed".to_string()
    } else if &meta.options != options {
        "the preprocessing options changed".to_string()
    } else {
        return Ok(None);
    };
    if !foreign.is_empty() {
        return Err(DataError::ForeignOutput {
            path: out.to_path_buf(),
            why: format!(
                "holds files that preprocess did not write ({})",
                listing(foreign)
            ),
        });
    }
    Ok(Some(why))
}

/// The tokenizer and `meta.json` into the output being written (`tmp`), synced.
fn write_meta(tmp: &Path, tokenizer: &RobertaTokenizer, meta: &Meta, out: &Path) -> Result<()> {
    let tok_path = tmp.join(TOKENIZER_FILE);
    tokenizer
        .inner()
        .save(&tok_path, true)
        .map_err(|e| DataError::Tokenizer {
            path: tok_path.clone(),
            message: e.to_string(),
        })?;
    let meta_path = tmp.join(META_FILE);
    let json = serde_json::to_vec_pretty(meta).map_err(|e| DataError::BadMeta {
        path: out.join(META_FILE),
        message: e.to_string(),
    })?;
    std::fs::write(&meta_path, json).map_err(|source| DataError::Io {
        path: meta_path.clone(),
        source,
    })?;
    Ok(roberta_fs::sync(&meta_path)?)
}
