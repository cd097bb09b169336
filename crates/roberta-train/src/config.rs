//! The pretraining and fine-tuning configs: TOML with one section per concern, unknown keys rejected,
//! `--set section.key=value` overrides, and every value checked before any work starts.
//! A setting both commands have carries one name in both (`train.seed`, `log.every`,
//! `eval.every`); the names of earlier releases are still read, with a deprecation
//! warning, so that users' configs and old checkpoints keep working.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use roberta_data::{BreakMode, MaskingConfig};
use roberta_model::pooling::Pooling;
use roberta_model::{Precision, RobertaConfig};
use serde::{Deserialize, Serialize};

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
        c.hidden_dropout_prob = self.hidden_dropout_prob.unwrap_or(c.hidden_dropout_prob);
        c.attention_probs_dropout_prob = self
            .attention_probs_dropout_prob
            .unwrap_or(c.attention_probs_dropout_prob);
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

/// AdamW, with the RoBERTa paper's β₂ and ε.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    /// Peak learning rate, reached at the end of warmup.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay; biases and LayerNorm parameters are never decayed.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    pub clip_norm: f64,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            lr: 6e-4,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.01,
            clip_norm: 0.0,
        }
    }
}

impl OptimSection {
    /// The paper's fine-tuning recipe (Table 10): lr 1e-5, weight decay 0.1, no clipping.
    pub fn finetune() -> Self {
        Self {
            lr: 1e-5,
            weight_decay: 0.1,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr < 1.0) {
            bail!("optim.lr = {} must be in (0, 1)", self.lr);
        }
        for (key, v) in [("optim.beta1", self.beta1), ("optim.beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("{key} = {v} must be in [0, 1)");
            }
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            bail!("optim.eps = {} must be positive", self.eps);
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            bail!(
                "optim.weight_decay = {} must be in [0, 1)",
                self.weight_decay
            );
        }
        if self.clip_norm.is_nan() || self.clip_norm < 0.0 {
            bail!(
                "optim.clip_norm = {} must be 0 (off) or positive",
                self.clip_norm
            );
        }
        Ok(())
    }
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
    /// be written); the learning-rate schedule spans all phases.
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
}

/// A phase with every setting filled in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PhasePlan {
    pub until_step: u64,
    pub block_size: usize,
    pub batch_size: usize,
    pub accumulation: usize,
    pub mask_prob: f64,
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

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many updates (and always at the end); 0 saves only at the end.
    pub every: u64,
    /// Checkpoints kept; older ones are deleted.
    pub keep: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            every: 1000,
            keep: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Write a metrics.jsonl line every this many updates.
    pub every: u64,
    /// Every this many updates (0: never), time the update's phases (data, forward,
    /// backward, all-reduce, norm and read, optimizer) with the device synchronised
    /// between them, and write them into the next metrics line as `profile`. The
    /// synchronisation slows that update: on a GPU it shows where an update's time
    /// goes, at the cost of the overlap it removes.
    pub profile_every: u64,
    /// TensorBoard event files with every `metrics.jsonl` number: `true` writes them
    /// into the run directory's `tb/`, a path into that directory (`tensorboard
    /// --logdir PATH`); `false` (default) writes none.
    pub tensorboard: TensorBoardSetting,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            every: 10,
            profile_every: 0,
            tensorboard: TensorBoardSetting::On(false),
        }
    }
}

impl LogSection {
    /// Where the run's TensorBoard files go, if anywhere.
    pub fn tensorboard_dir(&self, run_dir: &Path) -> Option<PathBuf> {
        match &self.tensorboard {
            TensorBoardSetting::On(true) => Some(run_dir.join(crate::run_dir::TENSORBOARD)),
            TensorBoardSetting::On(false) => None,
            TensorBoardSetting::Dir(dir) => Some(dir.clone()),
        }
    }

    fn validate(&self) -> Result<()> {
        if let TensorBoardSetting::Dir(dir) = &self.tensorboard {
            let text = dir.to_string_lossy();
            if text.is_empty() || text == "true" || text == "false" {
                bail!(
                    "log.tensorboard = \"{text}\" must be true or false without quotes, or a directory"
                );
            }
            if text == "~" || text.starts_with("~/") {
                bail!(
                    "log.tensorboard = \"{text}\": a config's paths are not expanded as a shell's: give the full path"
                );
            }
        }
        Ok(())
    }
}

/// `log.tensorboard`: on or off, or the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TensorBoardSetting {
    On(bool),
    Dir(PathBuf),
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

/// `train.ema_decay`, in both commands.
fn check_ema_decay(decay: Option<f64>) -> Result<()> {
    if let Some(d) = decay
        && !(d > 0.0 && d < 1.0)
    {
        bail!("train.ema_decay = {d} must be in (0, 1)");
    }
    Ok(())
}

/// Keys of earlier releases, read into their new place with a warning.
const PRETRAIN_RENAMED: &[(&str, &str)] = &[
    ("log.valid_every", "eval.every"),
    ("log.valid_batches", "eval.batches"),
];
const FINETUNE_RENAMED: &[(&str, &str)] = &[("train.log_every", "log.every")];

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
        if self.schedule.warmup_steps > self.schedule.total_steps {
            bail!(
                "schedule.warmup_steps ({}) must not exceed schedule.total_steps ({})",
                self.schedule.warmup_steps,
                self.schedule.total_steps
            );
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
        let mut changes = Vec::new();
        changes.extend(section_changes("model", &self.model, &saved.model, None));
        changes.extend(section_changes("data", &self.data, &saved.data, None));
        changes.extend(section_changes(
            "masking",
            &self.masking,
            &saved.masking,
            None,
        ));
        changes.extend(section_changes("optim", &self.optim, &saved.optim, None));
        changes.extend(section_changes(
            "schedule",
            &self.schedule,
            &saved.schedule,
            Some(&[
                "warmup_steps",
                "phases",
                "batch_warmup_steps",
                "batch_warmup_start",
                "mask_prob_end",
                "mask_prob_shape",
            ]),
        ));
        changes.extend(section_changes(
            "train",
            &self.train,
            &saved.train,
            Some(&[
                "batch_size",
                "accumulation",
                "seed",
                "init_seed",
                "ema_decay",
                "precision",
            ]),
        ));
        changes
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

/// The kinds of task `finetune` trains, by the head they use and how inputs are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// One sentence → a label (SST-2, CoLA).
    Classification,
    /// `<s> A </s></s> B </s>` → a label (MRPC, RTE, MNLI).
    PairClassification,
    /// One sentence or a pair → a number (STS-B).
    Regression,
    /// Extractive question answering (SQuAD v1.1/v2.0).
    Qa,
    /// A tag per word (CoNLL NER), predicted on each word's first sub-word.
    TokenClassification,
}

impl TaskKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Classification => "classification",
            Self::PairClassification => "pair-classification",
            Self::Regression => "regression",
            Self::Qa => "qa",
            Self::TokenClassification => "token-classification",
        }
    }

    /// The metric that picks the best checkpoint unless `eval.metric` says otherwise.
    pub fn default_metric(self) -> &'static str {
        match self {
            Self::Classification | Self::PairClassification => "accuracy",
            Self::Regression => "pearson",
            Self::Qa | Self::TokenClassification => "f1",
        }
    }

    /// Metrics this task reports (the choices for `eval.metric`).
    pub fn metrics(self) -> &'static [&'static str] {
        match self {
            Self::Classification | Self::PairClassification => {
                &["accuracy", "f1", "f1_macro", "mcc"]
            }
            Self::Regression => &["pearson", "spearman", "mse"],
            Self::Qa => &["exact_match", "f1"],
            Self::TokenClassification => &["f1", "precision", "recall", "accuracy"],
        }
    }

    /// Whether a larger value of `metric` is better.
    pub fn higher_is_better(metric: &str) -> bool {
        metric != "mse"
    }
}

/// What the task is and how its files are read. Saved into the model's `config.json`
/// (key `roberta_train_task`), so that `eval` and `predict` read new files the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    #[serde(rename = "type")]
    pub kind: TaskKind,
    /// The first text column: a header name, or a 0-based index when `header = false`
    /// (default "sentence"; "sentence1" for pairs).
    pub text_a: Option<String>,
    /// The second text column of pairs (default "sentence2").
    pub text_b: Option<String>,
    /// The label column (GLUE TSV/CSV header name, index, or JSONL field).
    #[serde(default = "default_label")]
    pub label: String,
    /// Whether TSV/CSV files start with a header line.
    #[serde(default = "yes")]
    pub header: bool,
    /// The label names in index order; by default the sorted labels of the train split.
    pub labels: Option<Vec<String>>,
    /// Tokens per input with special tokens; longer inputs are truncated (pairs: the
    /// longer text first). QA windows longer contexts instead.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// QA: context tokens shared by consecutive windows of a long context.
    #[serde(default = "default_doc_stride")]
    pub doc_stride: usize,
    /// QA: the longest answer, in tokens, that span decoding considers.
    #[serde(default = "default_max_answer_length")]
    pub max_answer_length: usize,
    /// QA: start and end candidates kept per window in span decoding.
    #[serde(default = "default_n_best")]
    pub n_best: usize,
    /// QA: SQuAD v2.0, where a question may have no answer in its context.
    #[serde(default)]
    pub version_2_with_negative: bool,
    /// QA v2.0: predict no answer unless the best span beats the null score by this.
    #[serde(default)]
    pub null_score_diff_threshold: f64,
}

fn default_label() -> String {
    "label".into()
}
fn yes() -> bool {
    true
}
fn default_max_length() -> usize {
    128
}
fn default_doc_stride() -> usize {
    128
}
fn default_max_answer_length() -> usize {
    30
}
fn default_n_best() -> usize {
    20
}

impl TaskSection {
    /// The defaults for `kind`; QA windows take 384 tokens, as HF's `run_qa`.
    pub fn for_kind(kind: TaskKind) -> Self {
        let mut section: Self =
            toml::from_str(&format!("type = \"{}\"", kind.name())).expect("defaults deserialise");
        if kind == TaskKind::Qa {
            section.max_length = 384;
        }
        section
    }

    pub fn text_a(&self) -> &str {
        self.text_a.as_deref().unwrap_or(match self.kind {
            TaskKind::PairClassification => "sentence1",
            _ => "sentence",
        })
    }

    /// The second text column: pairs always have one, regression may.
    pub fn text_b(&self) -> Option<&str> {
        match self.kind {
            TaskKind::PairClassification => Some(self.text_b.as_deref().unwrap_or("sentence2")),
            _ => self.text_b.as_deref(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        roberta_data::blocks::check_block_size("task.max_length", self.max_length)
            .map_err(anyhow::Error::msg)?;
        if self.kind == TaskKind::Qa {
            if self.doc_stride == 0 || self.doc_stride >= self.max_length {
                bail!(
                    "task.doc_stride = {} must be in [1, max_length)",
                    self.doc_stride
                );
            }
            if self.max_answer_length == 0 || self.n_best == 0 {
                bail!("task.max_answer_length and task.n_best must be at least 1");
            }
        }
        if self.text_b.is_some()
            && matches!(
                self.kind,
                TaskKind::Classification | TaskKind::Qa | TaskKind::TokenClassification
            )
        {
            bail!(
                "task.text_b is for pair-classification and regression, not {}",
                self.kind.name()
            );
        }
        if let Some(labels) = &self.labels {
            let mut unique = labels.clone();
            unique.sort();
            unique.dedup();
            if labels.len() < 2 || unique.len() != labels.len() {
                bail!("task.labels must name at least two distinct labels");
            }
        }
        Ok(())
    }
}

/// The fine-tuning config: `configs/finetune/*.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneConfig {
    pub task: TaskSection,
    pub data: FinetuneDataSection,
    #[serde(default)]
    pub model: FinetuneModelSection,
    /// AdamW; the defaults here are the paper's GLUE recipe (lr 1e-5, weight decay 0.1,
    /// β₂ 0.98, ε 1e-6, no clipping).
    pub optim: OptimSection,
    #[serde(default)]
    pub train: FinetuneTrainSection,
    #[serde(default)]
    pub eval: FinetuneEvalSection,
    #[serde(default)]
    pub checkpoint: CheckpointSection,
    #[serde(default)]
    pub log: LogSection,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinetuneDataSection {
    /// Labeled training data: TSV, CSV, JSONL, Parquet or Arrow IPC (HF `datasets` files);
    /// SQuAD JSON or Parquet for qa, CoNLL for tags.
    pub train: PathBuf,
    /// Labeled evaluation data, scored every `eval.every` updates and per epoch.
    pub valid: Option<PathBuf>,
    /// The tokenizer; by default the one in the initial model's directory.
    pub tokenizer: Option<PathBuf>,
    /// Seed of the example order (default: `train.seed`).
    pub seed: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FinetuneModelSection {
    /// Where the weights come from: an HF model directory (such as a pretraining run's
    /// `final/`, or roberta-base downloaded by you), a pretraining run directory, or one
    /// of its checkpoints. `--init` overrides it. Without it the model starts from random
    /// weights of `preset` (say so in any result).
    pub init: Option<PathBuf>,
    /// Architecture for random initialisation: roberta-base, roberta-large or tiny.
    pub preset: Option<String>,
    pub hidden_dropout_prob: Option<f64>,
    pub attention_probs_dropout_prob: Option<f64>,
    /// Dropout inside the classification head (HF's `classifier_dropout`).
    pub classifier_dropout: Option<f64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneTrainSection {
    pub epochs: u64,
    /// Examples (QA: windows) per micro-batch.
    pub batch_size: usize,
    pub accumulation: usize,
    /// Seeds dropout, and `data.seed` and `init_seed` when unset.
    pub seed: u64,
    /// Seed of the new head's initialisation (default: `seed`).
    pub init_seed: Option<u64>,
    /// An exponential moving average of the weights, as pretraining's.
    pub ema_decay: Option<f64>,
    /// Warmup as a fraction of all updates (the paper: 6%).
    pub warmup_ratio: f64,
    /// Stop after this many updates (0: train all `epochs`); the schedule spans the
    /// shorter of the two.
    pub max_steps: u64,
    /// Updates whose loss is NaN or infinite are skipped; this many in a row abort.
    pub max_bad_steps: u32,
    /// "bf16" or "fp32", as in pretraining's `train.precision`.
    pub precision: Precision,
}

impl Default for FinetuneTrainSection {
    fn default() -> Self {
        Self {
            epochs: 10,
            batch_size: 32,
            accumulation: 1,
            seed: 0,
            init_seed: None,
            ema_decay: None,
            warmup_ratio: 0.06,
            max_steps: 0,
            max_bad_steps: 5,
            precision: Precision::F32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FinetuneEvalSection {
    /// Evaluate every this many updates; 0: at the end of every epoch.
    pub every: u64,
    /// The metric that picks the best checkpoint (default: the task's, such as
    /// accuracy; pass "mcc" for CoLA).
    pub metric: Option<String>,
    /// Stop when this many evaluations in a row did not improve the metric (0: never).
    pub patience: u64,
    /// Examples per forward pass when evaluating.
    pub batch_size: usize,
}

impl Default for FinetuneEvalSection {
    fn default() -> Self {
        Self {
            every: 0,
            metric: None,
            patience: 0,
            batch_size: 64,
        }
    }
}

impl FinetuneConfig {
    /// Reads `path`, applies `--set` overrides, checks every value. Also returns a
    /// warning per deprecated key it read.
    pub fn load(path: &Path, sets: &[String]) -> Result<(Self, Vec<String>)> {
        let text = roberta_data::input::read_to_string(path)?;
        Self::parse(path, &text, sets)
    }

    /// [`Self::load`] of a config's text (a recipe built into the binary); `path`
    /// names it in errors.
    pub fn parse(path: &Path, text: &str, sets: &[String]) -> Result<(Self, Vec<String>)> {
        let (mut value, warnings) = parse_table(path, text, sets, FINETUNE_RENAMED)?;
        // The optimizer defaults differ from pretraining's: fill the keys a file leaves out.
        let optim = value
            .entry("optim")
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        if let Some(optim) = optim.as_table_mut() {
            let defaults = toml::Table::try_from(OptimSection::finetune()).expect("serialises");
            for (k, v) in defaults {
                optim.entry(k).or_insert(v);
            }
        }
        let mut config: Self = deserialize(path, value, sets)?;
        config.validate().map_err(|e| blame(path, sets, e))?;
        config.resolve_seeds();
        Ok((config, warnings))
    }

    /// The labeled files exist: checked before a run directory is made or a model
    /// loaded, naming the key to set. (Not part of [`Self::load`]: a config is also read
    /// where its data is not needed, such as a checkpoint's.)
    pub fn check_data_files(&self) -> Result<()> {
        let files = [
            ("data.train", Some(&self.data.train)),
            ("data.valid", self.data.valid.as_ref()),
        ];
        for (key, path) in files {
            if let Some(path) = path
                && !path.exists()
            {
                let from = std::env::current_dir()
                    .map(|d| format!(" (relative to {})", d.display()))
                    .unwrap_or_default();
                bail!(
                    "{key} = \"{}\": no such file{}; put the data there, or pass --set {key}=PATH",
                    path.display(),
                    if path.is_relative() {
                        from
                    } else {
                        String::new()
                    }
                );
            }
        }
        Ok(())
    }

    pub fn validate(&self) -> Result<()> {
        self.task.validate()?;
        self.optim.validate()?;
        self.log.validate()?;
        let t = &self.train;
        for (key, v) in [
            ("train.epochs", t.epochs),
            ("train.batch_size", t.batch_size as u64),
            ("train.accumulation", t.accumulation as u64),
            ("train.max_bad_steps", u64::from(t.max_bad_steps)),
            ("log.every", self.log.every),
            ("eval.batch_size", self.eval.batch_size as u64),
            ("checkpoint.keep", self.checkpoint.keep as u64),
        ] {
            if v < 1 {
                bail!("{key} must be at least 1");
            }
        }
        if !(0.0..1.0).contains(&t.warmup_ratio) {
            bail!("train.warmup_ratio = {} must be in [0, 1)", t.warmup_ratio);
        }
        check_ema_decay(t.ema_decay)?;
        let metric = self.metric();
        if !self.task.kind.metrics().contains(&metric) {
            bail!(
                "eval.metric = \"{metric}\" is not a metric of {}; expected one of {}",
                self.task.kind.name(),
                self.task.kind.metrics().join(", ")
            );
        }
        let m = &self.model;
        if let Some(preset) = &m.preset {
            if RobertaConfig::preset(preset).is_none() {
                bail!(
                    "model.preset = \"{preset}\" is unknown; expected roberta-base, roberta-large or tiny"
                );
            }
            if m.init.is_some() {
                bail!("model.preset is for random initialisation; model.init brings its own");
            }
        }
        for (key, v) in [
            ("model.hidden_dropout_prob", m.hidden_dropout_prob),
            (
                "model.attention_probs_dropout_prob",
                m.attention_probs_dropout_prob,
            ),
            ("model.classifier_dropout", m.classifier_dropout),
        ] {
            if let Some(v) = v
                && !(0.0..1.0).contains(&v)
            {
                bail!("{key} = {v} must be in [0, 1)");
            }
        }
        Ok(())
    }

    /// The seed of the example order.
    pub fn data_seed(&self) -> u64 {
        self.data.seed.unwrap_or(self.train.seed)
    }

    /// The seed of the new head's weights.
    pub fn init_seed(&self) -> u64 {
        self.train.init_seed.unwrap_or(self.train.seed)
    }

    /// The metric that picks the best checkpoint.
    pub fn metric(&self) -> &str {
        self.eval
            .metric
            .as_deref()
            .unwrap_or(self.task.kind.default_metric())
    }
}

impl RunConfig for FinetuneConfig {
    const RENAMED: &[(&str, &str)] = FINETUNE_RENAMED;

    fn exactness_changes(&self, saved: &Self) -> Vec<String> {
        let mut changes = Vec::new();
        changes.extend(section_changes("task", &self.task, &saved.task, None));
        changes.extend(section_changes("data", &self.data, &saved.data, None));
        changes.extend(section_changes("model", &self.model, &saved.model, None));
        changes.extend(section_changes("optim", &self.optim, &saved.optim, None));
        changes.extend(section_changes(
            "train",
            &self.train,
            &saved.train,
            Some(&[
                "batch_size",
                "accumulation",
                "seed",
                "init_seed",
                "ema_decay",
                "epochs",
                "warmup_ratio",
                "max_steps",
                "precision",
            ]),
        ));
        changes
    }

    fn accumulation_mut(&mut self) -> (usize, &mut usize) {
        (self.train.batch_size, &mut self.train.accumulation)
    }

    fn resolve_seeds(&mut self) {
        self.data.seed.get_or_insert(self.train.seed);
        self.train.init_seed.get_or_insert(self.train.seed);
    }

    fn log(&self) -> &LogSection {
        &self.log
    }
}

/// What the trainer needs of either config: its saved form, and what may not change
/// between a checkpoint and the run that resumes it.
pub trait RunConfig: Serialize + serde::de::DeserializeOwned {
    /// Keys of earlier releases and where they live now.
    const RENAMED: &[(&str, &str)];

    /// Differences that would make a resumed run differ from an uninterrupted one, as
    /// `section.key: saved → now`.
    fn exactness_changes(&self, saved: &Self) -> Vec<String>;

    /// The micro-batch size and the accumulation, which a resume on another number of
    /// devices rescales.
    fn accumulation_mut(&mut self) -> (usize, &mut usize);

    /// The accumulations phases set, which such a resume rescales too.
    fn phase_accumulations_mut(&mut self) -> Vec<&mut usize> {
        Vec::new()
    }

    /// Writes `train.seed` into the seeds left unset (`data.seed`, `train.init_seed`),
    /// so that the saved config records every seed the run used and a resume compares
    /// them whichever way they were given.
    fn resolve_seeds(&mut self);

    fn log(&self) -> &LogSection;

    fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// A config saved in a run directory or checkpoint (possibly by an earlier release).
    fn from_saved(path: &Path) -> Result<Self> {
        let text = roberta_data::input::read_to_string(path)?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| syntax_error(path, &text, &e))?;
        rename_deprecated(&mut table, Self::RENAMED)
            .with_context(|| format!("{}: saved config", path.display()))?;
        let mut config: Self = deserialize(path, table, &[])
            .with_context(|| format!("{} is not a config of this command", path.display()))?;
        config.resolve_seeds();
        Ok(config)
    }
}

/// The keys of one section whose values differ (all keys, or those in `only`), compared
/// as typed TOML values.
fn section_changes<T: Serialize>(
    section: &str,
    now: &T,
    saved: &T,
    only: Option<&[&str]>,
) -> Vec<String> {
    let table = |v: &T| match toml::Value::try_from(v) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let (now, saved) = (table(now), table(saved));
    let mut keys: Vec<&String> = now.keys().chain(saved.keys()).collect();
    keys.sort();
    keys.dedup();
    let show = |v: Option<&toml::Value>| match v {
        None => "(unset)".to_string(),
        Some(toml::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    keys.into_iter()
        .filter(|k| only.is_none_or(|only| only.contains(&k.as_str())))
        .filter(|k| now.get(*k) != saved.get(*k))
        .map(|k| {
            format!(
                "{section}.{k}: {} → {}",
                show(saved.get(k)),
                show(now.get(k))
            )
        })
        .collect()
}

/// Moves each deprecated `old` key to `new`, returning a warning per key moved.
fn rename_deprecated(table: &mut toml::Table, renamed: &[(&str, &str)]) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for (old, new) in renamed {
        let (old_section, old_key) = old.split_once('.').expect("section.key");
        let Some(value) = table
            .get_mut(old_section)
            .and_then(toml::Value::as_table_mut)
            .and_then(|t| t.remove(old_key))
        else {
            continue;
        };
        let (new_section, new_key) = new.split_once('.').expect("section.key");
        let section = table
            .entry(new_section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section) = section.as_table_mut() else {
            bail!("`{new_section}` is not a section");
        };
        if section.contains_key(new_key) {
            bail!("{old} (deprecated) and {new} are both set: keep {new}");
        }
        section.insert(new_key.to_string(), value);
        warnings.push(format!("config key {old} is deprecated: it is now {new}"));
    }
    Ok(warnings)
}

/// A refused value, blamed on the `--set` that gave its key (the last one, as it wins)
/// or else on the file.
fn blame(path: &Path, sets: &[String], e: anyhow::Error) -> anyhow::Error {
    let message = format!("{e:#}");
    let set = sets.iter().rev().find(|set| {
        set.split_once('=')
            .is_some_and(|(key, _)| mentions(&message, key.trim()))
    });
    match set {
        Some(set) => anyhow::anyhow!("--set {set}: {message}"),
        None => e.context(format!("{}: invalid config", path.display())),
    }
}

/// Whether `message` names `key` (`task.n_best`) as a whole, not inside a longer key.
fn mentions(message: &str, key: &str) -> bool {
    let part_of_key = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    message.match_indices(key).any(|(at, _)| {
        !message[..at].ends_with(part_of_key) && !message[at + key.len()..].starts_with(part_of_key)
    })
}

/// The `--set` (the last, as it wins) that gave the value at `key`, or a value inside
/// it (a section or key the config does not have).
fn set_for<'a>(sets: &'a [String], key: &str) -> Option<&'a String> {
    sets.iter().rev().find(|set| {
        set.split_once('=').is_some_and(|(k, _)| {
            let k = k.trim();
            k == key || k.starts_with(&format!("{key}."))
        })
    })
}

/// A TOML syntax error in one line: where, and what (toml's own message draws the
/// line with a caret over several).
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
    let message = e.message().trim();
    match line {
        Some(line) => anyhow::anyhow!("{}:{line}: invalid TOML: {message}", path.display()),
        None => anyhow::anyhow!("{}: invalid TOML: {message}", path.display()),
    }
}

/// A config file as a TOML table, with deprecated keys renamed and then the `--set`
/// overrides applied (which may use either name).
fn read_table(
    path: &Path,
    sets: &[String],
    renamed: &[(&str, &str)],
) -> Result<(toml::Table, Vec<String>)> {
    let text = roberta_data::input::read_to_string(path)?;
    parse_table(path, &text, sets, renamed)
}

/// [`read_table`] of a config's text; `path` names it in errors.
fn parse_table(
    path: &Path,
    text: &str,
    sets: &[String],
    renamed: &[(&str, &str)],
) -> Result<(toml::Table, Vec<String>)> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
    let mut warnings = rename_deprecated(&mut table, renamed)
        .with_context(|| format!("{}: invalid config", path.display()))?;
    for set in sets {
        let key = set.split_once('=').map_or("", |(k, _)| k.trim());
        let set = match renamed.iter().find(|(old, _)| *old == key) {
            Some((old, new)) => {
                warnings.push(format!("--set {old} is deprecated: it is now {new}"));
                set.replacen(old, new, 1)
            }
            None => set.clone(),
        };
        apply_set(&mut table, &set)?;
    }
    Ok((table, warnings))
}

/// The typed config. An error names the key (`train.batch_size`) and where its value
/// came from: the `--set` that gave it, or the file and line.
fn deserialize<T: serde::de::DeserializeOwned>(
    path: &Path,
    table: toml::Table,
    sets: &[String],
) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let message = e.inner().message().to_string();
        match set_for(sets, &key) {
            Some(set) => anyhow::anyhow!("--set {set}: {message}"),
            None => {
                let line = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| line_of(&text, &key));
                match line {
                    Some(line) => anyhow::anyhow!("{}:{line}: {key}: {message}", path.display()),
                    None => anyhow::anyhow!("{}: {key}: {message}", path.display()),
                }
            }
        }
    })
}

/// The 1-based line of `section.key` in a TOML file.
fn line_of(text: &str, path: &str) -> Option<usize> {
    let (section, key) = path.split_once('.')?;
    let header = format!("[{section}]");
    let start = text.lines().position(|l| l.trim() == header)?;
    text.lines()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| !l.trim_start().starts_with('['))
        .find(|(_, l)| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|(i, _)| i + 1)
}

/// Applies `section.key=value`: the value is read as TOML (numbers, booleans, arrays),
/// and as a string when it is not valid TOML.
fn apply_set(table: &mut toml::Table, set: &str) -> Result<()> {
    let (key, raw) = set
        .split_once('=')
        .with_context(|| format!("--set {set}: expected section.key=value"))?;
    let path: Vec<&str> = key.trim().split('.').collect();
    let Some((name, sections)) = path.split_last().filter(|(_, s)| !s.is_empty()) else {
        bail!("--set {set}: the key must be section.key, such as train.batch_size");
    };
    if path.iter().any(|p| p.is_empty()) {
        bail!("--set {set}: the key must be section.key, such as train.batch_size");
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed as v"),
        // TOML's integers are 64-bit signed; anything longer is not a string either.
        Err(_)
            if raw
                .trim_start_matches(['-', '+'])
                .bytes()
                .all(|b| b.is_ascii_digit())
                && !raw.trim_start_matches(['-', '+']).is_empty() =>
        {
            bail!(
                "--set {set}: the number is too large (at most {})",
                i64::MAX
            )
        }
        Err(e) if raw.starts_with(['[', '{', '"']) => {
            bail!(
                "--set {set}: not a TOML value ({}); quote strings, as in data.train=[\"a.txt\", \"b.txt\"]",
                e.message().trim()
            )
        }
        Err(_) => toml::Value::String(raw.to_string()),
    };
    // `eval.probe.train`: sections within sections, created as needed.
    let mut section_table = table;
    for (depth, section) in sections.iter().enumerate() {
        let entry = section_table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(inner) = entry.as_table_mut() else {
            bail!(
                "--set {set}: `{}` is not a section",
                sections[..=depth].join(".")
            );
        };
        section_table = inner;
    }
    // A list-valued key given one string (a single file) becomes a one-element list.
    let value = match (section_table.get(*name), value) {
        (Some(toml::Value::Array(_)), toml::Value::String(s)) => {
            toml::Value::Array(vec![toml::Value::String(s)])
        }
        (_, v) => v,
    };
    section_table.insert(name.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[model]
preset = "tiny"
[data]
train = ["a.txt"]
data_dir = "bin"
tokenizer = "tok"
block_size = 64
[schedule]
warmup_steps = 10
total_steps = 100
[train]
batch_size = 4
"#;

    fn load(text: &str, sets: &[&str]) -> Result<PretrainConfig> {
        load_warned(text, sets).map(|(c, _)| c)
    }

    fn load_warned(text: &str, sets: &[&str]) -> Result<(PretrainConfig, Vec<String>)> {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.toml");
        std::fs::write(&p, text).unwrap();
        PretrainConfig::load(&p, &sets.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn every_shipped_config_is_valid() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let (_, warnings) = PretrainConfig::load(&path, &[])
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
                seen += 1;
            }
        }
        assert_eq!(seen, 5);
        let (phases, _) = PretrainConfig::load(&dir.join("bert-phases.toml"), &[]).unwrap();
        let plans = phases.phases();
        assert_eq!(
            plans
                .iter()
                .map(|p| (p.until_step, p.block_size, p.batch_size * p.block_size))
                .collect::<Vec<_>>(),
            [(720, 64, 4096), (800, 128, 4096)],
            "90% of the updates at half the length, the same tokens per update"
        );
        let (base, _) = PretrainConfig::load(&dir.join("roberta-base.toml"), &[]).unwrap();
        assert_eq!(
            base.train.batch_size * base.train.accumulation,
            8192,
            "8K sequences per update"
        );
        let (large, _) = PretrainConfig::load(&dir.join("roberta-large.toml"), &[]).unwrap();
        assert_eq!(large.train.batch_size * large.train.accumulation, 8192);
        assert_eq!((large.optim.lr, large.schedule.warmup_steps), (4e-4, 30000));
    }

    #[test]
    fn phases_fill_in_the_config_and_bad_ones_are_named() {
        let phase = |body: &str| format!("{MINIMAL}[[schedule.phases]]\n{body}\n");
        let c = load(
            &phase("until_step = 90\nblock_size = 32\nmask_prob = 0.3"),
            &[],
        )
        .unwrap();
        let plans = c.phases();
        assert_eq!(plans.len(), 2);
        assert_eq!(
            (plans[0].block_size, plans[0].batch_size, plans[0].mask_prob),
            (32, 4, 0.3)
        );
        assert_eq!((plans[1].until_step, plans[1].block_size), (100, 64));
        let ends = load(&phase("until_step = 100\nblock_size = 32"), &[]).unwrap();
        assert_eq!(
            ends.phases().len(),
            1,
            "no base phase after one ending the run"
        );
        for (body, expected) in [
            (
                "until_step = 0",
                "schedule.phases[0].until_step = 0 must come after",
            ),
            ("until_step = 101", "is past schedule.total_steps = 100"),
            (
                "until_step = 50\nblock_size = 128",
                "above data.block_size = 64",
            ),
            (
                "until_step = 50\nblock_size = 7",
                "schedule.phases[0].block_size",
            ),
            (
                "until_step = 50\nbatch_size = 0",
                "schedule.phases[0].batch_size must be at least 1",
            ),
            (
                "until_step = 50\nmask_prob = 1.0",
                "schedule.phases[0].mask_prob = 1 must be in (0, 1)",
            ),
            (
                "until_step = 50\n[[schedule.phases]]\nuntil_step = 40",
                "schedule.phases[1].until_step = 40 must come after the previous phase's end (50)",
            ),
        ] {
            let err = format!("{:#}", load(&phase(body), &[]).unwrap_err());
            assert!(err.contains(expected), "{body}: {err}");
        }
        for (sets, expected) in [
            (
                &["schedule.mask_prob_end=1.5"][..],
                "schedule.mask_prob_end = 1.5 must be in (0, 1)",
            ),
            (
                &[
                    "schedule.batch_warmup_steps=10",
                    "schedule.batch_warmup_start=2",
                ],
                "the first phase takes 1",
            ),
            (
                &[
                    "train.accumulation=2",
                    "schedule.batch_warmup_steps=10",
                    "schedule.batch_warmup_start=8",
                ],
                "schedule.batch_warmup_start = 8 must be in [1, 8)",
            ),
            (
                &["schedule.mask_prob_shape=\"cosine\""],
                "without schedule.mask_prob_end",
            ),
            (
                &["schedule.batch_warmup_start=2"],
                "without schedule.batch_warmup_steps",
            ),
            (&["schedule.mask_prob_shape=\"square\""], "mask_prob_shape"),
        ] {
            let err = format!("{:#}", load(MINIMAL, sets).unwrap_err());
            assert!(err.contains(expected), "{sets:?}: {err}");
        }
    }

    #[test]
    fn every_shipped_finetune_config_is_valid_with_the_papers_recipe() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../configs/finetune");
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let (c, warnings) = FinetuneConfig::load(&path, &[])
                .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
            assert!(warnings.is_empty(), "{}: {warnings:?}", path.display());
            assert!((1e-5..=3e-5).contains(&c.optim.lr), "{}", path.display());
            assert_eq!((c.optim.beta2, c.optim.eps), (0.98, 1e-6));
            assert!((c.train.warmup_ratio - 0.06).abs() < 1e-12);
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(!text.contains("../shared"), "{}", path.display());
            if !c.data.train.exists() {
                let err = c.check_data_files().unwrap_err().to_string();
                assert!(err.contains("--set data.train=PATH"), "{err}");
            }
            names.push(path.file_stem().unwrap().to_string_lossy().into_owned());
        }
        names.sort();
        assert_eq!(names, ["cola", "mrpc", "rte", "squad", "sst2", "stsb"]);
    }

    #[test]
    fn finetune_defaults_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f.toml");
        std::fs::write(
            &p,
            "[task]\ntype = \"classification\"\n[data]\ntrain = \"t.tsv\"\n",
        )
        .unwrap();
        let (c, _) = FinetuneConfig::load(&p, &[]).unwrap();
        assert_eq!((c.optim.lr, c.optim.weight_decay), (1e-5, 0.1));
        assert_eq!(c.train.seed, 0, "the same default seed as pretraining");
        assert_eq!((c.train.epochs, c.train.batch_size), (10, 32));
        assert_eq!(c.metric(), "accuracy");
        let err = format!(
            "{:#}",
            FinetuneConfig::load(&p, &["eval.metric=pearson".into()]).unwrap_err()
        );
        assert!(err.contains("eval.metric") && err.contains("mcc"), "{err}");
        let err = format!(
            "{:#}",
            FinetuneConfig::load(&p, &["task.type=ner".into()]).unwrap_err()
        );
        assert!(err.contains("ner"), "{err}");
        let err = format!(
            "{:#}",
            FinetuneConfig::load(&p, &["task.text_b=x".into()]).unwrap_err()
        );
        assert!(err.contains("text_b"), "{err}");
    }

    #[test]
    fn defaults_are_the_papers() {
        let c = load(MINIMAL, &[]).unwrap();
        assert_eq!(
            (c.optim.beta2, c.optim.eps, c.optim.weight_decay),
            (0.98, 1e-6, 0.01)
        );
        assert_eq!(c.masking, MaskingConfig::default());
        assert_eq!(c.model_config(500).max_position_embeddings, 66);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let err = format!(
            "{:#}",
            load(
                &MINIMAL.replace("batch_size = 4", "batch_size = 4\nbatchsize = 2"),
                &[]
            )
            .unwrap_err()
        );
        assert!(err.contains("batchsize"), "{err}");
        let err = format!("{:#}", load(MINIMAL, &["optim.lr=2"]).unwrap_err());
        assert!(err.contains("optim.lr"), "{err}");
        let err = format!("{:#}", load(MINIMAL, &["masking.mask_prob=0"]).unwrap_err());
        assert!(err.contains("mask_prob"), "{err}");
        let err = format!(
            "{:#}",
            load(MINIMAL, &["schedule.warmup_steps=1000"]).unwrap_err()
        );
        assert!(err.contains("warmup_steps"), "{err}");
    }

    #[test]
    fn set_overrides_numbers_strings_and_lists() {
        let c = load(
            MINIMAL,
            &[
                "train.batch_size=8",
                "data.train=mine.txt",
                "model.preset=roberta-base",
            ],
        )
        .unwrap();
        assert_eq!(c.train.batch_size, 8);
        assert_eq!(c.data.train, vec![PathBuf::from("mine.txt")]);
        assert_eq!(c.model.preset, "roberta-base");
        assert!(load(MINIMAL, &["nodot=1"]).is_err());
    }

    #[test]
    fn exactness_changes_are_listed_and_harmless_ones_are_not() {
        let a = load(MINIMAL, &[]).unwrap();
        let mut b = a.clone();
        b.schedule.total_steps = 1000;
        b.log.every = 1;
        assert!(b.exactness_changes(&a).is_empty());
        b.train.seed = 9;
        b.model.hidden_size = Some(256);
        assert_eq!(
            b.exactness_changes(&a),
            ["model.hidden_size: (unset) → 256", "train.seed: 0 → 9"]
        );
    }

    #[test]
    fn type_errors_name_the_key_and_the_line_or_the_set() {
        let bad = MINIMAL.replace("batch_size = 4", "batch_size = \"four\"");
        let err = format!("{:#}", load(&bad, &[]).unwrap_err());
        assert!(err.contains(":13: train.batch_size: invalid type"), "{err}");
        let err = format!(
            "{:#}",
            load(MINIMAL, &["train.batch_size=abc"]).unwrap_err()
        );
        assert!(
            err.starts_with("--set train.batch_size=abc: invalid type"),
            "{err}"
        );
        let err = format!("{:#}", load(MINIMAL, &["train.batchsize=3"]).unwrap_err());
        assert!(
            err.starts_with("--set train.batchsize=3: unknown field"),
            "{err}"
        );
        // The hostile campaign's: each once blamed the config file.
        for (set, says) in [
            ("nonexistent.key=1", "unknown field `nonexistent`"),
            (".=1", "the key must be section.key"),
            ("data.train=[ok, 5]", "not a TOML value"),
            (
                "schedule.total_steps=18446744073709551616",
                "the number is too large",
            ),
            ("train.batch_size=0", "train.batch_size"),
        ] {
            let err = format!("{:#}", load(MINIMAL, &[set]).unwrap_err());
            assert!(
                err.starts_with(&format!("--set {set}: ")) && err.contains(says),
                "{err}"
            );
        }
        let typo = MINIMAL.replace("batch_size = 4", "batch_size = 4\nbatchsize = 2");
        let err = format!("{:#}", load(&typo, &[]).unwrap_err());
        assert!(
            err.contains(":14: train.batchsize: unknown field `batchsize`"),
            "{err}"
        );
    }

    #[test]
    fn range_and_syntax_errors_are_one_line_and_blame_their_source() {
        let err = format!("{:#}", load(MINIMAL, &["optim.lr=nan"]).unwrap_err());
        assert!(err.starts_with("--set optim.lr=nan: optim.lr"), "{err}");
        let err = format!("{:#}", load(MINIMAL, &["optim.clip_norm=nan"]).unwrap_err());
        assert!(err.contains("optim.clip_norm"), "{err}");
        let err = format!(
            "{:#}",
            load(
                MINIMAL,
                &["schedule.total_steps=2", "schedule.total_steps=-1"]
            )
            .unwrap_err()
        );
        assert!(err.starts_with("--set schedule.total_steps=-1"), "{err}");
        let err = format!(
            "{:#}",
            load(&MINIMAL.replace("= 4", "= [4"), &[]).unwrap_err()
        );
        assert!(
            err.contains(":13: invalid TOML") && !err.contains('\n'),
            "{err}"
        );
    }

    #[test]
    fn deprecated_names_are_read_with_a_warning() {
        let old = MINIMAL.to_string() + "[log]\nevery = 5\nvalid_every = 7\n";
        let (c, warnings) = load_warned(&old, &["log.valid_batches=3"]).unwrap();
        assert_eq!((c.log.every, c.eval.every, c.eval.batches), (5, 7, 3));
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("log.valid_every") && warnings[0].contains("eval.every"));
        let both = old + "[eval]\nevery = 2\n";
        let err = format!("{:#}", load(&both, &[]).unwrap_err());
        assert!(err.contains("keep eval.every"), "{err}");
        // A checkpoint's config.toml of an earlier release still reads.
        let dir = tempfile::tempdir().unwrap();
        let saved = dir.path().join("config.toml");
        std::fs::write(&saved, MINIMAL.to_string() + "[log]\nvalid_every = 7\n").unwrap();
        assert_eq!(PretrainConfig::from_saved(&saved).unwrap().eval.every, 7);
    }
}
