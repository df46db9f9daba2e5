//! The sum of squares against its scalar twin, bitwise: every length from empty through
//! several lane groups and tails, values including ±0, ±∞, NaN, subnormals and the largest f32.
use dropit_simd::{reduce::sum_of_squares, reference};
use proptest::prelude::*;

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -10.0f32..10.0,
        1 => prop::sample::select(vec![0.0f32, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-42, f32::MAX]),
    ]
}

fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

proptest! {
    #[test]
    fn the_kernel_is_its_twin(x in prop::collection::vec(value(), 0..300)) {
        let (got, want) = (sum_of_squares(&x), reference::sum_of_squares(&x));
        prop_assert!(same(got, want), "{got} vs {want}");
        prop_assert_eq!(got.is_finite(), x.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn edge_cases() {
    assert_eq!(sum_of_squares(&[]).to_bits(), 0f64.to_bits());
    assert_eq!(sum_of_squares(&[-0.0]).to_bits(), 0f64.to_bits());
    assert_eq!(sum_of_squares(&[-2.0]), 4.0);
    // f32::MAX² overflows f32 but not f64.
    let big = vec![f32::MAX; 1000];
    let s = sum_of_squares(&big);
    assert!(s.is_finite() && s == reference::sum_of_squares(&big));
    assert!(sum_of_squares(&[1.0, f32::NAN]).is_nan());
    assert_eq!(sum_of_squares(&[1.0, f32::NEG_INFINITY]), f64::INFINITY);
    // A long buffer whose order matters: the same bits as the twin.
    let long: Vec<f32> = (0..100_003)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3 - 0.5)
        .collect();
    assert_eq!(
        sum_of_squares(&long).to_bits(),
        reference::sum_of_squares(&long).to_bits()
    );
}
