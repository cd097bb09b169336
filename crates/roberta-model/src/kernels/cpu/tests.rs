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
