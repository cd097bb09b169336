//! Attention over every head at once: scores, softmax (fp32), dropout and the
//! context, each (batch, head) a task; the backward pass from the kept probabilities.

use super::*;

/// The shapes of one attention call: `q`, `k`, `v` and the context are
/// `[batch, seq, heads · head_dim]`, as the projections produce and consume them.
#[derive(Clone, Copy, Debug)]
pub(super) struct Heads {
    pub(super) batch: usize,
    pub(super) seq: usize,
    pub(super) heads: usize,
    head_dim: usize,
    pub(super) scale: f32,
}

impl Heads {
    /// The shapes of `q`, `k`, `v` split into `heads`.
    pub(super) fn split(q: [usize; 3], k: [usize; 3], v: [usize; 3], heads: usize) -> Self {
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

    pub(super) fn width(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Head `h` of sequence `b` in a `[batch, seq, width]` buffer: `seq × head_dim`.
    pub(super) fn of<'a>(&self, x: &'a [f32], task: usize) -> Matrix<'a> {
        let (b, h) = (task / self.heads, task % self.heads);
        Matrix::rows(x, self.batch * self.seq, self.width()).block(
            b * self.seq,
            h * self.head_dim,
            self.seq,
            self.head_dim,
        )
    }

    /// Where head `h` of sequence `b` starts in a `[batch, seq, width]` buffer.
    pub(super) fn offset(&self, task: usize) -> usize {
        let (b, h) = (task / self.heads, task % self.heads);
        b * self.seq * self.width() + h * self.head_dim
    }

    /// The `[seq, seq]` block of head `task` in a `[batch, heads, seq, seq]` buffer.
    pub(super) fn square(&self, task: usize) -> std::ops::Range<usize> {
        let size = self.seq * self.seq;
        task * size..(task + 1) * size
    }
}

/// What attention's backward needs: its inputs, the probabilities before dropout, and
/// the dropout draw (recomputed rather than stored).
#[derive(Clone, Debug)]
struct AttentionState {
    pub(super) q: FlexTensor,
    pub(super) k: FlexTensor,
    pub(super) v: FlexTensor,
    probs: FlexTensor,
    pub(super) mask: Option<Mask>,
    pub(super) shape: Heads,
}

#[derive(Debug)]
struct AttentionBackward;

/// A buffer of `n` values that parallel tasks write, disjoint parts each, through its
/// address; not zeroed first: see [`Shared::written`].
struct Shared {
    pub(super) buffer: Vec<f32>,
    pub(super) len: usize,
    address: usize,
}

impl Shared {
    pub(super) fn new(n: usize) -> Self {
        let mut buffer = Vec::with_capacity(n);
        let address = buffer.as_mut_ptr() as usize;
        Self {
            buffer,
            len: n,
            address,
        }
    }

    pub(super) fn at(&self, offset: usize) -> *mut f32 {
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
pub(super) fn attention(
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
pub(super) fn attention_values(
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
