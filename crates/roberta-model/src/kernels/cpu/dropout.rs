//! Dropout: a keep mask drawn from a counter-based hash of the backend's seed, so the
//! backward pass recomputes it instead of storing it.

use super::*;

/// One dropout draw. Element `i` keeps its value when `hash(i·φ + key)` is at least
/// `threshold`, with `hash` a 32-bit integer mixer (Wellons' lowbias32) and φ the
/// golden-ratio constant: a counter-based generator, so the backward pass recomputes the
/// mask instead of storing it, any block of elements can be drawn in parallel, and the
/// arithmetic is 32-bit lanes the compiler vectorises. Indices wrap at 2³²
/// elements, beyond any activation here.
#[derive(Clone, Copy, Debug)]
pub(super) struct Mask {
    key: u32,
    threshold: u32,
    pub(super) scale: f32,
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
    pub(super) fn draw(prob: f64) -> Self {
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
    pub(super) fn masked(&self, start: usize, xs: &[f32]) -> Vec<f32> {
        let mut out = Vec::with_capacity(xs.len());
        self.fill(start, xs, &mut out.spare_capacity_mut()[..xs.len()]);
        // SAFETY: `fill` wrote all `xs.len()` elements.
        unsafe { out.set_len(xs.len()) };
        out
    }

    /// Writes elements `start..start + xs.len()` of the masked tensor whose values
    /// there are `xs`.
    pub(super) fn fill(&self, start: usize, xs: &[f32], out: &mut [MaybeUninit<f32>]) {
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

pub(super) fn dropout<const D: usize>(x: Tensor<Train, D>, prob: f64) -> Tensor<Train, D> {
    let mask = Mask::draw(prob);
    let x = primitive(x);
    let y = mask.apply(x.primitive.clone());
    record(DropoutBackward, [&x], y, mask)
}

// ---------------------------------------------------------------------------------
// LayerNorm
