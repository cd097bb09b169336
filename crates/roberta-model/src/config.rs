//! `RobertaConfig`: the HuggingFace `config.json` of a RoBERTa model, read and written
//! with HF's key names so that a directory moves between the two worlds unchanged.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{ModelError, Result};

fn default_model_type() -> String {
    "roberta".into()
}
fn default_hidden_act() -> String {
    "gelu".into()
}
fn default_position_embedding_type() -> String {
    "absolute".into()
}
fn default_dropout() -> f64 {
    0.1
}
fn default_initializer_range() -> f64 {
    0.02
}
fn default_layer_norm_eps() -> f64 {
    1e-5
}
fn default_pad() -> usize {
    1
}
fn default_eos() -> usize {
    2
}
fn default_type_vocab_size() -> usize {
    1
}

/// The architecture hyper-parameters plus the task metadata HF keeps in the same file.
///
/// Keys this crate does not use (`transformers_version`, `torch_dtype`, …) are kept in
/// `extra` and written back, so that a load/save round trip loses nothing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RobertaConfig {
    #[serde(default = "default_model_type")]
    pub model_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub architectures: Vec<String>,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub intermediate_size: usize,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_dropout")]
    pub hidden_dropout_prob: f64,
    #[serde(default = "default_dropout")]
    pub attention_probs_dropout_prob: f64,
    /// RoBERTa reserves `pad_token_id + 1` positions before the first token, hence 514
    /// positions for 512 tokens.
    pub max_position_embeddings: usize,
    #[serde(default = "default_type_vocab_size")]
    pub type_vocab_size: usize,
    #[serde(default = "default_initializer_range")]
    pub initializer_range: f64,
    #[serde(default = "default_layer_norm_eps")]
    pub layer_norm_eps: f64,
    #[serde(default = "default_pad")]
    pub pad_token_id: usize,
    #[serde(default)]
    pub bos_token_id: usize,
    #[serde(default = "default_eos")]
    pub eos_token_id: usize,
    #[serde(default = "default_position_embedding_type")]
    pub position_embedding_type: String,
    /// Dropout of the sequence-classification head; HF falls back to `hidden_dropout_prob`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classifier_dropout: Option<f64>,
    /// Label names by index, as HF writes them (`{"0": "negative", …}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id2label: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub label2id: Option<BTreeMap<String, usize>>,
    /// `"regression"`, `"single_label_classification"` or `"multi_label_classification"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub problem_type: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl RobertaConfig {
    /// The published `roberta-base` shape (125M parameters).
    pub fn roberta_base() -> Self {
        Self::with_shape(50265, 768, 12, 12, 3072, 514)
    }

    /// The published `roberta-large` shape (355M parameters).
    pub fn roberta_large() -> Self {
        Self::with_shape(50265, 1024, 24, 16, 4096, 514)
    }

    /// A small model for tests and CPU experiments.
    pub fn tiny(vocab_size: usize) -> Self {
        Self::with_shape(vocab_size, 64, 2, 4, 256, 130)
    }

    /// Looks a preset up by the name users know it under.
    pub fn preset(name: &str) -> Option<Self> {
        match name {
            "roberta-base" => Some(Self::roberta_base()),
            "roberta-large" => Some(Self::roberta_large()),
            "tiny" => Some(Self::tiny(50265)),
            _ => None,
        }
    }

    pub fn with_shape(
        vocab_size: usize,
        hidden_size: usize,
        num_hidden_layers: usize,
        num_attention_heads: usize,
        intermediate_size: usize,
        max_position_embeddings: usize,
    ) -> Self {
        Self {
            model_type: default_model_type(),
            architectures: Vec::new(),
            vocab_size,
            hidden_size,
            num_hidden_layers,
            num_attention_heads,
            intermediate_size,
            hidden_act: default_hidden_act(),
            hidden_dropout_prob: default_dropout(),
            attention_probs_dropout_prob: default_dropout(),
            max_position_embeddings,
            type_vocab_size: default_type_vocab_size(),
            initializer_range: default_initializer_range(),
            layer_norm_eps: default_layer_norm_eps(),
            pad_token_id: default_pad(),
            bos_token_id: 0,
            eos_token_id: default_eos(),
            position_embedding_type: default_position_embedding_type(),
            classifier_dropout: None,
            id2label: None,
            label2id: None,
            problem_type: None,
            extra: serde_json::Map::new(),
        }
    }

    /// Reads and validates an HF `config.json`.
    pub fn load(path: &Path) -> Result<Self> {
        crate::hf::require_regular_file(path)?;
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let config: Self = serde_json::from_str(&text).map_err(|source| ModelError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        config
            .validate()
            .map_err(|message| ModelError::InvalidConfig {
                path: path.to_path_buf(),
                message,
            })?;
        Ok(config)
    }

    /// Rejects configurations this implementation would silently compute differently.
    pub fn validate(&self) -> std::result::Result<(), String> {
        // XLM-R and CamemBERT are RoBERTa's architecture under other names.
        if !["roberta", "xlm-roberta", "camembert"].contains(&self.model_type.as_str()) {
            return Err(format!(
                "model_type \"{}\" is not RoBERTa (expected roberta, xlm-roberta or camembert)",
                self.model_type
            ));
        }
        if let Some(other) = self.architectures.iter().find(|a| {
            !["Roberta", "XLMRoberta", "Camembert"]
                .iter()
                .any(|p| a.starts_with(p))
        }) {
            return Err(format!("architecture {other} is not a RoBERTa model"));
        }
        for (name, value) in [
            ("hidden_size", self.hidden_size),
            ("num_attention_heads", self.num_attention_heads),
            ("num_hidden_layers", self.num_hidden_layers),
            ("intermediate_size", self.intermediate_size),
        ] {
            if value == 0 {
                return Err(format!("{name} must be at least 1"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return Err(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if self.hidden_act != "gelu" {
            return Err(format!(
                "hidden_act \"{}\" is not supported (expected \"gelu\", the exact erf GELU)",
                self.hidden_act
            ));
        }
        if self.position_embedding_type != "absolute" {
            return Err(format!(
                "position_embedding_type \"{}\" is not supported (expected \"absolute\")",
                self.position_embedding_type
            ));
        }
        if self.pad_token_id >= self.vocab_size {
            return Err(format!(
                "pad_token_id {} is outside the vocabulary of {}",
                self.pad_token_id, self.vocab_size
            ));
        }
        if self.max_position_embeddings <= self.pad_token_id + 1 {
            return Err(format!(
                "max_position_embeddings {} leaves no room for tokens after the padding offset {}",
                self.max_position_embeddings,
                self.pad_token_id + 1
            ));
        }
        for (key, unsupported) in [
            ("is_decoder", true),
            ("add_cross_attention", true),
            ("tie_word_embeddings", false),
        ] {
            if self.extra.get(key).and_then(serde_json::Value::as_bool) == Some(unsupported) {
                return Err(format!(
                    "{key} = {unsupported} is not supported (RoBERTa is an encoder with a tied MLM decoder)"
                ));
            }
        }
        if self.type_vocab_size == 0 {
            return Err("type_vocab_size must be at least 1".into());
        }
        if !(self.layer_norm_eps.is_finite() && self.layer_norm_eps > 0.0) {
            return Err(format!(
                "layer_norm_eps {} must be a positive number",
                self.layer_norm_eps
            ));
        }
        self.validate_labels()?;
        for (name, p) in [
            ("hidden_dropout_prob", self.hidden_dropout_prob),
            (
                "attention_probs_dropout_prob",
                self.attention_probs_dropout_prob,
            ),
        ] {
            if !(0.0..1.0).contains(&p) {
                return Err(format!("{name} {p} is outside [0, 1)"));
            }
        }
        Ok(())
    }

    /// `id2label`'s keys are HF's, the indices 0..n as strings (others would shift
    /// every label), and no name is given twice.
    fn validate_labels(&self) -> std::result::Result<(), String> {
        let Some(labels) = &self.id2label else {
            return Ok(());
        };
        for (i, key) in labels.keys().enumerate() {
            if key.parse::<usize>().ok().is_none_or(|k| k >= labels.len()) {
                return Err(format!(
                    "id2label has key \"{key}\": its keys must be the indices 0..{} (entry {i})",
                    labels.len()
                ));
            }
        }
        let mut names: Vec<&String> = labels.values().collect();
        names.sort();
        match names.windows(2).find(|w| w[0] == w[1]) {
            Some(w) => Err(format!("id2label names \"{}\" twice", w[0])),
            None => Ok(()),
        }
    }

    /// Parameters of the encoder with an MLM head (the largest model of this config):
    /// what a process must hold before anything else, four times over to train it.
    pub fn num_parameters(&self) -> u64 {
        let (h, f, l) = (
            self.hidden_size as u64,
            self.intermediate_size as u64,
            self.num_hidden_layers as u64,
        );
        let embeddings =
            (self.vocab_size + self.max_position_embeddings + self.type_vocab_size) as u64 * h
                + 2 * h;
        let layer = 4 * h * h + 2 * h * f + 9 * h + f;
        let head = h * h + 3 * h + self.vocab_size as u64;
        embeddings
            .saturating_add(layer.saturating_mul(l))
            .saturating_add(head)
    }

    /// The longest sequence the position table can embed.
    pub fn max_sequence_length(&self) -> usize {
        self.max_position_embeddings - self.pad_token_id - 1
    }

    /// Number of labels implied by `id2label`, as HF derives `num_labels`.
    pub fn num_labels(&self) -> Option<usize> {
        self.id2label.as_ref().map(BTreeMap::len)
    }

    /// Sets `id2label`/`label2id` from label names in index order.
    pub fn set_labels(&mut self, labels: &[String]) {
        self.id2label = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (i.to_string(), l.clone()))
                .collect(),
        );
        self.label2id = Some(
            labels
                .iter()
                .enumerate()
                .map(|(i, l)| (l.clone(), i))
                .collect(),
        );
    }

    /// Label names in index order; `LABEL_i` where the config names none.
    pub fn labels(&self, num_labels: usize) -> Vec<String> {
        (0..num_labels)
            .map(|i| {
                self.id2label
                    .as_ref()
                    .and_then(|m| m.get(&i.to_string()).cloned())
                    .unwrap_or_else(|| format!("LABEL_{i}"))
            })
            .collect()
    }

    pub fn classifier_dropout_prob(&self) -> f64 {
        self.classifier_dropout.unwrap_or(self.hidden_dropout_prob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_hf_roberta_base_config_and_keeps_unknown_keys() {
        let json = r#"{
          "architectures": ["RobertaForMaskedLM"],
          "attention_probs_dropout_prob": 0.1, "bos_token_id": 0, "eos_token_id": 2,
          "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 768,
          "initializer_range": 0.02, "intermediate_size": 3072, "layer_norm_eps": 1e-05,
          "max_position_embeddings": 514, "model_type": "roberta", "num_attention_heads": 12,
          "num_hidden_layers": 12, "pad_token_id": 1, "type_vocab_size": 1, "vocab_size": 50265,
          "transformers_version": "4.57.0"
        }"#;
        let c: RobertaConfig = serde_json::from_str(json).unwrap();
        assert!(c.validate().is_ok());
        let mut expected = RobertaConfig::roberta_base();
        expected.architectures = vec!["RobertaForMaskedLM".into()];
        expected
            .extra
            .insert("transformers_version".into(), "4.57.0".into());
        assert_eq!(c, expected);
        assert_eq!(c.max_sequence_length(), 512);
        let back: RobertaConfig =
            serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn rejects_what_would_compute_differently() {
        let mut c = RobertaConfig::tiny(100);
        c.hidden_act = "relu".into();
        assert!(c.validate().unwrap_err().contains("hidden_act"));
        let mut c = RobertaConfig::tiny(100);
        c.num_attention_heads = 5;
        assert!(c.validate().unwrap_err().contains("multiple"));
        let mut c = RobertaConfig::tiny(100);
        c.position_embedding_type = "relative_key".into();
        assert!(c.validate().is_err());
        let mut c = RobertaConfig::tiny(100);
        c.num_hidden_layers = 0;
        assert!(c.validate().unwrap_err().contains("num_hidden_layers"));
        let mut c = RobertaConfig::tiny(100);
        c.model_type = "gpt2".into();
        assert!(c.validate().unwrap_err().contains("gpt2"));
        let mut c = RobertaConfig::tiny(100);
        c.architectures = vec!["GPT2LMHeadModel".into()];
        assert!(c.validate().unwrap_err().contains("GPT2LMHeadModel"));
        c.architectures = vec!["XLMRobertaForMaskedLM".into()];
        assert!(c.validate().is_ok());
    }

    #[test]
    fn labels_round_trip_through_id2label() {
        let mut c = RobertaConfig::tiny(100);
        c.set_labels(&["neg".into(), "pos".into()]);
        assert_eq!(c.num_labels(), Some(2));
        assert_eq!(c.labels(2), vec!["neg", "pos"]);
        assert_eq!(c.label2id.as_ref().unwrap()["pos"], 1);
    }
}
