//! The Transformer's memory-bound steps (dropout, LayerNorm, GELU, attention, the loss),
//! its Linear layers as one 2-D matmul with the bias, and the optimizer's update, as a
//! backend extension: [`Kernels`], burn's own pattern for custom kernels.
//!
//! Every method has a default, the composition of burn ops it stands for ([`composed`]),
//! which every backend gets unless it implements the method itself: burn's fusion merges
//! those compositions on cubecl backends. The CPU training backend (`Autodiff<Flex>`)
//! implements them with one rayon-parallel kernel per step and a hand-written backward,
//! and `Flex` the AdamW update and the gradient norm ([`cpu`]); cubecl's backends run
//! attention without a gradient (evaluation, inference) on burn's flash-attention op
//! ([`cubecl`]). Adding a kernel for one backend is one method in one file; its test
//! compares values and gradients with the composition.
//!
//! The modules call the kernels through the functions at the end of this file, which
//! take burn's layers (`Linear`, `LayerNorm`, `Dropout`) as the modules hold them.

use burn::nn::{Dropout, LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;

#[cfg(feature = "cpu")]
mod cpu;
#[cfg(any(feature = "wgpu", feature = "cuda"))]
mod cubecl;

/// One AdamW update's constants: burn's `AdamW`, with the gradient first multiplied by
/// `grad_scale` (1, or the global-norm clipping factor: folded into the update, it
/// costs no pass of its own).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWStep {
    pub lr: f64,
    pub beta_1: f32,
    pub beta_2: f32,
    pub epsilon: f32,
    pub weight_decay: f32,
    pub grad_scale: f32,
}

/// A parameter's AdamW moments and the number of updates they hold (burn's
/// `AdaptiveMomentumState` without AMSGrad's extra moment).
#[derive(Debug, Clone)]
pub struct Moments<B: Backend, const D: usize> {
    pub time: usize,
    pub moment_1: Tensor<B, D>,
    pub moment_2: Tensor<B, D>,
}

/// The operations a backend may run as kernels of its own. Each default is the burn
/// composition in [`composed`]; an implementation must compute the same function
/// (values and gradients), and may take its own path only for the inputs it handles
/// (a dtype, a shape) and defer to [`composed`] for the rest.
pub trait Kernels: Backend {
    /// `x · W + b` for `x`: `[rows, in]`, with `W` given as `[out, in]` when
    /// `transposed` (the tied decoder's word embeddings), else `[in, out]`.
    fn fused_linear(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        transposed: bool,
    ) -> Tensor<Self, 2> {
        composed::linear(x, weight, bias, transposed)
    }

    /// Zeroes each element with probability `prob` and scales the rest by
    /// `1 / (1 - prob)`, drawing from the backend's seeded generator.
    fn fused_dropout<const D: usize>(x: Tensor<Self, D>, prob: f64) -> Tensor<Self, D> {
        composed::dropout(x, prob)
    }

    /// LayerNorm over the last dimension (biased variance, as PyTorch).
    fn fused_layer_norm<const D: usize>(
        x: Tensor<Self, D>,
        gamma: Tensor<Self, 1>,
        beta: Tensor<Self, 1>,
        epsilon: f64,
    ) -> Tensor<Self, D> {
        composed::layer_norm(x, gamma, beta, epsilon)
    }

    /// Exact (erf) GELU, as HF's `gelu`.
    fn fused_gelu<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        crate::activation::gelu(x)
    }

    /// `dropout(softmax(q·kᵀ/√d + bias)) · v` over every head, with `q`, `k`, `v` and
    /// the result as the projections make and take them, `[batch, seq, heads · d]`, and
    /// `bias` the padding mask of [`crate::attention::attention_bias`], `[batch, 1, 1,
    /// seq]`; `dropout` is the probability when training. The softmax runs in fp32.
    fn fused_attention(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        bias: Tensor<Self, 4>,
        heads: usize,
        dropout: Option<f64>,
    ) -> Tensor<Self, 3> {
        composed::attention(q, k, v, bias, heads, dropout)
    }

    /// Σ over rows with a target ≥ 0 of `−log softmax(logits)[target]`, as `[1]`.
    fn fused_cross_entropy_sum(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        composed::cross_entropy_sum(logits, targets)
    }

    /// One AdamW update of a parameter, in burn's order of operations.
    fn fused_adamw_step<const D: usize>(
        step: &AdamWStep,
        param: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        moments: Option<Moments<Self, D>>,
    ) -> (Tensor<Self, D>, Moments<Self, D>) {
        composed::adamw_step(step, param, grad, moments)
    }

    /// One AdamW update of every parameter of a group (flattened), in the group's
    /// order: by default each is its own [`Self::fused_adamw_step`]. The place for a
    /// multi-tensor kernel (apex's `multi_tensor_apply`: one launch over a list of
    /// buffers). Packing the group into one tensor instead costs a copy per parameter
    /// and moment each update, as many kernels as fusion's per-tensor update saves
    /// (measured on lavapipe: 531 kernels per update against 535).
    fn fused_adamw_steps(
        step: &AdamWStep,
        group: Vec<AdamWParam<Self>>,
    ) -> Vec<(Tensor<Self, 1>, Moments<Self, 1>)> {
        group
            .into_iter()
            .map(|p| Self::fused_adamw_step(step, p.param, p.grad, p.moments))
            .collect()
    }

    /// Σ x², as `[1]`, for the global gradient norm; deterministic on a given backend,
    /// so that a resume clips the same way.
    fn fused_sum_of_squares<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, 1> {
        composed::sum_of_squares(x)
    }

    /// Σ x² over every tensor of a group (flattened), as `[1]`: by default the sum of
    /// each one's [`Self::fused_sum_of_squares`]; [`composed::packed_sum_of_squares`]
    /// takes it in one copy per tensor and one reduction.
    fn fused_group_sum_of_squares(
        group: Vec<Tensor<Self, 1>>,
        device: &Self::Device,
    ) -> Tensor<Self, 1> {
        group
            .into_iter()
            .fold(Tensor::zeros([1], device), |total, x| {
                total + Self::fused_sum_of_squares(x)
            })
    }
}

/// A parameter of [`Kernels::fused_adamw_steps`]' group, with its gradient and its
/// moments (none before its first update), each flattened.
#[derive(Debug, Clone)]
pub struct AdamWParam<B: Backend> {
    pub param: Tensor<B, 1>,
    pub grad: Tensor<B, 1>,
    pub moments: Option<Moments<B, 1>>,
}

/// A backend to train on: kernels on the autodiff backend, and on the inner one that
/// evaluates and steps the optimizer.
pub trait TrainingBackend: AutodiffBackend<InnerBackend: Kernels> + Kernels {}

impl<B: AutodiffBackend<InnerBackend: Kernels> + Kernels> TrainingBackend for B {}

/// The compositions of burn ops that [`Kernels`]' defaults are, and that each kernel is
/// tested against.
pub mod composed {
    use burn::prelude::*;
    use burn::tensor::activation::{log_softmax, softmax};
    use burn::tensor::{Distribution, TensorPrimitive};

    use burn::tensor::DType;

    use super::{AdamWStep, Kernels, Moments};
    use crate::precision::{in_f32, to_f32};

    pub fn linear<B: Backend>(
        x: Tensor<B, 2>,
        weight: Tensor<B, 2>,
        bias: Tensor<B, 1>,
        transposed: bool,
    ) -> Tensor<B, 2> {
        if transposed {
            x.matmul(weight.transpose()) + bias.unsqueeze()
        } else {
            burn::tensor::module::linear(x, weight, Some(bias))
        }
    }

    /// burn's `Dropout::forward` in training.
    pub fn dropout<B: Backend, const D: usize>(x: Tensor<B, D>, prob: f64) -> Tensor<B, D> {
        let keep = 1.0 - prob;
        let x = x.clone() * x.random_like(Distribution::Bernoulli(keep));
        x * (1.0 / keep)
    }

    /// burn's `LayerNorm::forward`: the backend's own LayerNorm op.
    pub fn layer_norm<B: Backend, const D: usize>(
        x: Tensor<B, D>,
        gamma: Tensor<B, 1>,
        beta: Tensor<B, 1>,
        epsilon: f64,
    ) -> Tensor<B, D> {
        Tensor::from_primitive(TensorPrimitive::Float(B::layer_norm(
            x.into_primitive().tensor(),
            gamma.into_primitive().tensor(),
            Some(beta.into_primitive().tensor()),
            epsilon,
        )))
    }

    pub fn attention<B: Kernels>(
        q: Tensor<B, 3>,
        k: Tensor<B, 3>,
        v: Tensor<B, 3>,
        bias: Tensor<B, 4>,
        heads: usize,
        dropout: Option<f64>,
    ) -> Tensor<B, 3> {
        let [batch, seq, width] = q.dims();
        let head_dim = width / heads;
        let split = |x: Tensor<B, 3>| x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
        let scores = split(q).matmul(split(k).swap_dims(2, 3)) / (head_dim as f64).sqrt();
        let probs = in_f32(scores, |scores| softmax(scores + bias, 3));
        let probs = match dropout {
            Some(prob) => B::fused_dropout(probs, prob),
            None => probs,
        };
        probs
            .matmul(split(v))
            .swap_dims(1, 2)
            .reshape([batch, seq, width])
    }

    pub fn cross_entropy_sum<B: Backend>(
        logits: Tensor<B, 2>,
        targets: Tensor<B, 1, Int>,
    ) -> Tensor<B, 1> {
        let [n, _] = logits.dims();
        let valid = targets.clone().greater_equal_elem(0);
        let safe = targets
            .mask_fill(valid.clone().bool_not(), 0)
            .reshape([n, 1]);
        let picked = log_softmax(to_f32(logits), 1).gather(1, safe).reshape([n]);
        (picked * valid.float()).sum().neg()
    }

    /// burn's `AdamW::step` (no AMSGrad, no cautious decay) on the scaled gradient.
    pub fn adamw_step<B: Backend, const D: usize>(
        step: &AdamWStep,
        param: Tensor<B, D>,
        grad: Tensor<B, D>,
        moments: Option<Moments<B, D>>,
    ) -> (Tensor<B, D>, Moments<B, D>) {
        let grad = if step.grad_scale == 1.0 {
            grad
        } else {
            grad * step.grad_scale
        };
        let (factor_1, factor_2) = (1.0 - step.beta_1, 1.0 - step.beta_2);
        let moments = match moments {
            Some(m) => Moments {
                time: m.time + 1,
                moment_1: m
                    .moment_1
                    .mul_scalar(step.beta_1)
                    .add(grad.clone().mul_scalar(factor_1)),
                moment_2: m
                    .moment_2
                    .mul_scalar(step.beta_2)
                    .add(grad.square().mul_scalar(factor_2)),
            },
            None => Moments {
                time: 1,
                moment_1: grad.clone().mul_scalar(factor_1),
                moment_2: grad.square().mul_scalar(factor_2),
            },
        };
        let time = moments.time as i32;
        let corrected_1 = moments
            .moment_1
            .clone()
            .div_scalar(1f32 - step.beta_1.powi(time));
        let corrected_2 = moments
            .moment_2
            .clone()
            .div_scalar(1f32 - step.beta_2.powi(time));
        let delta = corrected_1.div(corrected_2.sqrt().add_scalar(step.epsilon));
        let decay = step.lr * f64::from(step.weight_decay);
        let decayed = if decay == 0.0 {
            param
        } else {
            param.mul_scalar(1.0 - decay)
        };
        (decayed - delta.mul_scalar(step.lr), moments)
    }

    /// Row sums first: one reduction of a whole large tensor is where a backend is
    /// most likely to split work in an order that varies between runs.
    pub fn sum_of_squares<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, 1> {
        let rows = x.dims()[0];
        to_f32(x)
            .powi_scalar(2)
            .reshape([rows as i32, -1])
            .sum_dim(1)
            .sum()
    }

    /// A packed tensor's starts are multiples of this many elements, so that it
    /// reshapes into rows of that length.
    pub const PACK_ALIGN: usize = 64;

    /// Where each of tensors of these lengths starts when packed, and the packed length.
    fn pack_offsets(lengths: &[usize]) -> (Vec<usize>, usize) {
        let mut total = 0;
        let offsets = lengths
            .iter()
            .map(|&n| {
                let at = total;
                total += n.div_ceil(PACK_ALIGN) * PACK_ALIGN;
                at
            })
            .collect();
        (offsets, total)
    }

    /// The tensors at their offsets in one `[total]` tensor, zeros between them.
    fn pack_into<B: Backend>(
        tensors: Vec<Tensor<B, 1>>,
        offsets: &[usize],
        total: usize,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let dtype = tensors.first().map_or(DType::F32, Tensor::dtype);
        tensors.into_iter().zip(offsets).fold(
            Tensor::zeros([total], (device, dtype)),
            |packed, (t, &at)| {
                let n = t.dims()[0];
                packed.slice_assign(at..at + n, t)
            },
        )
    }

    /// The most elements one packed tensor holds (32 MiB of fp32), well below what
    /// devices allow in one buffer (WebGPU's default binding limit is 128 MiB; lavapipe
    /// refuses roberta-base's 154 MB embedding matrix): a larger group is packed in
    /// several tensors, a larger tensor alone.
    pub const PACK_MAX: usize = 1 << 23;

    /// [`sum_of_squares`] of the group packed into tensors of at most [`PACK_MAX`]
    /// elements: one reduction per pack instead of one per tensor (the padding adds
    /// zeros).
    pub fn packed_sum_of_squares<B: Backend>(
        group: Vec<Tensor<B, 1>>,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        packed_sum_of_squares_within(group, device, PACK_MAX)
    }

    pub(super) fn packed_sum_of_squares_within<B: Backend>(
        group: Vec<Tensor<B, 1>>,
        device: &B::Device,
        most: usize,
    ) -> Tensor<B, 1> {
        let mut packs: Vec<Vec<Tensor<B, 1>>> = Vec::new();
        let mut size = 0;
        for t in group {
            let n = t.dims()[0].div_ceil(PACK_ALIGN) * PACK_ALIGN;
            match packs.last_mut() {
                Some(pack) if size + n <= most => pack.push(t),
                _ => {
                    packs.push(vec![t]);
                    size = 0;
                }
            }
            size += n;
        }
        packs
            .into_iter()
            .fold(Tensor::zeros([1], device), |sum, pack| {
                let lengths: Vec<usize> = pack.iter().map(|t| t.dims()[0]).collect();
                let (offsets, total) = pack_offsets(&lengths);
                let packed = pack_into(pack, &offsets, total, device);
                sum + sum_of_squares(packed.reshape([total / PACK_ALIGN, PACK_ALIGN]))
            })
    }
}

/// `linear.forward(x)` with every leading dimension folded into the rows: one
/// `[tokens, in] × [in, out]` matmul instead of a batch of per-sequence ones, so the
/// weight is packed once and its gradient is one matmul over all tokens rather than a
/// batch of products summed afterwards.
pub fn linear<B: Kernels, const D: usize>(linear: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let mut dims = x.dims();
    let [d_input, d_output] = linear.weight.dims();
    let rows = dims[..D - 1].iter().product();
    let x = x.reshape([rows, d_input]);
    let y = match &linear.bias {
        Some(bias) => B::fused_linear(x, linear.weight.val(), bias.val(), false),
        None => linear.forward(x),
    };
    dims[D - 1] = d_output;
    y.reshape(dims)
}

/// The vocabulary projection tied to the word embeddings: `x · Eᵀ + bias` for
/// `x`: `[n, hidden]`, `E`: `[vocab, hidden]`.
pub fn tied_decoder<B: Kernels>(
    x: Tensor<B, 2>,
    word_embeddings: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Tensor<B, 2> {
    B::fused_linear(x, word_embeddings, bias, true)
}

/// `dropout.forward(x)`: identity outside training (or at probability 0), else
/// [`Kernels::dropout`].
pub fn dropout<B: Kernels, const D: usize>(dropout: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    if !B::ad_enabled(&x.device()) || dropout.prob == 0.0 {
        return x;
    }
    B::fused_dropout(x, dropout.prob)
}

/// `layer_norm.forward(x)` over the last dimension; `epsilon` is the one `layer_norm`
/// was built with (burn keeps it private).
pub fn layer_norm<B: Kernels, const D: usize>(
    layer_norm: &LayerNorm<B>,
    epsilon: f64,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    match &layer_norm.beta {
        Some(beta) => B::fused_layer_norm(x, layer_norm.gamma.val(), beta.val(), epsilon),
        None => layer_norm.forward(x),
    }
}

/// Exact (erf) GELU.
pub fn gelu<B: Kernels, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    B::fused_gelu(x)
}

/// Scaled dot-product attention over every head ([`Kernels::attention`]), with the
/// attention dropout of `dropout` when training.
pub fn attention<B: Kernels>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Tensor<B, 4>,
    heads: usize,
    dropout: &Dropout,
) -> Tensor<B, 3> {
    let training = B::ad_enabled(&q.device()) && dropout.prob > 0.0;
    B::fused_attention(q, k, v, bias, heads, training.then_some(dropout.prob))
}

#[cfg(feature = "tch")]
impl Kernels for burn::backend::LibTorch {}
#[cfg(feature = "tch")]
impl Kernels for burn::backend::Autodiff<burn::backend::LibTorch> {}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;
    use burn::nn::{DropoutConfig, LayerNormConfig};
    use burn::tensor::Distribution;
    use burn::tensor::activation::softmax;

    type T = Autodiff<Flex>;

    fn random<const D: usize>(shape: [usize; D], seed: u64) -> Tensor<T, D> {
        T::seed(&Default::default(), seed);
        Tensor::random(shape, Distribution::Normal(0.0, 1.5), &Default::default())
    }

    fn close<const D: usize>(a: Tensor<Flex, D>, b: Tensor<Flex, D>, tolerance: f32, what: &str) {
        let a = a.into_data().to_vec::<f32>().unwrap();
        let b = b.into_data().to_vec::<f32>().unwrap();
        assert_eq!(a.len(), b.len(), "{what}: lengths");
        let worst = a
            .iter()
            .zip(&b)
            .map(|(x, y)| (x - y).abs() / (1.0 + y.abs()))
            .fold(0.0f32, f32::max);
        assert!(worst <= tolerance, "{what}: differs by {worst}");
    }

    /// Runs `fused` and `reference` (burn's composed ops, never the fused ones) on the
    /// same input and upstream gradient; compares outputs and input gradients.
    fn same_function<const D: usize>(
        shape: [usize; D],
        fused: impl Fn(Tensor<T, D>) -> Tensor<T, D>,
        reference: impl Fn(Tensor<T, D>) -> Tensor<T, D>,
        tolerance: f32,
    ) -> (Tensor<T, D>, Tensor<T, D>) {
        let x = random(shape, 1).require_grad();
        let upstream = random(shape, 2);
        let ours = fused(x.clone());
        let grads = (ours.clone() * upstream.clone()).sum().backward();
        let ours_dx = x.grad(&grads).unwrap();
        let theirs = reference(x.clone());
        let grads = (theirs.clone() * upstream).sum().backward();
        let theirs_dx = x.grad(&grads).unwrap();
        close(
            ours.clone().inner(),
            theirs.clone().inner(),
            tolerance,
            "values",
        );
        close(ours_dx, theirs_dx, tolerance, "input gradient");
        (ours, theirs)
    }

    #[test]
    fn gelu_matches_the_composed_erf_gelu() {
        let _generator = crate::generator_lock();
        same_function([3, 5, 70], gelu, crate::activation::gelu, 2e-6);
    }

    #[test]
    fn cross_entropy_matches_the_composed_loss() {
        let _generator = crate::generator_lock();
        let logits = random([6, 301], 17).mul_scalar(4.0).require_grad();
        let targets =
            Tensor::<T, 1, Int>::from_ints([3, -100, 300, 0, 17, -1], &Default::default());
        let ours = crate::loss::cross_entropy_sum(logits.clone(), targets.clone());
        let grads = ours.clone().mul_scalar(0.5).backward();
        let ours_dx = logits.grad(&grads).unwrap();
        let theirs = composed::cross_entropy_sum(logits.clone(), targets);
        let grads = theirs.clone().mul_scalar(0.5).backward();
        close(ours.inner(), theirs.inner(), 1e-6, "loss");
        close(ours_dx, logits.grad(&grads).unwrap(), 1e-6, "gradient");
    }

    #[test]
    fn layer_norm_matches_burns_with_parameter_gradients() {
        let _generator = crate::generator_lock();
        let device = Default::default();
        T::seed(&device, 3);
        let mut norm = LayerNormConfig::new(96).init::<T>(&device);
        let affine = |offset: f64| {
            let values = Tensor::random([96], Distribution::Default, &device).add_scalar(offset);
            Param::from_tensor(values.require_grad())
        };
        norm.gamma = affine(0.5);
        norm.beta = Some(affine(-0.5));
        let x = random([4, 33, 96], 4)
            .mul_scalar(3.0)
            .add_scalar(2.0)
            .require_grad();
        let upstream = random([4, 33, 96], 5);
        let run = |fused: bool| {
            let y = if fused {
                layer_norm(&norm, 1e-5, x.clone())
            } else {
                norm.forward(x.clone())
            };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            (
                y.inner(),
                x.grad(&grads).unwrap(),
                norm.gamma.grad(&grads).unwrap(),
                norm.beta.as_ref().unwrap().grad(&grads).unwrap(),
            )
        };
        let (y, dx, dgamma, dbeta) = run(true);
        let (y2, dx2, dgamma2, dbeta2) = run(false);
        close(y, y2, 2e-6, "values");
        close(dx, dx2, 2e-5, "input gradient");
        close(dgamma, dgamma2, 2e-5, "gamma gradient");
        close(dbeta, dbeta2, 2e-5, "beta gradient");
    }

    /// The attention op against its composition from burn ops and the fused dropout
    /// (which draws the same mask from the same seed), with a padded sequence, at a
    /// size where heads run on several threads: values and the gradients of q, k, v.
    #[test]
    fn attention_matches_the_composed_attention() {
        let _generator = crate::generator_lock();
        let device = Default::default();
        let keep = Tensor::<T, 2, Int>::from_data([[1; 9], [1, 1, 1, 1, 1, 1, 0, 0, 0]], &device);
        let bias = crate::attention::attention_bias(keep);
        let (q, k, v) = (
            random([2, 9, 12], 20).require_grad(),
            random([2, 9, 12], 21).require_grad(),
            random([2, 9, 12], 22).require_grad(),
        );
        let upstream = random([2, 9, 12], 23);
        for prob in [0.0, 0.3] {
            let layer = DropoutConfig::new(prob).init();
            let run = |fused: bool| {
                T::seed(&device, 24);
                let y = if fused {
                    attention(q.clone(), k.clone(), v.clone(), bias.clone(), 3, &layer)
                } else {
                    let split = |x: Tensor<T, 3>| x.reshape([2, 9, 3, 4]).swap_dims(1, 2);
                    let scores = split(q.clone()).matmul(split(k.clone()).swap_dims(2, 3)) / 2.0;
                    let probs = dropout(&layer, softmax(scores + bias.clone(), 3));
                    probs
                        .matmul(split(v.clone()))
                        .swap_dims(1, 2)
                        .reshape([2, 9, 12])
                };
                let grads = (y.clone() * upstream.clone()).sum().backward();
                let grad = |x: &Tensor<T, 3>| x.grad(&grads).unwrap();
                (y.inner(), grad(&q), grad(&k), grad(&v))
            };
            let (y, dq, dk, dv) = run(true);
            let (y2, dq2, dk2, dv2) = run(false);
            close(y, y2, 1e-5, "values");
            close(dq, dq2, 1e-5, "q gradient");
            close(dk, dk2, 1e-5, "k gradient");
            close(dv, dv2, 1e-5, "v gradient");
        }
    }

    #[test]
    fn dropout_zeroes_its_share_scales_the_rest_and_repeats_under_a_seed() {
        let _generator = crate::generator_lock();
        let device = Default::default();
        let layer = DropoutConfig::new(0.1).init();
        let x = Tensor::<T, 2>::ones([64, 1001], &device).require_grad();
        let draw = |seed| {
            T::seed(&device, seed);
            dropout(&layer, x.clone())
        };
        let y = draw(7);
        let values = y.clone().inner().into_data().to_vec::<f32>().unwrap();
        let kept = values.iter().filter(|&&v| v != 0.0).count() as f64 / values.len() as f64;
        assert!((kept - 0.9).abs() < 0.005, "kept {kept}");
        assert!(
            values
                .iter()
                .all(|&v| v == 0.0 || (v - 1.0 / 0.9).abs() < 1e-6)
        );
        let grads = y.clone().sum().backward();
        let dx = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        assert_eq!(dx, values, "the gradient is the same mask and scale");
        assert_eq!(draw(7).inner().into_data().to_vec::<f32>().unwrap(), values);
        assert_ne!(draw(8).inner().into_data().to_vec::<f32>().unwrap(), values);
    }

    /// The Linear op against burn's, values and all three gradients, at a size where
    /// the product is cut into blocks across threads.
    #[test]
    fn linear_matches_burns_with_parameter_gradients() {
        let _generator = crate::generator_lock();
        let device = Default::default();
        T::seed(&device, 9);
        let mut layer = burn::nn::LinearConfig::new(70, 300).init::<T>(&device);
        layer.bias = Some(Param::from_tensor(random([300], 11).require_grad()));
        let x = random([2, 150, 70], 10).require_grad();
        let upstream = random([2, 150, 300], 12);
        let run = |fused: bool| {
            let y = if fused {
                linear(&layer, x.clone())
            } else {
                layer.forward(x.clone())
            };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            (
                y.inner(),
                x.grad(&grads).unwrap(),
                layer.weight.grad(&grads).unwrap(),
                layer.bias.as_ref().unwrap().grad(&grads).unwrap(),
            )
        };
        let (y, dx, dw, db) = run(true);
        let (y2, dx2, dw2, db2) = run(false);
        close(y, y2, 1e-5, "values");
        close(dx, dx2, 1e-5, "input gradient");
        // Sums of 300 products of order 2: the two orders of summation differ in f32.
        close(dw, dw2, 1e-4, "weight gradient");
        close(db, db2, 1e-5, "bias gradient");
    }

    #[test]
    fn tied_decoder_matches_the_transposed_product() {
        let _generator = crate::generator_lock();
        let embeddings = random([500, 40], 13).require_grad();
        let bias = random([500], 14).require_grad();
        let x = random([30, 40], 15).require_grad();
        let upstream = random([30, 500], 16);
        let run = |fused: bool| {
            let y = if fused {
                tied_decoder(x.clone(), embeddings.clone(), bias.clone())
            } else {
                x.clone().matmul(embeddings.clone().transpose()) + bias.clone().unsqueeze()
            };
            let grads = (y.clone() * upstream.clone()).sum().backward();
            let grad = |t: &Tensor<T, 2>| t.grad(&grads).unwrap();
            (
                y.inner(),
                grad(&x),
                grad(&embeddings),
                bias.grad(&grads).unwrap(),
            )
        };
        let (y, dx, de, db) = run(true);
        let (y2, dx2, de2, db2) = run(false);
        close(y, y2, 1e-5, "values");
        close(dx, dx2, 1e-5, "input gradient");
        close(de, de2, 1e-5, "embedding gradient");
        close(db, db2, 1e-5, "bias gradient");
    }

    /// RoBERTa's AdamW constants at update `n`, the learning rate growing with it.
    fn adamw_constants(n: usize, weight_decay: f32, grad_scale: f32) -> AdamWStep {
        AdamWStep {
            lr: 1e-3 * n as f64,
            beta_1: 0.9,
            beta_2: 0.98,
            epsilon: 1e-6,
            weight_decay,
            grad_scale,
        }
    }

    /// The CPU AdamW update is the composition (burn's AdamW) bit for bit, over several
    /// steps, with and without weight decay and a clipping factor.
    #[test]
    fn adamw_kernel_equals_the_composition_bitwise() {
        let _generator = crate::generator_lock();
        let device = Default::default();
        Flex::seed(&device, 5);
        for (weight_decay, grad_scale) in [(0.0, 1.0), (0.01, 1.0), (0.01, 0.3f32)] {
            let mut ours = Tensor::<Flex, 2>::random([37, 300], Distribution::Default, &device);
            let mut theirs = ours.clone();
            let (mut ours_m, mut theirs_m) = (None, None);
            for n in 1..=4 {
                let step = adamw_constants(n, weight_decay, grad_scale);
                let grad = Tensor::random([37, 300], Distribution::Normal(0.0, 0.1), &device);
                let (p, m) = Flex::fused_adamw_step(&step, ours, grad.clone(), ours_m);
                (ours, ours_m) = (p, Some(m));
                let (p, m) = composed::adamw_step(&step, theirs, grad, theirs_m);
                (theirs, theirs_m) = (p, Some(m));
                let values = |t: &Tensor<Flex, 2>| t.to_data().to_vec::<f32>().unwrap();
                assert_eq!(values(&ours), values(&theirs), "step {n}");
                let (a, b) = (ours_m.as_ref().unwrap(), theirs_m.as_ref().unwrap());
                assert_eq!(a.time, b.time);
                assert_eq!(values(&a.moment_1), values(&b.moment_1));
                assert_eq!(values(&a.moment_2), values(&b.moment_2));
            }
        }
    }

    /// The packed sum of squares of a group (mixed lengths, padded between them; in one
    /// pack or several) is the f64 sum within f32 rounding; an empty group's is 0.
    #[test]
    fn packed_sum_of_squares_is_the_sum_over_the_group() {
        let _generator = crate::generator_lock();
        let device = Default::default();
        Flex::seed(&device, 7);
        let group: Vec<_> = [5, 64, 130, 1, 300]
            .into_iter()
            .map(|n| Tensor::<Flex, 1>::random([n], Distribution::Normal(0.0, 0.5), &device))
            .collect();
        let exact: f64 = group
            .iter()
            .flat_map(|g| g.to_data().to_vec::<f32>().unwrap())
            .map(|v| f64::from(v) * f64::from(v))
            .sum();
        // In one pack, and in packs of at most 200 elements (the 300 alone).
        for most in [composed::PACK_MAX, 200] {
            let packed = composed::packed_sum_of_squares_within(group.clone(), &device, most);
            let packed = f64::from(packed.into_scalar());
            assert!(
                (packed - exact).abs() <= 1e-6 * exact,
                "{packed} vs {exact} ({most})"
            );
        }
        let empty = composed::packed_sum_of_squares::<Flex>(Vec::new(), &device);
        assert_eq!(empty.into_scalar(), 0.0);
    }

    /// The sum of squares over several blocks and from a strided view, against f64
    /// arithmetic; another dtype takes the composition.
    #[test]
    fn sum_of_squares_is_the_f64_sum_within_f32_rounding() {
        let _generator = crate::generator_lock();
        let device = Default::default();
        Flex::seed(&device, 9);
        let x = Tensor::<Flex, 2>::random([301, 123], Distribution::Normal(0.0, 2.0), &device);
        let exact: f64 = x
            .to_data()
            .iter::<f32>()
            .map(|v| f64::from(v) * f64::from(v))
            .sum();
        let sum = |t: Tensor<Flex, 1>| f64::from(t.into_scalar());
        for x in [x.clone(), x.clone().transpose()] {
            let fused = sum(Flex::fused_sum_of_squares(x.clone()));
            assert!((fused - exact).abs() <= 1e-6 * exact, "{fused} vs {exact}");
            let composed = sum(composed::sum_of_squares(x));
            assert!(
                (composed - exact).abs() <= 1e-5 * exact,
                "{composed} vs {exact}"
            );
        }
        let half = sum(Flex::fused_sum_of_squares(
            x.cast(burn::tensor::FloatDType::F16),
        ));
        assert!((half - exact).abs() <= 1e-2 * exact, "{half} vs {exact}");
    }
}
