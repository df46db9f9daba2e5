//! Bit masks against their scalar twins.
mod common;

use dropit_simd::mask::{
    apply_mask, count_ones, mask_in_place, mask_words, positive_mask, relu_forward, relu6_forward,
};
use dropit_simd::reference;
use proptest::prelude::*;

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -10.0f32..10.0,
        1 => prop::sample::select(vec![0.0f32, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-42]),
    ]
}

proptest! {
    #[test]
    fn masks_match_twin(x in prop::collection::vec(value(), 0..300), dy in prop::collection::vec(-5.0f32..5.0, 300)) {
        let n = x.len();
        let mut a = vec![u64::MAX; mask_words(n)];
        let mut b = vec![0u64; mask_words(n)];
        positive_mask(&x, &mut a).unwrap();
        reference::positive_mask(&x, &mut b).unwrap();
        prop_assert_eq!(&a, &b);
        prop_assert_eq!(count_ones(&a), x.iter().filter(|&&v| v > 0.0).count());

        let (mut da, mut db) = (vec![1.0; n], vec![2.0; n]);
        apply_mask(&dy[..n], &a, &mut da).unwrap();
        reference::apply_mask(&dy[..n], &b, &mut db).unwrap();
        prop_assert_eq!(&da, &db);
        let mut inplace = dy[..n].to_vec();
        mask_in_place(&mut inplace, &a).unwrap();
        prop_assert_eq!(&inplace, &db);

        let mut y = x.clone();
        let mut c = vec![0u64; mask_words(n)];
        relu_forward(&mut y, &mut c).unwrap();
        prop_assert_eq!(&c, &a);
        for (v, r) in x.iter().zip(&y) {
            if v.is_nan() { prop_assert!(r.is_nan()) } else { prop_assert_eq!(*r, v.max(0.0)) }
        }

        // ReLU6: the bits of the scalar clamp, and the mask where 0 < x < 6.
        let x6: Vec<f32> = x.iter().map(|v| v * 0.8 + 1.0).collect();
        let mut y6 = x6.clone();
        let mut c6 = vec![u64::MAX; mask_words(n)];
        relu6_forward(&mut y6, &mut c6).unwrap();
        for (i, (v, r)) in x6.iter().zip(&y6).enumerate() {
            let want = if v.is_nan() { *v } else { v.clamp(0.0, 6.0) };
            prop_assert!(r.to_bits() == want.to_bits() || (r.is_nan() && want.is_nan()), "{} → {}", v, r);
            prop_assert_eq!(c6[i / 64] >> (i % 64) & 1 == 1, *v > 0.0 && *v < 6.0);
        }
        prop_assert!(c6.last().is_none_or(|w| n % 64 == 0 || w >> (n % 64) == 0));
    }
}

#[test]
fn wrong_lengths_are_errors() {
    assert!(positive_mask(&[1.0; 65], &mut [0u64; 1]).is_err());
    assert!(apply_mask(&[1.0; 10], &[0u64; 1], &mut [0.0; 9]).is_err());
    assert!(apply_mask(&[1.0; 10], &[], &mut [0.0; 10]).is_err());
}
