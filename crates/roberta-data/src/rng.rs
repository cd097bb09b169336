//! Every random draw of a run comes from here: [`stream`] derives a generator from a
//! purpose tag and a key tuple (seed, epoch, sample…), and [`Shuffle`] is the epoch order
//! as a keyed bijection. Written out rather than taken from `rand`, so that masks, orders
//! and splits depend only on their keys and never change with a dependency bump.
//!
//! Each key word is absorbed through a full 64-bit mixer into two independent 64-bit
//! lanes, so a key is a 128-bit hash of (purpose, words…): nearby keys (seed 0 epoch 3 and
//! seed 1 epoch 0, sample i and i ^ 7) give unrelated streams, and no two purposes can
//! share one. The first version folded the key in linearly and let such keys collide.

/// Version of the streams: checkpoints record it, and a resume across versions would
/// continue on other masks and orders than the run had.
pub const STREAMS_VERSION: u32 = 2;

/// What a stream is for. Part of every key, so that two uses never draw the same numbers
/// even with equal key words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// Masks of training samples: (seed, epoch, block).
    Mask,
    /// Masks of validation samples, fixed for a run: (seed, sample).
    ValidationMask,
    /// The order blocks or examples are served in: (seed, epoch).
    EpochOrder,
    /// Which documents preprocessing holds out for validation: (seed, document).
    ValidSplit,
    /// The backend's dropout generator for a micro-batch: (seed, update, micro-batch).
    Dropout,
    /// Initialisation of fresh weights: (seed).
    Init,
}

impl Purpose {
    /// Fixed tags: they are part of every stream's identity, so they never change.
    fn tag(self) -> u64 {
        u64::from_le_bytes(*match self {
            Self::Mask => b"mask\0\0\0\0",
            Self::ValidationMask => b"vmask\0\0\0",
            Self::EpochOrder => b"order\0\0\0",
            Self::ValidSplit => b"vsplit\0\0",
            Self::Dropout => b"dropout\0",
            Self::Init => b"init\0\0\0\0",
        })
    }
}

/// SplitMix64's finaliser: a bijection of 64-bit words in which every input bit
/// affects every output bit.
fn mix_a(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// MurmurHash3's finaliser: another such bijection, so the two lanes are independent.
fn mix_b(mut z: u64) -> u64 {
    z = (z ^ (z >> 33)).wrapping_mul(0xFF51_AFD7_ED55_8CCD);
    z = (z ^ (z >> 33)).wrapping_mul(0xC4CE_B9FE_1A85_EC53);
    z ^ (z >> 33)
}

/// The 128-bit hash of a key: each word goes through both lanes' mixers, and the
/// length closes it, so `[a]` and `[a, 0]` differ.
fn hash(purpose: Purpose, key: &[u64]) -> (u64, u64) {
    let tag = purpose.tag();
    let (mut a, mut b) = (
        mix_a(tag ^ 0x243F_6A88_85A3_08D3),
        mix_b(tag ^ 0x1319_8A2E_0370_7344),
    );
    for &k in key {
        a = mix_a(a ^ k).wrapping_add(b.rotate_left(17));
        b = mix_b(b ^ k.rotate_left(32)).wrapping_add(a);
    }
    let len = key.len() as u64;
    (mix_a(a ^ len), mix_b(b ^ len.rotate_left(32)))
}

/// The generator of `purpose` keyed by `key`: same key, same numbers.
pub fn stream(purpose: Purpose, key: &[u64]) -> KeyedRng {
    let (a, b) = hash(purpose, key);
    let mut s = [
        mix_a(a),
        mix_b(b),
        mix_a(a ^ b.rotate_left(29)),
        mix_b(b ^ a.rotate_left(41)),
    ];
    if s == [0; 4] {
        // xoshiro's one forbidden state; unreachable in practice, excluded for certain.
        s[0] = 1;
    }
    KeyedRng { s }
}

/// One 64-bit seed for a generator this crate does not own (the backend's, for
/// dropout and initialisation), derived from the same keyed hash.
pub fn seed(purpose: Purpose, key: &[u64]) -> u64 {
    stream(purpose, key).next_u64()
}

/// xoshiro256**, seeded by [`stream`].
#[derive(Debug, Clone)]
pub struct KeyedRng {
    s: [u64; 4],
}

impl KeyedRng {
    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 bits.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in [0, n) (Lemire's multiply-shift; the bias is below 2^-32 for n < 2^32).
    pub fn below(&mut self, n: usize) -> usize {
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }
}

/// Rounds of the Feistel network: four make a pseudorandom permutation out of a
/// pseudorandom round function (Luby–Rackoff); two more are margin, and cheap.
const ROUNDS: usize = 6;

/// A keyed bijection of `[0, n)`: where the `i`-th served item is, without a permutation
/// held in memory. A balanced Feistel network over the smallest even number of bits that
/// covers `n`, walked in cycles until the value falls inside `[0, n)` (at most 4 tries on
/// average, since the domain is below 4n).
#[derive(Debug, Clone)]
pub struct Shuffle {
    n: u64,
    half_bits: u32,
    keys: [u64; ROUNDS],
}

impl Shuffle {
    /// The order of epoch `epoch` under `seed` ([`Purpose::EpochOrder`]).
    pub fn new(n: u64, seed: u64, epoch: u64) -> Self {
        let mut rng = stream(Purpose::EpochOrder, &[seed, epoch]);
        let bits = 64 - n.saturating_sub(1).leading_zeros();
        Self {
            n,
            half_bits: bits.div_ceil(2).max(1),
            keys: std::array::from_fn(|_| rng.next_u64()),
        }
    }

    pub fn len(&self) -> u64 {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// The item at position `i` of the order, `i < n`.
    pub fn at(&self, i: u64) -> u64 {
        debug_assert!(i < self.n, "position {i} of {}", self.n);
        let mut x = i;
        loop {
            x = self.encrypt(x);
            if x < self.n {
                return x;
            }
        }
    }

    fn encrypt(&self, x: u64) -> u64 {
        let mask = (1u64 << self.half_bits) - 1;
        let (mut left, mut right) = (x >> self.half_bits, x & mask);
        for &key in &self.keys {
            let f = mix_a(right ^ key) & mask;
            (left, right) = (right, left ^ f);
        }
        (left << self.half_bits) | right
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::{HashMap, HashSet};

    fn first(purpose: Purpose, key: &[u64], n: usize) -> Vec<u64> {
        let mut r = stream(purpose, key);
        (0..n).map(|_| r.next_u64()).collect()
    }

    #[test]
    fn same_key_same_stream() {
        assert_eq!(
            first(Purpose::Mask, &[1, 2, 3], 8),
            first(Purpose::Mask, &[1, 2, 3], 8)
        );
    }

    /// The defect of the first keying: (seed 1, epoch 0) was (seed 0, epoch 3), and
    /// block i of epoch 1 drew block i ^ 7's mask of epoch 0. Over a grid of small and
    /// adjacent values, every key of every purpose must start a stream of its own.
    #[test]
    fn no_two_keys_or_purposes_share_a_stream_over_a_grid() {
        let purposes = [
            Purpose::Mask,
            Purpose::ValidationMask,
            Purpose::EpochOrder,
            Purpose::ValidSplit,
            Purpose::Dropout,
            Purpose::Init,
        ];
        let mut seen: HashMap<u64, (Purpose, Vec<u64>)> = HashMap::new();
        let mut check = |p: Purpose, key: Vec<u64>| {
            let v = first(p, &key, 1)[0];
            if let Some(other) = seen.insert(v, (p, key.clone())) {
                panic!("{p:?} {key:?} starts like {other:?}");
            }
        };
        let small = [
            0,
            1,
            2,
            3,
            4,
            5,
            6,
            7,
            8,
            15,
            16,
            255,
            256,
            u64::MAX - 1,
            u64::MAX,
        ];
        for &p in &purposes {
            check(p, vec![]);
            for &a in &small {
                check(p, vec![a]);
                for &b in &small {
                    check(p, vec![a, b]);
                    for c in 0..64 {
                        check(p, vec![a, b, c]);
                    }
                }
            }
        }
        assert!(seen.len() > 6 * 15 * 15 * 64);
    }

    #[test]
    fn streams_of_adjacent_keys_are_uncorrelated() {
        // The first outputs of keys (s, e, i) over a grid: each bit set half the time,
        // and the correlation between neighbouring keys' words near zero.
        let words: Vec<u64> = (0..4u64)
            .flat_map(|s| (0..4u64).flat_map(move |e| (0..256u64).map(move |i| (s, e, i))))
            .map(|(s, e, i)| first(Purpose::Mask, &[s, e, i], 1)[0])
            .collect();
        let n = words.len() as f64;
        for bit in 0..64 {
            let ones = words.iter().filter(|w| (*w >> bit) & 1 == 1).count() as f64;
            // 5 binomial standard deviations.
            assert!(
                (ones - n / 2.0).abs() < 5.0 * (n / 4.0).sqrt(),
                "bit {bit}: {ones} of {n}"
            );
        }
        let f: Vec<f64> = words
            .iter()
            .map(|w| (w >> 11) as f64 / (1u64 << 53) as f64)
            .collect();
        let mean = f.iter().sum::<f64>() / n;
        let var = f.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        let cov = f
            .windows(2)
            .map(|w| (w[0] - mean) * (w[1] - mean))
            .sum::<f64>()
            / (n - 1.0);
        let r = cov / var;
        assert!(r.abs() < 5.0 / n.sqrt(), "serial correlation {r}");
    }

    #[test]
    fn below_is_uniform_enough() {
        let mut r = stream(Purpose::Mask, &[7]);
        let mut counts = [0usize; 10];
        for _ in 0..100_000 {
            counts[r.below(10)] += 1;
        }
        for c in counts {
            assert!((9_500..10_500).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn shuffle_is_a_bijection_for_every_size() {
        for n in (1..70).chain([255, 256, 257, 1000, 4097]) {
            let s = Shuffle::new(n, 3, 1);
            let mut seen = vec![false; n as usize];
            for i in 0..n {
                let j = s.at(i) as usize;
                assert!(!seen[j], "n {n}: {j} twice");
                seen[j] = true;
            }
        }
    }

    #[test]
    fn orders_differ_across_seeds_and_epochs() {
        let n = 1200;
        let mut orders = HashSet::new();
        for seed in 0..4 {
            for epoch in 0..4 {
                let s = Shuffle::new(n, seed, epoch);
                let order: Vec<u64> = (0..n).map(|i| s.at(i)).collect();
                assert!(
                    orders.insert(order),
                    "seed {seed} epoch {epoch} repeats an order"
                );
            }
        }
    }

    #[test]
    fn shuffle_places_items_uniformly() {
        // Where item positions land over many keys: a chi-square over 10 bins of the
        // positions of the first 10 items, 1,000 keys, n = 100 (df = 9·10 bins per item).
        let n = 100u64;
        let mut counts = vec![[0u32; 10]; 10];
        for key in 0..1000 {
            let s = Shuffle::new(n, 11, key);
            for (i, c) in counts.iter_mut().enumerate() {
                c[(s.at(i as u64) / 10) as usize] += 1;
            }
        }
        let chi2: f64 = counts
            .iter()
            .flat_map(|c| c.iter())
            .map(|&o| (f64::from(o) - 100.0).powi(2) / 100.0)
            .sum();
        // 10 items × 9 degrees of freedom: mean 90, sd ~13.4; 150 is p ≈ 1e-4.
        assert!(chi2 < 150.0, "chi-square {chi2}");
    }
}
