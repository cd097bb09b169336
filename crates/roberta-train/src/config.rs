//! The pretraining config: TOML with one section per concern, unknown keys rejected,
//! `--set section.key=value` overrides, and every value checked before any work starts.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use roberta_data::{BreakMode, MaskingConfig};
use roberta_model::RobertaConfig;
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

/// Linear warmup to `optim.lr`, then linear decay to zero at `total_steps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSection {
    pub warmup_steps: u64,
    /// Optimizer updates in the whole run.
    pub total_steps: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSection {
    /// Sequences per micro-batch (per device).
    pub batch_size: usize,
    /// Micro-batches per update: the update sees batch_size × accumulation sequences.
    #[serde(default = "one")]
    pub accumulation: usize,
    #[serde(default)]
    pub seed: u64,
    /// Updates whose loss is NaN or infinite are skipped; this many in a row abort.
    #[serde(default = "default_max_bad_steps")]
    pub max_bad_steps: u32,
    /// Batches the loader may prepare ahead.
    #[serde(default = "default_queue")]
    pub loader_queue: usize,
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
    /// Evaluate on the validation split every this many updates (0: only at the end).
    pub valid_every: u64,
    /// Validation batches per evaluation (0: the whole split).
    pub valid_batches: usize,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            every: 10,
            valid_every: 500,
            valid_batches: 50,
        }
    }
}

impl PretrainConfig {
    /// Reads `path`, applies `--set` overrides, checks every value.
    pub fn load(path: &Path, sets: &[String]) -> Result<Self> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut value: toml::Table =
            toml::from_str(&text).with_context(|| format!("{}: invalid TOML", path.display()))?;
        for set in sets {
            apply_set(&mut value, set)?;
        }
        let config: Self = PretrainConfig::deserialize(toml::Value::Table(value))
            .map_err(|e| anyhow::anyhow!("{}: {}", path.display(), e.message()))?;
        config
            .validate()
            .with_context(|| format!("{}: invalid config", path.display()))?;
        Ok(config)
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
        if self.schedule.warmup_steps > self.schedule.total_steps {
            bail!(
                "schedule.warmup_steps ({}) must not exceed schedule.total_steps ({})",
                self.schedule.warmup_steps,
                self.schedule.total_steps
            );
        }
        let o = &self.optim;
        if !(o.lr > 0.0 && o.lr < 1.0) {
            bail!("optim.lr = {} must be in (0, 1)", o.lr);
        }
        for (key, v) in [("optim.beta1", o.beta1), ("optim.beta2", o.beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("{key} = {v} must be in [0, 1)");
            }
        }
        if o.eps.is_nan() || o.eps <= 0.0 {
            bail!("optim.eps = {} must be positive", o.eps);
        }
        if !(0.0..1.0).contains(&o.weight_decay) {
            bail!("optim.weight_decay = {} must be in [0, 1)", o.weight_decay);
        }
        if o.clip_norm < 0.0 {
            bail!(
                "optim.clip_norm = {} must be 0 (off) or positive",
                o.clip_norm
            );
        }
        let d = &self.data;
        if d.train.is_empty() {
            bail!("data.train names no input");
        }
        if !(8..=8192).contains(&d.block_size) {
            bail!("data.block_size = {} must be in [8, 8192]", d.block_size);
        }
        if !(0.0..0.5).contains(&d.valid_fraction) {
            bail!(
                "data.valid_fraction = {} must be in [0, 0.5)",
                d.valid_fraction
            );
        }
        self.masking.validate().map_err(|e| anyhow::anyhow!(e))?;
        self.model_config(1000)
            .validate()
            .map_err(|e| anyhow::anyhow!("model: {e}"))?;
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
        c.hidden_dropout_prob = m.hidden_dropout_prob.unwrap_or(c.hidden_dropout_prob);
        c.attention_probs_dropout_prob = m
            .attention_probs_dropout_prob
            .unwrap_or(c.attention_probs_dropout_prob);
        c
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// Differences that would make a resumed run differ from an uninterrupted one.
    pub fn exactness_changes(&self, saved: &PretrainConfig) -> Vec<String> {
        let mut changes = Vec::new();
        let mut check = |name: &str, a: String, b: String| {
            if a != b {
                changes.push(format!("{name}: {b} → {a}"));
            }
        };
        check(
            "model",
            format!("{:?}", self.model),
            format!("{:?}", saved.model),
        );
        check(
            "data",
            format!("{:?}", self.data),
            format!("{:?}", saved.data),
        );
        check(
            "masking",
            format!("{:?}", self.masking),
            format!("{:?}", saved.masking),
        );
        check(
            "optim",
            format!("{:?}", self.optim),
            format!("{:?}", saved.optim),
        );
        check(
            "schedule.warmup_steps",
            self.schedule.warmup_steps.to_string(),
            saved.schedule.warmup_steps.to_string(),
        );
        check(
            "train.batch_size",
            self.train.batch_size.to_string(),
            saved.train.batch_size.to_string(),
        );
        check(
            "train.accumulation",
            self.train.accumulation.to_string(),
            saved.train.accumulation.to_string(),
        );
        check(
            "train.seed",
            self.train.seed.to_string(),
            saved.train.seed.to_string(),
        );
        changes
    }
}

/// Applies `section.key=value`: the value is read as TOML (numbers, booleans, arrays),
/// and as a string when it is not valid TOML.
fn apply_set(table: &mut toml::Table, set: &str) -> Result<()> {
    let (key, raw) = set
        .split_once('=')
        .with_context(|| format!("--set {set}: expected section.key=value"))?;
    let path: Vec<&str> = key.trim().split('.').collect();
    let [section, name] = path.as_slice() else {
        bail!("--set {set}: the key must be section.key, such as train.batch_size");
    };
    let value = toml::from_str::<toml::Table>(&format!("v = {raw}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(raw.to_string()));
    let entry = table
        .entry(section.to_string())
        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
    let Some(section_table) = entry.as_table_mut() else {
        bail!("--set {set}: `{section}` is not a section");
    };
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
                PretrainConfig::load(&path, &[])
                    .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
                seen += 1;
            }
        }
        assert_eq!(seen, 3);
        let base = PretrainConfig::load(&dir.join("roberta-base.toml"), &[]).unwrap();
        assert_eq!(
            base.train.batch_size * base.train.accumulation,
            8192,
            "8K sequences per update"
        );
        let large = PretrainConfig::load(&dir.join("roberta-large.toml"), &[]).unwrap();
        assert_eq!(large.train.batch_size * large.train.accumulation, 8192);
        assert_eq!((large.optim.lr, large.schedule.warmup_steps), (4e-4, 30000));
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
        assert_eq!(b.exactness_changes(&a).len(), 1);
    }
}
