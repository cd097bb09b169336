//! HF's `_init_weights` for RoBERTa: N(0, initializer_range) for Linear and Embedding
//! weights, zero biases, LayerNorm at (1, 0), and a zero padding row. burn's defaults
//! (Kaiming-uniform Linear, N(0, 1) Embedding) would train a different model.

use std::cell::Cell;

use burn::module::Param;
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear};
use burn::prelude::*;
use burn::tensor::Distribution;

use crate::config::RobertaConfig;

thread_local! {
    /// False while a model is built only to have every weight replaced by loaded ones.
    static DRAW: Cell<bool> = const { Cell::new(true) };
}

/// Runs `build` with weights allocated as zeros instead of drawn: for a model whose
/// every weight is about to be loaded (drawing roberta-base's 125M normals takes
/// seconds, and loading replaces them all).
pub fn without_drawing<T>(build: impl FnOnce() -> T) -> T {
    struct Restore;
    impl Drop for Restore {
        fn drop(&mut self) {
            DRAW.with(|d| d.set(true));
        }
    }
    DRAW.with(|d| d.set(false));
    let _restore = Restore;
    build()
}

/// `N(0, std)` of `shape`, or zeros inside [`without_drawing`].
fn normal<B: Backend>(shape: [usize; 2], std: f64, device: &B::Device) -> Tensor<B, 2> {
    match DRAW.with(Cell::get) {
        true => Tensor::random(shape, Distribution::Normal(0.0, std), device),
        false => Tensor::zeros(shape, device),
    }
}

/// Drawn now, not lazily as `LinearConfig::init` would: a lazy weight is drawn at first
/// use, separately in every clone, so a model and its copies (replicas, the bf16 forward
/// copy) would hold different weights.
pub(crate) fn linear<B: Backend>(
    config: &RobertaConfig,
    d_input: usize,
    d_output: usize,
    device: &B::Device,
) -> Linear<B> {
    Linear {
        weight: Param::from_tensor(normal(
            [d_input, d_output],
            config.initializer_range,
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
    let mut weight = normal::<B>([n, config.hidden_size], config.initializer_range, device);
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

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn weights_to_be_loaded_are_not_drawn_and_drawing_resumes_after() {
        let config = RobertaConfig::tiny(100);
        let device = Default::default();
        let sum = |l: &Linear<Flex>| l.weight.val().abs().sum().into_scalar();
        let loaded: Linear<Flex> = without_drawing(|| linear(&config, 4, 3, &device));
        assert_eq!(sum(&loaded), 0.0);
        let caught = std::panic::catch_unwind(|| without_drawing(|| panic!("a failed build")));
        assert!(caught.is_err());
        let drawn: Linear<Flex> = linear(&config, 4, 3, &device);
        assert!(
            sum(&drawn) > 0.0,
            "drawing again after a build, even a failed one"
        );
    }
}
