//! The optimizer as the RoBERTa paper uses it: AdamW with decoupled weight decay on
//! matrices only, PyTorch's global-norm clipping, and linear warmup then linear decay.

use std::marker::PhantomData;
use std::path::Path;

use anyhow::{Context, Result};
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::record::AdaptorRecord;
use burn::optim::{AdamW, AdamWState, AdaptiveMomentumState, GradientsParams};
use burn::prelude::*;
use burn::record::Recorder;
use burn::tensor::backend::AutodiffBackend;
use hashbrown::HashMap;
use roberta_model::kernels::{AdamWParam, AdamWStep, Kernels, Moments, TrainingBackend};

use crate::config::OptimSection;
use crate::run::checkpoint::{Recorder32, read_error, write_error};

/// Linear warmup from 0 to `peak` over `warmup` updates, then linear decay to 0 at
/// `total`. `step` counts from 1 (the update about to be taken).
pub fn learning_rate(step: u64, peak: f64, warmup: u64, total: u64) -> f64 {
    if step <= warmup {
        peak * step as f64 / warmup.max(1) as f64
    } else {
        peak * (total.saturating_sub(step)) as f64 / (total - warmup).max(1) as f64
    }
}

/// burn's AdamW state per parameter, as burn's `OptimizerAdaptor` records it: the
/// checkpoints' optimizer files are those of burn's AdamW.
type States<B> = HashMap<ParamId, AdaptorRecord<AdamW, B>>;

/// Both start with [`crate::run::checkpoint::OPTIMIZER_FILES`], which an export skips.
const OPTIM_DECAY: &str = "optim-decay";
const OPTIM_PLAIN: &str = "optim-no-decay";

/// AdamW as the paper uses it: decoupled weight decay on matrices (weights,
/// embeddings) only, not on vectors (biases, LayerNorm), after clipping the global
/// gradient norm as PyTorch's `clip_grad_norm_`. Each group is updated by one
/// [`Kernels::fused_adamw_steps`] call, so a backend can update the whole group at
/// once; the clipping factor is applied inside the update, which saves clipping its
/// own pass over every gradient.
pub struct AdamWGroups<B: TrainingBackend, M: AutodiffModule<B>> {
    constants: AdamWStep,
    weight_decay: f32,
    clip_norm: f64,
    decay: States<B>,
    plain: States<B>,
    module: PhantomData<M>,
}

impl<B: TrainingBackend, M: AutodiffModule<B>> AdamWGroups<B, M> {
    pub fn new(optim: &OptimSection) -> Self {
        Self {
            constants: AdamWStep {
                lr: 0.0,
                beta_1: optim.beta1 as f32,
                beta_2: optim.beta2 as f32,
                epsilon: optim.eps as f32,
                weight_decay: 0.0,
                grad_scale: 1.0,
            },
            weight_decay: optim.weight_decay as f32,
            clip_norm: optim.clip_norm,
            decay: States::new(),
            plain: States::new(),
            module: PhantomData,
        }
    }

    /// The square of the global norm of `grads` (over all gradients at once, not per
    /// tensor), as a `[1]` tensor on the device: the trainer reads it with the loss, in
    /// the one device read of an update.
    pub fn squared_norm(
        &self,
        model: &M,
        grads: &GradientsParams,
        device: &B::Device,
    ) -> Tensor<B::InnerBackend, 1> {
        let mut gradients = Gradients::<B> {
            grads,
            flat: Vec::new(),
        };
        model.visit(&mut gradients);
        B::InnerBackend::fused_group_sum_of_squares(gradients.flat, device)
    }

    /// Steps both groups at `lr`, the gradients clipped by their global `norm` (from
    /// [`Self::squared_norm`], read by the caller).
    pub fn step(&mut self, lr: f64, model: M, mut grads: GradientsParams, norm: f64) -> M {
        let grad_scale = if self.clip_norm > 0.0 && norm > self.clip_norm {
            (self.clip_norm / (norm + 1e-6)) as f32
        } else {
            1.0
        };
        let mut take = Take {
            grads: &mut grads,
            states: [&mut self.decay, &mut self.plain],
            groups: [Vec::new(), Vec::new()],
        };
        let model = model.map(&mut take);
        let [matrices, vectors] = take.groups;
        let mut updated = HashMap::new();
        for (group, weight_decay) in [(matrices, self.weight_decay), (vectors, 0.0)] {
            let (taken, members): (Vec<_>, Vec<_>) = group.into_iter().unzip();
            let step = AdamWStep {
                lr,
                weight_decay,
                grad_scale,
                ..self.constants
            };
            let results = B::InnerBackend::fused_adamw_steps(&step, members);
            updated.extend(taken.into_iter().zip(results).map(|(t, r)| (t.id, (t, r))));
        }
        model.map(&mut Put::<B> {
            updated,
            states: [&mut self.decay, &mut self.plain],
        })
    }

    /// Writes both groups' moments into a checkpoint directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        for (name, states) in [(OPTIM_DECAY, &self.decay), (OPTIM_PLAIN, &self.plain)] {
            let path = dir.join(name);
            Recorder32::new()
                .record(states.clone(), path.clone())
                .map_err(write_error)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// The optimizer of a run: new, or the checkpoint's at `resume`.
    pub fn resumed(
        optim: &OptimSection,
        resume: Option<&Path>,
        device: &B::Device,
    ) -> Result<Self> {
        match resume {
            Some(path) => Self::new(optim).load(path, device),
            None => Ok(Self::new(optim)),
        }
    }

    /// Restores both groups' moments from a checkpoint directory.
    pub fn load(mut self, dir: &Path, device: &B::Device) -> Result<Self> {
        let recorder = Recorder32::new();
        let load = |name: &str| {
            recorder
                .load(dir.join(name), device)
                .map_err(read_error)
                .with_context(|| format!("{}: optimizer state {name}", dir.display()))
        };
        self.decay = load(OPTIM_DECAY)?;
        self.plain = load(OPTIM_PLAIN)?;
        Ok(self)
    }
}

/// Weight decay's split: matrices decay, vectors do not.
fn group_of<const D: usize>() -> usize {
    assert!(D <= 2, "RoBERTa has only vector and matrix parameters");
    if D == 2 { 0 } else { 1 }
}

/// Collects every gradient, flattened, in the module's order.
struct Gradients<'a, B: AutodiffBackend> {
    grads: &'a GradientsParams,
    flat: Vec<Tensor<B::InnerBackend, 1>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Gradients<'_, B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        if let Some(g) = self.grads.get::<B::InnerBackend, D>(param.id) {
            self.flat.push(g.reshape([-1]));
        }
    }
}

/// A parameter taken out of the module for its update, and how to put it back.
struct Taken {
    id: ParamId,
    dims: Vec<usize>,
    require_grad: bool,
}

/// Takes every parameter that has a gradient out of the module, with its gradient and
/// moments, into its weight-decay group.
struct Take<'a, B: AutodiffBackend> {
    grads: &'a mut GradientsParams,
    states: [&'a mut States<B>; 2],
    groups: [Vec<(Taken, AdamWParam<B::InnerBackend>)>; 2],
}

impl<B: AutodiffBackend> ModuleMapper<B> for Take<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let group = group_of::<D>();
        let moments = self.states[group].remove(&id).map(|record| {
            let state: AdamWState<B::InnerBackend, D> = record.into_state();
            Moments {
                time: state.momentum.time,
                moment_1: state.momentum.moment_1.reshape([-1]),
                moment_2: state.momentum.moment_2.reshape([-1]),
            }
        });
        let taken = Taken {
            id,
            dims: tensor.dims().to_vec(),
            require_grad: tensor.is_require_grad(),
        };
        let device = tensor.device();
        let member = AdamWParam {
            param: tensor.inner().reshape([-1]),
            grad: grad.reshape([-1]),
            moments,
        };
        self.groups[group].push((taken, member));
        // The module holds a one-element stand-in until `Put` brings the update: the
        // parameter's buffer is then the update's alone, which may write it in place.
        Param::from_mapped_value(id, Tensor::empty([1; D], &device), mapper)
    }
}

/// A parameter's update: how to put it back, its new value and its moments.
type Update<I> = (Taken, (Tensor<I, 1>, Moments<I, 1>));

/// Puts the updated parameters back into the module and keeps their moments.
struct Put<'a, B: AutodiffBackend> {
    updated: HashMap<ParamId, Update<B::InnerBackend>>,
    states: [&'a mut States<B>; 2],
}

impl<B: AutodiffBackend> ModuleMapper<B> for Put<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let Some((taken, (value, moments))) = self.updated.remove(&id) else {
            return Param::from_mapped_value(id, tensor, mapper);
        };
        let dims: [usize; D] = taken.dims.try_into().expect("the parameter's own rank");
        let state = AdamWState::new(AdaptiveMomentumState {
            time: moments.time,
            moment_1: moments.moment_1.reshape(dims),
            moment_2: moments.moment_2.reshape(dims),
            max_moment_2: None,
        });
        self.states[group_of::<D>()].insert(taken.id, AdaptorRecord::from_state(state));
        let mut tensor = Tensor::from_inner(value.reshape(dims));
        if taken.require_grad {
            tensor = tensor.require_grad();
        }
        Param::from_mapped_value(id, tensor, mapper)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The trainer's AdamW is burn's, element for element, over several updates: weight
    /// decay on the matrix only, the global norm over both gradients, a clipping
    /// factor applied to every gradient when the norm exceeds `clip_norm`; and the
    /// moments saved by one instance continue in another. On the CPU kernel; the
    /// packed composition the cubecl backends run is tested against the per-tensor one
    /// in roberta-model.
    #[cfg(feature = "cpu")]
    #[test]
    fn adamw_groups_equal_burns_adamw() {
        use burn::backend::{Autodiff, Flex};
        use burn::optim::{AdamWConfig, SimpleOptimizer};
        use burn::tensor::Distribution;
        type T = Autodiff<Flex>;
        /// One matrix and one vector parameter, as RoBERTa's layers hold them.
        #[derive(Module, Debug)]
        struct Layer<B: Backend> {
            weight: Param<Tensor<B, 2>>,
            bias: Param<Tensor<B, 1>>,
        }
        let device = Default::default();
        T::seed(&device, 5);
        let random = |shape: [usize; 2]| Tensor::random(shape, Distribution::Default, &device);
        let layer = Layer::<T> {
            weight: Param::from_tensor(random([37, 30])),
            bias: Param::from_tensor(random([1, 30]).reshape([30])),
        };
        let optim = OptimSection {
            clip_norm: 5.0,
            ..OptimSection::default()
        };
        let burn_adamw = |decay: f64| {
            AdamWConfig::new()
                .with_beta_1(optim.beta1 as f32)
                .with_beta_2(optim.beta2 as f32)
                .with_epsilon(optim.eps as f32)
                .with_weight_decay(decay as f32)
                .build()
        };
        let (decay, plain) = (burn_adamw(optim.weight_decay), burn_adamw(0.0));
        let mut ours = AdamWGroups::<T, Layer<T>>::new(&optim);
        let mut model = layer.clone();
        let (mut weight, mut bias) = (layer.weight.val().inner(), layer.bias.val().inner());
        let (mut weight_state, mut bias_state) = (None, None);
        let saved = tempfile::tempdir().unwrap();
        for step in 1..=4 {
            let x = random([8, 37]) * (step * step) as f32;
            let loss = (x.matmul(model.weight.val()) + model.bias.val().unsqueeze())
                .powi_scalar(2)
                .sum();
            let grads = GradientsParams::from_grads(loss.backward(), &model);
            let squared = ours.squared_norm(&model, &grads, &device).into_scalar();
            let (gw, gb) = (
                grads.get::<Flex, 2>(model.weight.id).unwrap(),
                grads.get::<Flex, 1>(model.bias.id).unwrap(),
            );
            let exact = gw.clone().powi_scalar(2).sum() + gb.clone().powi_scalar(2).sum();
            let exact = exact.into_scalar();
            assert!(
                (squared - exact).abs() <= 1e-5 * exact,
                "{squared} vs {exact}"
            );
            let norm = f64::from(squared).sqrt();
            let scale = if norm > optim.clip_norm {
                (optim.clip_norm / (norm + 1e-6)) as f32
            } else {
                1.0
            };
            let lr = 1e-3 * step as f64;
            if step == 3 {
                assert!(scale < 1.0, "the test clips at least once");
                ours.save(saved.path()).unwrap();
                ours = AdamWGroups::new(&optim)
                    .load(saved.path(), &device)
                    .unwrap();
            }
            model = ours.step(lr, model, grads, norm);
            (weight, weight_state) = decay.step(lr, weight, gw * scale, weight_state);
            (bias, bias_state) = plain.step(lr, bias, gb * scale, bias_state);
            let values = |t: Tensor<Flex, 1>| t.into_data().to_vec::<f32>().unwrap();
            let case = format!("update {step}");
            let ours_weight = model.weight.val().inner().reshape([-1]);
            assert_eq!(
                values(ours_weight),
                values(weight.clone().reshape([-1])),
                "{case}"
            );
            assert_eq!(
                values(model.bias.val().inner()),
                values(bias.clone()),
                "{case}"
            );
            assert!(model.weight.val().is_require_grad() && model.bias.val().is_require_grad());
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
