//! Losses as sums over tokens, not means: the trainer divides by the masked-token count
//! of the whole accumulation window, so that k micro-batches of b equal one batch of k·b.

use burn::prelude::*;

use crate::kernels::Kernels;
use crate::precision::to_f32;

/// Sum of the cross-entropy over rows whose target is a class index; a negative target
/// (the data pipeline's -100, HF's and PyTorch's `ignore_index`) contributes nothing.
///
/// `logits`: `[n, classes]`; `targets`: `[n]`. Returns a one-element tensor.
pub fn cross_entropy_sum<B: Kernels>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Tensor<B, 1> {
    B::fused_cross_entropy_sum(logits, targets)
}

/// Sum of squared errors, for regression heads (`num_labels == 1`).
pub fn squared_error_sum<B: Backend>(
    predictions: Tensor<B, 1>,
    targets: Tensor<B, 1>,
) -> Tensor<B, 1> {
    (to_f32(predictions) - targets).powi_scalar(2).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn ignores_negative_targets_and_sums() {
        let device = Default::default();
        let logits = Tensor::<Flex, 2>::from_floats([[0.0, 0.0], [2.0, 0.0], [5.0, -5.0]], &device);
        let targets = Tensor::<Flex, 1, Int>::from_ints([0, 1, -100], &device);
        let loss = cross_entropy_sum(logits, targets.clone()).into_scalar() as f64;
        let expected = 2f64.ln() + (1.0 + 2f64.exp()).ln();
        assert!((loss - expected).abs() < 1e-5, "{loss} vs {expected}");
    }
}
