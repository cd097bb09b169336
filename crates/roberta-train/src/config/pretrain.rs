//! Pretraining's config: `pretrain --config`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use roberta_data::{BreakMode, MaskingConfig};
use roberta_model::pooling::Pooling;
use roberta_model::{Precision, RobertaConfig};
use serde::{Deserialize, Serialize};

use super::*;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainConfig {
    pub model: ModelSection,
    pub data: DataSection,
    #[serde(default)]
    pub masking: MaskingConfig,
    #[serde(default)]
    pub optim: OptimSection,
    pub schedule: ScheduleSection,
    pub train: TrainSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    #[serde(default)]
    pub log: LogSection,
    #[serde(default)]
    pub eval: PretrainEvalSection,
}

/// The architecture: a preset, optionally reshaped, or an HF directory to continue from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSection {
    /// `roberta-base`, `roberta-large` or `tiny`; the vocabulary size always comes from
    /// the tokenizer and the positions from `data.block_size`.
    #[serde(default = "default_preset")]
    pub preset: String,
    pub hidden_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub hidden_dropout_prob: Option<f64>,
    pub attention_probs_dropout_prob: Option<f64>,
    /// Continue pretraining an HF RobertaForMaskedLM directory instead of starting fresh;
    /// its config.json gives the architecture (only the dropout rates may be overridden).
    pub init: Option<PathBuf>,
}

impl ModelSection {
    /// Applies the dropout rates this section sets, to a preset or a loaded model's config.
    pub fn override_dropout(&self, c: &mut RobertaConfig) {
        override_dropout(
            c,
            [
                self.hidden_dropout_prob,
                self.attention_probs_dropout_prob,
                None,
            ],
        );
    }
}

fn default_preset() -> String {
    "roberta-base".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSection {
    /// Raw training text: files, directories or globs (text or JSONL). Preprocessed into
    /// `data_dir` on first use; a preprocessed directory can be given here instead.
    pub train: Vec<PathBuf>,
    /// Held-out raw text; when empty, `valid_fraction` of the documents is held out.
    #[serde(default)]
    pub valid: Vec<PathBuf>,
    #[serde(default = "default_valid_fraction")]
    pub valid_fraction: f64,
    /// Where the token shards live.
    pub data_dir: PathBuf,
    /// `tokenizer.json`, or a directory with it or with `vocab.json` + `merges.txt`.
    pub tokenizer: PathBuf,
    /// Tokens per sequence, `<s>` and `</s>` included (the paper: 512).
    #[serde(default = "default_block_size")]
    pub block_size: usize,
    #[serde(default)]
    pub break_mode: BreakMode,
    /// The JSONL field holding the text.
    #[serde(default = "default_text_field")]
    pub text_field: String,
    /// Text files hold one document per line.
    #[serde(default)]
    pub doc_per_line: bool,
    /// Seed of everything drawn from the data: the held-out documents (with
    /// `valid_fraction`), the order and the masks (default: `train.seed`). Give
    /// `valid` files to keep the validation set fixed across data seeds.
    pub seed: Option<u64>,
}

fn default_valid_fraction() -> f64 {
    0.01
}
fn default_block_size() -> usize {
    512
}
fn default_text_field() -> String {
    "text".into()
}

/// Linear warmup to `optim.lr`, then linear decay to zero at `total_steps`; and the
/// phases a pretraining run goes through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    pub warmup_steps: u64,
    /// Optimizer updates in the whole run.
    pub total_steps: u64,
    /// `[[schedule.phases]]`, in order: BERT's 90% of updates at 128 tokens then 512,
    /// or cramming's short sequences first. Updates after the last phase run with the
    /// config's own `data.block_size`, `train.batch_size`, … (so the last phase need not
    /// be written); the learning-rate schedule spans all phases, unless a phase starts
    /// a cycle of its own (its `warmup_steps`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub phases: Vec<Phase>,
    /// Batch-size warmup (GPT-3, ModernBERT): over this many first updates the
    /// sequences per update grow linearly from `batch_warmup_start` to the phase's own,
    /// in whole micro-batches. 0: off.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch_warmup_steps: u64,
    /// Sequences per update (over all devices) at the first update of the warmup.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub batch_warmup_start: u64,
    /// A masking rate that moves, within each phase (the whole run without phases),
    /// from the phase's `mask_prob` to this one by the phase's end ("Should You Mask
    /// 15%?": high early, lower late). Unset: constant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask_prob_end: Option<f64>,
    /// How it moves: "linear" (default) or "cosine" (a half cosine).
    #[serde(default)]
    pub mask_prob_shape: RampShape,
    /// What the positions a phase is the first to reach start from: "keep" (default,
    /// BERT's: their initialisation, which no update has touched but weight decay) or
    /// "copy" (Longformer's: copies of the positions the earlier phases trained).
    #[serde(default)]
    pub extend_positions: ExtendPositions,
}

/// `schedule.extend_positions`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExtendPositions {
    #[default]
    Keep,
    Copy,
}

/// The shape of a ramp from one value to another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RampShape {
    #[default]
    Linear,
    Cosine,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// One phase: the updates after the previous phase's `until_step` up to its own. What it
/// leaves unset is the config's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    /// The last update of the phase.
    pub until_step: u64,
    /// Tokens per sequence (at most `data.block_size`, which sizes the positions).
    pub block_size: Option<usize>,
    /// Sequences per micro-batch (per device).
    pub batch_size: Option<usize>,
    /// Micro-batches per update.
    pub accumulation: Option<usize>,
    /// The fraction of tokens masked (the 80/10/10 split stays `[masking]`'s).
    pub mask_prob: Option<f64>,
    /// Starts a new learning-rate cycle at this phase, as NVIDIA's two-phase BERT
    /// recipe does: the rate warms up again to `optim.lr` over this many updates and
    /// decays linearly to zero where the next cycle starts (or at
    /// `schedule.total_steps`); the cycle before ends at zero with the previous phase.
    /// Unset: the phase continues the running cycle.
    pub warmup_steps: Option<u64>,
}

/// A phase with every setting filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhasePlan {
    pub until_step: u64,
    pub block_size: usize,
    pub batch_size: usize,
    pub accumulation: usize,
    pub mask_prob: f64,
    /// Where the phase starts a learning-rate cycle: its warmup.
    pub warmup_steps: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Sequences per micro-batch (per device).
    pub batch_size: usize,
    /// Micro-batches per update: the update sees batch_size × accumulation sequences.
    #[serde(default = "one")]
    pub accumulation: usize,
    /// Seeds everything that `data.seed` and `train.init_seed` do not: dropout, and
    /// those two when unset.
    #[serde(default)]
    pub seed: u64,
    /// Seed of the weights' initialisation (default: `train.seed`).
    pub init_seed: Option<u64>,
    /// Keep an exponential moving average of the weights with this decay (such as
    /// 0.9999), warmed up as `min(d, (1 + t) / (10 + t))`; evaluation, `best/` and
    /// `final/` use it. Unset: none.
    pub ema_decay: Option<f64>,
    /// Updates whose loss is NaN or infinite are skipped; this many in a row abort.
    #[serde(default = "default_max_bad_steps")]
    pub max_bad_steps: u32,
    /// Batches the loader may prepare ahead.
    #[serde(default = "default_queue")]
    pub loader_queue: usize,
    /// "bf16": forward and backward in bf16 over fp32 master weights and optimizer state
    /// (fairseq's and HF's `--bf16`); "fp32" (default).
    #[serde(default)]
    pub precision: Precision,
}

fn one() -> usize {
    1
}
fn default_max_bad_steps() -> u32 {
    5
}
fn default_queue() -> usize {
    8
}

/// Pretraining's validation: masked-LM loss, perplexity and accuracy on the valid split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PretrainEvalSection {
    /// Evaluate every this many updates; 0: at the end of every epoch (and always at the end).
    pub every: u64,
    /// Validation batches per evaluation (0: the whole split).
    pub batches: usize,
    /// A linear probe of the encoder at every evaluation.
    pub probe: Option<ProbeSection>,
}

impl Default for PretrainEvalSection {
    fn default() -> Self {
        Self {
            every: 500,
            batches: 50,
            probe: None,
        }
    }
}

/// `[eval.probe]`: at every evaluation, a logistic regression (ridge with `regression`)
/// on the current encoder's pooled vectors of `train`'s first `max_examples` rows,
/// scored on `valid`'s: `valid_probe_accuracy` (or `valid_probe_pearson`) beside the
/// validation loss. Labeled files as fine-tuning reads them (TSV/CSV/JSONL/Parquet/Arrow).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeSection {
    pub train: PathBuf,
    pub valid: PathBuf,
    /// The text column (header name, or 0-based index with `header = false`).
    #[serde(default = "ProbeSection::default_text")]
    pub text: String,
    /// A second text column, for pairs.
    #[serde(default)]
    pub text_b: Option<String>,
    #[serde(default = "ProbeSection::default_label")]
    pub label: String,
    #[serde(default = "ProbeSection::default_header")]
    pub header: bool,
    #[serde(default = "ProbeSection::default_pool")]
    pub pool: Pooling,
    /// Rows used of each file (the first ones): bounds the probe's time.
    #[serde(default = "ProbeSection::default_max_examples")]
    pub max_examples: usize,
    /// Numeric labels: ridge regression, scored by Pearson and Spearman.
    #[serde(default)]
    pub regression: bool,
    /// Inverse regularisation strength (scikit-learn's C).
    #[serde(default = "ProbeSection::default_c")]
    pub c: f64,
}

impl ProbeSection {
    fn default_text() -> String {
        "sentence".into()
    }
    fn default_label() -> String {
        "label".into()
    }
    fn default_header() -> bool {
        true
    }
    fn default_pool() -> Pooling {
        Pooling::Mean
    }
    fn default_max_examples() -> usize {
        1000
    }
    fn default_c() -> f64 {
        1.0
    }
}

/// Keys of earlier releases, read into their new place with a warning.
const PRETRAIN_RENAMED: &[(&str, &str)] = &[
    ("log.valid_every", "eval.every"),
    ("log.valid_batches", "eval.batches"),
];

impl PretrainConfig {
    /// Reads `path`, applies `--set` overrides, checks every value. Also returns a
    /// warning per deprecated key it read.
    pub fn load(path: &Path, sets: &[String]) -> Result<(Self, Vec<String>)> {
        let (table, warnings) = read_table(path, sets, PRETRAIN_RENAMED)?;
        let mut config: Self = deserialize(path, table, sets)?;
        config.validate().map_err(|e| blame(path, sets, e))?;
        config.resolve_seeds();
        Ok((config, warnings))
    }

    pub fn validate(&self) -> Result<()> {
        if RobertaConfig::preset(&self.model.preset).is_none() {
            bail!(
                "model.preset = \"{}\" is unknown; expected roberta-base, roberta-large or tiny",
                self.model.preset
            );
        }
        let m = &self.model;
        if m.init.is_some() {
            for (key, set) in [
                ("hidden_size", m.hidden_size.is_some()),
                ("num_hidden_layers", m.num_hidden_layers.is_some()),
                ("num_attention_heads", m.num_attention_heads.is_some()),
                ("intermediate_size", m.intermediate_size.is_some()),
            ] {
                if set {
                    bail!(
                        "model.{key} cannot be combined with model.init, which brings its own architecture"
                    );
                }
            }
        }
        let t = &self.train;
        let positive = [
            ("train.batch_size", t.batch_size as f64),
            ("train.accumulation", t.accumulation as f64),
            ("schedule.total_steps", self.schedule.total_steps as f64),
            ("train.loader_queue", t.loader_queue as f64),
            ("train.max_bad_steps", f64::from(t.max_bad_steps)),
            ("checkpoint.keep", self.checkpoint.keep as f64),
            ("log.every", self.log.every as f64),
        ];
        for (key, v) in positive {
            if v < 1.0 {
                bail!("{key} must be at least 1");
            }
        }
        if let Some(p) = &self.eval.probe {
            if p.max_examples < 1 {
                bail!("eval.probe.max_examples must be at least 1");
            }
            if !(p.c > 0.0 && p.c.is_finite()) {
                bail!("eval.probe.c must be a positive number, not {}", p.c);
            }
        }
        self.optim.validate()?;
        self.log.validate()?;
        check_ema_decay(self.train.ema_decay)?;
        self.validate_phases()?;
        let d = &self.data;
        if d.train.is_empty() {
            bail!("data.train names no input");
        }
        roberta_data::blocks::check_block_size("data.block_size", d.block_size)
            .map_err(anyhow::Error::msg)?;
        if !(0.0..0.5).contains(&d.valid_fraction) {
            bail!(
                "data.valid_fraction = {} must be in [0, 0.5)",
                d.valid_fraction
            );
        }
        self.masking.validate().map_err(|e| anyhow::anyhow!(e))?;
        // The architecture's own checks name its keys bare (`hidden_size must be …`);
        // here they are the config's `model.` keys, so a `--set` that gave one is named.
        self.model_config(1000).validate().map_err(|e| {
            let keyed = [
                "hidden_size",
                "num_hidden_layers",
                "num_attention_heads",
                "intermediate_size",
            ]
            .iter()
            .fold(e, |e, k| e.replacen(k, &format!("model.{k}"), 1));
            anyhow::anyhow!("{keyed}")
        })?;
        Ok(())
    }

    /// Refuses a `data.data_dir` inside the run directory (or equal to it): the shards
    /// would be files a run does not write there, and the run could not resume.
    pub fn check_data_dir(&self, run_dir: &Path) -> Result<()> {
        let absolute = |p: &Path| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
        let resolved = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| absolute(p));
        if resolved(&self.data.data_dir).starts_with(resolved(run_dir)) {
            bail!(
                "data.data_dir = {} lies inside the run directory {}: put the shards elsewhere (they are shared between runs)",
                self.data.data_dir.display(),
                run_dir.display()
            );
        }
        Ok(())
    }

    /// The seed of the data order and the masks.
    pub fn data_seed(&self) -> u64 {
        self.data.seed.unwrap_or(self.train.seed)
    }

    /// The seed of the initial weights.
    pub fn init_seed(&self) -> u64 {
        self.train.init_seed.unwrap_or(self.train.seed)
    }

    /// Every phase of the run, settings filled in: the configured ones, then the
    /// config's own settings up to `schedule.total_steps` (unless the last phase ends
    /// there).
    pub fn phases(&self) -> Vec<PhasePlan> {
        let base = PhasePlan {
            until_step: self.schedule.total_steps,
            block_size: self.data.block_size,
            batch_size: self.train.batch_size,
            accumulation: self.train.accumulation,
            mask_prob: self.masking.mask_prob,
            warmup_steps: None,
        };
        let mut plans: Vec<PhasePlan> = self
            .schedule
            .phases
            .iter()
            .map(|p| PhasePlan {
                until_step: p.until_step,
                block_size: p.block_size.unwrap_or(base.block_size),
                batch_size: p.batch_size.unwrap_or(base.batch_size),
                accumulation: p.accumulation.unwrap_or(base.accumulation),
                mask_prob: p.mask_prob.unwrap_or(base.mask_prob),
                warmup_steps: p.warmup_steps,
            })
            .collect();
        if plans.last().is_none_or(|p| p.until_step < base.until_step) {
            plans.push(base);
        }
        plans
    }

    fn validate_phases(&self) -> Result<()> {
        let s = &self.schedule;
        if let Some(end) = s.mask_prob_end
            && !(end > 0.0 && end < 1.0)
        {
            bail!("schedule.mask_prob_end = {end} must be in (0, 1)");
        }
        if s.mask_prob_end.is_none() && s.mask_prob_shape != RampShape::Linear {
            bail!("schedule.mask_prob_shape is set without schedule.mask_prob_end: set both");
        }
        if s.batch_warmup_steps > 0 {
            let first = self.phases()[0];
            let full = (first.batch_size * first.accumulation) as u64;
            if first.accumulation < 2 {
                bail!(
                    "schedule.batch_warmup_steps = {}: the warmup grows the micro-batches per update, and the first phase takes 1 (train.accumulation or the phase's accumulation): raise it, lowering the batch size to keep the update's",
                    s.batch_warmup_steps
                );
            }
            if s.batch_warmup_start == 0 || s.batch_warmup_start >= full {
                bail!(
                    "schedule.batch_warmup_start = {} must be in [1, {full}) (the first phase's sequences per update on one device; with more devices the warmup scales with them)",
                    s.batch_warmup_start
                );
            }
            if s.batch_warmup_steps > s.total_steps {
                bail!(
                    "schedule.batch_warmup_steps = {} is past schedule.total_steps = {}",
                    s.batch_warmup_steps,
                    s.total_steps
                );
            }
        } else if s.batch_warmup_start > 0 {
            bail!(
                "schedule.batch_warmup_start = {} without schedule.batch_warmup_steps: set both",
                s.batch_warmup_start
            );
        }
        let mut previous = 0;
        for (i, p) in self.schedule.phases.iter().enumerate() {
            let key = |k: &str| format!("schedule.phases[{i}].{k}");
            if p.until_step <= previous {
                bail!(
                    "{} = {} must come after the previous phase's end ({previous}): phases are listed in order and do not overlap",
                    key("until_step"),
                    p.until_step
                );
            }
            if p.until_step > self.schedule.total_steps {
                bail!(
                    "{} = {} is past schedule.total_steps = {}",
                    key("until_step"),
                    p.until_step,
                    self.schedule.total_steps
                );
            }
            previous = p.until_step;
            if let Some(b) = p.block_size {
                roberta_data::blocks::check_block_size(&key("block_size"), b)
                    .map_err(anyhow::Error::msg)?;
                if b > self.data.block_size {
                    bail!(
                        "{} = {b} is above data.block_size = {}, which sizes the model's positions: raise data.block_size",
                        key("block_size"),
                        self.data.block_size
                    );
                }
            }
            for (k, v) in [
                ("batch_size", p.batch_size),
                ("accumulation", p.accumulation),
            ] {
                if v == Some(0) {
                    bail!("{} must be at least 1", key(k));
                }
            }
            if let Some(m) = p.mask_prob
                && !(m > 0.0 && m < 1.0)
            {
                bail!("{} = {m} must be in (0, 1)", key("mask_prob"));
            }
        }
        self.validate_cycles()?;
        if s.extend_positions == ExtendPositions::Copy && self.model.init.is_some() {
            bail!(
                "schedule.extend_positions = \"copy\" overwrites the positions no phase of this run reached, which in model.init's model may be trained: remove one of them"
            );
        }
        Ok(())
    }

    /// Each learning-rate cycle (the run's first, and one per phase with
    /// `warmup_steps`) must hold its warmup.
    fn validate_cycles(&self) -> Result<()> {
        let phases = &self.schedule.phases;
        if phases.first().is_some_and(|p| p.warmup_steps.is_some()) {
            bail!(
                "schedule.phases[0].warmup_steps: the first phase's warmup is schedule.warmup_steps; a later phase's starts a new cycle"
            );
        }
        let starts: Vec<(u64, String, u64)> = std::iter::once((
            0,
            "schedule.warmup_steps".to_string(),
            self.schedule.warmup_steps,
        ))
        .chain(phases.iter().enumerate().skip(1).filter_map(|(i, p)| {
            let start = phases[i - 1].until_step;
            p.warmup_steps
                .map(|w| (start, format!("schedule.phases[{i}].warmup_steps"), w))
        }))
        .collect();
        for (n, (start, key, warmup)) in starts.iter().enumerate() {
            let end = starts
                .get(n + 1)
                .map_or(self.schedule.total_steps, |next| next.0);
            if *warmup > end - start {
                bail!(
                    "{key} = {warmup} is longer than its learning-rate cycle, updates {} to {end}",
                    start + 1
                );
            }
        }
        Ok(())
    }

    /// The architecture for a vocabulary of `vocab_size`.
    pub fn model_config(&self, vocab_size: usize) -> RobertaConfig {
        let m = &self.model;
        let mut c = RobertaConfig::preset(&m.preset).unwrap_or_else(RobertaConfig::roberta_base);
        c.architectures = vec!["RobertaForMaskedLM".into()];
        c.vocab_size = vocab_size;
        c.max_position_embeddings = self.data.block_size + c.pad_token_id + 1;
        c.hidden_size = m.hidden_size.unwrap_or(c.hidden_size);
        c.num_hidden_layers = m.num_hidden_layers.unwrap_or(c.num_hidden_layers);
        c.num_attention_heads = m.num_attention_heads.unwrap_or(c.num_attention_heads);
        c.intermediate_size = m.intermediate_size.unwrap_or(c.intermediate_size);
        m.override_dropout(&mut c);
        c
    }
}

impl RunConfig for PretrainConfig {
    const RENAMED: &[(&str, &str)] = PRETRAIN_RENAMED;

    fn exactness_changes(&self, saved: &Self) -> Vec<String> {
        [
            ModelSection::kept_changes("model", &self.model, &saved.model),
            DataSection::kept_changes("data", &self.data, &saved.data),
            MaskingConfig::kept_changes("masking", &self.masking, &saved.masking),
            OptimSection::kept_changes("optim", &self.optim, &saved.optim),
            ScheduleSection::kept_changes("schedule", &self.schedule, &saved.schedule),
            TrainSection::kept_changes("train", &self.train, &saved.train),
            PretrainEvalSection::kept_changes("eval", &self.eval, &saved.eval),
            CheckpointSection::kept_changes("checkpoint", &self.checkpoint, &saved.checkpoint),
            LogSection::kept_changes("log", &self.log, &saved.log),
        ]
        .concat()
    }

    fn resolve_seeds(&mut self) {
        self.data.seed.get_or_insert(self.train.seed);
        self.train.init_seed.get_or_insert(self.train.seed);
    }

    fn log(&self) -> &LogSection {
        &self.log
    }

    fn accumulation_mut(&mut self) -> (usize, &mut usize) {
        (self.train.batch_size, &mut self.train.accumulation)
    }

    fn phase_accumulations_mut(&mut self) -> Vec<&mut usize> {
        self.schedule
            .phases
            .iter_mut()
            .filter_map(|p| p.accumulation.as_mut())
            .collect()
    }
}

resume_rule!(ModelSection, kept: [
    "preset", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
    "hidden_dropout_prob", "attention_probs_dropout_prob", "init",
], free: []);
resume_rule!(DataSection, kept: [
    "train", "valid", "valid_fraction", "data_dir", "tokenizer", "block_size", "break_mode",
    "text_field", "doc_per_line", "seed",
], free: []);
resume_rule!(MaskingConfig, kept: [
    "mask_prob", "mask_token_prob", "random_token_prob", "whole_word",
], free: []);
resume_rule!(ScheduleSection, kept: [
    "warmup_steps", "phases", "batch_warmup_steps", "batch_warmup_start", "mask_prob_end",
    "mask_prob_shape", "extend_positions",
], free: ["total_steps"]);
resume_rule!(TrainSection, kept: [
    "batch_size", "accumulation", "seed", "init_seed", "ema_decay", "precision",
], free: ["max_bad_steps", "loader_queue"]);
resume_rule!(PretrainEvalSection, kept: [], free: ["every", "batches", "probe"]);
