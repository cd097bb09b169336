//! The optimizer as the RoBERTa paper uses it: AdamW with decoupled weight decay on
//! matrices only, PyTorch's global-norm clipping, and linear warmup then linear decay.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{
    AdamW, AdamWState, AdaptiveMomentumState, GradientsParams, LearningRate, Optimizer,
    SimpleOptimizer,
};
use burn::prelude::*;
use burn::record::Recorder;
use roberta_model::kernels::{AdamWStep, Kernels, Moments, TrainingBackend};

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

    /// The square of PyTorch's `clip_grad_norm_` norm (over all gradients at once, not
    /// per tensor), as a `[1]` tensor on the device: the trainer reads it with the loss,
    /// in the one device read of an update.
    fn squared_norm<B: Kernels>(
        &self,
        grads: &GradientsParams,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let mut total = Tensor::<B, 1>::zeros([1], device);
        for &id in &self.matrices {
            if let Some(g) = grads.get::<B, 2>(id) {
                total = total + B::fused_sum_of_squares(g);
            }
        }
        for &id in &self.vectors {
            if let Some(g) = grads.get::<B, 1>(id) {
                total = total + B::fused_sum_of_squares(g);
            }
        }
        total
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

/// burn's AdamW with the same state (so checkpoints are the same files), whose update is
/// the backend's [`Kernels::fused_adamw_step`]: on the CPU one parallel pass over each
/// parameter in place. The gradient-clipping factor is applied inside the update, which
/// saves clipping its own pass over every gradient.
#[derive(Clone)]
pub struct FusedAdamW {
    beta_1: f32,
    beta_2: f32,
    epsilon: f32,
    weight_decay: f32,
    /// The factor every gradient is multiplied by first (f32 bits), set before each
    /// step by [`AdamWGroups`]: 1, or the clipping factor.
    grad_scale: Arc<AtomicU32>,
}

impl FusedAdamW {
    fn new(optim: &OptimSection, weight_decay: f64, grad_scale: Arc<AtomicU32>) -> Self {
        Self {
            beta_1: optim.beta1 as f32,
            beta_2: optim.beta2 as f32,
            epsilon: optim.eps as f32,
            weight_decay: weight_decay as f32,
            grad_scale,
        }
    }
}

impl<B: Kernels> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        let step = AdamWStep {
            lr,
            beta_1: self.beta_1,
            beta_2: self.beta_2,
            epsilon: self.epsilon,
            weight_decay: self.weight_decay,
            grad_scale: f32::from_bits(self.grad_scale.load(Ordering::Relaxed)),
        };
        let moments = state.map(|s| Moments {
            time: s.momentum.time,
            moment_1: s.momentum.moment_1,
            moment_2: s.momentum.moment_2,
        });
        let (tensor, m) = B::fused_adamw_step(&step, tensor, grad, moments);
        let state = AdamWState::new(AdaptiveMomentumState {
            time: m.time,
            moment_1: m.moment_1,
            moment_2: m.moment_2,
            max_moment_2: None,
        });
        (tensor, Some(state))
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <AdamW as SimpleOptimizer<B>>::to_device(state, device)
    }
}

/// Both start with [`crate::checkpoint::OPTIMIZER_FILES`], which an export skips.
const OPTIM_DECAY: &str = "optim-decay";
const OPTIM_PLAIN: &str = "optim-no-decay";

/// AdamW as the paper uses it: decoupled weight decay on matrices only (a second AdamW
/// without decay takes the biases and LayerNorm parameters), after clipping the global
/// gradient norm.
pub struct AdamWGroups<B: TrainingBackend, M: AutodiffModule<B>> {
    decay: OptimizerAdaptor<FusedAdamW, M, B>,
    plain: OptimizerAdaptor<FusedAdamW, M, B>,
    groups: ParamGroups,
    clip_norm: f64,
    /// Both optimizers' [`FusedAdamW::grad_scale`].
    grad_scale: Arc<AtomicU32>,
}

impl<B: TrainingBackend, M: AutodiffModule<B>> AdamWGroups<B, M> {
    pub fn new(optim: &OptimSection, model: &M) -> Self {
        let grad_scale = Arc::new(AtomicU32::new(1f32.to_bits()));
        let adamw =
            |decay: f64| OptimizerAdaptor::from(FusedAdamW::new(optim, decay, grad_scale.clone()));
        Self {
            decay: adamw(optim.weight_decay),
            plain: adamw(0.0),
            groups: ParamGroups::of(model),
            clip_norm: optim.clip_norm,
            grad_scale,
        }
    }

    /// The squared global norm of `grads`, on the device (see [`Self::step`]).
    pub fn squared_norm(
        &self,
        grads: &GradientsParams,
        device: &B::Device,
    ) -> Tensor<B::InnerBackend, 1> {
        self.groups.squared_norm::<B::InnerBackend>(grads, device)
    }

    /// Steps both groups at `lr`, the gradients clipped by their global `norm` (from
    /// [`Self::squared_norm`], read by the caller).
    pub fn step(&mut self, lr: f64, model: M, mut grads: GradientsParams, norm: f64) -> M {
        let scale = if self.clip_norm > 0.0 && norm > self.clip_norm {
            (self.clip_norm / (norm + 1e-6)) as f32
        } else {
            1.0
        };
        self.grad_scale.store(scale.to_bits(), Ordering::Relaxed);
        let vectors = self.groups.take_vectors::<B::InnerBackend>(&mut grads);
        let model = self.decay.step(lr, model, grads);
        self.plain.step(lr, model, vectors)
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

    /// The trainer's AdamW is burn's, element for element, over several steps (with and
    /// without weight decay, from no state and from a saved one), and with a clipping
    /// factor it is burn's AdamW of the scaled gradient: on the CPU kernel, and as the
    /// composition every other backend runs.
    #[cfg(feature = "cpu")]
    #[test]
    fn fused_adamw_equals_burns() {
        use burn::backend::Flex;
        use burn::optim::AdamWConfig;
        use burn::tensor::Distribution;
        let device = Default::default();
        Flex::seed(&device, 5);
        let optim = OptimSection::default();
        for (decay, scale) in [(0.0, 1.0), (0.01, 1.0), (0.01, 0.3f32)] {
            let grad_scale = Arc::new(AtomicU32::new(scale.to_bits()));
            let fused = FusedAdamW::new(&optim, decay, grad_scale);
            let burn = AdamWConfig::new()
                .with_beta_1(optim.beta1 as f32)
                .with_beta_2(optim.beta2 as f32)
                .with_epsilon(optim.eps as f32)
                .with_weight_decay(decay as f32)
                .build();
            let mut ours = Tensor::<Flex, 2>::random([37, 300], Distribution::Default, &device);
            let (mut theirs, mut composed) = (ours.clone(), ours.clone());
            let (mut ours_state, mut theirs_state, mut composed_m) = (None, None, None);
            for step in 1..=4 {
                let grad = Tensor::random([37, 300], Distribution::Normal(0.0, 0.1), &device);
                let lr = 1e-3 * step as f64;
                (ours, ours_state) = fused.step(lr, ours, grad.clone(), ours_state);
                (theirs, theirs_state) = burn.step(lr, theirs, grad.clone() * scale, theirs_state);
                let constants = AdamWStep {
                    lr,
                    beta_1: fused.beta_1,
                    beta_2: fused.beta_2,
                    epsilon: fused.epsilon,
                    weight_decay: fused.weight_decay,
                    grad_scale: scale,
                };
                let (p, m) = roberta_model::kernels::composed::adamw_step(
                    &constants, composed, grad, composed_m,
                );
                (composed, composed_m) = (p, Some(m));
                let values = |t: &Tensor<Flex, 2>| t.to_data().to_vec::<f32>().unwrap();
                let case = format!("step {step}, decay {decay}, scale {scale}");
                assert_eq!(values(&ours), values(&theirs), "{case}");
                assert_eq!(values(&composed), values(&theirs), "{case}: composed");
                let (a, b) = (
                    &ours_state.as_ref().unwrap().momentum,
                    &theirs_state.as_ref().unwrap().momentum,
                );
                assert_eq!(a.time, b.time);
                assert_eq!(values(&a.moment_1), values(&b.moment_1));
                assert_eq!(values(&a.moment_2), values(&b.moment_2));
            }
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(learning_rate(5, 1.0, 10, 110), 0.5);
        assert_eq!(learning_rate(10, 1.0, 10, 110), 1.0);
        assert!((learning_rate(60, 1.0, 10, 110) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(110, 1.0, 10, 110), 0.0);
        assert_eq!(learning_rate(1, 2.0, 0, 100), 2.0 * 99.0 / 100.0);
    }
}
