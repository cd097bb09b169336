//! The optimizer as the RoBERTa paper uses it: AdamW with decoupled weight decay on
//! matrices only, PyTorch's global-norm clipping, and linear warmup then linear decay.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{
    AdamW, AdamWConfig, AdamWState, GradientsParams, LearningRate, Optimizer, SimpleOptimizer,
};
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
        let mut fused = 0.0;
        for &id in &self.matrices {
            if let Some(g) = grads.get::<B, 2>(id) {
                match sum_of_squares(g) {
                    Ok(sum) => fused += sum,
                    Err(g) => total = total + g.powi_scalar(2).sum_dim(1).sum(),
                }
            }
        }
        for &id in &self.vectors {
            if let Some(g) = grads.get::<B, 1>(id) {
                match sum_of_squares(g) {
                    Ok(sum) => fused += sum,
                    Err(g) => total = total + g.powi_scalar(2).sum(),
                }
            }
        }
        (total.into_scalar().elem::<f64>() + fused).sqrt()
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

/// Σ x² in one pass on the CPU backend in fp32 (in a fixed order, see
/// [`cpu::sum_of_squares`]); `x` back elsewhere, for burn's operations.
fn sum_of_squares<B: Backend, const D: usize>(x: Tensor<B, D>) -> Result<f64, Tensor<B, D>> {
    #[cfg(feature = "cpu")]
    return cpu::sum_of_squares(x);
    #[cfg(not(feature = "cpu"))]
    Err(x)
}

/// burn's AdamW with the same state (so checkpoints are the same files), whose update
/// on the CPU backend is one parallel pass over each parameter: burn's takes about a
/// dozen tensor operations per parameter, each a full pass, most on one core, which
/// at roberta-base size cost a sixth of a training step. The gradient-clipping factor
/// is applied inside the update, which saves clipping its own pass over every gradient.
#[derive(Clone)]
pub struct FusedAdamW {
    burn: AdamW,
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
        let config = AdamWConfig::new()
            .with_beta_1(optim.beta1 as f32)
            .with_beta_2(optim.beta2 as f32)
            .with_epsilon(optim.eps as f32)
            .with_weight_decay(weight_decay as f32);
        Self {
            burn: config.build(),
            beta_1: optim.beta1 as f32,
            beta_2: optim.beta2 as f32,
            epsilon: optim.eps as f32,
            weight_decay: weight_decay as f32,
            grad_scale,
        }
    }

    fn grad_scale(&self) -> f32 {
        f32::from_bits(self.grad_scale.load(Ordering::Relaxed))
    }
}

impl<B: Backend> SimpleOptimizer<B> for FusedAdamW {
    type State<const D: usize> = AdamWState<B, D>;

    fn step<const D: usize>(
        &self,
        lr: LearningRate,
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<Self::State<D>>,
    ) -> (Tensor<B, D>, Option<Self::State<D>>) {
        #[cfg(feature = "cpu")]
        let (tensor, grad, state) = match cpu::adamw_inputs(tensor, grad, state) {
            Ok(inputs) => {
                let (tensor, state) = cpu::adamw_step(self, lr, inputs);
                return (
                    cpu::from_flex(tensor),
                    Some(AdamWState::new(burn::optim::AdaptiveMomentumState {
                        time: state.time,
                        moment_1: cpu::from_flex(state.moment_1),
                        moment_2: cpu::from_flex(state.moment_2),
                        max_moment_2: None,
                    })),
                );
            }
            Err(inputs) => inputs,
        };
        let scale = self.grad_scale();
        let grad = if scale == 1.0 { grad } else { grad * scale };
        self.burn.step(lr, tensor, grad, state)
    }

    fn to_device<const D: usize>(state: Self::State<D>, device: &B::Device) -> Self::State<D> {
        <AdamW as SimpleOptimizer<B>>::to_device(state, device)
    }
}

/// [`FusedAdamW`]'s CPU update.
#[cfg(feature = "cpu")]
mod cpu {
    use burn::backend::Flex;
    use burn::optim::{AdamWState, AdaptiveMomentumState, LearningRate};
    use burn::prelude::*;
    use burn::tensor::{DType, TensorPrimitive};
    use burn_flex::FlexTensor;
    use rayon::prelude::*;
    use roberta_model::fused::same_type;

    use super::FusedAdamW;

    /// A parameter, its gradient and its moments, on the CPU backend in fp32.
    pub struct Inputs<const D: usize> {
        tensor: Tensor<Flex, D>,
        grad: Tensor<Flex, D>,
        state: Option<AdaptiveMomentumState<Flex, D>>,
    }

    type Generic<B, const D: usize> = (Tensor<B, D>, Tensor<B, D>, Option<AdamWState<B, D>>);

    /// The inputs on the CPU backend, or back as they were for burn's AdamW (another
    /// backend, another dtype, or AMSGrad's extra moment).
    pub fn adamw_inputs<B: Backend, const D: usize>(
        tensor: Tensor<B, D>,
        grad: Tensor<B, D>,
        state: Option<AdamWState<B, D>>,
    ) -> Result<Inputs<D>, Generic<B, D>> {
        let fp32 = tensor.dtype() == DType::F32
            && grad.dtype() == DType::F32
            && state.as_ref().is_none_or(|s| {
                s.momentum.max_moment_2.is_none()
                    && s.momentum.moment_1.dtype() == DType::F32
                    && s.momentum.moment_2.dtype() == DType::F32
            });
        if !fp32 {
            return Err((tensor, grad, state));
        }
        match same_type::<_, Generic<Flex, D>>((tensor, grad, state)) {
            Ok((tensor, grad, state)) => Ok(Inputs {
                tensor,
                grad,
                state: state.map(|s| s.momentum),
            }),
            Err(generic) => Err(generic),
        }
    }

    pub fn from_flex<B: Backend, const D: usize>(x: Tensor<Flex, D>) -> Tensor<B, D> {
        match same_type(x) {
            Ok(x) => x,
            Err(_) => unreachable!("called only when B is Flex"),
        }
    }

    /// `x`'s buffer, row-major and not shared with any other tensor, so it can be
    /// updated in place (copied only when it is a view or shared).
    fn owned<const D: usize>(x: Tensor<Flex, D>) -> FlexTensor {
        let x = x.into_primitive().tensor();
        if x.is_contiguous() && x.layout().start_offset() == 0 {
            x
        } else {
            x.to_contiguous()
        }
    }

    /// Elements per parallel task.
    const CHUNK: usize = 1 << 14;

    /// Σ x² of a CPU fp32 tensor: f32 lanes within fixed blocks of [`CHUNK`] elements,
    /// the blocks' sums added in f64 in order, so the result does not depend on the
    /// threads (a resume recomputes the same clipping).
    pub fn sum_of_squares<B: Backend, const D: usize>(
        x: Tensor<B, D>,
    ) -> Result<f64, Tensor<B, D>> {
        if x.dtype() != DType::F32 {
            return Err(x);
        }
        let x = same_type::<_, Tensor<Flex, D>>(x)?
            .into_primitive()
            .tensor();
        let x = x.to_contiguous();
        let values = x.as_slice::<f32>().expect("a contiguous fp32 tensor");
        let blocks: Vec<f32> = values.par_chunks(CHUNK).map(squares).collect();
        Ok(blocks.iter().map(|&s| f64::from(s)).sum())
    }

    roberta_model::multiversion! {
        fn squares(x: &[f32]) -> f32 {
            roberta_model::fused::lane_sum(x, |v| v * v)
        }
    }

    /// burn's AdamW update of the scaled gradient g ← g·s, element by element in the
    /// same order of operations: m ← β₁m + (1−β₁)g, v ← β₂v + (1−β₂)g²,
    /// p ← p(1 − lr·λ) − lr·m̂/(√v̂ + ε), with m̂ = m/(1−β₁ᵗ) and v̂ = v/(1−β₂ᵗ).
    pub fn adamw_step<const D: usize>(
        optim: &FusedAdamW,
        lr: LearningRate,
        inputs: Inputs<D>,
    ) -> (Tensor<Flex, D>, AdaptiveMomentumState<Flex, D>) {
        let Inputs {
            tensor,
            grad,
            state,
        } = inputs;
        let shape = tensor.shape();
        let (time, m, v) = match state {
            Some(s) => (s.time + 1, owned(s.moment_1), owned(s.moment_2)),
            None => {
                let zeros = || FlexTensor::zeros(shape.clone(), DType::F32);
                (1, zeros(), zeros())
            }
        };
        let (mut p, mut m, mut v) = (owned(tensor), m, v);
        let g = owned(grad);
        let (b1, b2, eps) = (optim.beta_1, optim.beta_2, optim.epsilon);
        let correction_1 = 1.0 - b1.powi(time as i32);
        let correction_2 = 1.0 - b2.powi(time as i32);
        let step = Step {
            b1,
            b2,
            eps,
            correction_1,
            correction_2,
            decay: (1.0 - lr * optim.weight_decay as f64) as f32,
            lr: lr as f32,
            scale: optim.grad_scale(),
        };
        p.storage_mut::<f32>()
            .par_chunks_mut(CHUNK)
            .zip(m.storage_mut::<f32>().par_chunks_mut(CHUNK))
            .zip(v.storage_mut::<f32>().par_chunks_mut(CHUNK))
            .zip(g.storage::<f32>().par_chunks(CHUNK))
            .for_each(|(((p, m), v), g)| update(&step, p, m, v, g));
        let tensor = |x: FlexTensor| Tensor::from_primitive(TensorPrimitive::Float(x));
        (
            tensor(p),
            AdaptiveMomentumState {
                time,
                moment_1: tensor(m),
                moment_2: tensor(v),
                max_moment_2: None,
            },
        )
    }

    /// One update's constants.
    struct Step {
        b1: f32,
        b2: f32,
        eps: f32,
        correction_1: f32,
        correction_2: f32,
        decay: f32,
        lr: f32,
        scale: f32,
    }

    roberta_model::multiversion! {
        /// [`adamw_step`] on a chunk of a parameter: a square root and two divisions an
        /// element, which on the x86-64 baseline's 4 lanes cost more than the memory.
        fn update(step: &Step, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
            let Step { b1, b2, eps, correction_1, correction_2, decay, lr, scale } = *step;
            for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
                let g = g * scale;
                *m = *m * b1 + g * (1.0 - b1);
                *v = *v * b2 + g * g * (1.0 - b2);
                let delta = (*m / correction_1) / ((*v / correction_2).sqrt() + eps);
                *p = *p * decay - delta * lr;
            }
        }
    }
}

/// Both start with [`crate::checkpoint::OPTIMIZER_FILES`], which an export skips.
const OPTIM_DECAY: &str = "optim-decay";
const OPTIM_PLAIN: &str = "optim-no-decay";

/// AdamW as the paper uses it: decoupled weight decay on matrices only (a second AdamW
/// without decay takes the biases and LayerNorm parameters), after clipping the global
/// gradient norm.
pub struct AdamWGroups<B: AutodiffBackend, M: AutodiffModule<B>> {
    decay: OptimizerAdaptor<FusedAdamW, M, B>,
    plain: OptimizerAdaptor<FusedAdamW, M, B>,
    groups: ParamGroups,
    clip_norm: f64,
    /// Both optimizers' [`FusedAdamW::grad_scale`].
    grad_scale: Arc<AtomicU32>,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> AdamWGroups<B, M> {
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
        let scale = if self.clip_norm > 0.0 && norm > self.clip_norm {
            (self.clip_norm / (norm + 1e-6)) as f32
        } else {
            1.0
        };
        self.grad_scale.store(scale.to_bits(), Ordering::Relaxed);
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

    /// The fused CPU update is burn's AdamW, element for element, over several steps
    /// (with and without weight decay, from no state and from a saved one), and with a
    /// clipping factor it is burn's AdamW of the scaled gradient.
    #[cfg(feature = "cpu")]
    #[test]
    fn fused_adamw_equals_burns() {
        use burn::backend::Flex;
        use burn::tensor::Distribution;
        let device = Default::default();
        Flex::seed(&device, 5);
        let optim = OptimSection::default();
        for (decay, scale) in [(0.0, 1.0), (0.01, 1.0), (0.01, 0.3f32)] {
            let grad_scale = Arc::new(AtomicU32::new(scale.to_bits()));
            let fused = FusedAdamW::new(&optim, decay, grad_scale);
            let burn = fused.burn.clone();
            let mut ours = Tensor::<Flex, 2>::random([37, 300], Distribution::Default, &device);
            let mut theirs = ours.clone();
            let (mut ours_state, mut theirs_state) = (None, None);
            for step in 1..=4 {
                let grad = Tensor::random([37, 300], Distribution::Normal(0.0, 0.1), &device);
                let lr = 1e-3 * step as f64;
                (ours, ours_state) = fused.step(lr, ours, grad.clone(), ours_state);
                (theirs, theirs_state) = burn.step(lr, theirs, grad * scale, theirs_state);
                let values = |t: &Tensor<Flex, 2>| t.to_data().to_vec::<f32>().unwrap();
                let case = format!("step {step}, decay {decay}, scale {scale}");
                assert_eq!(values(&ours), values(&theirs), "{case}");
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

    /// The fused global norm's sum of squares, over several blocks and from a strided
    /// view, against f64 arithmetic.
    #[cfg(feature = "cpu")]
    #[test]
    fn sum_of_squares_is_the_f64_sum_within_f32_rounding() {
        use burn::backend::Flex;
        use burn::tensor::Distribution;
        let device = Default::default();
        Flex::seed(&device, 9);
        let x = Tensor::<Flex, 2>::random([301, 123], Distribution::Normal(0.0, 2.0), &device);
        let exact: f64 = x
            .to_data()
            .iter::<f32>()
            .map(|v| f64::from(v) * f64::from(v))
            .sum();
        for x in [x.clone(), x.clone().transpose()] {
            let fused = sum_of_squares(x).expect("the CPU backend in fp32");
            assert!((fused - exact).abs() <= 1e-6 * exact, "{fused} vs {exact}");
        }
        assert!(sum_of_squares(x.cast(burn::tensor::FloatDType::F16)).is_err());
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
