//! The summed cross-entropy of the rows with a target, and its gradient.

use super::*;

/// What the loss's backward needs: the logits, each row's log-sum-exp and target.
#[derive(Clone, Debug)]
struct CrossEntropyState {
    pub(super) logits: FlexTensor,
    log_sum_exp: Arc<Vec<f32>>,
    pub(super) targets: Arc<Vec<i64>>,
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
pub(super) fn cross_entropy_sum(logits: Tensor<Train, 2>, targets: Vec<i64>) -> Tensor<Train, 1> {
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
