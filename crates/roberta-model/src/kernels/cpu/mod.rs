//! The CPU kernels behind [`super::Kernels`]: `Autodiff<Flex>` operations over
//! contiguous fp32 buffers, each one parallel pass forward and one backward, and on
//! `Flex` the AdamW update and the sum of squares of the gradient norm.
//!
//! Work is split into fixed blocks of rows and every reduction across rows (LayerNorm's
//! parameter gradients) adds the blocks' partial sums in block order, so no result
//! depends on how rayon schedules the blocks: training stays bitwise reproducible.
//! Inputs in another dtype than fp32 (a bf16 forward pass) take the composition.

use std::mem::MaybeUninit;
use std::ops::SubAssign;
use std::sync::Arc;

use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::NoCheckpointing;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind, unary};
use burn::backend::{Autodiff, Flex};
use burn::prelude::*;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Bytes, DType, Distribution, Shape, TensorPrimitive};
use burn_flex::{FlexTensor, Layout};
use rayon::prelude::*;

use super::{AdamWStep, Kernels, Moments, composed};

/// The CPU training backend.
type Train = Autodiff<Flex>;

fn f32s<B: Backend, const D: usize>(tensors: &[&Tensor<B, D>]) -> bool {
    tensors.iter().all(|t| t.dtype() == DType::F32)
}

impl Kernels for Train {
    fn fused_linear(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        transposed: bool,
    ) -> Tensor<Self, 2> {
        if f32s(&[&x, &weight]) && bias.dtype() == DType::F32 {
            linear(x, weight, bias, transposed)
        } else {
            composed::linear(x, weight, bias, transposed)
        }
    }

    fn fused_dropout<const D: usize>(x: Tensor<Self, D>, prob: f64) -> Tensor<Self, D> {
        if f32s(&[&x]) {
            dropout(x, prob)
        } else {
            composed::dropout(x, prob)
        }
    }

    fn fused_layer_norm<const D: usize>(
        x: Tensor<Self, D>,
        gamma: Tensor<Self, 1>,
        beta: Tensor<Self, 1>,
        epsilon: f64,
    ) -> Tensor<Self, D> {
        if f32s(&[&x]) && f32s(&[&gamma, &beta]) {
            layer_norm(x, gamma, beta, epsilon)
        } else {
            composed::layer_norm(x, gamma, beta, epsilon)
        }
    }

    fn fused_gelu<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        if f32s(&[&x]) {
            gelu(x)
        } else {
            crate::activation::gelu(x)
        }
    }

    fn fused_attention(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        bias: Tensor<Self, 4>,
        heads: usize,
        dropout: Option<f64>,
    ) -> Tensor<Self, 3> {
        let [batch, seq, _] = q.dims();
        if f32s(&[&q, &k, &v])
            && bias.dtype() == DType::F32
            && !bias.is_require_grad()
            && bias.dims() == [batch, 1, 1, seq]
        {
            attention(q, k, v, bias, heads, dropout)
        } else {
            composed::attention(q, k, v, bias, heads, dropout)
        }
    }

    fn fused_cross_entropy_sum(
        logits: Tensor<Self, 2>,
        targets: Tensor<Self, 1, Int>,
    ) -> Tensor<Self, 1> {
        if f32s(&[&logits]) {
            // Host memory already: reading the targets is no device round trip.
            let targets = targets.into_data().iter::<i64>().collect();
            cross_entropy_sum(logits, targets)
        } else {
            composed::cross_entropy_sum(logits, targets)
        }
    }
}

fn primitive<const D: usize>(x: Tensor<Train, D>) -> FloatTensor<Train> {
    x.into_primitive().tensor()
}

fn tensor<const D: usize>(x: FloatTensor<Train>) -> Tensor<Train, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
}

/// Records an operation in the autodiff graph: `output` computed from `inputs`, and
/// `state` for `op`'s backward, kept only when an input is tracked.
fn record<O: Backward<Flex, N>, const N: usize, const D: usize>(
    op: O,
    inputs: [&FloatTensor<Train>; N],
    output: FlexTensor,
    state: O::State,
) -> Tensor<Train, D> {
    tensor(
        match op
            .prepare::<NoCheckpointing>(inputs.map(|input| input.node.clone()))
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(prep) => prep.finish(state, output),
            OpsKind::UnTracked(prep) => prep.finish(output),
        },
    )
}

fn flex(values: Vec<f32>, shape: Shape) -> FlexTensor {
    FlexTensor::new(
        Bytes::from_elems(values),
        Layout::contiguous(shape),
        DType::F32,
    )
}

/// `x`'s values in row-major order (copied only when `x` is a strided view).
fn contiguous(x: &FlexTensor) -> FlexTensor {
    x.to_contiguous()
}

fn values(x: &FlexTensor) -> &[f32] {
    x.as_slice::<f32>()
        .expect("a contiguous fp32 tensor (checked by the caller)")
}

/// Elements per parallel task of the elementwise kernels: large enough to amortise
/// the task, small enough to balance two to a few dozen cores. Even, for dropout's
/// pairs.
const CHUNK: usize = 1 << 14;

/// A new buffer of `n` values, written in parallel: `fill(start, out)` writes every
/// element of `out`, which holds indices `start..start + out.len()`.
fn par_fill(
    n: usize,
    chunk: usize,
    fill: impl Fn(usize, &mut [MaybeUninit<f32>]) + Sync,
) -> Vec<f32> {
    let mut out = Vec::with_capacity(n);
    out.spare_capacity_mut()[..n]
        .par_chunks_mut(chunk)
        .enumerate()
        .for_each(|(i, part)| fill(i * chunk, part));
    // SAFETY: the `n` elements were written: every `fill` writes all of its chunk.
    unsafe { out.set_len(n) };
    out
}

/// Defines `fn $name` that runs its body compiled for the widest vector unit of the CPU
/// it runs on: AVX-512, else AVX2, else the x86-64 baseline (SSE2, 4 lanes), which is
/// all a portable binary may assume at compile time. The kernels are plain loops that
/// the compiler vectorises; each variant is the same body inlined into a function built
/// with more features. Rust never contracts `a * b + c` into a fused multiply-add, and
/// every sum here runs in a fixed number of lanes, so the variants compute the same
/// bits: results do not depend on the CPU.
macro_rules! multiversion {
    ($(#[$attr:meta])* $vis:vis fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        $vis fn $name($($arg: $ty),*) $(-> $ret)? {
            #[inline(always)]
            fn kernel($($arg: $ty),*) $(-> $ret)? $body
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx512f")]
                unsafe fn avx512($($arg: $ty),*) $(-> $ret)? {
                    kernel($($arg),*)
                }
                #[target_feature(enable = "avx2")]
                unsafe fn avx2($($arg: $ty),*) $(-> $ret)? {
                    kernel($($arg),*)
                }
                if std::arch::is_x86_feature_detected!("avx512f") {
                    // SAFETY: the CPU has AVX-512F.
                    return unsafe { avx512($($arg),*) };
                }
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    return unsafe { avx2($($arg),*) };
                }
            }
            kernel($($arg),*)
        }
    };
}

/// Sum of `f(x)` in 16 lanes (which the compiler keeps in vector registers), then the
/// lanes and the tail: the same bits at any vector width.
#[inline(always)]
fn lane_sum(x: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(c) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

/// `eˣ` in straight-line arithmetic that the compiler vectorises (libm's `expf` is a
/// call per element): Cephes' range reduction to `r ∈ [−ln2/2, ln2/2]`, a degree-7
/// polynomial, and the exponent written into the bits. Within 2 ulp of `f32::exp`
/// (tested) for `x ≤ 88`, which every caller guarantees (they exponentiate
/// differences from a maximum); exactly 0 below −87.3, where `f32::exp` is subnormal
/// or 0.
#[inline(always)]
fn exp(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2²³: adding it rounds to an integer.
    let clamped = x.clamp(-87.3, 88.0);
    let n = (clamped * std::f32::consts::LOG2_E + ROUND) - ROUND;
    let r = clamped - n * 0.693_359_4 + n * 2.121_944_4e-4;
    let mut p = 1.987_569_1e-4f32;
    p = p * r + 1.398_2e-3;
    p = p * r + 8.333_452e-3;
    p = p * r + 4.166_579_6e-2;
    p = p * r + 0.166_666_65;
    p = p * r + 0.5;
    p = p * r * r + r + 1.0;
    let scale = f32::from_bits(((n as i32 + 127) as u32) << 23);
    if x < -87.3 { 0.0 } else { p * scale }
}

/// `erf(x)` as a rational function of `x` (Eigen's and XLA's float `erf`), which the
/// compiler vectorises; within 1e-6 of libm's `erff` (tested).
#[inline(always)]
fn erf(x: f32) -> f32 {
    let x = x.clamp(-4.0, 4.0);
    let x2 = x * x;
    let mut p = -2.726_142_3e-10f32;
    p = p * x2 + 2.770_681_4e-8;
    p = p * x2 - 2.101_024e-6;
    p = p * x2 - 5.692_506_4e-5;
    p = p * x2 - 7.349_906_3e-4;
    p = p * x2 - 2.954_6e-3;
    p = p * x2 - 1.609_603_3e-2;
    let mut q = -1.456_607_2e-5f32;
    q = q * x2 - 2.133_740_6e-4;
    q = q * x2 - 1.682_827e-3;
    q = q * x2 - 7.373_329e-3;
    q = q * x2 - 1.426_474e-2;
    x * p / q
}

/// `Σ a·b` in 16 lanes like [`lane_sum`].
#[inline(always)]
fn lane_dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 16];
    let full = a.len() / 16 * 16;
    for (a, b) in a[..full].chunks_exact(16).zip(b[..full].chunks_exact(16)) {
        for k in 0..16 {
            lanes[k] += a[k] * b[k];
        }
    }
    lanes.iter().sum::<f32>()
        + a[full..]
            .iter()
            .zip(&b[full..])
            .map(|(a, b)| a * b)
            .sum::<f32>()
}

/// The largest of `x` (−∞ for none), in 16 lanes like [`lane_sum`].
#[inline(always)]
fn lane_max(x: &[f32]) -> f32 {
    let mut lanes = [f32::NEG_INFINITY; 16];
    let mut chunks = x.chunks_exact(16);
    for c in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(c) {
            *lane = lane.max(v);
        }
    }
    lanes
        .into_iter()
        .chain(chunks.remainder().iter().copied())
        .fold(f32::NEG_INFINITY, f32::max)
}

/// Inference (fill-mask, embed, eval, predict, the probe) and the optimizer run on the
/// inner backend: the training kernels' forward passes, with nothing recorded.
impl Kernels for Flex {
    fn fused_linear(
        x: Tensor<Self, 2>,
        weight: Tensor<Self, 2>,
        bias: Tensor<Self, 1>,
        transposed: bool,
    ) -> Tensor<Self, 2> {
        if !(f32s(&[&x, &weight]) && bias.dtype() == DType::F32) {
            return composed::linear(x, weight, bias, transposed);
        }
        let (x, w) = (contiguous(&inner(x)), contiguous(&inner(weight)));
        outer(linear_values(&x, &w, &inner(bias), transposed))
    }

    fn fused_layer_norm<const D: usize>(
        x: Tensor<Self, D>,
        gamma: Tensor<Self, 1>,
        beta: Tensor<Self, 1>,
        epsilon: f64,
    ) -> Tensor<Self, D> {
        if !(f32s(&[&x]) && f32s(&[&gamma, &beta])) {
            return composed::layer_norm(x, gamma, beta, epsilon);
        }
        let x = contiguous(&inner(x));
        outer(layer_norm_values(&x, &inner(gamma), &inner(beta), epsilon).0)
    }

    fn fused_gelu<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, D> {
        if !f32s(&[&x]) {
            return crate::activation::gelu(x);
        }
        outer(gelu_values(&contiguous(&inner(x))))
    }

    fn fused_attention(
        q: Tensor<Self, 3>,
        k: Tensor<Self, 3>,
        v: Tensor<Self, 3>,
        bias: Tensor<Self, 4>,
        heads: usize,
        dropout: Option<f64>,
    ) -> Tensor<Self, 3> {
        let [batch, seq, _] = q.dims();
        if !(f32s(&[&q, &k, &v]) && bias.dtype() == DType::F32 && bias.dims() == [batch, 1, 1, seq])
        {
            return composed::attention(q, k, v, bias, heads, dropout);
        }
        let shape = Heads::split(q.dims(), k.dims(), v.dims(), heads);
        let mask = dropout.map(Mask::draw);
        let [q, k, v] = [q, k, v].map(|t| contiguous(&inner(t)));
        let bias = contiguous(&inner(bias));
        outer(attention_values(&q, &k, &v, &bias, shape, mask.as_ref()).0)
    }

    fn fused_adamw_step<const D: usize>(
        step: &AdamWStep,
        param: Tensor<Self, D>,
        grad: Tensor<Self, D>,
        moments: Option<Moments<Self, D>>,
    ) -> (Tensor<Self, D>, Moments<Self, D>) {
        let fp32 = f32s(&[&param, &grad])
            && moments
                .as_ref()
                .is_none_or(|m| f32s(&[&m.moment_1, &m.moment_2]));
        if fp32 {
            adamw_step(step, param, grad, moments)
        } else {
            composed::adamw_step(step, param, grad, moments)
        }
    }

    fn fused_sum_of_squares<const D: usize>(x: Tensor<Self, D>) -> Tensor<Self, 1> {
        if !f32s(&[&x]) {
            return composed::sum_of_squares(x);
        }
        let device = x.device();
        let x = x.into_primitive().tensor().to_contiguous();
        let values = x.as_slice::<f32>().expect("a contiguous fp32 tensor");
        let blocks: Vec<f32> = values.par_chunks(CHUNK).map(squares).collect();
        let sum: f64 = blocks.iter().map(|&s| f64::from(s)).sum();
        Tensor::from_floats([sum as f32], &device)
    }
}

fn inner<const D: usize>(x: Tensor<Flex, D>) -> FlexTensor {
    x.into_primitive().tensor()
}

fn outer<const D: usize>(x: FlexTensor) -> Tensor<Flex, D> {
    Tensor::from_primitive(TensorPrimitive::Float(x))
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

mod attention;
mod cross_entropy;
mod dropout;
mod gelu;
mod layer_norm;
mod linear;
mod optimizer;
#[cfg(test)]
mod tests;

use attention::*;
use cross_entropy::*;
use dropout::*;
use gelu::*;
use layer_norm::*;
use linear::*;
use optimizer::*;
