//! Linear layers as one 2-D product over all tokens, with the bias, and their
//! gradients; the tied decoder is the same product with the transposed weight.

use super::*;

/// A row-major `rows × cols` view into a buffer, any strides (so a transpose is a view).
#[derive(Clone, Copy)]
pub(super) struct Matrix<'a> {
    data: &'a [f32],
    pub(super) rows: usize,
    cols: usize,
    row_stride: isize,
    col_stride: isize,
}

impl<'a> Matrix<'a> {
    /// A contiguous 2-D tensor.
    pub(super) fn of(x: &'a FlexTensor) -> Self {
        let shape = x.layout().shape();
        Self::rows(values(x), shape[0], shape[1])
    }

    pub(super) fn rows(data: &'a [f32], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            row_stride: cols as isize,
            col_stride: 1,
        }
    }

    pub(super) fn t(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    /// The `rows × cols` block whose first element is at (`row`, `col`).
    pub(super) fn block(self, row: usize, col: usize, rows: usize, cols: usize) -> Self {
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
pub(super) unsafe fn gemm_into(
    a: Matrix,
    b: Matrix,
    out: *mut f32,
    out_row_stride: usize,
    accumulate: bool,
) {
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
    pub(super) x: FlexTensor,
    pub(super) weight: FlexTensor,
    pub(super) transposed: bool,
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
pub(super) fn linear(
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
pub(super) fn linear_values(
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
