//! Reading, tokenizing and writing: one reader thread cuts the documents into numbered
//! chunks, workers tokenize them, the calling thread writes them in chunk order.

use super::*;

/// A chunk of documents, tagged with its split.
struct Chunk {
    index: u64,
    docs: Vec<(bool, Vec<String>)>,
    pub(super) bytes: u64,
}

struct Tokenized {
    index: u64,
    docs: Vec<(bool, Vec<Vec<u32>>)>,
    pub(super) bytes: u64,
}

pub(super) fn write_all(
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
        let reader =
            scope.spawn(move || read_chunks(options, train_files, valid_files, &chunk_tx, dir));
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

/// Reads the documents of every input in order, draws the held-out ones (without
/// validation files, `valid_fraction` of the training documents, by keyed stream),
/// and sends them in chunks of about [`CHUNK_BYTES`]. The number of lines skipped as
/// invalid UTF-8.
fn read_chunks(
    options: &PreprocessOptions,
    train_files: &[PathBuf],
    valid_files: &[PathBuf],
    chunk_tx: &SyncSender<Chunk>,
    dir: &Path,
) -> Result<u64> {
    let interrupted = || DataError::Interrupted {
        path: dir.to_path_buf(),
    };
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
                        && stream(Purpose::ValidSplit, &[options.seed, doc_index]).next_f64()
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
    pub(super) name: &'static str,
    current: Option<ShardWriter>,
    pub(super) meta: SplitMeta,
    /// The content hash of each finished shard.
    digests: Vec<[u8; 32]>,
}

impl SplitWriter {
    pub(super) fn push(
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
