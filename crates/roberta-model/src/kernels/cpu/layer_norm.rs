//! LayerNorm over the last dimension: rows in blocks of [`ROWS`], the parameter
//! gradients summed block by block in order.

use super::*;

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

/// Rows per parallel task of the row kernels (LayerNorm, softmax).
pub(super) const ROWS: usize = 32;

/// What LayerNorm's backward needs: its input, γ, and each row's mean and 1/σ.
#[derive(Clone, Debug)]
struct LayerNormState {
    pub(super) x: FlexTensor,
    pub(super) gamma: FlexTensor,
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

pub(super) fn layer_norm<const D: usize>(
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
pub(super) fn layer_norm_values(
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
