//! Fine-tuning's config: `finetune --config` and the recipes of `evaluate`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use roberta_model::{Precision, RobertaConfig};
use serde::{Deserialize, Serialize};

use super::*;
use crate::tasks::TaskSection;

const FINETUNE_RENAMED: &[(&str, &str)] = &[("train.log_every", "log.every")];

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

impl FinetuneModelSection {
    /// Applies the dropout rates this section sets, to a preset or a loaded model's config.
    pub fn override_dropout(&self, c: &mut RobertaConfig) {
        override_dropout(
            c,
            [
                self.hidden_dropout_prob,
                self.attention_probs_dropout_prob,
                self.classifier_dropout,
            ],
        );
    }
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
        if self.task.kind.metric(metric).is_none() {
            let names: Vec<&str> = self.task.kind.metrics().iter().map(|m| m.name).collect();
            bail!(
                "eval.metric = \"{metric}\" is not a metric of {}; expected one of {}",
                self.task.kind.name(),
                names.join(", ")
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
        [
            TaskSection::kept_changes("task", &self.task, &saved.task),
            FinetuneDataSection::kept_changes("data", &self.data, &saved.data),
            FinetuneModelSection::kept_changes("model", &self.model, &saved.model),
            OptimSection::kept_changes("optim", &self.optim, &saved.optim),
            FinetuneTrainSection::kept_changes("train", &self.train, &saved.train),
            FinetuneEvalSection::kept_changes("eval", &self.eval, &saved.eval),
            CheckpointSection::kept_changes("checkpoint", &self.checkpoint, &saved.checkpoint),
            LogSection::kept_changes("log", &self.log, &saved.log),
        ]
        .concat()
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

resume_rule!(FinetuneDataSection, kept: ["train", "valid", "tokenizer", "seed"], free: []);
resume_rule!(FinetuneModelSection, kept: [
    "init", "preset", "hidden_dropout_prob", "attention_probs_dropout_prob",
    "classifier_dropout",
], free: []);
resume_rule!(FinetuneTrainSection, kept: [
    "batch_size", "accumulation", "seed", "init_seed", "ema_decay", "epochs", "warmup_ratio",
    "max_steps", "precision",
], free: ["max_bad_steps"]);
resume_rule!(FinetuneEvalSection, kept: [], free: ["every", "metric", "patience", "batch_size"]);
