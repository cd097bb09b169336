//! HF's `_init_weights` for RoBERTa: N(0, initializer_range) for Linear and Embedding
//! weights, zero biases, LayerNorm at (1, 0), and a zero padding row. burn's defaults
//! (Kaiming-uniform Linear, N(0, 1) Embedding) would train a different model.

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::config::RobertaConfig;

/// Drawn now, not lazily as `LinearConfig::init` would: a lazy weight is drawn at first
/// use, separately in every clone, so a model and its copies (replicas, the bf16 forward
/// copy) would hold different weights.
pub(crate) fn linear<B: Backend>(
    config: &RobertaConfig,
    d_input: usize,
    d_output: usize,
    device: &B::Device,
) -> Linear<B> {
    let std = config.initializer_range;
    Linear {
        weight: Param::from_tensor(Tensor::random(
            [d_input, d_output],
            Distribution::Normal(0.0, std),
            device,
        )),
        bias: Some(Param::from_tensor(Tensor::zeros([d_output], device))),
    }
}

pub(crate) fn embedding<B: Backend>(
    config: &RobertaConfig,
    n: usize,
    padding_idx: Option<usize>,
    device: &B::Device,
) -> Embedding<B> {
    let mut embedding = EmbeddingConfig::new(n, config.hidden_size).init(device);
    let mut weight = Tensor::<B, 2>::random(
        [n, config.hidden_size],
        Distribution::Normal(0.0, config.initializer_range),
        device,
    );
    if let Some(pad) = padding_idx.filter(|&p| p < n) {
        let keep: Vec<f32> = (0..n).map(|i| if i == pad { 0.0 } else { 1.0 }).collect();
        weight = weight * Tensor::<B, 1>::from_floats(keep.as_slice(), device).reshape([n, 1]);
    }
    embedding.weight = Param::from_tensor(weight);
    embedding
}

pub(crate) fn layer_norm<B: Backend>(config: &RobertaConfig, device: &B::Device) -> LayerNorm<B> {
    LayerNormConfig::new(config.hidden_size)
        .with_epsilon(config.layer_norm_eps)
        .init(device)
}
