//! Sentence vectors from token states, computed as sentence-transformers' `Pooling` and
//! `Normalize` modules compute them, and the files that make an HF model directory a
//! sentence-transformers model (`modules.json`, `sentence_bert_config.json`,
//! `1_Pooling/config.json`), so that `SentenceTransformer(dir)` gives the vectors
//! `embed --pool` writes.

use std::path::Path;

use burn::prelude::*;
use serde_json::json;

use crate::error::{ModelError, Result};
use crate::model::first_token;
use roberta_fs::replace_file;

/// How a sequence of token states becomes one vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Pooling {
    /// The mean over non-padding tokens (`<s>` and `</s>` included, as
    /// sentence-transformers counts them).
    Mean,
    /// The `<s>` token's state.
    Cls,
    /// The element-wise maximum over non-padding tokens.
    Max,
}

impl Pooling {
    pub fn name(self) -> &'static str {
        match self {
            Pooling::Mean => "mean",
            Pooling::Cls => "cls",
            Pooling::Max => "max",
        }
    }

    /// The key of `1_Pooling/config.json` that selects this pooling.
    fn sentence_transformers_key(self) -> &'static str {
        match self {
            Pooling::Mean => "pooling_mode_mean_tokens",
            Pooling::Cls => "pooling_mode_cls_token",
            Pooling::Max => "pooling_mode_max_tokens",
        }
    }
}

/// `[batch, seq, hidden]` token states and their `[batch, seq]` attention mask (1 for
/// tokens) → `[batch, hidden]`. Mean is `Σ h·m / max(Σ m, 1e-9)` and max sets padding to
/// −1e9 first: sentence-transformers' formulas, so the two agree to rounding.
pub fn pool<B: Backend>(
    hidden: Tensor<B, 3>,
    attention_mask: Tensor<B, 2, Int>,
    pooling: Pooling,
) -> Tensor<B, 2> {
    let [batch, seq, width] = hidden.dims();
    let mask = attention_mask.float().reshape([batch, seq, 1]);
    match pooling {
        Pooling::Cls => first_token(hidden),
        Pooling::Mean => {
            let sum = (hidden * mask.clone()).sum_dim(1).reshape([batch, width]);
            let count = mask.sum_dim(1).reshape([batch, 1]).clamp_min(1e-9);
            sum / count
        }
        Pooling::Max => {
            let padding = mask.equal_elem(0.0).expand([batch, seq, width]);
            hidden
                .mask_fill(padding, -1e9)
                .max_dim(1)
                .reshape([batch, width])
        }
    }
}

/// Each row divided by its L2 norm (at least 1e-12), as `torch.nn.functional.normalize`.
pub fn normalize<B: Backend>(vectors: Tensor<B, 2>) -> Tensor<B, 2> {
    let [batch, _] = vectors.dims();
    let norm = vectors
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .clamp_min(1e-12)
        .reshape([batch, 1]);
    vectors / norm
}

/// sentence-transformers' module list and configs, written into an HF model directory
/// that already holds the model and tokenizer files: the Transformer module is the
/// directory itself, then Pooling (`1_Pooling/`), then Normalize (`2_Normalize/`) when
/// `normalize`. Both the legacy keys and the current ones are written, so old and new
/// sentence-transformers load it alike.
pub fn save_sentence_transformers(
    dir: &Path,
    pooling: Pooling,
    normalize: bool,
    hidden_size: usize,
    max_seq_length: usize,
) -> Result<()> {
    let mut modules = vec![json!({
        "idx": 0, "name": "0", "path": "",
        "type": "sentence_transformers.models.Transformer",
    })];
    modules.push(json!({
        "idx": 1, "name": "1", "path": "1_Pooling",
        "type": "sentence_transformers.models.Pooling",
    }));
    if normalize {
        modules.push(json!({
            "idx": 2, "name": "2", "path": "2_Normalize",
            "type": "sentence_transformers.models.Normalize",
        }));
    }
    let mut pooling_config = serde_json::Map::new();
    pooling_config.insert("word_embedding_dimension".into(), json!(hidden_size));
    for mode in [Pooling::Cls, Pooling::Mean, Pooling::Max] {
        pooling_config.insert(
            mode.sentence_transformers_key().into(),
            json!(mode == pooling),
        );
    }
    for unused in [
        "pooling_mode_mean_sqrt_len_tokens",
        "pooling_mode_weightedmean_tokens",
        "pooling_mode_lasttoken",
    ] {
        pooling_config.insert(unused.into(), json!(false));
    }
    pooling_config.insert("include_prompt".into(), json!(true));
    let pretty = |v: &serde_json::Value| serde_json::to_vec_pretty(v).expect("JSON serialises");
    let create = |sub: &str| {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(|source| ModelError::Io { path, source })
    };
    create("1_Pooling")?;
    replace_file(
        &dir.join("1_Pooling/config.json"),
        &pretty(&serde_json::Value::Object(pooling_config)),
    )?;
    if normalize {
        create("2_Normalize")?;
    }
    replace_file(
        &dir.join("sentence_bert_config.json"),
        &pretty(&json!({"max_seq_length": max_seq_length, "do_lower_case": false})),
    )?;
    replace_file(
        &dir.join("config_sentence_transformers.json"),
        &pretty(
            &json!({"prompts": {}, "default_prompt_name": null, "similarity_fn_name": "cosine"}),
        ),
    )?;
    Ok(replace_file(
        &dir.join("modules.json"),
        &pretty(&serde_json::Value::Array(modules)),
    )?)
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::backend::Flex;

    fn hidden() -> (Tensor<Flex, 3>, Tensor<Flex, 2, Int>) {
        let device = Default::default();
        // Two rows of three tokens, width 2; the second row's last token is padding.
        let h = Tensor::<Flex, 3>::from_floats(
            [
                [[1.0, -2.0], [3.0, 4.0], [5.0, 0.0]],
                [[2.0, 2.0], [-4.0, 6.0], [100.0, 100.0]],
            ],
            &device,
        );
        let m = Tensor::<Flex, 2, Int>::from_ints([[1, 1, 1], [1, 1, 0]], &device);
        (h, m)
    }

    fn values(t: Tensor<Flex, 2>) -> Vec<f32> {
        t.into_data().convert::<f32>().into_vec().unwrap()
    }

    #[test]
    fn pooling_ignores_padding() {
        let (h, m) = hidden();
        assert_eq!(
            values(pool(h.clone(), m.clone(), Pooling::Mean)),
            [3.0, 2.0 / 3.0, -1.0, 4.0]
        );
        assert_eq!(
            values(pool(h.clone(), m.clone(), Pooling::Max)),
            [5.0, 4.0, 2.0, 6.0]
        );
        assert_eq!(values(pool(h, m, Pooling::Cls)), [1.0, -2.0, 2.0, 2.0]);
    }

    #[test]
    fn normalized_rows_have_unit_norm() {
        let device = Default::default();
        let v = Tensor::<Flex, 2>::from_floats([[3.0, 4.0], [0.0, 0.0]], &device);
        assert_eq!(values(normalize(v)), [0.6, 0.8, 0.0, 0.0]);
    }

    #[test]
    fn sentence_transformers_files_name_one_pooling() {
        let dir = tempfile::tempdir().unwrap();
        save_sentence_transformers(dir.path(), Pooling::Max, true, 8, 30).unwrap();
        let read = |p: &str| -> serde_json::Value {
            serde_json::from_slice(&std::fs::read(dir.path().join(p)).unwrap()).unwrap()
        };
        let pooling = read("1_Pooling/config.json");
        assert_eq!(pooling["word_embedding_dimension"], 8);
        assert_eq!(pooling["pooling_mode_max_tokens"], true);
        assert_eq!(pooling["pooling_mode_mean_tokens"], false);
        assert_eq!(read("sentence_bert_config.json")["max_seq_length"], 30);
        let modules = read("modules.json");
        assert_eq!(modules.as_array().unwrap().len(), 3);
        assert_eq!(modules[2]["path"], "2_Normalize");
        assert!(dir.path().join("2_Normalize").is_dir());
    }
}
