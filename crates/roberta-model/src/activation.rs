use burn::prelude::*;

/// Exact (erf) GELU written from primitive ops, so that autodiff differentiates erf
/// itself: burn 0.21's default `gelu_backward`, used by the cubecl backends, is the
/// derivative of the tanh approximation and would train with slightly wrong gradients.
pub fn gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let cdf = (x.clone() * std::f64::consts::FRAC_1_SQRT_2)
        .erf()
        .add_scalar(1.0)
        * 0.5;
    x * cdf
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::{Autodiff, Flex};

    #[test]
    fn matches_erf_gelu_and_its_derivative() {
        type B = Autodiff<Flex>;
        let device = Default::default();
        let xs = [-3.0f32, -1.0, -0.3, 0.0, 0.5, 2.0];
        let x = Tensor::<B, 1>::from_floats(xs, &device).require_grad();
        let y = gelu(x.clone());
        let grads = y.clone().sum().backward();
        let dy = x.grad(&grads).unwrap().into_data().to_vec::<f32>().unwrap();
        let y = y.into_data().to_vec::<f32>().unwrap();
        for (i, &v) in xs.iter().enumerate() {
            let v = v as f64;
            let phi = (-v * v / 2.0).exp() / (2.0 * std::f64::consts::PI).sqrt();
            let cdf = 0.5 * (1.0 + erf(v / std::f64::consts::SQRT_2));
            assert!((y[i] as f64 - v * cdf).abs() < 1e-6, "gelu({v})");
            assert!((dy[i] as f64 - (cdf + v * phi)).abs() < 1e-5, "gelu'({v})");
        }
    }

    /// Abramowitz–Stegun 7.1.26 is too coarse for a 1e-6 check; this series is exact
    /// to double precision on the small range tested.
    fn erf(x: f64) -> f64 {
        let mut sum = 0.0;
        let mut term = x;
        for n in 0..60 {
            sum += term / (2 * n + 1) as f64;
            term *= -x * x / (n + 1) as f64;
        }
        sum * 2.0 / std::f64::consts::PI.sqrt()
    }
}
