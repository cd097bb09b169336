//! bf16 mixed precision the way PyTorch's autocast and fairseq's `--bf16` do it, for a
//! backend with no autocast: the trainer keeps fp32 master weights and optimizer state,
//! and runs each forward pass on a bf16 copy of the weights
//! ([`Precision::forward_model`]).
//! Matmuls, GELU and dropout then run in bf16; LayerNorm, softmax and the losses upcast
//! to fp32 ([`in_f32`]), as autocast lists them. burn's `cast` is differentiable and
//! casts the gradient back, so the fp32 master weights receive fp32 gradients through
//! the copy, and pure-bf16 training's lost updates (a small step rounding to nothing
//! on a bf16 weight) cannot happen.

use burn::module::{ModuleMapper, Param};
use burn::prelude::*;
use burn::tensor::{DType, FloatDType};
use serde::{Deserialize, Serialize};

/// The dtype a model's forward pass computes in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    #[serde(rename = "fp32")]
    F32,
    /// bf16 compute over fp32 master weights.
    Bf16,
}

impl Precision {
    /// Bytes per element of the forward pass's activations.
    pub fn bytes(self) -> usize {
        match self {
            Precision::F32 => 4,
            Precision::Bf16 => 2,
        }
    }

    /// The model to run the forward pass on: `model` itself in fp32, else its weights
    /// cast to bf16 except LayerNorm's, which stay fp32 like its computation. The copy
    /// keeps every `ParamId`, so `GradientsParams::from_grads(grads, &model)` on the
    /// master model collects the gradients.
    pub fn forward_model<B: Backend, M: Module<B>>(self, model: &M) -> M {
        match self {
            Precision::F32 => model.clone(),
            Precision::Bf16 => model.clone().map(&mut CastWeights {
                dtype: FloatDType::BF16,
                in_layer_norm: 0,
            }),
        }
    }
}

/// The config's spelling.
impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "fp32",
            Precision::Bf16 => "bf16",
        })
    }
}

/// Casts float parameters outside LayerNorm modules.
struct CastWeights {
    dtype: FloatDType,
    in_layer_norm: usize,
}

impl<B: Backend> ModuleMapper<B> for CastWeights {
    fn enter_module(&mut self, _name: &str, container_type: &str) {
        if container_type == "Struct:LayerNorm" {
            self.in_layer_norm += 1;
        }
    }

    fn exit_module(&mut self, _name: &str, container_type: &str) {
        if container_type == "Struct:LayerNorm" {
            self.in_layer_norm -= 1;
        }
    }

    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.in_layer_norm > 0 {
            return param;
        }
        let (id, tensor, mapper) = param.consume();
        Param::from_mapped_value(id, tensor.cast(self.dtype), mapper)
    }
}

/// Runs `f` in fp32 and returns its result in `x`'s dtype; in fp32 it is just `f(x)`.
pub fn in_f32<B: Backend, const D: usize>(
    x: Tensor<B, D>,
    f: impl FnOnce(Tensor<B, D>) -> Tensor<B, D>,
) -> Tensor<B, D> {
    match x.dtype() {
        DType::F32 => f(x),
        dtype => f(x.cast(FloatDType::F32)).cast(FloatDType::from(dtype)),
    }
}

/// `x` in fp32 (a no-op when it is), for losses.
pub fn to_f32<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    match x.dtype() {
        DType::F32 => x,
        _ => x.cast(FloatDType::F32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RobertaConfig;
    use crate::heads::RobertaForMaskedLM;
    use crate::model::RobertaInput;
    use burn::backend::{Autodiff, Flex};
    use burn::optim::GradientsParams;

    type B = Autodiff<Flex>;

    fn loss(
        model: &RobertaForMaskedLM<B>,
        device: &burn::backend::flex::FlexDevice,
    ) -> Tensor<B, 1> {
        let rows = vec![vec![0, 5, 9, 13, 2], vec![0, 17, 4, 2]];
        let input = RobertaInput::from_rows(&rows, 1, device);
        let positions = Tensor::from_ints([1, 2, 6, 7], device);
        let targets = Tensor::from_ints([5, 9, 17, 4], device);
        crate::loss::cross_entropy_sum(model.forward_positions(input, positions), targets)
    }

    #[test]
    fn bf16_forward_keeps_layer_norm_in_f32_and_trains_the_f32_master() {
        let _generator = crate::generator_lock();
        let device = Default::default();
        let mut config = RobertaConfig::tiny(40);
        config.hidden_dropout_prob = 0.0;
        config.attention_probs_dropout_prob = 0.0;
        let model = RobertaForMaskedLM::<B>::new(&config, &device);

        let copy = Precision::Bf16.forward_model(&model);
        let layer = &copy.roberta.encoder.layer[0];
        assert_eq!(layer.intermediate.dense.weight.val().dtype(), DType::BF16);
        assert_eq!(copy.lm_head.bias.val().dtype(), DType::BF16);
        assert_eq!(layer.output.layer_norm.gamma.val().dtype(), DType::F32);
        assert_eq!(
            layer.intermediate.dense.weight.id,
            model.roberta.encoder.layer[0].intermediate.dense.weight.id
        );

        // One graph at a time: a backward pass frees the graph it ran, leaves included.
        let exact = loss(&model, &device);
        let e = exact.clone().into_scalar() as f64;
        let exact = GradientsParams::from_grads(exact.backward(), &model);
        let mixed = loss(&copy, &device);
        assert_eq!(mixed.dtype(), DType::F32);
        let m = mixed.clone().into_scalar() as f64;
        assert!((e - m).abs() < 1e-2 * e, "loss fp32 {e} vs bf16 {m}");
        let mixed = GradientsParams::from_grads(mixed.backward(), &model);
        let weight = &model.roberta.encoder.layer[0].intermediate.dense.weight;
        let e = exact.get::<Flex, 2>(weight.id).expect("fp32 gradient");
        let m = mixed
            .get::<Flex, 2>(weight.id)
            .expect("gradient through the bf16 copy");
        assert_eq!(m.dtype(), DType::F32);
        let cosine = (e.clone() * m.clone()).sum().into_scalar()
            / (e.powi_scalar(2).sum().sqrt() * m.powi_scalar(2).sum().sqrt()).into_scalar();
        assert!(cosine > 0.99, "gradient cosine {cosine}");
    }
}
