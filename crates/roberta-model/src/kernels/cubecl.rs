//! cubecl's backends (wgpu, CUDA): evaluation and inference run attention on burn's own
//! attention op, whose flash kernel (chosen by autotune) never stores the score matrix.
//! burn 0.21 has no flash backward, so training (the autodiff backends) keeps the
//! composition, which fusion merges. The gradient norm packs each group into one tensor
//! and reduces it once: per tensor, the sum of squares took about three kernels, packed
//! one copy (lavapipe, quickstart geometry: see the README's kernel counts).

use burn::prelude::*;
use burn::tensor::ops::AttentionModuleOptions;

use super::{Kernels, composed};

/// burn's attention op with the padding mask as its boolean mask (true: a padding key);
/// with dropout (never without a gradient) the composition.
fn attention<B: Kernels>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Tensor<B, 4>,
    heads: usize,
    dropout: Option<f64>,
) -> Tensor<B, 3> {
    if dropout.is_some() {
        return composed::attention(q, k, v, bias, heads, dropout);
    }
    let [batch, seq, width] = q.dims();
    let head_dim = width / heads;
    let split = |x: Tensor<B, 3>| x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
    // The bias is 0 for tokens and -10⁴ for padding.
    let padding = bias.lower_elem(-1.0).expand([batch, heads, seq, seq]);
    burn::tensor::module::attention(
        split(q),
        split(k),
        split(v),
        Some(padding),
        None,
        AttentionModuleOptions::default(),
    )
    .swap_dims(1, 2)
    .reshape([batch, seq, width])
}

macro_rules! cubecl_kernels {
    ($backend:ty) => {
        impl Kernels for $backend {
            fn fused_attention(
                q: Tensor<Self, 3>,
                k: Tensor<Self, 3>,
                v: Tensor<Self, 3>,
                bias: Tensor<Self, 4>,
                heads: usize,
                dropout: Option<f64>,
            ) -> Tensor<Self, 3> {
                attention(q, k, v, bias, heads, dropout)
            }

            fn fused_group_sum_of_squares(
                group: Vec<Tensor<Self, 1>>,
                device: &Self::Device,
            ) -> Tensor<Self, 1> {
                composed::packed_sum_of_squares(group, device)
            }
        }

        impl Kernels for burn::backend::Autodiff<$backend> {}
    };
}

#[cfg(feature = "wgpu")]
cubecl_kernels!(burn::backend::Wgpu);
#[cfg(feature = "cuda")]
cubecl_kernels!(burn::backend::Cuda);
