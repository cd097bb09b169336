//! The optimizer as the RoBERTa paper uses it: AdamW with decoupled weight decay on
//! matrices only, PyTorch's global-norm clipping, and linear warmup then linear decay.

use std::path::Path;

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::Recorder;
use burn::tensor::backend::AutodiffBackend;

use crate::checkpoint::{Recorder32, read_error, write_error};
use crate::config::OptimSection;

/// Linear warmup from 0 to `peak` over `warmup` updates, then linear decay to 0 at
/// `total`. `step` counts from 1 (the update about to be taken).
pub fn learning_rate(step: u64, peak: f64, warmup: u64, total: u64) -> f64 {
    if step <= warmup {
        peak * step as f64 / warmup.max(1) as f64
    } else {
        peak * (total.saturating_sub(step)) as f64 / (total - warmup).max(1) as f64
    }
}

/// Parameter ids split the way weight decay is: matrices (weights, embeddings) decay,
/// vectors (biases, LayerNorm) do not.
#[derive(Default)]
struct ParamGroups {
    matrices: Vec<ParamId>,
    vectors: Vec<ParamId>,
}

impl<B: Backend> ModuleVisitor<B> for ParamGroups {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        assert!(D <= 2, "RoBERTa has only vector and matrix parameters");
        if D == 1 {
            self.vectors.push(param.id);
        } else {
            self.matrices.push(param.id);
        }
    }
}

impl ParamGroups {
    fn of<B: Backend, M: Module<B>>(module: &M) -> Self {
        let mut groups = Self::default();
        module.visit(&mut groups);
        groups
    }

    /// PyTorch's `clip_grad_norm_` norm: over all gradients at once, not per tensor.
    /// Matrices are summed row by row first: burn's CPU backend sums a tensor of 4M
    /// elements or more on rayon's threads in an order that varies from run to run (the
    /// word embeddings' gradient is 38M), which would make clipping, and so a resume,
    /// inexact.
    fn global_norm<B: Backend>(&self, grads: &GradientsParams, device: &B::Device) -> f64 {
        let mut total = Tensor::<B, 1>::zeros([1], device);
        for &id in &self.matrices {
            if let Some(g) = grads.get::<B, 2>(id) {
                total = total + g.powi_scalar(2).sum_dim(1).sum();
            }
        }
        for &id in &self.vectors {
            if let Some(g) = grads.get::<B, 1>(id) {
                total = total + g.powi_scalar(2).sum();
            }
        }
        (total.into_scalar().elem::<f64>()).sqrt()
    }

    fn scale<B: Backend>(&self, grads: &mut GradientsParams, factor: f64) {
        for &id in &self.matrices {
            if let Some(g) = grads.remove::<B, 2>(id) {
                grads.register(id, g * factor);
            }
        }
        for &id in &self.vectors {
            if let Some(g) = grads.remove::<B, 1>(id) {
                grads.register(id, g * factor);
            }
        }
    }

    /// Moves the vector parameters' gradients into their own set, for the optimizer
    /// without weight decay.
    fn take_vectors<B: Backend>(&self, grads: &mut GradientsParams) -> GradientsParams {
        let mut vectors = GradientsParams::new();
        for &id in &self.vectors {
            if let Some(g) = grads.remove::<B, 1>(id) {
                vectors.register(id, g);
            }
        }
        vectors
    }
}

const OPTIM_DECAY: &str = "optim-decay";
const OPTIM_PLAIN: &str = "optim-no-decay";

/// AdamW as the paper uses it: decoupled weight decay on matrices only (a second AdamW
/// without decay takes the biases and LayerNorm parameters), after clipping the global
/// gradient norm.
pub struct AdamWGroups<B: AutodiffBackend, M: AutodiffModule<B>> {
    decay: OptimizerAdaptor<AdamW, M, B>,
    plain: OptimizerAdaptor<AdamW, M, B>,
    groups: ParamGroups,
    clip_norm: f64,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> AdamWGroups<B, M> {
    pub fn new(optim: &OptimSection, model: &M) -> Self {
        let adamw = |decay: f64| {
            AdamWConfig::new()
                .with_beta_1(optim.beta1 as f32)
                .with_beta_2(optim.beta2 as f32)
                .with_epsilon(optim.eps as f32)
                .with_weight_decay(decay as f32)
                .init::<B, M>()
        };
        Self {
            decay: adamw(optim.weight_decay),
            plain: adamw(0.0),
            groups: ParamGroups::of(model),
            clip_norm: optim.clip_norm,
        }
    }

    /// Clips, then steps both groups at `lr`; returns the model and the gradient norm
    /// before clipping.
    pub fn step(
        &mut self,
        lr: f64,
        model: M,
        mut grads: GradientsParams,
        device: &B::Device,
    ) -> (M, f64) {
        let norm = self.groups.global_norm::<B::InnerBackend>(&grads, device);
        if self.clip_norm > 0.0 && norm > self.clip_norm {
            self.groups
                .scale::<B::InnerBackend>(&mut grads, self.clip_norm / (norm + 1e-6));
        }
        let vectors = self.groups.take_vectors::<B::InnerBackend>(&mut grads);
        let model = self.decay.step(lr, model, grads);
        (self.plain.step(lr, model, vectors), norm)
    }

    /// Writes both optimizers' moments into a checkpoint directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        for (name, optim) in [(OPTIM_DECAY, &self.decay), (OPTIM_PLAIN, &self.plain)] {
            let path = dir.join(name);
            Recorder32::new()
                .record(optim.to_record(), path.clone())
                .map_err(write_error)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Restores both optimizers' moments. `model` is the model as loaded from the same
    /// checkpoint: loading a record restores its parameter ids, so the groups are
    /// taken again from it.
    pub fn load(mut self, dir: &Path, model: &M, device: &B::Device) -> Result<Self> {
        self.groups = ParamGroups::of(model);
        let recorder = Recorder32::new();
        let load = |name: &str| {
            recorder
                .load(dir.join(name), device)
                .map_err(read_error)
                .with_context(|| format!("{}: optimizer state {name}", dir.display()))
        };
        self.decay = self.decay.load_record(load(OPTIM_DECAY)?);
        self.plain = self.plain.load_record(load(OPTIM_PLAIN)?);
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(learning_rate(5, 1.0, 10, 110), 0.5);
        assert_eq!(learning_rate(10, 1.0, 10, 110), 1.0);
        assert!((learning_rate(60, 1.0, 10, 110) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(110, 1.0, 10, 110), 0.0);
        assert_eq!(learning_rate(1, 2.0, 0, 100), 2.0 * 99.0 / 100.0);
    }
}
