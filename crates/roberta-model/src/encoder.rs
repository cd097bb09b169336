use burn::nn::{Dropout, DropoutConfig, LayerNorm, Linear};
use burn::prelude::*;

use crate::attention::RobertaAttention;
use crate::config::RobertaConfig;
use crate::init;
use crate::kernels::{self, Kernels};
use crate::precision::in_f32;

/// `RobertaIntermediate`: the FFN's expansion with exact GELU.
#[derive(Module, Debug)]
pub struct RobertaIntermediate<B: Backend> {
    pub dense: Linear<B>,
}

/// `RobertaOutput`: the FFN's projection, dropout, residual, post-LayerNorm.
#[derive(Module, Debug)]
pub struct RobertaOutput<B: Backend> {
    pub dense: Linear<B>,
    /// HF key `output.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// `layer_norm`'s epsilon, which burn keeps private and the fused kernel needs.
    pub layer_norm_eps: f64,
    pub dropout: Dropout,
}

/// `RobertaLayer`: post-LN, as in BERT and RoBERTa (not the pre-LN of later models).
#[derive(Module, Debug)]
pub struct RobertaLayer<B: Backend> {
    pub attention: RobertaAttention<B>,
    pub intermediate: RobertaIntermediate<B>,
    pub output: RobertaOutput<B>,
}

/// `RobertaEncoder`: HF key `encoder.layer.N`.
#[derive(Module, Debug)]
pub struct RobertaEncoder<B: Backend> {
    pub layer: Vec<RobertaLayer<B>>,
}

impl<B: Backend> RobertaLayer<B> {
    pub fn new(config: &RobertaConfig, device: &B::Device) -> Self {
        Self {
            attention: RobertaAttention::new(config, device),
            intermediate: RobertaIntermediate {
                dense: init::linear(config, config.hidden_size, config.intermediate_size, device),
            },
            output: RobertaOutput {
                dense: init::linear(config, config.intermediate_size, config.hidden_size, device),
                layer_norm: init::layer_norm(config, device),
                layer_norm_eps: config.layer_norm_eps,
                dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            },
        }
    }
}

impl<B: Kernels> RobertaLayer<B> {
    pub fn forward(&self, hidden: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let attention = self.attention.forward(hidden, bias);
        let intermediate =
            kernels::gelu(kernels::linear(&self.intermediate.dense, attention.clone()));
        let output = kernels::dropout(
            &self.output.dropout,
            kernels::linear(&self.output.dense, intermediate),
        );
        in_f32(output + attention, |x| {
            kernels::layer_norm(&self.output.layer_norm, self.output.layer_norm_eps, x)
        })
    }
}

impl<B: Backend> RobertaEncoder<B> {
    pub fn new(config: &RobertaConfig, device: &B::Device) -> Self {
        Self {
            layer: (0..config.num_hidden_layers)
                .map(|_| RobertaLayer::new(config, device))
                .collect(),
        }
    }
}

impl<B: Kernels> RobertaEncoder<B> {
    /// Returns the last hidden state and, when `all_layers`, the output of every layer.
    pub fn forward(
        &self,
        mut hidden: Tensor<B, 3>,
        bias: Tensor<B, 4>,
        all_layers: bool,
    ) -> (Tensor<B, 3>, Vec<Tensor<B, 3>>) {
        let mut states = Vec::new();
        for layer in &self.layer {
            hidden = layer.forward(hidden, bias.clone());
            if all_layers {
                states.push(hidden.clone());
            }
        }
        (hidden, states)
    }
}
