//! The eight-lane exp and GELU against their `libm` twins.
use dropit_simd::{act, reference};
use proptest::prelude::*;

fn close(got: f32, want: f32, rel: f32, abs: f32) -> bool {
    (got.is_nan() && want.is_nan()) || got == want || (got - want).abs() <= abs + rel * want.abs()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn exp_within_a_few_ulp(v in prop::collection::vec(-100.0f32..90.0, 0..70), shift in -5.0f32..5.0) {
        let (mut a, mut b) = (v.clone(), v.clone());
        let sa = act::exp_shifted(&mut a, shift);
        let sb = reference::exp_shifted(&mut b, shift);
        for (i, (x, y)) in a.iter().zip(&b).enumerate() {
            prop_assert!(close(*x, *y, 4e-7, 1e-37), "exp({} − {shift}): {x} vs {y}", v[i]);
        }
        prop_assert!(close(sa, sb, 1e-5, 1e-37), "sum {sa} vs {sb}");
    }

    #[test]
    fn gelu_and_slope_match(v in prop::collection::vec(-12.0f32..12.0, 0..70), tanh: bool) {
        let (mut g, mut d, mut both, mut slope) = (v.clone(), v.clone(), v.clone(), vec![0.0; v.len()]);
        act::gelu(&mut g, tanh);
        act::gelu_slope(&mut d, tanh);
        act::gelu_with_slope(&mut both, &mut slope, tanh).unwrap();
        for (i, &x) in v.iter().enumerate() {
            let (rg, rd) = reference::gelu(x, tanh);
            let abs = 3e-7 * (1.0 + x.abs());
            prop_assert!(close(g[i], rg, 2e-6, abs), "gelu({x}): {} vs {rg}", g[i]);
            prop_assert!(close(d[i], rd, 2e-6, abs), "gelu'({x}): {} vs {rd}", d[i]);
            prop_assert_eq!(both[i].to_bits(), g[i].to_bits());
            prop_assert_eq!(slope[i].to_bits(), d[i].to_bits());
        }
    }
}

#[test]
fn edge_values() {
    let mut v = [
        f32::NAN,
        f32::INFINITY,
        f32::NEG_INFINITY,
        100.0,
        -100.0,
        0.0,
        88.0,
        -87.0,
        1.0,
    ];
    act::exp_shifted(&mut v, 0.0);
    assert!(v[0].is_nan());
    assert_eq!(&v[1..6], &[f32::INFINITY, 0.0, f32::INFINITY, 0.0, 1.0]);
    assert!(close(v[6], libm::expf(88.0), 4e-7, 0.0));
    assert!(close(v[7], libm::expf(-87.0), 4e-7, 0.0));
    assert!(close(v[8], core::f32::consts::E, 2e-7, 0.0));
    // GELU: NaN stays NaN, large |x| goes to x or 0 with slope 1 or 0.
    let mut g = [f32::NAN, 30.0, -30.0, 0.0];
    let mut d = [0.0; 4];
    act::gelu_with_slope(&mut g, &mut d, false).unwrap();
    assert!(g[0].is_nan() && d[0].is_nan());
    assert_eq!((g[1], d[1]), (30.0, 1.0));
    assert_eq!((g[2].abs(), d[2].abs()), (0.0, 0.0));
    assert_eq!((g[3], d[3]), (0.0, 0.5));
    act::gelu_with_slope(&mut [0.0; 3], &mut [0.0; 2], false).unwrap_err();
}
