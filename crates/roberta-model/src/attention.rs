use burn::nn::{Dropout, DropoutConfig, LayerNorm, Linear};
use burn::prelude::*;

use crate::config::RobertaConfig;
use crate::init;
use crate::kernels::{self, Kernels};
use crate::precision::in_f32;

/// Added to the scores of padded keys. Large enough that `exp` underflows to exactly 0 in
/// fp32, small enough to stay finite in fp16/bf16.
const MASKED_SCORE: f64 = -1e4;

/// `RobertaSelfAttention`: multi-head scaled dot-product attention over the padding mask.
#[derive(Module, Debug)]
pub struct RobertaSelfAttention<B: Backend> {
    pub query: Linear<B>,
    pub key: Linear<B>,
    pub value: Linear<B>,
    pub dropout: Dropout,
    pub num_attention_heads: usize,
}

/// `RobertaSelfOutput`: projection, dropout, residual, post-LayerNorm.
#[derive(Module, Debug)]
pub struct RobertaSelfOutput<B: Backend> {
    pub dense: Linear<B>,
    /// HF key `attention.output.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// `layer_norm`'s epsilon, which burn keeps private and the fused kernel needs.
    pub layer_norm_eps: f64,
    pub dropout: Dropout,
}

/// `RobertaAttention`; its `self` submodule is `self_attn` here (`self` is a Rust keyword).
#[derive(Module, Debug)]
pub struct RobertaAttention<B: Backend> {
    pub self_attn: RobertaSelfAttention<B>,
    pub output: RobertaSelfOutput<B>,
}

/// Turns a `[batch, seq]` mask of 1 (token) / 0 (padding) into the additive bias
/// `[batch, 1, 1, seq]` that every layer adds to its attention scores.
pub fn attention_bias<B: Backend>(attention_mask: Tensor<B, 2, Int>) -> Tensor<B, 4> {
    let [batch, seq] = attention_mask.dims();
    let keep = attention_mask.float().reshape([batch, 1, 1, seq]);
    (keep.neg().add_scalar(1.0)) * MASKED_SCORE
}

impl<B: Backend> RobertaSelfAttention<B> {
    pub fn new(config: &RobertaConfig, device: &B::Device) -> Self {
        let h = config.hidden_size;
        Self {
            query: init::linear(config, h, h, device),
            key: init::linear(config, h, h, device),
            value: init::linear(config, h, h, device),
            dropout: DropoutConfig::new(config.attention_probs_dropout_prob).init(),
            num_attention_heads: config.num_attention_heads,
        }
    }
}

impl<B: Kernels> RobertaSelfAttention<B> {
    /// `hidden`: `[batch, seq, hidden]`; `bias`: from [`attention_bias`].
    pub fn forward(&self, hidden: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let q = kernels::linear(&self.query, hidden.clone());
        let k = kernels::linear(&self.key, hidden.clone());
        let v = kernels::linear(&self.value, hidden);
        kernels::attention(q, k, v, bias, self.num_attention_heads, &self.dropout)
    }
}

impl<B: Backend> RobertaSelfOutput<B> {
    pub fn new(config: &RobertaConfig, device: &B::Device) -> Self {
        Self {
            dense: init::linear(config, config.hidden_size, config.hidden_size, device),
            layer_norm: init::layer_norm(config, device),
            layer_norm_eps: config.layer_norm_eps,
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
        }
    }
}

impl<B: Kernels> RobertaSelfOutput<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>, residual: Tensor<B, 3>) -> Tensor<B, 3> {
        let hidden = kernels::dropout(&self.dropout, kernels::linear(&self.dense, hidden));
        in_f32(hidden + residual, |x| {
            kernels::layer_norm(&self.layer_norm, self.layer_norm_eps, x)
        })
    }
}

impl<B: Backend> RobertaAttention<B> {
    pub fn new(config: &RobertaConfig, device: &B::Device) -> Self {
        Self {
            self_attn: RobertaSelfAttention::new(config, device),
            output: RobertaSelfOutput::new(config, device),
        }
    }
}

impl<B: Kernels> RobertaAttention<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let context = self.self_attn.forward(hidden.clone(), bias);
        self.output.forward(context, hidden)
    }
}
