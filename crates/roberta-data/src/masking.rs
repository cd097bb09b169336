//! Dynamic masking, RoBERTa's replacement for BERT's static masks: every time a sequence
//! is served it gets a fresh mask, drawn from a stream keyed by (seed, epoch, block). It
//! is a pure function, like fairseq's `MaskTokensDataset`: no hidden state, so resuming
//! and parallel workers reproduce it exactly.

use serde::{Deserialize, Serialize};

use crate::rng::{KeyedRng, Purpose, stream};
use crate::tokenizer::SpecialTokens;

/// Label of positions that carry no MLM target.
pub const IGNORE_INDEX: i64 = -100;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MaskingConfig {
    /// Fraction of maskable tokens (or words) chosen as targets.
    pub mask_prob: f64,
    /// Of the chosen: fraction replaced by `<mask>`.
    pub mask_token_prob: f64,
    /// Of the chosen: fraction replaced by a random non-special token (the rest is kept).
    pub random_token_prob: f64,
    /// Choose whole words (a word starts at a `Ġ` token) instead of single tokens.
    pub whole_word: bool,
}

impl Default for MaskingConfig {
    fn default() -> Self {
        Self {
            mask_prob: 0.15,
            mask_token_prob: 0.8,
            random_token_prob: 0.1,
            whole_word: false,
        }
    }
}

impl MaskingConfig {
    pub fn validate(&self) -> Result<(), String> {
        if !(self.mask_prob > 0.0 && self.mask_prob < 1.0) {
            return Err(format!(
                "masking.mask_prob = {} must be in (0, 1)",
                self.mask_prob
            ));
        }
        for (k, v) in [
            ("mask_token_prob", self.mask_token_prob),
            ("random_token_prob", self.random_token_prob),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(format!("masking.{k} = {v} must be in [0, 1]"));
            }
        }
        if self.mask_token_prob + self.random_token_prob > 1.0 + 1e-9 {
            return Err(format!(
                "masking.mask_token_prob + masking.random_token_prob = {} must be at most 1",
                self.mask_token_prob + self.random_token_prob
            ));
        }
        Ok(())
    }
}

/// What the masker needs to know of the vocabulary.
#[derive(Debug, Clone)]
pub struct MaskVocab {
    pub specials: SpecialTokens,
    /// Ids a random replacement may take: every id but the special ones.
    pub replaceable: Vec<u32>,
    /// `word_start[id]`: the token begins a word (`Ġ…`), for whole-word masking.
    pub word_start: Vec<bool>,
}

impl MaskVocab {
    pub fn new(
        specials: SpecialTokens,
        vocab_size: usize,
        token: impl Fn(u32) -> Option<String>,
    ) -> Self {
        let mut replaceable = Vec::with_capacity(vocab_size);
        let mut word_start = vec![true; vocab_size];
        for id in 0..vocab_size as u32 {
            let text = token(id);
            let special = specials.contains(id);
            if !special {
                replaceable.push(id);
            }
            word_start[id as usize] = special || text.is_none_or(|t| t.starts_with('Ġ'));
        }
        Self {
            specials,
            replaceable,
            word_start,
        }
    }
}

/// A masked sequence: the model's input and its targets (`IGNORE_INDEX` elsewhere).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Masked {
    pub input_ids: Vec<u32>,
    pub labels: Vec<i64>,
}

/// Which mask a sequence gets: its key in the random streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MaskKey {
    /// A training block, masked afresh every epoch.
    Train { seed: u64, epoch: u64, block: u64 },
    /// A validation sample, masked the same way at every evaluation of a run.
    Validation { seed: u64, sample: u64 },
}

impl MaskKey {
    fn stream(self) -> KeyedRng {
        match self {
            Self::Train { seed, epoch, block } => stream(Purpose::Mask, &[seed, epoch, block]),
            Self::Validation { seed, sample } => stream(Purpose::ValidationMask, &[seed, sample]),
        }
    }
}

/// Masks `tokens` with the mask of `key`. Special tokens and padding are never chosen.
/// The number of targets is exact per sequence, `floor(p·n + u)` with `u` uniform, as
/// in fairseq, so short sequences are masked at rate `p` on average.
pub fn mask_tokens(
    tokens: &[u32],
    config: &MaskingConfig,
    vocab: &MaskVocab,
    key: MaskKey,
) -> Masked {
    let mut rng = key.stream();
    let specials = vocab.specials;
    // Units that can be chosen: single tokens, or whole words (runs from a word start).
    let mut units: Vec<(usize, usize)> = Vec::new();
    for (i, &t) in tokens.iter().enumerate() {
        if specials.contains(t) {
            continue;
        }
        let starts = !config.whole_word
            || vocab.word_start.get(t as usize).copied().unwrap_or(true)
            || units.last().is_none_or(|&(_, end)| end != i);
        if starts {
            units.push((i, i + 1));
        } else if let Some(last) = units.last_mut() {
            last.1 = i + 1;
        }
    }
    let count = ((config.mask_prob * units.len() as f64) + rng.next_f64()).floor() as usize;
    let count = count.min(units.len());
    // Partial Fisher–Yates: the first `count` units of a random permutation.
    for i in 0..count {
        let j = i + rng.below(units.len() - i);
        units.swap(i, j);
    }
    let mut input_ids = tokens.to_vec();
    let mut labels = vec![IGNORE_INDEX; tokens.len()];
    for &(start, end) in &units[..count] {
        for p in start..end {
            labels[p] = i64::from(tokens[p]);
            let u = rng.next_f64();
            if u < config.mask_token_prob {
                input_ids[p] = specials.mask;
            } else if u < config.mask_token_prob + config.random_token_prob
                && !vocab.replaceable.is_empty()
            {
                input_ids[p] = vocab.replaceable[rng.below(vocab.replaceable.len())];
            }
        }
    }
    Masked { input_ids, labels }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SPECIALS: SpecialTokens = SpecialTokens {
        bos: 0,
        pad: 1,
        eos: 2,
        unk: 3,
        mask: 99,
    };

    fn vocab() -> MaskVocab {
        // Even ids start words, odd ids continue them.
        MaskVocab::new(SPECIALS, 100, |id| {
            Some(if id % 2 == 0 {
                format!("Ġw{id}")
            } else {
                format!("c{id}")
            })
        })
    }

    fn train(seed: u64, epoch: u64, block: u64) -> MaskKey {
        MaskKey::Train { seed, epoch, block }
    }

    fn sequence(len: usize, salt: u32) -> Vec<u32> {
        let mut s = vec![0];
        s.extend((0..len as u32).map(|i| 4 + (i * 7 + salt) % 90));
        s.push(2);
        s
    }

    #[test]
    fn rates_and_split_are_within_binomial_tolerance() {
        let config = MaskingConfig::default();
        let v = vocab();
        let (mut maskable, mut chosen, mut as_mask, mut as_random, mut kept) = (0usize, 0, 0, 0, 0);
        for index in 0..1_000u64 {
            let tokens = sequence(126, index as u32);
            let m = mask_tokens(&tokens, &config, &v, train(1, 0, index));
            maskable += tokens.iter().filter(|t| !SPECIALS.contains(**t)).count();
            for (p, &l) in m.labels.iter().enumerate() {
                if l == IGNORE_INDEX {
                    assert_eq!(m.input_ids[p], tokens[p], "unchosen tokens stay");
                    continue;
                }
                assert!(!SPECIALS.contains(tokens[p]), "special token masked");
                chosen += 1;
                if m.input_ids[p] == SPECIALS.mask {
                    as_mask += 1;
                } else if m.input_ids[p] == tokens[p] {
                    kept += 1;
                } else {
                    assert!(
                        !SPECIALS.contains(m.input_ids[p]),
                        "random replacement is special"
                    );
                    as_random += 1;
                }
            }
        }
        assert!(maskable >= 100_000);
        let rate = chosen as f64 / maskable as f64;
        // The count per sequence is exact up to rounding, so the rate is far tighter
        // than binomial; 4 binomial standard deviations bound it generously.
        let sd = (0.15 * 0.85 / maskable as f64).sqrt();
        assert!((rate - 0.15).abs() < 4.0 * sd, "mask rate {rate}");
        let n = chosen as f64;
        for (observed, p) in [
            (as_mask, 0.8),
            (as_random, 0.1 * 89.0 / 90.0),
            (kept, 0.1 + 0.1 / 90.0),
        ] {
            let sd = (p * (1.0 - p) / n).sqrt();
            let f = observed as f64 / n;
            assert!((f - p).abs() < 4.0 * sd, "fraction {f} vs {p}");
        }
    }

    #[test]
    fn deterministic_per_key_and_fresh_per_epoch() {
        let config = MaskingConfig::default();
        let v = vocab();
        let tokens = sequence(200, 3);
        let a = mask_tokens(&tokens, &config, &v, train(5, 0, 42));
        assert_eq!(a, mask_tokens(&tokens, &config, &v, train(5, 0, 42)));
        assert_ne!(
            a.labels,
            mask_tokens(&tokens, &config, &v, train(5, 1, 42)).labels
        );
        assert_ne!(
            a.labels,
            mask_tokens(&tokens, &config, &v, train(5, 0, 43)).labels
        );
        assert_ne!(
            a.labels,
            mask_tokens(&tokens, &config, &v, train(6, 0, 42)).labels
        );
    }

    /// The defect of the first keying: block i of epoch 1 drew the mask block i ^ 7 had
    /// at epoch 0. Over 4 epochs of 1,200 equal-length blocks, no (epoch, block) may
    /// repeat another's masked positions, and validation masks are a stream of their own.
    #[test]
    fn no_block_reuses_another_blocks_mask_over_epochs() {
        let config = MaskingConfig::default();
        let v = vocab();
        let tokens = sequence(62, 5);
        let mut seen = std::collections::HashMap::new();
        for epoch in 0..4 {
            for block in 0..1200 {
                let m = mask_tokens(&tokens, &config, &v, train(0, epoch, block));
                let positions: Vec<usize> = (0..m.labels.len())
                    .filter(|&p| m.labels[p] != IGNORE_INDEX)
                    .collect();
                if let Some(other) = seen.insert(positions, (epoch, block)) {
                    panic!("epoch {epoch} block {block} repeats the mask of {other:?}");
                }
            }
        }
        for sample in 0..1200 {
            let m = mask_tokens(
                &tokens,
                &config,
                &v,
                MaskKey::Validation { seed: 0, sample },
            );
            let positions: Vec<usize> = (0..m.labels.len())
                .filter(|&p| m.labels[p] != IGNORE_INDEX)
                .collect();
            assert!(!seen.contains_key(&positions), "validation sample {sample}");
        }
    }

    #[test]
    fn masked_positions_are_uniform_and_uncorrelated() {
        // 20,000 masks of a 64-token sequence (62 maskable): each position's count
        // against its expectation (chi-square, 61 degrees of freedom), and whether
        // position p being masked predicts p + 1 (it should not, beyond the fixed count).
        let config = MaskingConfig::default();
        let v = vocab();
        let tokens = sequence(62, 9);
        let mut counts = [0f64; 62];
        let (mut both, mut total) = (0f64, 0f64);
        let draws = 20_000u64;
        for i in 0..draws {
            let m = mask_tokens(&tokens, &config, &v, train(3, i % 7, i));
            let chosen: Vec<bool> = m.labels[1..63].iter().map(|&l| l != IGNORE_INDEX).collect();
            for (c, &x) in counts.iter_mut().zip(&chosen) {
                *c += f64::from(u8::from(x));
            }
            both += chosen.windows(2).filter(|w| w[0] && w[1]).count() as f64;
            total += chosen.iter().filter(|&&x| x).count() as f64;
        }
        let expected = total / 62.0;
        let chi2: f64 = counts
            .iter()
            .map(|c| (c - expected).powi(2) / expected)
            .sum();
        // df 61: mean 61, sd 11; 110 is p ≈ 1e-4.
        assert!(chi2 < 110.0, "chi-square {chi2}");
        // Adjacent pairs both masked: k(k-1)/(n(n-1)) per pair for k of n chosen.
        let k = total / draws as f64;
        let pairs = draws as f64 * 61.0 * k * (k - 1.0) / (62.0 * 61.0);
        assert!(
            (both - pairs).abs() < 5.0 * pairs.sqrt(),
            "{both} vs {pairs}"
        );
    }

    #[test]
    fn padding_is_never_masked_and_high_rates_work() {
        let config = MaskingConfig {
            mask_prob: 0.4,
            ..Default::default()
        };
        let v = vocab();
        let mut tokens = sequence(50, 1);
        tokens.extend([1; 20]);
        let m = mask_tokens(&tokens, &config, &v, train(0, 0, 0));
        assert!(m.labels[52..].iter().all(|&l| l == IGNORE_INDEX));
        let chosen = m.labels.iter().filter(|&&l| l != IGNORE_INDEX).count();
        assert!((20..=21).contains(&chosen), "{chosen} of 50 at 0.4");
    }

    #[test]
    fn whole_word_masking_takes_every_piece_of_a_word() {
        let config = MaskingConfig {
            whole_word: true,
            mask_prob: 0.3,
            ..Default::default()
        };
        let v = vocab();
        // words: [4 5] [6 7 9] [8] [10 11] ...
        let tokens: Vec<u32> = [0, 4, 5, 6, 7, 9, 8, 10, 11, 12, 13, 15, 14, 2].to_vec();
        for index in 0..50 {
            let m = mask_tokens(&tokens, &config, &v, train(0, 0, index));
            let chosen: Vec<bool> = m.labels.iter().map(|&l| l != IGNORE_INDEX).collect();
            for p in 1..tokens.len() - 1 {
                if tokens[p] % 2 == 1 {
                    assert_eq!(chosen[p], chosen[p - 1], "piece {p} split from its word");
                }
            }
        }
    }

    #[test]
    fn rejects_bad_probabilities() {
        assert!(
            MaskingConfig {
                mask_prob: 0.0,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(
            MaskingConfig {
                mask_token_prob: 0.95,
                ..Default::default()
            }
            .validate()
            .is_err()
        );
        assert!(MaskingConfig::default().validate().is_ok());
    }
}
