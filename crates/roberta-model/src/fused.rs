//! The Transformer's memory-bound steps (dropout, LayerNorm, GELU, the attention
//! softmax, the loss) as single operations, and Linear layers as one 2-D matmul with
//! the bias.
//!
//! burn builds each of these from primitive ops: LayerNorm alone is about ten passes
//! over its input forward and twenty backward, each allocating and each an autodiff
//! node, and dropout draws one ChaCha random number per element. On the CPU training
//! backend (`Autodiff<Flex>`) the functions here run one rayon-parallel kernel per step
//! with a hand-written backward ([`cpu`]); on every other backend, and for dtypes other
//! than fp32, they are exactly the composition of burn ops they replace (burn's fusion
//! merges those on cubecl backends). Both paths compute the same function; the tests
//! compare values and gradients.
//!
//! burn has no specialisation, so the CPU path is chosen by comparing types at run time.

use std::any::Any;

use burn::nn::{Dropout, LayerNorm, Linear};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use crate::activation;
use crate::precision::in_f32;

#[cfg(feature = "cpu")]
mod cpu;
#[cfg(feature = "cpu")]
pub use cpu::lane_sum;

/// `value` as a `U` when `T` is `U`, else `value` back: how a generic function takes a
/// backend-specific path (here and in roberta-train's optimizer).
pub fn same_type<T: 'static, U: 'static>(value: T) -> Result<U, T> {
    let value: Box<dyn Any> = Box::new(value);
    match value.downcast::<U>() {
        Ok(value) => Ok(*value),
        Err(value) => Err(*value
            .downcast::<T>()
            .unwrap_or_else(|_| unreachable!("a box holds its own type"))),
    }
}

/// `linear.forward(x)` with every leading dimension folded into the rows: one
/// `[tokens, in] × [in, out]` matmul instead of a batch of per-sequence ones, so the
/// weight is packed once and its gradient is one matmul over all tokens rather than a
/// batch of products summed afterwards. On the CPU training backend the product, the
/// bias and their backward are one operation with its own threading.
pub fn linear<B: Backend, const D: usize>(linear: &Linear<B>, x: Tensor<B, D>) -> Tensor<B, D> {
    let mut dims = x.dims();
    let [d_input, d_output] = linear.weight.dims();
    let rows = dims[..D - 1].iter().product();
    let x = x.reshape([rows, d_input]);
    let y = match &linear.bias {
        Some(bias) => linear_2d(x, linear.weight.val(), bias.val(), false),
        None => linear.forward(x),
    };
    dims[D - 1] = d_output;
    y.reshape(dims)
}

/// The vocabulary projection tied to the word embeddings: `x · Eᵀ + bias` for
/// `x`: `[n, hidden]`, `E`: `[vocab, hidden]`.
pub fn tied_decoder<B: Backend>(
    x: Tensor<B, 2>,
    word_embeddings: Tensor<B, 2>,
    bias: Tensor<B, 1>,
) -> Tensor<B, 2> {
    linear_2d(x, word_embeddings, bias, true)
}

/// `x · W + b`, with `W` given as `[out, in]` when `transposed`.
fn linear_2d<B: Backend>(
    x: Tensor<B, 2>,
    weight: Tensor<B, 2>,
    bias: Tensor<B, 1>,
    transposed: bool,
) -> Tensor<B, 2> {
    #[cfg(feature = "cpu")]
    let (x, weight, bias) = match (
        cpu::train_f32(x),
        cpu::train_f32(weight),
        cpu::train_f32(bias),
    ) {
        (Ok(x), Ok(weight), Ok(bias)) => {
            return cpu::from_train(cpu::linear(x, weight, bias, transposed));
        }
        (x, weight, bias) => (
            x.map_or_else(|x| x, cpu::from_train),
            weight.map_or_else(|w| w, cpu::from_train),
            bias.map_or_else(|b| b, cpu::from_train),
        ),
    };
    if transposed {
        x.matmul(weight.transpose()) + bias.unsqueeze()
    } else {
        burn::tensor::module::linear(x, weight, Some(bias))
    }
}

/// `dropout.forward(x)`: identity outside training, else zero each element with the
/// dropout's probability and scale the rest by `1 / (1 - p)`. The random draws come
/// from the backend's seeded generator either way, so `Backend::seed` makes them
/// reproducible.
pub fn dropout<B: Backend, const D: usize>(dropout: &Dropout, x: Tensor<B, D>) -> Tensor<B, D> {
    if !B::ad_enabled(&x.device()) || dropout.prob == 0.0 {
        return x;
    }
    #[cfg(feature = "cpu")]
    let x = match cpu::train_f32(x) {
        Ok(x) => return cpu::from_train(cpu::dropout(x, dropout.prob)),
        Err(x) => x,
    };
    dropout.forward(x)
}

/// `layer_norm.forward(x)` over the last dimension; `epsilon` is the one `layer_norm`
/// was built with (burn keeps it private); only the CPU kernel reads it.
#[cfg_attr(not(feature = "cpu"), allow(unused_variables))]
pub fn layer_norm<B: Backend, const D: usize>(
    layer_norm: &LayerNorm<B>,
    epsilon: f64,
    x: Tensor<B, D>,
) -> Tensor<B, D> {
    #[cfg(feature = "cpu")]
    let x = match (cpu::train_f32(x), &layer_norm.beta) {
        (Ok(x), Some(beta)) => match (
            cpu::train_f32(layer_norm.gamma.val()),
            cpu::train_f32(beta.val()),
        ) {
            (Ok(gamma), Ok(beta)) => {
                return cpu::from_train(cpu::layer_norm(x, gamma, beta, epsilon));
            }
            _ => cpu::from_train(x),
        },
        (x, _) => x.map_or_else(|x| x, cpu::from_train),
    };
    layer_norm.forward(x)
}

/// Exact (erf) GELU, as HF's `gelu`.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    #[cfg(feature = "cpu")]
    let x = match cpu::train_f32(x) {
        Ok(x) => return cpu::from_train(cpu::gelu(x)),
        Err(x) => x,
    };
    activation::gelu(x)
}

/// Scaled dot-product attention over every head: `dropout(softmax(q·kᵀ/√d + bias)) · v`
/// with `q`, `k`, `v` and the result as the projections produce and consume them,
/// `[batch, seq, heads · d]`, and `bias` the padding mask from
/// [`crate::attention::attention_bias`], `[batch, 1, 1, seq]`. The softmax runs in fp32.
///
/// On the CPU training backend this is one operation, a parallel task per head, which
/// reads the heads by strides and writes the context in place: no `[batch, heads, seq,
/// d]` copies either way.
pub fn attention<B: Backend>(
    q: Tensor<B, 3>,
    k: Tensor<B, 3>,
    v: Tensor<B, 3>,
    bias: Tensor<B, 4>,
    heads: usize,
    dropout: &Dropout,
) -> Tensor<B, 3> {
    let [batch, seq, width] = q.dims();
    let training = B::ad_enabled(&q.device()) && dropout.prob > 0.0;
    #[cfg(feature = "cpu")]
    let (q, k, v) = match (
        cpu::train_f32(q),
        cpu::train_f32(k),
        cpu::train_f32(v),
        cpu::train_f32(bias.clone()),
    ) {
        (Ok(q), Ok(k), Ok(v), Ok(bias))
            if !bias.is_require_grad() && bias.dims() == [batch, 1, 1, seq] =>
        {
            let dropout = training.then_some(dropout.prob);
            return cpu::from_train(cpu::attention(q, k, v, bias, heads, dropout));
        }
        (q, k, v, _) => (
            q.map_or_else(|x| x, cpu::from_train),
            k.map_or_else(|x| x, cpu::from_train),
            v.map_or_else(|x| x, cpu::from_train),
        ),
    };
    let head_dim = width / heads;
    let split = |x: Tensor<B, 3>| x.reshape([batch, seq, heads, head_dim]).swap_dims(1, 2);
    let scores = split(q).matmul(split(k).swap_dims(2, 3)) / (head_dim as f64).sqrt();
    let probs = in_f32(scores, |scores| softmax(scores + bias, 3));
    let probs = if training {
        self::dropout(dropout, probs)
    } else {
        probs
    };
    probs
        .matmul(split(v))
        .swap_dims(1, 2)
        .reshape([batch, seq, width])
}

/// [`crate::loss::cross_entropy_sum`] as one operation on the CPU training backend;
/// `logits` back for the composed loss anywhere else.
#[cfg(feature = "cpu")]
pub(crate) fn cross_entropy_sum<B: Backend>(
    logits: Tensor<B, 2>,
    targets: Tensor<B, 1, Int>,
) -> Result<Tensor<B, 1>, Tensor<B, 2>> {
    let logits = cpu::train_f32(logits)?;
    let targets = targets.into_data().iter::<i64>().collect();
    Ok(cpu::from_train(cpu::cross_entropy_sum(logits, targets)))
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};
    use burn::module::Param;
    use burn::nn::{DropoutConfig, LayerNormConfig};
    use burn::tensor::Distribution;

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
        same_function([3, 5, 70], gelu, activation::gelu, 2e-6);
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
        // The composed loss, written out: loss::cross_entropy_sum takes the fused path here.
        let [n, _] = logits.dims();
        let valid = targets.clone().greater_equal_elem(0);
        let safe = targets
            .mask_fill(valid.clone().bool_not(), 0)
            .reshape([n, 1]);
        let theirs = (burn::tensor::activation::log_softmax(logits.clone(), 1)
            .gather(1, safe)
            .reshape([n])
            * valid.float())
        .sum()
        .neg();
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
}
