//! The exact (erf) GELU and its derivative.

use super::*;

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

pub(super) fn gelu<const D: usize>(x: Tensor<Train, D>) -> Tensor<Train, D> {
    let x = primitive(x);
    let input = contiguous(&x.primitive);
    let y = gelu_values(&input);
    record(GeluBackward, [&x], y, input)
}

pub(super) fn gelu_values(input: &FlexTensor) -> FlexTensor {
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
