//! Fine-tuning's config: `finetune --config` and the recipes of `evaluate`.

use std::path::{Path, PathBuf};

use anyhow::{Result, bail};
use roberta_model::{Precision, RobertaConfig};
use serde::{Deserialize, Serialize};

use super::*;

const FINETUNE_RENAMED: &[(&str, &str)] = &[("train.log_every", "log.every")];

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

    /// Metrics this task reports (the choices for `eval.metric`), each with the way it
    /// improves.
    pub fn metrics(self) -> &'static [Metric] {
        const fn higher(name: &'static str) -> Metric {
            Metric {
                name,
                higher_is_better: true,
            }
        }
        const CLASSIFICATION: &[Metric] = &[
            higher("accuracy"),
            higher("f1"),
            higher("f1_macro"),
            higher("mcc"),
        ];
        const REGRESSION: &[Metric] = &[
            higher("pearson"),
            higher("spearman"),
            Metric {
                name: "mse",
                higher_is_better: false,
            },
        ];
        const QA: &[Metric] = &[higher("exact_match"), higher("f1")];
        const TAGGING: &[Metric] = &[
            higher("f1"),
            higher("precision"),
            higher("recall"),
            higher("accuracy"),
        ];
        match self {
            Self::Classification | Self::PairClassification => CLASSIFICATION,
            Self::Regression => REGRESSION,
            Self::Qa => QA,
            Self::TokenClassification => TAGGING,
        }
    }

    /// The metric `name` of this task, if it reports one.
    pub fn metric(self, name: &str) -> Option<Metric> {
        self.metrics().iter().find(|m| m.name == name).copied()
    }
}

/// A metric a task reports, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub higher_is_better: bool,
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

resume_rule!(TaskSection, kept: [
    "type", "text_a", "text_b", "label", "header", "labels", "max_length", "doc_stride",
    "max_answer_length", "n_best", "version_2_with_negative", "null_score_diff_threshold",
], free: []);
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
