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
use std::sync::mpsc::{Receiver, sync_channel};
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
    // The range pretraining's data.valid_fraction has: half the corpus held out at most.
    if !(0.0..0.5).contains(&options.valid_fraction) {
        return Err(DataError::Invalid(format!(
            "--valid-fraction {} must be in [0, 0.5)",
            options.valid_fraction
        )));
    }
    if options.shard_tokens == 0 {
        return Err(DataError::Invalid(
            "--shard-tokens 0: a shard holds at least 1 token; give at least 1".into(),
        ));
    }
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
    // A file both trained and validated on would make validation measure memorisation.
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
    let mut all_sources = sources(&train_files)?;
    all_sources.extend(sources(&valid_files)?);
    let hash = tokenizer_sha256(tokenizer);
    let options_json = serde_json::to_value(options)
        .map_err(|e| DataError::Invalid(format!("recording the options: {e}")))?;

    let target = resolve_output(out)?;
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
    remove_stale_temporaries(parent, &name, &target);
    let existing = existing_output(&target, out)?;
    let mut rebuild = None;
    if let Existing::Ours { meta, foreign } = &existing {
        if !force && meta.tokenizer_sha256 != hash && !meta.is_outdated() {
            return Err(DataError::TokenizerChanged {
                path: out.to_path_buf(),
                shards: short_hash(&meta.tokenizer_sha256),
                tokenizer: short_hash(&hash),
            });
        }
        rebuild = Some(if meta.is_outdated() {
            format!(
                "it was made by an earlier roberta-train (data format {}; this one writes {FORMAT_VERSION}: content hashes, and the validation split drawn from new random streams)",
                meta.format
            )
        } else if force {
            "--force".to_string()
        } else if meta.sources != all_sources {
            "its inputs changed".to_string()
        } else if meta.options != options_json {
            "the preprocessing options changed".to_string()
        } else {
            return Ok(Outcome::UpToDate(meta.clone()));
        });
        if !foreign.is_empty() {
            return Err(DataError::ForeignOutput {
                path: out.to_path_buf(),
                why: format!(
                    "holds files that preprocess did not write ({})",
                    listing(foreign)
                ),
            });
        }
    }

    std::fs::create_dir_all(parent).map_err(|source| DataError::Io {
        path: parent.to_path_buf(),
        source,
    })?;
    let tmp = sibling(&target, "tmp");
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
        let json = serde_json::to_vec_pretty(&meta).map_err(|e| DataError::BadMeta {
            path: out.join(META_FILE),
            message: e.to_string(),
        })?;
        std::fs::write(&meta_path, json)
            .and_then(|_| std::fs::File::open(&meta_path)?.sync_all())
            .map_err(|source| DataError::Io {
                path: meta_path,
                source,
            })?;
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
            put_in_place(&tmp, &target, &existing).map_err(|source| DataError::Io {
                path: out.to_path_buf(),
                source,
            })?;
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

/// The lock of an output: `.NAME.lock` beside it, holding its holder's PID, removed
/// when the lock is dropped. Two processes preprocessing into one output (two
/// `preprocess`, or two first pretraining runs sharing a `data.data_dir`) would replace
/// each other's work; the second is refused, naming the first.
struct OutputLock {
    path: PathBuf,
    _file: std::fs::File,
}

impl OutputLock {
    fn acquire(parent: &Path, name: &str, out: &Path) -> Result<Self> {
        use std::io::Write;
        std::fs::create_dir_all(parent).map_err(|source| DataError::Io {
            path: parent.to_path_buf(),
            source,
        })?;
        let path = parent.join(format!(".{name}.lock"));
        let io = |source| DataError::Io {
            path: path.clone(),
            source,
        };
        loop {
            let (mut file, _) = crate::input::open_lock_file(&path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let holder = std::fs::read_to_string(&path).unwrap_or_default();
                    return Err(DataError::InUse {
                        path: out.to_path_buf(),
                        pid: holder.trim().to_string(),
                    });
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
            }
            // The holder before us removes the file as it lets go: if what we locked is
            // no longer at `path`, lock what is there now.
            if !same_file(&file, &path) {
                continue;
            }
            file.set_len(0)
                .and_then(|()| write!(file, "{}", std::process::id()))
                .map_err(io)?;
            return Ok(Self { path, _file: file });
        }
    }
}

impl Drop for OutputLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(unix)]
fn same_file(file: &std::fs::File, path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (file.metadata(), std::fs::metadata(path)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    }
}

#[cfg(not(unix))]
fn same_file(_: &std::fs::File, path: &Path) -> bool {
    path.exists()
}

/// Refuses an output inside a directory the corpus is read from, and a corpus file inside
/// the output: either way a run reads `meta.json` and the shards back as text. `target`
/// is the output resolved; inputs are compared resolved too, so links do not hide it.
fn refuse_overlap<'a>(
    target: &Path,
    out: &Path,
    inputs: impl Iterator<Item = &'a PathBuf>,
    files: impl Iterator<Item = &'a PathBuf>,
) -> Result<()> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| DataError::Io { path, source }
    };
    let target = resolved(target).map_err(io(out))?;
    for input in inputs.filter(|i| i.is_dir()) {
        if target.starts_with(std::fs::canonicalize(input).map_err(io(input))?) {
            return Err(DataError::OutputInInput {
                path: out.to_path_buf(),
                input: input.clone(),
            });
        }
    }
    for file in files {
        if std::fs::canonicalize(file)
            .map_err(io(file))?
            .starts_with(&target)
        {
            return Err(DataError::InputInOutput {
                path: out.to_path_buf(),
                input: file.clone(),
            });
        }
    }
    Ok(())
}

/// `path` absolute, with symbolic links resolved as far as it exists; the part that does
/// not exist yet holds no links, so `.` and `..` there are applied as written.
fn resolved(path: &Path) -> std::io::Result<PathBuf> {
    use std::path::Component;
    let absolute = std::path::absolute(path)?;
    let mut base = absolute.as_path();
    let mut rest = Vec::new();
    loop {
        match std::fs::canonicalize(base) {
            Ok(mut resolved) => {
                for component in rest.iter().rev() {
                    match component {
                        Component::ParentDir => {
                            resolved.pop();
                        }
                        Component::Normal(name) => resolved.push(name),
                        _ => {}
                    }
                }
                return Ok(resolved);
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let (Some(parent), Some(last)) = (base.parent(), base.components().next_back())
                else {
                    return Err(e);
                };
                rest.push(last);
                base = parent;
            }
            Err(e) => return Err(e),
        }
    }
}

/// What the output path holds before a run.
enum Existing {
    Absent,
    Empty,
    /// A previous output of `preprocess`, with the names of any files it did not write.
    Ours {
        meta: Meta,
        foreign: Vec<String>,
    },
}

/// `out` with symbolic links resolved, so that a link to a data directory still points
/// at it once it is replaced; a link to nothing is refused rather than replaced.
fn resolve_output(out: &Path) -> Result<PathBuf> {
    match std::fs::symlink_metadata(out) {
        Err(_) => Ok(out.to_path_buf()),
        Ok(m) if m.file_type().is_symlink() && !out.exists() => Err(DataError::ForeignOutput {
            path: out.to_path_buf(),
            why: "is a symbolic link to nothing".into(),
        }),
        Ok(_) => std::fs::canonicalize(out).map_err(|source| DataError::Io {
            path: out.to_path_buf(),
            source,
        }),
    }
}

/// What `target` (`out` as the user named it, resolved) holds. Only a directory that
/// `preprocess` wrote itself, recognised by its `meta.json`, may be replaced: anything
/// else is the user's.
fn existing_output(target: &Path, out: &Path) -> Result<Existing> {
    let io = |source| DataError::Io {
        path: out.to_path_buf(),
        source,
    };
    let foreign = |why: String| DataError::ForeignOutput {
        path: out.to_path_buf(),
        why,
    };
    let kind = match std::fs::symlink_metadata(target) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Existing::Absent),
        Err(e) => return Err(io(e)),
    };
    if !kind.is_dir() {
        return Err(foreign("is a file, not a directory".into()));
    }
    let mut names = std::fs::read_dir(target)
        .map_err(io)?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<std::io::Result<Vec<_>>>()
        .map_err(io)?;
    if names.is_empty() {
        return Ok(Existing::Empty);
    }
    names.sort();
    if !names.iter().any(|n| n == META_FILE) {
        return Err(foreign(format!(
            "holds files that preprocess did not write ({})",
            listing(&names)
        )));
    }
    let meta = Meta::read(target).map_err(|e| {
        foreign(format!(
            "holds a {META_FILE} that this build of preprocess did not write ({e})"
        ))
    })?;
    let written: BTreeSet<String> = [META_FILE.to_string(), TOKENIZER_FILE.to_string()]
        .into_iter()
        .chain(
            meta.splits
                .values()
                .flat_map(|s| &s.shards)
                .flat_map(|base| [format!("{base}.bin"), format!("{base}.idx")]),
        )
        .collect();
    names.retain(|n| !written.contains(n) && !is_index_file_name(n));
    Ok(Existing::Ours {
        meta,
        foreign: names,
    })
}

/// The first few names, for a one-line message.
fn listing(names: &[String]) -> String {
    const SHOWN: usize = 3;
    let mut list = names[..names.len().min(SHOWN)].join(", ");
    if names.len() > SHOWN {
        list.push_str(", …");
    }
    list
}

/// Enough of a sha256 to tell two tokenizers apart in a message.
fn short_hash(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// Moves the finished `tmp` to `target` with renames only, so readers see the old
/// output or the new one, never a mix. Our own previous output is first moved aside and
/// removed once the new one is in place.
fn put_in_place(tmp: &Path, target: &Path, existing: &Existing) -> std::io::Result<()> {
    if !matches!(existing, Existing::Ours { .. }) {
        // POSIX rename replaces an empty directory.
        return std::fs::rename(tmp, target);
    }
    let old = sibling(target, "old");
    std::fs::rename(target, &old)?;
    if let Err(e) = std::fs::rename(tmp, target) {
        let _ = std::fs::rename(&old, target);
        return Err(e);
    }
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

/// `.NAME.KIND-PID` next to `target`: this program's name for its temporaries.
fn sibling(target: &Path, kind: &str) -> PathBuf {
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    target.with_file_name(format!(".{name}.{kind}-{}", std::process::id()))
}

/// Removes the `.NAME.tmp-PID` and `.NAME.old-PID` directories next to the output that
/// runs killed before they finished left behind: names only this program gives, of
/// processes that are gone, holding only files it writes. An old output moved aside by a
/// run killed just before its new output took its place goes back instead. A directory
/// with such a name but anything else in it is not ours: it is left alone, unreported,
/// since it is in nobody's way.
fn remove_stale_temporaries(parent: &Path, name: &str, target: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    let prefix = format!(".{name}.");
    let mut stale: Vec<(bool, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .filter_map(|e| {
            let file = e.file_name().into_string().ok()?;
            let rest = file.strip_prefix(&prefix)?;
            let (old, pid) = match rest.strip_prefix("tmp-") {
                Some(pid) => (false, pid),
                None => (true, rest.strip_prefix("old-")?),
            };
            if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let pid: u32 = pid.parse().ok()?;
            (!process_alive(pid) && holds_only_our_files(&e.path())).then(|| (old, e.path()))
        })
        .collect();
    stale.sort();
    for (old, path) in stale {
        if old && std::fs::symlink_metadata(target).is_err() {
            let _ = std::fs::rename(&path, target);
        } else {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Whether `dir` holds nothing but plain files with the names `preprocess` gives:
/// `meta.json`, `tokenizer.json`, and the shards `train-NNNNN.bin`/`.idx` (and `valid-…`)
/// with the `.idx` side files a shard writer leaves before it finishes.
fn holds_only_our_files(dir: &Path) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.into_iter().all(|e| {
        e.is_ok_and(|e| {
            e.file_type().is_ok_and(|t| t.is_file())
                && e.file_name().to_str().is_some_and(is_our_file_name)
        })
    })
}

fn is_our_file_name(name: &str) -> bool {
    if name == META_FILE || name == TOKENIZER_FILE || is_index_file_name(name) {
        return true;
    }
    let stem = [".bin", ".idx", ".idx.sentences.tmp", ".idx.documents.tmp"]
        .iter()
        .find_map(|ext| name.strip_suffix(ext));
    let Some((split, number)) = stem.and_then(|s| s.split_once('-')) else {
        return false;
    };
    matches!(split, "train" | "valid")
        && number.len() >= 5
        && number.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `pid` may be a live process other than this one (which runs one
/// preprocessing per output at a time). Without `/proc` nobody can tell, so every
/// process counts as alive and its temporaries are left alone.
pub(crate) fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    let proc = Path::new("/proc");
    !proc.join("self").exists() || proc.join(pid.to_string()).exists()
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
    let total_bytes = sources(train_files)?
        .iter()
        .chain(sources(valid_files)?.iter())
        .map(|s| s.bytes)
        .sum();
    let width = TokenWidth::for_vocab(tokenizer.vocab_size());
    let interrupted = || DataError::Interrupted {
        path: dir.to_path_buf(),
    };

    std::thread::scope(|scope| {
        let (chunk_tx, chunk_rx) = sync_channel::<Chunk>(workers * 2);
        let (done_tx, done_rx) = sync_channel::<Result<Tokenized>>(workers * 2);
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
                    skipped += read_documents(file, &options.read, &mut |doc| {
                        if options.stopped() {
                            return Err(interrupted());
                        }
                        let bytes: usize = doc.iter().map(|s| s.len() + 1).sum();
                        let valid = held_out
                            || (valid_files.is_empty()
                                && options.valid_fraction > 0.0
                                && stream(Purpose::ValidSplit, &[options.seed, doc_index])
                                    .next_f64()
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
                            // Fails only once the writer has stopped, which says why.
                            chunk_tx
                                .send(std::mem::replace(&mut chunk, next))
                                .map_err(|_| interrupted())?;
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
        // Only the workers hold the receiving end: once they have all stopped, the
        // reader's next send fails instead of waiting forever on a full queue.
        let chunk_rx = Arc::new(Mutex::new(chunk_rx));
        for _ in 0..workers {
            let chunk_rx = chunk_rx.clone();
            let done_tx = done_tx.clone();
            scope.spawn(move || {
                loop {
                    let next = chunk_rx.lock().expect("queue lock").recv();
                    let Ok(chunk) = next else { return };
                    if options.stopped() {
                        return;
                    }
                    let result = tokenize_chunk(tokenizer, chunk);
                    if done_tx.send(result).is_err() {
                        return;
                    }
                }
            });
        }
        drop((chunk_rx, done_tx));
        let written = write_in_order(
            done_rx,
            dir,
            width,
            options.shard_tokens,
            total_bytes,
            &|| options.stopped(),
            progress,
        );
        let read = reader.join().expect("reader thread");
        if options.stopped() {
            return Err(interrupted());
        }
        match (read, written) {
            (Ok(skipped), Ok(splits)) => Ok((splits, skipped)),
            (Ok(_) | Err(DataError::Interrupted { .. }), Err(e)) | (Err(e), _) => Err(e),
        }
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
    /// The content hash of each finished shard.
    digests: Vec<[u8; 32]>,
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
            let (bin, idx) = (w.bin_path().to_path_buf(), w.idx_path().to_path_buf());
            let digest = w.finish()?;
            let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
            self.meta.stamps.push(ShardStamp::of(&bin, &idx, hex)?);
            self.digests.push(digest);
            self.meta.sha256 = split_sha256(&self.digests);
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
    stopped: &dyn Fn() -> bool,
    progress: &(dyn Fn(Progress) + Sync),
) -> Result<BTreeMap<String, SplitMeta>> {
    let empty = SplitMeta {
        shards: Vec::new(),
        documents: 0,
        sentences: 0,
        tokens: 0,
        sha256: String::new(),
        stamps: Vec::new(),
    };
    let mut train = SplitWriter {
        name: "train",
        current: None,
        meta: empty.clone(),
        digests: Vec::new(),
    };
    let mut valid = SplitWriter {
        name: "valid",
        current: None,
        meta: empty,
        digests: Vec::new(),
    };
    let mut pending = BTreeMap::new();
    let mut next = 0u64;
    let mut p = Progress {
        total_bytes,
        ..Default::default()
    };
    for result in done {
        if stopped() {
            return Err(DataError::Interrupted {
                path: dir.to_path_buf(),
            });
        }
        let chunk = result?;
        pending.insert(chunk.index, chunk);
        while let Some(chunk) = pending.remove(&next) {
            for (is_valid, doc) in &chunk.docs {
                // Per document: with tiny shards each one is a file created and synced.
                if stopped() {
                    return Err(DataError::Interrupted {
                        path: dir.to_path_buf(),
                    });
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::train_bpe;

    fn repo_tokenizer() -> RobertaTokenizer {
        RobertaTokenizer::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/tokenizer"))
            .unwrap()
    }

    /// The first `lines` lines of the embedded corpus, as `dir/name`.
    fn corpus(dir: &Path, name: &str, lines: usize) -> PathBuf {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../../data/default-corpus/train.txt"),
        )
        .unwrap();
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        let part: Vec<&str> = text.lines().take(lines).collect();
        std::fs::write(&path, part.join("\n") + "\n").unwrap();
        path
    }

    fn options(input: &Path) -> PreprocessOptions {
        PreprocessOptions {
            inputs: vec![input.to_path_buf()],
            workers: 2,
            ..Default::default()
        }
    }

    fn run(tok: &RobertaTokenizer, options: &PreprocessOptions, out: &Path) -> Result<Outcome> {
        preprocess(tok, options, out, false, &|_| {})
    }

    /// Names in `dir` other than `keep`, sorted.
    fn others(dir: &Path, keep: &[&str]) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| !keep.contains(&n.as_str()))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_output_holding_user_files_is_refused_and_left_alone() {
        let tok = repo_tokenizer();
        let dir = tempfile::tempdir().unwrap();
        // The corpus's own directory as the output.
        let c = dir.path().join("c");
        let input = corpus(&c, "train.txt", 50);
        let before = std::fs::read(&input).unwrap();
        let err = run(&tok, &options(&input), &c).err().unwrap().to_string();
        assert_eq!(
            err,
            format!(
                "{} holds files that preprocess did not write (train.txt): choose another --out (data.data_dir when pretraining)",
                c.display()
            )
        );
        assert_eq!(std::fs::read(&input).unwrap(), before);
        assert_eq!(others(dir.path(), &[]), ["c"]);
        // A regular file as the output: neither replaced nor moved aside.
        let file = dir.path().join("notes");
        std::fs::write(&file, "mine").unwrap();
        let err = run(&tok, &options(&input), &file)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("is a file, not a directory"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "mine");
        assert_eq!(others(dir.path(), &[]), ["c", "notes"]);
        // A directory with a meta.json that is not ours.
        let odd = dir.path().join("odd");
        std::fs::create_dir(&odd).unwrap();
        std::fs::write(odd.join(META_FILE), "{\"name\": \"mine\"}").unwrap();
        let err = run(&tok, &options(&input), &odd).err().unwrap().to_string();
        assert!(
            err.contains("did not write") && err.contains("odd"),
            "{err}"
        );
        assert_eq!(others(&odd, &[]), [META_FILE]);
    }

    #[test]
    fn an_empty_directory_is_filled_and_its_own_output_replaced() {
        let tok = repo_tokenizer();
        let dir = tempfile::tempdir().unwrap();
        let input = corpus(dir.path(), "train.txt", 200);
        let out = dir.path().join("out");
        std::fs::create_dir(&out).unwrap();
        assert!(matches!(
            run(&tok, &options(&input), &out).unwrap(),
            Outcome::Written(_)
        ));
        assert!(matches!(
            run(&tok, &options(&input), &out).unwrap(),
            Outcome::UpToDate(_)
        ));
        let mut changed = options(&input);
        changed.shard_tokens = 500;
        let Outcome::Rebuilt { meta, why } = run(&tok, &changed, &out).unwrap() else {
            panic!("changed options rebuild");
        };
        assert_eq!(why, "the preprocessing options changed");
        assert!(meta.splits["train"].shards.len() > 1);
        assert_eq!(Meta::read(&out).unwrap(), meta);
        assert_eq!(others(dir.path(), &[]), ["out", "train.txt"]);
        // A user's file inside our output: still up to date, but never deleted.
        std::fs::write(out.join("NOTES.md"), "mine").unwrap();
        assert!(matches!(
            run(&tok, &changed, &out).unwrap(),
            Outcome::UpToDate(_)
        ));
        let err = run(&tok, &options(&input), &out).err().unwrap().to_string();
        assert!(err.contains("did not write (NOTES.md)"), "{err}");
        assert_eq!(Meta::read(&out).unwrap(), meta);
        assert_eq!(
            std::fs::read_to_string(out.join("NOTES.md")).unwrap(),
            "mine"
        );
    }

    #[test]
    fn another_tokenizer_is_refused_unless_forced() {
        let tok = repo_tokenizer();
        let dir = tempfile::tempdir().unwrap();
        let input = corpus(dir.path(), "train.txt", 200);
        let other = train_bpe(std::slice::from_ref(&input), 300, 2).unwrap();
        let out = dir.path().join("out");
        run(&tok, &options(&input), &out).unwrap();
        let before = Meta::read(&out).unwrap();
        let err = run(&other, &options(&input), &out)
            .err()
            .unwrap()
            .to_string();
        let (a, b) = (tokenizer_sha256(&tok), tokenizer_sha256(&other));
        assert!(
            err.starts_with(&out.display().to_string())
                && err.contains(&a[..12])
                && err.contains(&b[..12])
                && err.contains("--force"),
            "{err}"
        );
        assert_eq!(Meta::read(&out).unwrap(), before);
        let Outcome::Rebuilt { meta, .. } =
            preprocess(&other, &options(&input), &out, true, &|_| {}).unwrap()
        else {
            panic!("--force rebuilds");
        };
        assert_eq!(meta.tokenizer_sha256, b);
    }

    #[test]
    fn a_stop_request_leaves_the_output_as_it_was() {
        let tok = repo_tokenizer();
        let dir = tempfile::tempdir().unwrap();
        // About ten chunks, so that the stop lands in the middle.
        let input = corpus(dir.path(), "train.txt", usize::MAX);
        let out = dir.path().join("out");
        let stop = Arc::new(AtomicBool::new(false));
        let mut stoppable = options(&input);
        stoppable.stop = Some(stop.clone());
        let chunks = std::sync::atomic::AtomicUsize::new(0);
        let stop_after_one = |_: Progress| {
            chunks.fetch_add(1, Ordering::Relaxed);
            stop.store(true, Ordering::Relaxed);
        };
        let err = preprocess(&tok, &stoppable, &out, false, &stop_after_one)
            .err()
            .unwrap();
        assert!(matches!(err, DataError::Interrupted { .. }), "{err}");
        assert_eq!(
            err.to_string(),
            format!("interrupted: nothing written to {}", out.display())
        );
        assert!(chunks.load(Ordering::Relaxed) < 4, "stopped promptly");
        assert_eq!(others(dir.path(), &[]), ["train.txt"]);

        // Interrupting a rebuild keeps the previous output.
        let small = corpus(dir.path(), "small.txt", 100);
        run(&tok, &options(&small), &out).unwrap();
        let before = Meta::read(&out).unwrap();
        stop.store(false, Ordering::Relaxed);
        stoppable.inputs = vec![input];
        let err = preprocess(&tok, &stoppable, &out, false, &stop_after_one)
            .err()
            .unwrap();
        assert!(matches!(err, DataError::Interrupted { .. }), "{err}");
        assert_eq!(Meta::read(&out).unwrap(), before);
        assert_eq!(others(dir.path(), &[]), ["out", "small.txt", "train.txt"]);
    }

    #[cfg(unix)]
    #[test]
    fn an_output_inside_an_input_directory_is_refused() {
        let tok = repo_tokenizer();
        let dir = tempfile::tempdir().unwrap();
        let cin = dir.path().join("cin");
        corpus(&cin, "train.txt", 100);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&cin, &link).unwrap();
        for out in [
            cin.join("bin"),
            cin.join("new/deeper/bin"),
            cin.join("new/../bin"),
            link.join("bin"),
            dir.path().join("elsewhere/../cin/bin"),
        ] {
            let err = run(&tok, &options(&cin), &out).err().unwrap();
            assert!(matches!(err, DataError::OutputInInput { .. }), "{err}");
            assert_eq!(
                err.to_string(),
                format!(
                    "{} lies inside the input directory {}: a later run would read its shards back as corpus text; choose another --out (data.data_dir when pretraining), outside every input",
                    out.display(),
                    cin.display()
                )
            );
        }
        // Held-out directories count too.
        let mut with_valid = options(&cin.join("train.txt"));
        let held = dir.path().join("held");
        corpus(&held, "valid.txt", 20);
        with_valid.valid = vec![held.clone()];
        let err = run(&tok, &with_valid, &held.join("bin")).err().unwrap();
        assert!(matches!(err, DataError::OutputInInput { .. }), "{err}");
        assert_eq!(others(&cin, &[]), ["train.txt"]);
        assert_eq!(others(&held, &[]), ["valid.txt"]);
        assert_eq!(others(dir.path(), &[]), ["cin", "held", "link"]);

        // A file of the output as an input: its own meta.json read as text.
        let out = dir.path().join("out");
        run(&tok, &options(&cin), &out).unwrap();
        let before = Meta::read(&out).unwrap();
        let mut again = options(&cin);
        again.inputs.push(out.join(META_FILE));
        let err = run(&tok, &again, &out).err().unwrap();
        assert!(matches!(err, DataError::InputInOutput { .. }), "{err}");
        assert!(
            err.to_string().contains("meta.json lies inside the output"),
            "{err}"
        );
        assert_eq!(Meta::read(&out).unwrap(), before);
        // Beside the inputs is fine, and so is a name that merely starts like one.
        run(&tok, &options(&cin), &dir.path().join("cin-bin")).unwrap();
    }

    #[test]
    fn a_second_process_on_one_output_is_refused_naming_the_first() {
        let tok = repo_tokenizer();
        let dir = tempfile::tempdir().unwrap();
        let input = corpus(dir.path(), "train.txt", 50);
        let out = dir.path().join("out");
        // A lock is held per open file: a second open conflicts, as another process's.
        let held = OutputLock::acquire(dir.path(), "out", &out).unwrap();
        let err = run(&tok, &options(&input), &out).err().unwrap();
        assert!(matches!(err, DataError::InUse { .. }), "{err}");
        assert!(
            err.to_string().contains(&format!(
                "another roberta-train (PID {})",
                std::process::id()
            )),
            "{err}"
        );
        drop(held);
        run(&tok, &options(&input), &out).unwrap();
        assert_eq!(others(dir.path(), &[]), ["out", "train.txt"]);
    }

    #[test]
    fn zero_tokens_per_shard_is_refused() {
        let tok = repo_tokenizer();
        let dir = tempfile::tempdir().unwrap();
        let input = corpus(dir.path(), "train.txt", 50);
        let mut zero = options(&input);
        zero.shard_tokens = 0;
        let err = run(&tok, &zero, &dir.path().join("out")).err().unwrap();
        assert_eq!(
            err.to_string(),
            "--shard-tokens 0: a shard holds at least 1 token; give at least 1"
        );
        assert_eq!(others(dir.path(), &[]), ["train.txt"]);
        zero.shard_tokens = 1;
        let Outcome::Written(meta) = run(&tok, &zero, &dir.path().join("out")).unwrap() else {
            panic!("written");
        };
        assert_eq!(
            meta.splits["train"].shards.len() as u64,
            meta.splits["train"].documents
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn temporaries_of_dead_runs_are_removed_and_others_kept() {
        // Above any pid_max Linux allows (2^22), so never a live process.
        const DEAD: u32 = (1 << 22) + 1;
        let tok = repo_tokenizer();
        let dir = tempfile::tempdir().unwrap();
        let input = corpus(dir.path(), "train.txt", 100);
        let out = dir.path().join("out");
        let make = |name: &str| {
            std::fs::create_dir(dir.path().join(name)).unwrap();
            for file in [
                "train-00000.bin",
                "train-00001.idx.sentences.tmp",
                META_FILE,
            ] {
                std::fs::write(dir.path().join(name).join(file), "x").unwrap();
            }
        };
        let dead = format!(".out.tmp-{DEAD}");
        let kept = [
            ".out.tmp-1".to_string(),
            ".out.tmp-12x".into(),
            format!(".other.tmp-{DEAD}"),
            format!(".outer.tmp-{DEAD}"),
            // Our names, of dead runs, but holding what preprocess never writes.
            format!(".out.tmp-{}", DEAD + 1),
            format!(".out.tmp-{}", DEAD + 2),
            format!(".out.old-{}", DEAD + 3),
        ];
        for name in kept.iter().chain([&dead]) {
            make(name);
        }
        let foreign = [
            (format!(".out.tmp-{}", DEAD + 1), "thesis.tex"),
            (format!(".out.tmp-{}", DEAD + 2), "train-0.bin"),
        ];
        for (name, file) in &foreign {
            std::fs::write(dir.path().join(name).join(file), "mine").unwrap();
        }
        std::fs::create_dir(dir.path().join(format!(".out.old-{}/sub", DEAD + 3))).unwrap();
        std::fs::write(dir.path().join(format!(".out.old-{DEAD}")), "a file").unwrap();
        run(&tok, &options(&input), &out).unwrap();
        let mut expected: Vec<String> = kept.to_vec();
        expected.extend([format!(".out.old-{DEAD}"), "out".into(), "train.txt".into()]);
        expected.sort();
        assert_eq!(others(dir.path(), &[]), expected);
        for (name, file) in &foreign {
            let kept = dir.path().join(name);
            assert_eq!(std::fs::read_to_string(kept.join(file)).unwrap(), "mine");
            assert!(kept.join("train-00000.bin").exists());
        }

        // A run killed between moving its old output aside and renaming the new one
        // into place: the old output goes back.
        let before = Meta::read(&out).unwrap();
        let aside = dir.path().join(format!(".out.old-{DEAD}0"));
        std::fs::rename(&out, &aside).unwrap();
        make(&dead);
        assert!(matches!(
            run(&tok, &options(&input), &out).unwrap(),
            Outcome::UpToDate(_)
        ));
        assert_eq!(Meta::read(&out).unwrap(), before);
        assert!(!aside.exists() && !dir.path().join(&dead).exists());
    }
}
