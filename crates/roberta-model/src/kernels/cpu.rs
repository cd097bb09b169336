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
    ($(#[$attr:meta])* fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)? $body:block) => {
        $(#[$attr])*
        fn $name($($arg: $ty),*) $(-> $ret)? {
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

/// `(Σ dy·γ, Σ dy·γ·(x − μ))` over one row, in 16 lanes like [`lane_sum`].
#[inline(always)]
fn backward_row_sums(dy: &[f32], x: &[f32], gamma: &[f32], mean: f32) -> (f32, f32) {
    let mut lanes_g = [0f32; 16];
    let mut lanes_gx = [0f32; 16];
    let full = dy.len() / 16 * 16;
    for ((dy, x), gamma) in dy[..full]
        .chunks_exact(16)
        .zip(x[..full].chunks_exact(16))
        .zip(gamma[..full].chunks_exact(16))
    {
        for k in 0..16 {
            let g = dy[k] * gamma[k];
            lanes_g[k] += g;
            lanes_gx[k] += g * (x[k] - mean);
        }
    }
    let (mut sum_g, mut sum_gx) = (lanes_g.iter().sum::<f32>(), lanes_gx.iter().sum::<f32>());
    for j in full..dy.len() {
        let g = dy[j] * gamma[j];
        sum_g += g;
        sum_gx += g * (x[j] - mean);
    }
    (sum_g, sum_gx)
}

// ---------------------------------------------------------------------------------
// Dropout

/// One dropout draw. Element `i` keeps its value when `hash(i·φ + key)` is at least
/// `threshold`, with `hash` a 32-bit integer mixer (Wellons' lowbias32) and φ the
/// golden-ratio constant: a counter-based generator, so the backward pass recomputes the
/// mask instead of storing it, any block of elements can be drawn in parallel, and the
/// arithmetic is 32-bit lanes the compiler vectorises. Indices wrap at 2³²
/// elements, beyond any activation here.
#[derive(Clone, Copy, Debug)]
struct Mask {
    key: u32,
    threshold: u32,
    scale: f32,
}

#[inline(always)]
fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x21f0_aaad);
    x ^= x >> 15;
    x = x.wrapping_mul(0x735a_2d97);
    x ^ (x >> 15)
}

impl Mask {
    /// Takes the key from Flex's seeded generator (two 16-bit draws: Flex's integers
    /// are i32), as burn's dropout takes its Bernoulli draws from it.
    fn draw(prob: f64) -> Self {
        let words = Tensor::<Flex, 1, Int>::random(
            [2],
            Distribution::Uniform(0.0, 65536.0),
            &Default::default(),
        )
        .into_data()
        .iter::<i64>()
        .collect::<Vec<_>>();
        Self {
            key: ((words[0] as u32) << 16) | words[1] as u32,
            threshold: (prob * 2f64.powi(32)).round().min(u32::MAX as f64) as u32,
            scale: (1.0 / (1.0 - prob)) as f32,
        }
    }

    /// `x` with the dropped elements zeroed and the kept ones scaled.
    fn apply(&self, x: FlexTensor) -> FlexTensor {
        let x = contiguous(&x);
        let xs = values(&x);
        let out = par_fill(xs.len(), CHUNK, |start, out| {
            self.fill(start, &xs[start..start + out.len()], out);
        });
        flex(out, x.layout().shape().clone())
    }

    /// Elements `start..start + xs.len()` of the masked tensor whose values there are
    /// `xs`.
    fn masked(&self, start: usize, xs: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(xs.len());
        self.fill(start, xs, &mut out.spare_capacity_mut()[..xs.len()]);
        // SAFETY: `fill` wrote all `xs.len()` elements.
        unsafe { out.set_len(xs.len()) };
        out
    }

    /// Writes elements `start..start + xs.len()` of the masked tensor whose values
    /// there are `xs`.
    fn fill(&self, start: usize, xs: &[f32], out: &mut [MaybeUninit<f32>]) {
        fill_masked(self, start, xs, out);
    }
}

multiversion! {
    /// [`Mask::fill`]: integer arithmetic in 32-bit lanes (8 with AVX2's native 32-bit
    /// multiply, 16 with AVX-512), the same mask on every CPU.
    fn fill_masked(mask: &Mask, start: usize, xs: &[f32], out: &mut [MaybeUninit<f32>]) {
        const PHI: u32 = 0x9E37_79B9;
        let mut counter = (start as u32).wrapping_mul(PHI).wrapping_add(mask.key);
        for (out, &x) in out.iter_mut().zip(xs) {
            let keep = lowbias32(counter) >= mask.threshold;
            out.write(if keep { x * mask.scale } else { 0.0 });
            counter = counter.wrapping_add(PHI);
        }
    }
}

#[derive(Debug)]
struct DropoutBackward;

impl Backward<Flex, 1> for DropoutBackward {
    type State = Mask;

    fn backward(self, ops: Ops<Mask, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let mask = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| mask.apply(grad));
    }
}

fn dropout<const D: usize>(x: Tensor<Train, D>, prob: f64) -> Tensor<Train, D> {
    let mask = Mask::draw(prob);
    let x = primitive(x);
    let y = mask.apply(x.primitive.clone());
    record(DropoutBackward, [&x], y, mask)
}

// ---------------------------------------------------------------------------------
// LayerNorm

/// Rows per parallel task of the row kernels (LayerNorm, softmax).
const ROWS: usize = 32;

/// What LayerNorm's backward needs: its input, γ, and each row's mean and 1/σ.
#[derive(Clone, Debug)]
struct LayerNormState {
    x: FlexTensor,
    gamma: FlexTensor,
    stats: Arc<Vec<[f32; 2]>>,
}

#[derive(Debug)]
struct LayerNormBackward;

impl Backward<Flex, 3> for LayerNormBackward {
    type State = LayerNormState;

    fn backward(self, ops: Ops<LayerNormState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_gamma, node_beta] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let LayerNormState { x, gamma, stats } = ops.state;
        let (dx, dgamma, dbeta) =
            layer_norm_backward(values(&dy), values(&x), values(&gamma), &stats);
        let width = gamma.layout().shape().clone();
        if let Some(node) = node_x {
            grads.register::<Flex>(node.id, flex(dx, x.layout().shape().clone()));
        }
        if let Some(node) = node_gamma {
            grads.register::<Flex>(node.id, flex(dgamma, width.clone()));
        }
        if let Some(node) = node_beta {
            grads.register::<Flex>(node.id, flex(dbeta, width));
        }
    }
}

fn layer_norm<const D: usize>(
    x: Tensor<Train, D>,
    gamma: Tensor<Train, 1>,
    beta: Tensor<Train, 1>,
    epsilon: f64,
) -> Tensor<Train, D> {
    let (x, gamma, beta) = (primitive(x), primitive(gamma), primitive(beta));
    let input = contiguous(&x.primitive);
    let gamma_values = contiguous(&gamma.primitive);
    let (y, stats) = layer_norm_values(&input, &gamma_values, &beta.primitive, epsilon);
    let state = LayerNormState {
        x: input,
        gamma: gamma_values,
        stats: Arc::new(stats),
    };
    record(LayerNormBackward, [&x, &gamma, &beta], y, state)
}

/// [`layer_norm_forward`] of a contiguous input.
fn layer_norm_values(
    input: &FlexTensor,
    gamma: &FlexTensor,
    beta: &FlexTensor,
    epsilon: f64,
) -> (FlexTensor, Vec<[f32; 2]>) {
    let beta = contiguous(beta);
    let (y, stats) = layer_norm_forward(
        values(input),
        values(&contiguous(gamma)),
        values(&beta),
        epsilon as f32,
    );
    (flex(y, input.layout().shape().clone()), stats)
}

/// `(y, [mean, 1/σ] per row)`; the variance is the biased one, as in PyTorch.
fn layer_norm_forward(
    x: &[f32],
    gamma: &[f32],
    beta: &[f32],
    epsilon: f32,
) -> (Vec<f32>, Vec<[f32; 2]>) {
    let width = gamma.len();
    assert!(
        beta.len() == width && x.len().is_multiple_of(width),
        "LayerNorm over {width} of {} values, β {}",
        x.len(),
        beta.len()
    );
    let rows = x.len() / width;
    let mut stats = vec![[0f32; 2]; rows];
    let mut y = Vec::with_capacity(x.len());
    y.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(ROWS * width)
        .zip(stats.par_chunks_mut(ROWS))
        .zip(x.par_chunks(ROWS * width))
        .for_each(|((y, stats), x)| layer_norm_rows(x, gamma, beta, epsilon, y, stats));
    // SAFETY: the chunks cover all `x.len()` elements and every row writes all of its own.
    unsafe { y.set_len(x.len()) };
    (y, stats)
}

multiversion! {
    /// [`layer_norm_forward`] of a block of rows.
    fn layer_norm_rows(
        x: &[f32],
        gamma: &[f32],
        beta: &[f32],
        epsilon: f32,
        y: &mut [MaybeUninit<f32>],
        stats: &mut [[f32; 2]],
    ) {
        let width = gamma.len();
        for ((y, stats), x) in y.chunks_mut(width).zip(stats).zip(x.chunks(width)) {
            let mean = lane_sum(x, |v| v) / width as f32;
            let variance = lane_sum(x, |v| (v - mean) * (v - mean)) / width as f32;
            let rstd = 1.0 / (variance + epsilon).sqrt();
            *stats = [mean, rstd];
            for (((y, &x), &g), &b) in y.iter_mut().zip(x).zip(gamma).zip(beta) {
                y.write((x - mean) * rstd * g + b);
            }
        }
    }
}

/// `(dx, dγ, dβ)` with x̂ = (x − μ)/σ, g = dy·γ:
/// dx = (g − mean(g) − x̂·mean(g·x̂))/σ, dγ = Σ_rows dy·x̂, dβ = Σ_rows dy.
fn layer_norm_backward(
    dy: &[f32],
    x: &[f32],
    gamma: &[f32],
    stats: &[[f32; 2]],
) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let width = gamma.len();
    let mut dx = Vec::with_capacity(x.len());
    let partials: Vec<Vec<f32>> = dx.spare_capacity_mut()[..x.len()]
        .par_chunks_mut(ROWS * width)
        .zip(x.par_chunks(ROWS * width))
        .zip(dy.par_chunks(ROWS * width))
        .zip(stats.par_chunks(ROWS))
        .map(|(((dx, x), dy), stats)| layer_norm_backward_rows(x, dy, gamma, stats, dx))
        .collect();
    // SAFETY: the chunks cover all `x.len()` elements and every row writes all of its own.
    unsafe { dx.set_len(x.len()) };
    let mut dgamma = vec![0f32; width];
    let mut dbeta = vec![0f32; width];
    for partial in &partials {
        for (sum, v) in dgamma.iter_mut().zip(&partial[..width]) {
            *sum += v;
        }
        for (sum, v) in dbeta.iter_mut().zip(&partial[width..]) {
            *sum += v;
        }
    }
    (dx, dgamma, dbeta)
}

multiversion! {
    /// [`layer_norm_backward`] of a block of rows: writes `dx`, returns the block's dγ
    /// then dβ.
    fn layer_norm_backward_rows(
        x: &[f32],
        dy: &[f32],
        gamma: &[f32],
        stats: &[[f32; 2]],
        dx: &mut [MaybeUninit<f32>],
    ) -> Vec<f32> {
        let width = gamma.len();
        let mut partial = vec![0f32; 2 * width];
        let (dgamma, dbeta) = partial.split_at_mut(width);
        for (((dx, x), dy), &[mean, rstd]) in dx
            .chunks_mut(width)
            .zip(x.chunks(width))
            .zip(dy.chunks(width))
            .zip(stats)
        {
            let (sum_g, sum_gx) = backward_row_sums(dy, x, gamma, mean);
            let mean_g = sum_g / width as f32;
            let mean_gx = sum_gx * rstd / width as f32;
            for (((((dx, &x), &dy), &g), dgamma), dbeta) in dx
                .iter_mut()
                .zip(x)
                .zip(dy)
                .zip(gamma)
                .zip(dgamma.iter_mut())
                .zip(dbeta.iter_mut())
            {
                let xhat = (x - mean) * rstd;
                dx.write(rstd * (dy * g - mean_g - xhat * mean_gx));
                *dgamma += dy * xhat;
                *dbeta += dy;
            }
        }
        partial
    }
}

// ---------------------------------------------------------------------------------
// GELU

#[derive(Debug)]
struct GeluBackward;

impl Backward<Flex, 1> for GeluBackward {
    type State = FlexTensor;

    fn backward(self, ops: Ops<FlexTensor, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let x = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let grad = contiguous(&grad);
            let (xs, gs) = (values(&x), values(&grad));
            let dx = par_fill(xs.len(), CHUNK, |start, out| {
                let end = start + out.len();
                gelu_backward(&xs[start..end], &gs[start..end], out);
            });
            flex(dx, x.layout().shape().clone())
        });
    }
}

#[inline(always)]
fn normal_cdf(x: f32) -> f32 {
    0.5 * (1.0 + erf(x * std::f32::consts::FRAC_1_SQRT_2))
}

#[inline(always)]
fn gelu_derivative(x: f32) -> f32 {
    const INV_SQRT_2PI: f32 = 0.398_942_3;
    normal_cdf(x) + x * INV_SQRT_2PI * exp(-0.5 * x * x)
}

fn gelu<const D: usize>(x: Tensor<Train, D>) -> Tensor<Train, D> {
    let x = primitive(x);
    let input = contiguous(&x.primitive);
    let y = gelu_values(&input);
    record(GeluBackward, [&x], y, input)
}

fn gelu_values(input: &FlexTensor) -> FlexTensor {
    let xs = values(input);
    let y = par_fill(xs.len(), CHUNK, |start, out| {
        gelu_forward(&xs[start..start + out.len()], out);
    });
    flex(y, input.layout().shape().clone())
}

multiversion! {
    fn gelu_forward(xs: &[f32], out: &mut [MaybeUninit<f32>]) {
        for (out, &x) in out.iter_mut().zip(xs) {
            out.write(x * normal_cdf(x));
        }
    }
}

multiversion! {
    /// `dx = dy · gelu′(x)`.
    fn gelu_backward(xs: &[f32], dy: &[f32], out: &mut [MaybeUninit<f32>]) {
        for ((out, &x), &g) in out.iter_mut().zip(xs).zip(dy) {
            out.write(g * gelu_derivative(x));
        }
    }
}

// ---------------------------------------------------------------------------------
// Linear

/// A row-major `rows × cols` view into a buffer, any strides (so a transpose is a view).
#[derive(Clone, Copy)]
struct Matrix<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a> Matrix<'a> {
    /// A contiguous 2-D tensor.
    fn of(x: &'a FlexTensor) -> Self {
        let shape = x.layout().shape();
        Self::rows(values(x), shape[0], shape[1])
    }

    fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// The `rows × cols` block whose first element is at (`row`, `col`).
    fn block(self, row: usize, col: usize, rows: usize, cols: usize) -> Self {
        let offset = row as isize * self.row_stride + col as isize * self.col_stride;
        Self {
            data: &self.data[offset as usize..],
            rows,
            cols,
            ..self
        }
    }
}

/// One single-threaded gemm call: `out = [out +] a · b`, `out` with rows
/// `out_row_stride` apart.
///
/// # Safety
/// `out` must be valid for writes of `a.rows` rows of `b.cols` elements, `out_row_stride`
/// apart, which nothing else reads or writes during the call; `a` and `b` must lie
/// inside their slices (strides non-negative).
unsafe fn gemm_into(a: Matrix, b: Matrix, out: *mut f32, out_row_stride: usize, accumulate: bool) {
    debug_assert_eq!(a.cols, b.rows, "inner dimensions");
    // SAFETY: as the caller promises.
    unsafe {
        gemm::gemm(
            a.rows,
            b.cols,
            a.cols,
            out,
            1,
            out_row_stride as isize,
            accumulate,
            a.data.as_ptr(),
            a.col_stride,
            a.row_stride,
            b.data.as_ptr(),
            b.col_stride,
            b.row_stride,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
}

/// `a · b` as a new row-major `a.rows × b.cols` buffer: written by gemm, never zeroed
/// first.
fn product(a: Matrix, b: Matrix) -> Vec<f32> {
    let n = a.rows * b.cols;
    let mut out = Vec::with_capacity(n);
    // SAFETY: without accumulation, gemm writes every element and reads none.
    unsafe {
        matmul(a, b, &mut out.spare_capacity_mut()[..n], false);
        out.set_len(n);
    }
    out
}

/// `out += a · b`, with `out` row-major `a.rows × b.cols`.
fn accumulate_product(a: Matrix, b: Matrix, out: &mut [f32]) {
    // SAFETY: `out` is initialised; gemm only writes initialised values into it.
    unsafe {
        let out = &mut *(out as *mut [f32] as *mut [MaybeUninit<f32>]);
        matmul(a, b, out, true);
    }
}

/// `out = [out +] a · b`, with `out` row-major `a.rows × b.cols`.
///
/// gemm's own threading (`Parallelism::Rayon`) scales poorly here: on 2 cores its
/// matmuls at roberta-base shapes ran 1.3–1.6× faster than on one, PyTorch's 2×. So
/// the output is cut into one block per thread along its longer side, and each block
/// is a single-threaded gemm call. A block's values do not depend on which thread
/// computes it or when.
///
/// # Safety
/// With `accumulate`, `out` must be initialised.
unsafe fn matmul(a: Matrix, b: Matrix, out: &mut [MaybeUninit<f32>], accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(k, b.rows, "inner dimensions");
    assert_eq!(out.len(), m * n, "output size");
    let along_rows = m >= n;
    let long = if along_rows { m } else { n };
    let blocks = rayon::current_num_threads().min(long.div_ceil(64)).max(1);
    let block = long.div_ceil(blocks).next_multiple_of(16);
    let out_addr = out.as_mut_ptr() as usize;
    (0..long.div_ceil(block)).into_par_iter().for_each(|i| {
        let (start, len) = (i * block, block.min(long - i * block));
        let (a, b, out_offset) = if along_rows {
            (a.block(start, 0, len, k), b, start * n)
        } else {
            (a, b.block(0, start, k, len), start)
        };
        // SAFETY: each block writes its own rows or columns of `out` (of the size the
        // shapes above checked), which no other block touches while `out` is borrowed;
        // it reads them only with `accumulate`, when they are initialised.
        unsafe { gemm_into(a, b, (out_addr as *mut f32).add(out_offset), n, accumulate) };
    });
}

/// `x · W + b`; the weight is `[in, out]` (burn's Linear), or `[out, in]` when
/// `transposed` (a tied decoder reading the word embeddings), and its gradient comes
/// in the same layout.
#[derive(Clone, Debug)]
struct LinearState {
    x: FlexTensor,
    weight: FlexTensor,
    transposed: bool,
}

#[derive(Debug)]
struct LinearBackward;

impl Backward<Flex, 3> for LinearBackward {
    type State = LinearState;

    fn backward(self, ops: Ops<LinearState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_x, node_weight, node_bias] = ops.parents;
        let dy = contiguous(&grads.consume::<Flex>(&ops.node));
        let LinearState {
            x,
            weight,
            transposed,
        } = ops.state;
        let (dy_m, x_m) = (Matrix::of(&dy), Matrix::of(&x));
        let w = Matrix::of(&weight);
        let w = if transposed { w.t() } else { w };
        if let Some(node) = node_x {
            let dx = product(dy_m, w.t());
            grads.register::<Flex>(node.id, flex(dx, x.layout().shape().clone()));
        }
        if let Some(node) = node_weight {
            let dw = if transposed {
                product(dy_m.t(), x_m)
            } else {
                product(x_m.t(), dy_m)
            };
            grads.register::<Flex>(node.id, flex(dw, weight.layout().shape().clone()));
        }
        if let Some(node) = node_bias {
            let db = column_sums(values(&dy), dy_m.cols);
            grads.register::<Flex>(node.id, flex(db, Shape::new([dy_m.cols])));
        }
    }
}

/// Σ over rows of a row-major matrix with `cols` columns, in fixed blocks of rows
/// added in order.
fn column_sums(x: &[f32], cols: usize) -> Vec<f32> {
    let partials: Vec<Vec<f32>> = x
        .par_chunks(ROWS * cols)
        .map(|rows| {
            let mut sums = vec![0f32; cols];
            add_rows(&mut sums, rows);
            sums
        })
        .collect();
    let mut sums = vec![0f32; cols];
    for partial in &partials {
        add_rows(&mut sums, partial);
    }
    sums
}

multiversion! {
    /// `sums += row`, for each row of `rows` in order.
    fn add_rows(sums: &mut [f32], rows: &[f32]) {
        for row in rows.chunks(sums.len()) {
            for (sum, v) in sums.iter_mut().zip(row) {
                *sum += v;
            }
        }
    }
}

/// `x · W + b` for `x`: `[rows, in]`; see [`LinearState`] for the weight's layout.
fn linear(
    x: Tensor<Train, 2>,
    weight: Tensor<Train, 2>,
    bias: Tensor<Train, 1>,
    transposed: bool,
) -> Tensor<Train, 2> {
    let (x, weight, bias) = (primitive(x), primitive(weight), primitive(bias));
    let input = contiguous(&x.primitive);
    let w = contiguous(&weight.primitive);
    let y = linear_values(&input, &w, &bias.primitive, transposed);
    let state = LinearState {
        x: input,
        weight: w,
        transposed,
    };
    record(LinearBackward, [&x, &weight, &bias], y, state)
}

/// `x · W + b` of contiguous `x` and `W`.
fn linear_values(
    input: &FlexTensor,
    w: &FlexTensor,
    bias: &FlexTensor,
    transposed: bool,
) -> FlexTensor {
    let b = contiguous(bias);
    let (x_m, w_m) = (Matrix::of(input), Matrix::of(w));
    let w_m = if transposed { w_m.t() } else { w_m };
    let (rows, cols) = (x_m.rows, w_m.cols);
    let bias_values = values(&b);
    assert_eq!(bias_values.len(), cols, "bias length");
    let mut y = par_fill(rows * cols, ROWS * cols, |_, out| {
        for row in out.chunks_mut(cols) {
            for (out, &b) in row.iter_mut().zip(bias_values) {
                out.write(b);
            }
        }
    });
    accumulate_product(x_m, w_m, &mut y);
    flex(y, Shape::new([rows, cols]))
}

// ---------------------------------------------------------------------------------
// Cross-entropy

/// What the loss's backward needs: the logits, each row's log-sum-exp and target.
#[derive(Clone, Debug)]
struct CrossEntropyState {
    logits: FlexTensor,
    log_sum_exp: Arc<Vec<f32>>,
    targets: Arc<Vec<i64>>,
}

#[derive(Debug)]
struct CrossEntropyBackward;

impl Backward<Flex, 1> for CrossEntropyBackward {
    type State = CrossEntropyState;

    fn backward(self, ops: Ops<CrossEntropyState, 1>, grads: &mut Gradients, _: &mut Checkpointer) {
        let CrossEntropyState {
            logits,
            log_sum_exp,
            targets,
        } = ops.state;
        unary::<Flex, _>(ops.parents, ops.node, grads, |grad| {
            let upstream = values(&contiguous(&grad))[0];
            let shape = logits.layout().shape().clone();
            let classes = shape[1];
            let xs = values(&logits);
            // d loss / d logits = upstream · (softmax − one-hot) on rows with a target.
            let dx = par_fill(xs.len(), ROWS * classes, |start, out| {
                let (first, end) = (start / classes, start + out.len());
                let rows = first..end / classes;
                cross_entropy_backward_rows(
                    &xs[start..end],
                    &log_sum_exp[rows.clone()],
                    &targets[rows],
                    upstream,
                    out,
                );
            });
            flex(dx, shape)
        });
    }
}

multiversion! {
    /// `upstream · (softmax(x) − one-hot(target))` for a block of rows, 0 for rows
    /// without a target.
    fn cross_entropy_backward_rows(
        xs: &[f32],
        log_sum_exp: &[f32],
        targets: &[i64],
        upstream: f32,
        out: &mut [MaybeUninit<f32>],
    ) {
        let classes = xs.len() / targets.len();
        for (((out, x), &lse), &target) in out
            .chunks_mut(classes)
            .zip(xs.chunks(classes))
            .zip(log_sum_exp)
            .zip(targets)
        {
            if target < 0 {
                out.iter_mut().for_each(|o| {
                    o.write(0.0);
                });
                continue;
            }
            for (out, &x) in out.iter_mut().zip(x) {
                out.write(upstream * exp(x - lse));
            }
            // SAFETY: written just above.
            unsafe { out[target as usize].assume_init_mut() }.sub_assign(upstream);
        }
    }
}

/// Σ over rows with a target ≥ 0 of `log Σⱼ exp(xⱼ) − x[target]`, as a `[1]` tensor.
fn cross_entropy_sum(logits: Tensor<Train, 2>, targets: Vec<i64>) -> Tensor<Train, 1> {
    let [rows, classes] = logits.dims();
    let logits = primitive(logits);
    let input = contiguous(&logits.primitive);
    let xs = values(&input);
    let log_sum_exp: Vec<f32> = xs.par_chunks(classes).map(log_sum_exp).collect();
    let loss: f32 = (0..rows)
        .filter(|&r| targets[r] >= 0)
        .map(|r| log_sum_exp[r] - xs[r * classes + targets[r] as usize])
        .sum();
    let state = CrossEntropyState {
        logits: input,
        log_sum_exp: Arc::new(log_sum_exp),
        targets: Arc::new(targets),
    };
    record(
        CrossEntropyBackward,
        [&logits],
        flex(vec![loss], Shape::new([1])),
        state,
    )
}

multiversion! {
    /// `log Σⱼ exp(xⱼ)`, shifted by the maximum.
    fn log_sum_exp(x: &[f32]) -> f32 {
        let max = lane_max(x);
        max + lane_sum(x, |v| exp(v - max)).ln()
    }
}

// ---------------------------------------------------------------------------------
// The optimizer, on the inner backend: AdamW's update and the gradient norm

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

multiversion! {
    fn squares(x: &[f32]) -> f32 {
        lane_sum(x, |v| v * v)
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

/// burn's AdamW update of the scaled gradient g ← g·s, element by element in the same
/// order of operations ([`composed::adamw_step`]) as one parallel pass over the
/// parameter in place: burn's takes about a dozen tensor operations per parameter, each
/// a full pass, most on one core, which at roberta-base size cost a sixth of a step.
fn adamw_step<const D: usize>(
    step: &AdamWStep,
    param: Tensor<Flex, D>,
    grad: Tensor<Flex, D>,
    moments: Option<Moments<Flex, D>>,
) -> (Tensor<Flex, D>, Moments<Flex, D>) {
    let shape = param.shape();
    let (time, m, v) = match moments {
        Some(m) => (m.time + 1, owned(m.moment_1), owned(m.moment_2)),
        None => {
            let zeros = || FlexTensor::zeros(shape.clone(), DType::F32);
            (1, zeros(), zeros())
        }
    };
    let (mut p, mut m, mut v) = (owned(param), m, v);
    let g = owned(grad);
    let constants = Update {
        b1: step.beta_1,
        b2: step.beta_2,
        eps: step.epsilon,
        correction_1: 1.0 - step.beta_1.powi(time as i32),
        correction_2: 1.0 - step.beta_2.powi(time as i32),
        decay: (1.0 - step.lr * f64::from(step.weight_decay)) as f32,
        lr: step.lr as f32,
        scale: step.grad_scale,
    };
    p.storage_mut::<f32>()
        .par_chunks_mut(CHUNK)
        .zip(m.storage_mut::<f32>().par_chunks_mut(CHUNK))
        .zip(v.storage_mut::<f32>().par_chunks_mut(CHUNK))
        .zip(g.storage::<f32>().par_chunks(CHUNK))
        .for_each(|(((p, m), v), g)| update(&constants, p, m, v, g));
    let tensor = |x: FlexTensor| Tensor::from_primitive(TensorPrimitive::Float(x));
    (
        tensor(p),
        Moments {
            time,
            moment_1: tensor(m),
            moment_2: tensor(v),
        },
    )
}

/// One update's constants.
struct Update {
    b1: f32,
    b2: f32,
    eps: f32,
    correction_1: f32,
    correction_2: f32,
    decay: f32,
    lr: f32,
    scale: f32,
}

multiversion! {
    /// [`adamw_step`] on a chunk of a parameter: a square root and two divisions an
    /// element, which on the x86-64 baseline's 4 lanes cost more than the memory.
    fn update(step: &Update, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
        let Update { b1, b2, eps, correction_1, correction_2, decay, lr, scale } = *step;
        for (((p, m), v), &g) in p.iter_mut().zip(m).zip(v).zip(g) {
            let g = g * scale;
            *m = *m * b1 + g * (1.0 - b1);
            *v = *v * b2 + g * g * (1.0 - b2);
            let delta = (*m / correction_1) / ((*v / correction_2).sqrt() + eps);
            *p = *p * decay - delta * lr;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_within_two_ulp_of_libm() {
        for i in -87_000..88_000 {
            let x = i as f32 * 1e-3 + 3.7e-5;
            let (ours, theirs) = (exp(x), x.exp());
            let ulp = (theirs.to_bits() as i64 - ours.to_bits() as i64).abs();
            assert!(ulp <= 2, "exp({x}) = {ours}, libm {theirs}");
        }
        assert_eq!(exp(-1e4), 0.0);
        assert_eq!(exp(0.0), 1.0);
    }

    #[test]
    fn erf_is_within_1e6_of_libm() {
        for i in -60_000..=60_000 {
            let x = i as f32 * 1e-4 + 1.3e-6;
            let (ours, theirs) = (erf(x), libm::erff(x));
            assert!(
                (ours - theirs).abs() <= 1e-6,
                "erf({x}) = {ours}, libm {theirs}"
            );
        }
    }
}

// ---------------------------------------------------------------------------------
// Attention

/// The shapes of one attention call: `q`, `k`, `v` and the context are
/// `[batch, seq, heads · head_dim]`, as the projections produce and consume them.
#[derive(Clone, Copy, Debug)]
struct Heads {
    batch: usize,
    seq: usize,
    heads: usize,
    head_dim: usize,
    scale: f32,
}

impl Heads {
    /// The shapes of `q`, `k`, `v` split into `heads`.
    fn split(q: [usize; 3], k: [usize; 3], v: [usize; 3], heads: usize) -> Self {
        let [batch, seq, width] = q;
        // The buffers are written, not zeroed: every element must belong to a head.
        assert_eq!(width % heads, 0, "hidden width {width} in {heads} heads");
        assert_eq!(k, q, "keys' shape");
        assert_eq!(v, q, "values' shape");
        let head_dim = width / heads;
        Self {
            batch,
            seq,
            heads,
            head_dim,
            scale: 1.0 / (head_dim as f32).sqrt(),
        }
    }

    fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Head `h` of sequence `b` in a `[batch, seq, width]` buffer: `seq × head_dim`.
    fn of<'a>(&self, x: &'a [f32], task: usize) -> Matrix<'a> {
        let (b, h) = (task / self.heads, task % self.heads);
        Matrix::rows(x, self.batch * self.seq, self.width()).block(
            b * self.seq,
            h * self.head_dim,
            self.seq,
            self.head_dim,
        )
    }

    /// Where head `h` of sequence `b` starts in a `[batch, seq, width]` buffer.
    fn offset(&self, task: usize) -> usize {
        let (b, h) = (task / self.heads, task % self.heads);
        b * self.seq * self.width() + h * self.head_dim
    }

    /// The `[seq, seq]` block of head `task` in a `[batch, heads, seq, seq]` buffer.
    fn square(&self, task: usize) -> std::ops::Range<usize> {
        let size = self.seq * self.seq;
        task * size..(task + 1) * size
    }
}

/// What attention's backward needs: its inputs, the probabilities before dropout, and
/// the dropout draw (recomputed rather than stored).
#[derive(Clone, Debug)]
struct AttentionState {
    q: FlexTensor,
    k: FlexTensor,
    v: FlexTensor,
    probs: FlexTensor,
    mask: Option<Mask>,
    shape: Heads,
}

#[derive(Debug)]
struct AttentionBackward;

/// A buffer of `n` values that parallel tasks write, disjoint parts each, through its
/// address; not zeroed first: see [`Shared::written`].
struct Shared {
    buffer: Vec<f32>,
    len: usize,
    address: usize,
}

impl Shared {
    fn new(n: usize) -> Self {
        let mut buffer = Vec::with_capacity(n);
        let address = buffer.as_mut_ptr() as usize;
        Self {
            buffer,
            len: n,
            address,
        }
    }

    fn at(&self, offset: usize) -> *mut f32 {
        (self.address as *mut f32).wrapping_add(offset)
    }

    /// # Safety
    /// Every one of the `n` elements has been written.
    unsafe fn written(mut self) -> Vec<f32> {
        // SAFETY: as the caller promises.
        unsafe { self.buffer.set_len(self.len) };
        self.buffer
    }
}

impl Backward<Flex, 3> for AttentionBackward {
    type State = AttentionState;

    fn backward(self, ops: Ops<AttentionState, 3>, grads: &mut Gradients, _: &mut Checkpointer) {
        let [node_q, node_k, node_v] = ops.parents;
        let d_context = contiguous(&grads.consume::<Flex>(&ops.node));
        let AttentionState {
            q,
            k,
            v,
            probs,
            mask,
            shape,
        } = ops.state;
        let (qs, ks, vs, ps, gs) = (
            values(&q),
            values(&k),
            values(&v),
            values(&probs),
            values(&d_context),
        );
        let n = qs.len();
        let (dq, dk, dv) = (Shared::new(n), Shared::new(n), Shared::new(n));
        let (seq, width) = (shape.seq, shape.width());
        (0..shape.batch * shape.heads)
            .into_par_iter()
            .for_each(|task| {
                let p = &ps[shape.square(task)];
                let dropped = mask.map(|mask| mask.masked(shape.square(task).start, p));
                let p_used = Matrix::rows(dropped.as_deref().unwrap_or(p), seq, seq);
                let g = shape.of(gs, task);
                let offset = shape.offset(task);
                let mut dp = Vec::with_capacity(seq * seq);
                // SAFETY: each task writes only its own head's columns of dq, dk, dv (and
                // its own `dp`, all of it), all sized by `shape`; nothing else touches
                // them meanwhile.
                unsafe {
                    gemm_into(p_used.t(), g, dv.at(offset), width, false);
                    gemm_into(g, shape.of(vs, task).t(), dp.as_mut_ptr(), seq, false);
                    dp.set_len(seq * seq);
                }
                if let Some(mask) = mask {
                    dp = mask.masked(shape.square(task).start, &dp);
                }
                softmax_backward_rows(&mut dp, p, seq, shape.scale);
                let ds = Matrix::rows(&dp, seq, seq);
                // SAFETY: as above.
                unsafe {
                    let (q_h, k_h) = (shape.of(qs, task), shape.of(ks, task));
                    gemm_into(ds, k_h, dq.at(offset), width, false);
                    gemm_into(ds.t(), q_h, dk.at(offset), width, false);
                }
            });
        // SAFETY: the (sequence, head) tasks together wrote every element of each.
        let (dq, dk, dv) = unsafe { (dq.written(), dk.written(), dv.written()) };
        let dims = q.layout().shape().clone();
        for (node, grad) in [(node_q, dq), (node_k, dk), (node_v, dv)] {
            if let Some(node) = node {
                grads.register::<Flex>(node.id, flex(grad, dims.clone()));
            }
        }
    }
}

multiversion! {
    /// `softmax(s · scale + keys)` in place, for each row `s` of `scores` (a key bias
    /// per column: 0, or −∞-like for padding).
    fn softmax_rows(scores: &mut [f32], keys: &[f32], scale: f32) {
        let mut shifted = vec![0f32; keys.len()];
        for row in scores.chunks_mut(keys.len()) {
            for ((shifted, &s), &b) in shifted.iter_mut().zip(row.iter()).zip(keys) {
                *shifted = s * scale + b;
            }
            let max = lane_max(&shifted);
            for (s, &x) in row.iter_mut().zip(&shifted) {
                *s = exp(x - max);
            }
            let inv = 1.0 / lane_sum(row, |e| e);
            row.iter_mut().for_each(|e| *e *= inv);
        }
    }
}

multiversion! {
    /// The scores' gradient from the probabilities' `dp`, in place:
    /// `scale · p ⊙ (dp − Σ p·dp)`, row by row.
    fn softmax_backward_rows(dp: &mut [f32], p: &[f32], seq: usize, scale: f32) {
        for (dp, p) in dp.chunks_mut(seq).zip(p.chunks(seq)) {
            let dot = lane_dot(p, dp);
            for (dp, &p) in dp.iter_mut().zip(p) {
                *dp = scale * p * (*dp - dot);
            }
        }
    }
}

/// `dropout(softmax(q·kᵀ·scale + bias)) · v` for every head of every sequence: one
/// parallel task per head, each three small gemm calls and a softmax, reading the
/// heads out of `[batch, seq, width]` and writing the context back into it by strides.
fn attention(
    q: Tensor<Train, 3>,
    k: Tensor<Train, 3>,
    v: Tensor<Train, 3>,
    bias: Tensor<Train, 4>,
    heads: usize,
    dropout: Option<f64>,
) -> Tensor<Train, 3> {
    let shape = Heads::split(q.dims(), k.dims(), v.dims(), heads);
    let mask = dropout.map(Mask::draw);
    let bias = contiguous(&primitive(bias).primitive);
    let (q, k, v) = (primitive(q), primitive(k), primitive(v));
    let (q_values, k_values, v_values) = (
        contiguous(&q.primitive),
        contiguous(&k.primitive),
        contiguous(&v.primitive),
    );
    let (context, probs) =
        attention_values(&q_values, &k_values, &v_values, &bias, shape, mask.as_ref());
    let state = AttentionState {
        q: q_values,
        k: k_values,
        v: v_values,
        probs,
        mask,
        shape,
    };
    record(AttentionBackward, [&q, &k, &v], context, state)
}

/// The context and the attention probabilities of contiguous `q`, `k`, `v` and bias.
fn attention_values(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    bias: &FlexTensor,
    shape: Heads,
    mask: Option<&Mask>,
) -> (FlexTensor, FlexTensor) {
    let Heads {
        batch, seq, heads, ..
    } = shape;
    let width = shape.width();
    let (qs, ks, vs, bs) = (values(q), values(k), values(v), values(bias));
    let context = Shared::new(qs.len());
    let mut probs = Vec::with_capacity(batch * heads * seq * seq);
    probs.spare_capacity_mut()[..batch * heads * seq * seq]
        .par_chunks_mut(seq * seq)
        .enumerate()
        .for_each(|(task, p)| {
            let keys = &bs[task / heads * seq..(task / heads + 1) * seq];
            // SAFETY: `p` is this task's own block, which gemm writes all of (reading
            // none), after which it is initialised.
            let p = unsafe {
                gemm_into(
                    shape.of(qs, task),
                    shape.of(ks, task).t(),
                    p.as_mut_ptr().cast(),
                    seq,
                    false,
                );
                &mut *(p as *mut [MaybeUninit<f32>] as *mut [f32])
            };
            softmax_rows(p, keys, shape.scale);
            let dropped = mask.map(|mask| mask.masked(shape.square(task).start, p));
            let p_used = Matrix::rows(dropped.as_deref().unwrap_or(p), seq, seq);
            // SAFETY: each task writes only its own head's columns of the context.
            unsafe {
                gemm_into(
                    p_used,
                    shape.of(vs, task),
                    context.at(shape.offset(task)),
                    width,
                    false,
                )
            };
        });
    // SAFETY: every task wrote its whole block of `probs` and its head's columns of the
    // context; together, every element of both.
    let context = unsafe {
        probs.set_len(batch * heads * seq * seq);
        context.written()
    };
    (
        flex(context, Shape::new([batch, seq, width])),
        flex(probs, Shape::new([batch, heads, seq, seq])),
    )
}
