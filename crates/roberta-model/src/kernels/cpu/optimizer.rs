//! The optimizer's passes on `Flex`: the AdamW update of a parameter in place, and the
//! sum of squares of the gradient norm.

use super::*;

multiversion! {
    pub(super) fn squares(x: &[f32]) -> f32 {
        lane_sum(x, |v| v * v)
    }
}

/// burn's AdamW update of the scaled gradient g ← g·s, element by element in the same
/// order of operations ([`composed::adamw_step`]) as one parallel pass over the
/// parameter in place: burn's takes about a dozen tensor operations per parameter, each
/// a full pass, most on one core, which at roberta-base size cost a sixth of a step.
pub(super) fn adamw_step<const D: usize>(
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
pub(super) struct Update {
    b1: f32,
    b2: f32,
    eps: f32,
    correction_1: f32,
    correction_2: f32,
    decay: f32,
    lr: f32,
    pub(super) scale: f32,
}

multiversion! {
    /// [`adamw_step`] on a chunk of a parameter: a square root and two divisions an
    /// element, which on the x86-64 baseline's 4 lanes cost more than the memory.
    pub(super) fn update(step: &Update, p: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32]) {
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
