//! The streaming loader: a seeded permutation of blocks per epoch, masked on the fly,
//! batched by a background thread into a bounded queue.
//!
//! Everything a batch contains is a pure function of (corpus, config, state), where the
//! state is (epoch, cursor): [`batch_at`] computes it, the thread only runs ahead. A
//! checkpoint stores the state after the last consumed batch, and a loader built from it
//! yields exactly the batches an uninterrupted one would have yielded next.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::dataset::{Block, BreakMode, Split, pack};
use crate::masking::{IGNORE_INDEX, MaskVocab, MaskingConfig, mask_tokens};
use crate::rng::KeyedRng;

/// Tag mixed into the permutation key so it never collides with a mask key.
const PERMUTATION_TAG: u64 = 0x5045_524D;
/// The epoch number under which validation masks are drawn: fixed, so that every
/// evaluation of a run scores the same masked tokens.
pub const VALIDATION_EPOCH: u64 = u64::MAX;

/// A split packed into blocks, with what masking needs.
pub struct Corpus {
    pub split: Split,
    pub blocks: Vec<Block>,
    pub block_size: usize,
    pub vocab: MaskVocab,
    pub masking: MaskingConfig,
}

impl Corpus {
    pub fn new(
        split: Split,
        block_size: usize,
        mode: BreakMode,
        vocab: MaskVocab,
        masking: MaskingConfig,
    ) -> Self {
        let blocks = pack(&split, block_size, mode);
        Self {
            split,
            blocks,
            block_size,
            vocab,
            masking,
        }
    }

    pub fn len(&self) -> usize {
        self.blocks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.blocks.is_empty()
    }

    /// Mean tokens per block over the block size (1.0 = every block full),
    /// from block lengths alone: no token data is read, so it is cheap at start-up.
    pub fn fill_rate(&self) -> f64 {
        let total: usize = self.blocks.iter().map(|&b| self.split.block_len(b)).sum();
        total as f64 / (self.blocks.len().max(1) * self.block_size) as f64
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
}

/// Where the loader is: the next sample is position `cursor` of epoch `epoch`'s
/// permutation (counted over all ranks).
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

/// The permutation of `n` blocks for `epoch`.
pub fn permutation(n: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n as u32).collect();
    KeyedRng::new(&[seed, epoch, PERMUTATION_TAG]).shuffle(&mut order);
    order
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

/// Caches the current epoch's permutation across calls of [`batch_at`].
#[derive(Default)]
pub struct PermutationCache {
    epoch: Option<u64>,
    order: Vec<u32>,
}

impl PermutationCache {
    fn get(&mut self, corpus: &Corpus, seed: u64, epoch: u64) -> &[u32] {
        if self.epoch != Some(epoch) {
            self.order = permutation(corpus.len(), seed, epoch);
            self.epoch = Some(epoch);
        }
        &self.order
    }
}

/// The batch a loader at `state` yields on this rank, and the state after it. Samples
/// run on into the next epoch when one ends, so every batch is full.
pub fn batch_at(
    corpus: &Corpus,
    config: &LoaderConfig,
    state: LoaderState,
    cache: &mut PermutationCache,
) -> Batch {
    assert!(!corpus.is_empty(), "batch_at on an empty corpus");
    let n = corpus.len() as u64;
    let group = (config.batch_size * config.world) as u64;
    let mut rows = Vec::with_capacity(config.batch_size);
    let mut tokens = Vec::new();
    let first_epoch = state.epoch + state.cursor / n;
    for k in 0..config.batch_size as u64 {
        let global = state.cursor + (config.rank * config.batch_size) as u64 + k;
        let (epoch, position) = (state.epoch + global / n, global % n);
        let block = cache.get(corpus, config.seed, epoch)[position as usize];
        corpus
            .split
            .block_tokens(corpus.blocks[block as usize], &mut tokens);
        let masked = mask_tokens(
            &tokens,
            &corpus.masking,
            &corpus.vocab,
            config.seed,
            epoch,
            u64::from(block),
        );
        rows.push((masked.input_ids, masked.labels));
    }
    let after = state.cursor + group;
    let next = LoaderState {
        epoch: state.epoch + after / n,
        cursor: after % n,
    };
    collate(
        rows,
        corpus.split.specials.pad,
        config.pad_to,
        first_epoch,
        next,
    )
}

/// Validation batches: blocks in corpus order with masks fixed by [`VALIDATION_EPOCH`].
pub fn validation_batches(
    corpus: &Corpus,
    batch_size: usize,
    seed: u64,
    max_batches: Option<usize>,
) -> Vec<Batch> {
    let mut tokens = Vec::new();
    let mut batches = Vec::new();
    for (b, chunk) in corpus.blocks.chunks(batch_size).enumerate() {
        if max_batches.is_some_and(|m| b >= m) {
            break;
        }
        let rows = chunk
            .iter()
            .enumerate()
            .map(|(i, &block)| {
                corpus.split.block_tokens(block, &mut tokens);
                let index = (b * batch_size + i) as u64;
                let m = mask_tokens(
                    &tokens,
                    &corpus.masking,
                    &corpus.vocab,
                    seed,
                    VALIDATION_EPOCH,
                    index,
                );
                (m.input_ids, m.labels)
            })
            .collect();
        batches.push(collate(
            rows,
            corpus.split.specials.pad,
            None,
            VALIDATION_EPOCH,
            LoaderState::default(),
        ));
    }
    batches
}

/// The background producer and its queue.
pub struct Loader {
    /// `None` once dropping: closing the channel is what stops the producer.
    receiver: Option<Receiver<Batch>>,
    worker: Option<JoinHandle<()>>,
}

impl Loader {
    pub fn new(corpus: Arc<Corpus>, config: LoaderConfig, state: LoaderState) -> Self {
        let (sender, receiver) = sync_channel(config.queue_depth.max(1));
        let worker = std::thread::Builder::new()
            .name("roberta-loader".into())
            .spawn(move || produce(&corpus, &config, state, &sender))
            .expect("spawn the loader thread");
        Self {
            receiver: Some(receiver),
            worker: Some(worker),
        }
    }

    /// The next batch; blocks until the producer has it.
    pub fn next_batch(&mut self) -> Batch {
        self.receiver
            .as_ref()
            .and_then(|r| r.recv().ok())
            .expect("the loader thread ended early")
    }
}

/// Runs ahead until the loader is dropped, which closes the channel and fails the send.
fn produce(
    corpus: &Corpus,
    config: &LoaderConfig,
    mut state: LoaderState,
    sender: &SyncSender<Batch>,
) {
    let mut cache = PermutationCache::default();
    loop {
        let batch = batch_at(corpus, config, state, &mut cache);
        state = batch.next;
        if sender.send(batch).is_err() {
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
        Arc::new(Corpus::new(
            split,
            8,
            BreakMode::FullSentences,
            vocab,
            MaskingConfig::default(),
        ))
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
        }
    }

    #[test]
    fn resume_from_saved_state_yields_the_same_batches() {
        let dir = write_split(&docs());
        let c = corpus(dir.path());
        let mut straight = Loader::new(c.clone(), config(3, 0, 1), LoaderState::default());
        let all: Vec<Batch> = (0..30).map(|_| straight.next_batch()).collect();
        // Stop after 11 batches, serialise the state, build a new loader from it.
        let saved = serde_json::to_string(&all[10].next).unwrap();
        let state: LoaderState = serde_json::from_str(&saved).unwrap();
        let mut resumed = Loader::new(c, config(3, 0, 1), state);
        for expected in &all[11..] {
            assert_eq!(&resumed.next_batch(), expected);
        }
        assert!(
            all.last().unwrap().next.epoch >= 1,
            "the test crosses an epoch boundary"
        );
    }

    #[test]
    fn fresh_masks_and_order_every_epoch() {
        let dir = write_split(&docs());
        let c = corpus(dir.path());
        let n = c.len() as u64;
        let mut cache = PermutationCache::default();
        let e0 = batch_at(
            &c,
            &config(4, 0, 1),
            LoaderState {
                epoch: 0,
                cursor: 0,
            },
            &mut cache,
        );
        let e1 = batch_at(
            &c,
            &config(4, 0, 1),
            LoaderState {
                epoch: 1,
                cursor: 0,
            },
            &mut cache,
        );
        assert_ne!(e0.input_ids, e1.input_ids);
        assert_eq!(permutation(n as usize, 3, 0).len(), n as usize);
        assert_ne!(permutation(n as usize, 3, 0), permutation(n as usize, 3, 1));
    }

    #[test]
    fn ranks_take_disjoint_shares_of_the_global_batch() {
        let dir = write_split(&docs());
        let c = corpus(dir.path());
        let mut cache = PermutationCache::default();
        let whole = batch_at(&c, &config(4, 0, 1), LoaderState::default(), &mut cache);
        let r0 = batch_at(&c, &config(2, 0, 2), LoaderState::default(), &mut cache);
        let r1 = batch_at(&c, &config(2, 1, 2), LoaderState::default(), &mut cache);
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
        let a = validation_batches(&c, 5, 9, Some(2));
        assert_eq!(a, validation_batches(&c, 5, 9, Some(2)));
        for b in &a {
            for (m, l) in b.attention_mask.iter().zip(&b.labels) {
                assert!(*m == 1 || *l == IGNORE_INDEX);
            }
        }
        let mut cache = PermutationCache::default();
        let cfg = LoaderConfig {
            pad_to: Some(8),
            ..config(3, 0, 1)
        };
        assert_eq!(
            batch_at(&c, &cfg, LoaderState::default(), &mut cache).seq_len,
            8
        );
    }
}
