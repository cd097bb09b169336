//! The streaming loader: blocks in a keyed order per epoch, masked on the fly, batched
//! by a background thread into a bounded queue.
//!
//! Everything a batch contains is a pure function of (corpus, config, state), where the
//! state is (epoch, cursor): [`batch_at`] computes it, the thread only runs ahead. A
//! checkpoint stores the state after the last consumed batch, and a loader built from it
//! yields exactly the batches an uninterrupted one would have yielded next. The block
//! index is mmapped and the epoch order is a keyed bijection ([`Shuffle`]), so nothing
//! held in memory grows with the corpus.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::blocks::BlockIndex;
use crate::dataset::{BreakMode, Split};
use crate::error::{DataError, Result};
use crate::masking::{IGNORE_INDEX, MaskKey, MaskVocab, MaskingConfig, mask_tokens};
use crate::rng::Shuffle;

/// A split packed into blocks, with what masking needs.
pub struct Corpus {
    pub split: Split,
    pub blocks: BlockIndex,
    pub block_size: usize,
    pub vocab: MaskVocab,
    pub masking: MaskingConfig,
}

impl Corpus {
    /// Opens the split's block index for this block size and break mode, packing it
    /// first when the data directory has none that is current.
    pub fn open(
        split: Split,
        block_size: usize,
        mode: BreakMode,
        vocab: MaskVocab,
        masking: MaskingConfig,
    ) -> Result<Self> {
        let blocks = BlockIndex::open(&split, block_size, mode)?;
        Ok(Self {
            split,
            blocks,
            block_size,
            vocab,
            masking,
        })
    }

    pub fn len(&self) -> u64 {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Mean tokens per block over the block size (1.0 = every block full), from the
    /// index's header.
    pub fn fill_rate(&self) -> f64 {
        self.blocks.served_tokens() as f64 / (self.len().max(1) as f64 * self.block_size as f64)
    }

    /// The tokens block `b` is served as. A block the index makes longer than the block
    /// size (a damaged index) is an error naming the index, not a huge allocation.
    pub fn block_tokens(&self, b: u64, out: &mut Vec<u32>) -> Result<()> {
        let block = self.blocks.get(b);
        if block.end <= block.start || block.end - block.start > (self.block_size - 2) as u64 {
            return Err(DataError::CorruptBlockIndex {
                path: self.blocks.path().to_path_buf(),
                message: format!(
                    "block {b} spans tokens {}..{} of shard {}, not 1 to {} tokens: delete the file to pack it again",
                    block.start,
                    block.end,
                    block.shard,
                    self.block_size - 2
                ),
            });
        }
        self.split.block_tokens(block, out)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoaderConfig {
    /// Sequences per batch on this rank.
    pub batch_size: usize,
    pub seed: u64,
    /// This rank and the number of data-parallel ranks: rank r takes sequences
    /// `[r·b, (r+1)·b)` of every group of `world·b`.
    pub rank: usize,
    pub world: usize,
    /// Pad every batch to this length instead of to its longest sequence.
    pub pad_to: Option<usize>,
    /// Batches the producer thread may run ahead.
    pub queue_depth: usize,
    /// A masking rate that changes as the data is served (else the corpus's).
    #[serde(default)]
    pub mask_ramp: Option<MaskRamp>,
}

/// A masking rate that moves from `from` at the first sequence served from `start` to
/// `to` at the `sequences`-th, linearly or along a half cosine: a function of the data
/// position, so a resumed loader masks as the uninterrupted one did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct MaskRamp {
    pub from: f64,
    pub to: f64,
    pub cosine: bool,
    pub start: LoaderState,
    /// Sequences (over all ranks) from `start` to the end of the ramp.
    pub sequences: u64,
}

impl MaskRamp {
    /// The rate of the sequence `served` positions after `start`.
    pub fn at(&self, served: u64) -> f64 {
        let t = (served as f64 / self.sequences.max(1) as f64).min(1.0);
        let shape = match self.cosine {
            true => (1.0 - (std::f64::consts::PI * t).cos()) / 2.0,
            false => t,
        };
        self.from + (self.to - self.from) * shape
    }
}

/// Where the loader is: the next sample is position `cursor` of epoch `epoch`'s
/// order (counted over all ranks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct LoaderState {
    pub epoch: u64,
    pub cursor: u64,
}

/// A masked batch as plain vectors, row-major `[batch_size, seq_len]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub input_ids: Vec<u32>,
    /// 1 for tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Target ids at masked positions, [`IGNORE_INDEX`] elsewhere.
    pub labels: Vec<i64>,
    pub batch_size: usize,
    pub seq_len: usize,
    /// Non-padding tokens.
    pub tokens: usize,
    /// Positions with a target.
    pub masked: usize,
    /// The epoch the batch's first sample came from.
    pub epoch: u64,
    /// The loader's state after this batch: what a checkpoint records.
    pub next: LoaderState,
}

/// Assembles padded rows into a [`Batch`].
pub fn collate(
    rows: Vec<(Vec<u32>, Vec<i64>)>,
    pad: u32,
    pad_to: Option<usize>,
    epoch: u64,
    next: LoaderState,
) -> Batch {
    let longest = rows.iter().map(|(ids, _)| ids.len()).max().unwrap_or(0);
    let seq_len = pad_to.map_or(longest, |p| p.max(longest));
    let batch_size = rows.len();
    let mut batch = Batch {
        input_ids: Vec::with_capacity(batch_size * seq_len),
        attention_mask: Vec::with_capacity(batch_size * seq_len),
        labels: Vec::with_capacity(batch_size * seq_len),
        batch_size,
        seq_len,
        tokens: 0,
        masked: 0,
        epoch,
        next,
    };
    for (ids, labels) in rows {
        let n = ids.len();
        batch.tokens += n;
        batch.masked += labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
        batch.input_ids.extend(ids);
        batch
            .input_ids
            .extend(std::iter::repeat_n(pad, seq_len - n));
        batch.attention_mask.extend(std::iter::repeat_n(1, n));
        batch
            .attention_mask
            .extend(std::iter::repeat_n(0, seq_len - n));
        batch.labels.extend(labels);
        batch
            .labels
            .extend(std::iter::repeat_n(IGNORE_INDEX, seq_len - n));
    }
    batch
}

/// The batch a loader at `state` yields on this rank, and the state after it. Samples
/// run on into the next epoch when one ends, so every batch is full. `stop`, raised by
/// a signal, ends the building of a batch between two samples
/// ([`DataError::Interrupted`]).
pub fn batch_at(
    corpus: &Corpus,
    config: &LoaderConfig,
    state: LoaderState,
    stop: Option<&AtomicBool>,
) -> Result<Batch> {
    assert!(!corpus.is_empty(), "batch_at on an empty corpus");
    let n = corpus.len();
    let group = (config.batch_size * config.world) as u64;
    let mut rows = Vec::with_capacity(config.batch_size);
    let mut tokens = Vec::new();
    let first_epoch = state.epoch + state.cursor / n;
    let mut order: Option<Shuffle> = None;
    let mut order_epoch = u64::MAX;
    for k in 0..config.batch_size as u64 {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Err(DataError::Interrupted {
                path: corpus.split.dir.clone(),
            });
        }
        let global = state.cursor + (config.rank * config.batch_size) as u64 + k;
        let (epoch, position) = (state.epoch + global / n, global % n);
        if order.is_none() || order_epoch != epoch {
            order = Some(Shuffle::new(n, config.seed, epoch));
            order_epoch = epoch;
        }
        let block = order.as_ref().expect("order").at(position);
        corpus.block_tokens(block, &mut tokens)?;
        let key = MaskKey::Train {
            seed: config.seed,
            epoch,
            block,
        };
        let ramped;
        let masking = match &config.mask_ramp {
            Some(ramp) => {
                let served =
                    (epoch * n + position).saturating_sub(ramp.start.epoch * n + ramp.start.cursor);
                ramped = MaskingConfig {
                    mask_prob: ramp.at(served),
                    ..corpus.masking.clone()
                };
                &ramped
            }
            None => &corpus.masking,
        };
        let masked = mask_tokens(&tokens, masking, &corpus.vocab, key);
        rows.push((masked.input_ids, masked.labels));
    }
    let after = state.cursor + group;
    let next = LoaderState {
        epoch: state.epoch + after / n,
        cursor: after % n,
    };
    Ok(collate(
        rows,
        corpus.split.specials.pad,
        config.pad_to,
        first_epoch,
        next,
    ))
}

/// Validation batches of `batch_size` in corpus order, with masks fixed for the run
/// ([`MaskKey::Validation`]): how many there are, at most `max_batches`.
pub fn validation_batch_count(
    corpus: &Corpus,
    batch_size: usize,
    max_batches: Option<usize>,
) -> usize {
    let all = corpus.len().div_ceil(batch_size as u64);
    max_batches.map_or(all, |m| all.min(m as u64)) as usize
}

/// Validation batch `b`, computed when it is needed rather than held for the run.
pub fn validation_batch(corpus: &Corpus, batch_size: usize, seed: u64, b: usize) -> Result<Batch> {
    let first = (b * batch_size) as u64;
    let last = (first + batch_size as u64).min(corpus.len());
    let mut tokens = Vec::new();
    let mut rows = Vec::with_capacity(batch_size);
    for sample in first..last {
        corpus.block_tokens(sample, &mut tokens)?;
        let m = mask_tokens(
            &tokens,
            &corpus.masking,
            &corpus.vocab,
            MaskKey::Validation { seed, sample },
        );
        rows.push((m.input_ids, m.labels));
    }
    Ok(collate(
        rows,
        corpus.split.specials.pad,
        None,
        0,
        LoaderState::default(),
    ))
}

/// The background producer and its queue.
pub struct Loader {
    /// `None` once dropping: closing the channel is what stops the producer.
    receiver: Option<Receiver<Result<Batch>>>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    /// A loader from `state` on; `stop` (a signal's flag) interrupts the batch being
    /// built, which then arrives as [`DataError::Interrupted`].
    pub fn new(
        corpus: Arc<Corpus>,
        config: LoaderConfig,
        state: LoaderState,
        stop: Option<Arc<AtomicBool>>,
    ) -> Self {
        let (sender, receiver) = sync_channel(config.queue_depth.max(1));
        let worker = std::thread::Builder::new()
            .name("roberta-loader".into())
            .spawn(move || produce(&corpus, &config, state, stop.as_deref(), &sender))
            .expect("spawn the loader thread");
        Self {
            receiver: Some(receiver),
            worker: Some(worker),
        }
    }

    /// The next batch; blocks until the producer has it. A shard that turned out
    /// corrupt is the error.
    pub fn next_batch(&mut self) -> Result<Batch> {
        self.receiver
            .as_ref()
            .and_then(|r| r.recv().ok())
            .expect("the loader thread ended early")
    }
}

/// Runs ahead until the loader is dropped, which closes the channel and fails the send,
/// or until a batch fails, which is sent as the last item.
fn produce(
    corpus: &Corpus,
    config: &LoaderConfig,
    mut state: LoaderState,
    stop: Option<&AtomicBool>,
    sender: &SyncSender<Result<Batch>>,
) {
    loop {
        let batch = batch_at(corpus, config, state, stop);
        let failed = batch.is_err();
        if let Ok(b) = &batch {
            state = b.next;
        }
        if sender.send(batch).is_err() || failed {
            return;
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        drop(self.receiver.take());
        if let Some(worker) = self.worker.take() {
            worker.join().ok();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::tests::write_split;
    use crate::tokenizer::SpecialTokens;

    fn corpus(dir: &std::path::Path) -> Arc<Corpus> {
        let split = Split::open(dir, "train", None).unwrap();
        let specials = SpecialTokens {
            bos: 0,
            pad: 1,
            eos: 2,
            unk: 3,
            mask: 99,
        };
        let vocab = MaskVocab::new(specials, 100, |id| Some(format!("Ġ{id}")));
        Arc::new(
            Corpus::open(
                split,
                8,
                BreakMode::FullSentences,
                vocab,
                MaskingConfig::default(),
            )
            .unwrap(),
        )
    }

    fn docs() -> Vec<Vec<Vec<u32>>> {
        (0..40u32)
            .map(|d| {
                vec![
                    vec![10 + d % 80, 11 + d % 80],
                    vec![12 + d % 80; (d % 5 + 1) as usize],
                ]
            })
            .collect()
    }

    fn config(batch_size: usize, rank: usize, world: usize) -> LoaderConfig {
        LoaderConfig {
            batch_size,
            seed: 3,
            rank,
            world,
            pad_to: None,
            queue_depth: 2,
            mask_ramp: None,
        }
    }

    #[test]
    fn resume_from_saved_state_yields_the_same_batches() {
        let dir = write_split(&docs());
        let c = corpus(dir.path());
        let mut straight = Loader::new(c.clone(), config(3, 0, 1), LoaderState::default(), None);
        let all: Vec<Batch> = (0..30).map(|_| straight.next_batch().unwrap()).collect();
        // Stop after 11 batches, serialise the state, build a new loader from it.
        let saved = serde_json::to_string(&all[10].next).unwrap();
        let state: LoaderState = serde_json::from_str(&saved).unwrap();
        let mut resumed = Loader::new(c, config(3, 0, 1), state, None);
        for expected in &all[11..] {
            assert_eq!(&resumed.next_batch().unwrap(), expected);
        }
        assert!(
            all.last().unwrap().next.epoch >= 1,
            "the test crosses an epoch boundary"
        );
    }

    #[test]
    fn a_mask_ramp_moves_the_rate_by_the_data_position_and_resumes() {
        let ramp = MaskRamp {
            from: 0.5,
            to: 0.1,
            cosine: true,
            start: LoaderState {
                epoch: 2,
                cursor: 0,
            },
            sequences: 1000,
        };
        assert_eq!(ramp.at(0), 0.5);
        assert!((ramp.at(500) - 0.3).abs() < 1e-12);
        assert!((ramp.at(1000) - 0.1).abs() < 1e-12 && ramp.at(5000) == ramp.at(1000));
        let linear = MaskRamp {
            cosine: false,
            ..ramp
        };
        assert!((linear.at(250) - 0.4).abs() < 1e-12);

        let dir = write_split(&docs());
        let c = corpus(dir.path());
        let n = c.len();
        let cfg = LoaderConfig {
            mask_ramp: Some(MaskRamp {
                start: LoaderState::default(),
                sequences: 4 * n,
                ..linear
            }),
            ..config(8, 0, 1)
        };
        let mut loader = Loader::new(c.clone(), cfg.clone(), LoaderState::default(), None);
        let all: Vec<Batch> = (0..(4 * n as usize).div_ceil(8))
            .map(|_| loader.next_batch().unwrap())
            .collect();
        let rate = |batches: &[Batch]| {
            let masked: usize = batches.iter().map(|b| b.masked).sum();
            let tokens: usize = batches.iter().map(|b| b.tokens).sum();
            masked as f64 / tokens as f64
        };
        let quarter = all.len() / 4;
        let (early, late) = (rate(&all[..quarter]), rate(&all[3 * quarter..]));
        // 0.45 then 0.15 of the maskable tokens (`<s>` and `</s>` are a quarter here).
        assert!(early > 2.5 * late && early > 0.25, "{early} then {late}");
        // Resumed mid-ramp: the same masks.
        let mut resumed = Loader::new(c, cfg, all[quarter].next, None);
        for expected in &all[quarter + 1..quarter + 6] {
            assert_eq!(&resumed.next_batch().unwrap(), expected);
        }
    }

    #[test]
    fn fresh_masks_and_order_every_epoch() {
        let dir = write_split(&docs());
        let c = corpus(dir.path());
        let at =
            |epoch| batch_at(&c, &config(4, 0, 1), LoaderState { epoch, cursor: 0 }, None).unwrap();
        assert_ne!(at(0).input_ids, at(1).input_ids);
        // Every block once per epoch.
        let n = c.len();
        let mut served: Vec<u64> = (0..n).map(|i| Shuffle::new(n, 3, 1).at(i)).collect();
        served.sort();
        assert_eq!(served, (0..n).collect::<Vec<_>>());
    }

    /// The defect of the first keying: `data inspect --seed 1 --epoch 0` printed the
    /// batches of `--seed 0 --epoch 3`. Over seeds 0–3 × epochs 0–3, no two may serve
    /// the same first batch.
    #[test]
    fn no_two_seed_epoch_pairs_serve_the_same_batches() {
        let dir = write_split(&docs());
        let c = corpus(dir.path());
        let mut seen = std::collections::HashMap::new();
        for seed in 0..4 {
            for epoch in 0..4 {
                let cfg = LoaderConfig {
                    seed,
                    ..config(6, 0, 1)
                };
                let b = batch_at(&c, &cfg, LoaderState { epoch, cursor: 0 }, None).unwrap();
                if let Some(other) = seen.insert((b.input_ids, b.labels), (seed, epoch)) {
                    panic!("seed {seed} epoch {epoch} serves the batch of {other:?}");
                }
            }
        }
    }

    #[test]
    fn ranks_take_disjoint_shares_of_the_global_batch() {
        let dir = write_split(&docs());
        let c = corpus(dir.path());
        let whole = batch_at(&c, &config(4, 0, 1), LoaderState::default(), None).unwrap();
        let r0 = batch_at(&c, &config(2, 0, 2), LoaderState::default(), None).unwrap();
        let r1 = batch_at(&c, &config(2, 1, 2), LoaderState::default(), None).unwrap();
        assert_eq!(r0.next, whole.next);
        assert_eq!(r1.next, whole.next);
        let rows = |b: &Batch| -> Vec<Vec<u32>> {
            b.input_ids
                .chunks(b.seq_len)
                .zip(b.attention_mask.chunks(b.seq_len))
                .map(|(ids, m)| {
                    ids.iter()
                        .zip(m)
                        .filter(|(_, m)| **m == 1)
                        .map(|(i, _)| *i)
                        .collect()
                })
                .collect()
        };
        let mut shares = rows(&r0);
        shares.extend(rows(&r1));
        assert_eq!(shares, rows(&whole));
    }

    #[test]
    fn padding_and_validation_masks_are_fixed() {
        let dir = write_split(&docs());
        let c = corpus(dir.path());
        assert_eq!(validation_batch_count(&c, 5, Some(2)), 2);
        assert_eq!(
            validation_batch_count(&c, 5, None) as u64,
            c.len().div_ceil(5)
        );
        for b in 0..2 {
            let batch = validation_batch(&c, 5, 9, b).unwrap();
            assert_eq!(batch, validation_batch(&c, 5, 9, b).unwrap());
            assert_ne!(batch.labels, validation_batch(&c, 5, 10, b).unwrap().labels);
            for (m, l) in batch.attention_mask.iter().zip(&batch.labels) {
                assert!(*m == 1 || *l == IGNORE_INDEX);
            }
        }
        let cfg = LoaderConfig {
            pad_to: Some(8),
            ..config(3, 0, 1)
        };
        assert_eq!(
            batch_at(&c, &cfg, LoaderState::default(), None)
                .unwrap()
                .seq_len,
            8
        );
    }
}
