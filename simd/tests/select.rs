//! Top-k selection against its scalar twin, and the properties that define it.
mod common;

use common::normals;
use dropit_simd::Error;
use dropit_simd::reference;
use dropit_simd::select::{
    Histogram, RadixSelect, Threshold, kept_count, kept_in_blocks, key, topk_blocks, topk_threshold,
};
use proptest::prelude::*;

fn flags(x: &[f32], t: &Threshold) -> Vec<bool> {
    let mut f = vec![false; x.len()];
    reference::keep_flags(x, t, &mut f).unwrap();
    f
}

/// The defining properties: exactly k kept, nothing dropped is larger than anything kept, and
/// among equal keys at the boundary the kept ones come first.
fn check_topk(x: &[f32], k: usize) {
    let t = topk_threshold(x, k).unwrap();
    let r = reference::topk_threshold(x, k).unwrap();
    assert_eq!(t.kept(), k);
    let f = flags(x, &t);
    assert_eq!(
        f,
        flags(x, &r),
        "kernel and scalar twin keep different sets"
    );
    assert_eq!(f.iter().filter(|&&b| b).count(), k);
    let min_kept = x.iter().zip(&f).filter(|p| *p.1).map(|p| key(*p.0)).min();
    let max_dropped = x.iter().zip(&f).filter(|p| !*p.1).map(|p| key(*p.0)).max();
    if let (Some(a), Some(b)) = (min_kept, max_dropped) {
        assert!(a >= b, "kept key {a} below dropped key {b}");
        if a == b {
            let last_kept = (0..x.len()).rfind(|&i| f[i] && key(x[i]) == a).unwrap();
            let first_dropped = (0..x.len()).find(|&i| !f[i] && key(x[i]) == a).unwrap();
            assert!(last_kept < first_dropped, "ties not kept in index order");
        }
    }
}

fn special() -> impl Strategy<Value = f32> {
    prop_oneof![
        4 => -100.0f32..100.0,
        2 => prop::sample::select(vec![0.0f32, -0.0, 1.0, -1.0, 2.5]),
        1 => prop::sample::select(vec![
            f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MIN_POSITIVE,
            1e-40, -1e-42, f32::MAX, f32::MIN,
        ]),
        1 => any::<f32>(),
    ]
}

proptest! {
    #[test]
    fn matches_twin(x in prop::collection::vec(special(), 0..700), kf in 0.0f64..=1.0) {
        let k = (x.len() as f64 * kf) as usize;
        check_topk(&x, k);
    }

    #[test]
    fn chunked_histograms_merge(x in prop::collection::vec(special(), 1..600), kf in 0.0f64..=1.0, cut in 1usize..97) {
        let k = (x.len() as f64 * kf) as usize;
        let mut rs = RadixSelect::new(x.len(), k).unwrap();
        while !rs.is_done() {
            let mut total = Histogram::new();
            for c in x.chunks(cut) {
                let mut h = Histogram::new();
                rs.count(c, &mut h);
                total.merge(&h);
            }
            rs.advance(&total).unwrap();
        }
        prop_assert_eq!(rs.threshold().unwrap(), topk_threshold(&x, k).unwrap());
    }

    #[test]
    fn blocks_match_twin(x in prop::collection::vec(special(), 0..500), block in 1usize..130, keep in 0.0f32..=1.0) {
        let nb = x.len().div_ceil(block);
        let mut t = vec![Threshold::NONE; nb];
        topk_blocks(&x, block, keep, &mut t).unwrap();
        let mut total = 0;
        for (b, xb) in x.chunks(block).enumerate() {
            let k = kept_count(xb.len(), keep);
            prop_assert_eq!(t[b].kept(), k);
            prop_assert_eq!(flags(xb, &t[b]), flags(xb, &reference::topk_threshold(xb, k).unwrap()));
            total += k;
        }
        prop_assert_eq!(total, kept_in_blocks(x.len(), block, keep).unwrap());
    }
}

#[test]
fn edge_sizes_and_k() {
    check_topk(&[], 0);
    check_topk(&[3.0], 0);
    check_topk(&[3.0], 1);
    for n in [1, 7, 8, 9, 15, 16, 17, 63, 64, 65, 1000] {
        let x = normals(n, n as u64);
        for k in [0, 1, n / 3, n / 2, n - 1, n] {
            check_topk(&x, k);
        }
    }
}

#[test]
fn all_equal_and_all_zero_keep_the_first_k() {
    for v in [0.0f32, -0.0, 1.5, -1.5] {
        let x = vec![v; 100];
        for k in [0, 1, 37, 99, 100] {
            let f = flags(&x, &topk_threshold(&x, k).unwrap());
            assert!(f[..k].iter().all(|&b| b) && f[k..].iter().all(|&b| !b));
        }
    }
    // -0.0 equals 0.0: mixed signed zeros are one tie class.
    let x: Vec<f32> = (0..50)
        .map(|i| if i % 2 == 0 { 0.0 } else { -0.0 })
        .collect();
    let f = flags(&x, &topk_threshold(&x, 20).unwrap());
    assert!(f[..20].iter().all(|&b| b) && f[20..].iter().all(|&b| !b));
}

#[test]
fn nan_above_infinity_above_finite() {
    let x = [
        1.0,
        f32::INFINITY,
        -3.0,
        f32::NAN,
        f32::NEG_INFINITY,
        1e-40,
        f32::MAX,
    ];
    let f = flags(&x, &topk_threshold(&x, 1).unwrap());
    assert_eq!(f, [false, false, false, true, false, false, false]);
    let f = flags(&x, &topk_threshold(&x, 3).unwrap());
    assert_eq!(f, [false, true, false, true, true, false, false]);
    let f = flags(&x, &topk_threshold(&x, 4).unwrap());
    assert_eq!(f, [false, true, false, true, true, false, true]);
    // Subnormals order by magnitude too.
    let s = [
        f32::from_bits(1),
        -f32::from_bits(2),
        f32::from_bits(3),
        0.0,
    ];
    let f = flags(&s, &topk_threshold(&s, 2).unwrap());
    assert_eq!(f, [false, true, true, false]);
}

#[test]
fn large_tensor_with_heavy_ties() {
    // Values from a tiny set: the threshold lands inside a big tie class.
    let x: Vec<f32> = normals(3 * 65536 + 11, 5)
        .iter()
        .map(|v| (v * 2.0).round())
        .collect();
    for k in [1, 1000, 65536, 100_000, x.len() - 1] {
        check_topk(&x, k);
    }
}

#[test]
fn bad_input_is_an_error() {
    assert_eq!(
        topk_threshold(&[1.0, 2.0], 3),
        Err(Error::KTooLarge { k: 3, n: 2 })
    );
    assert!(topk_blocks(&[1.0; 4], 0, 0.5, &mut []).is_err());
    let mut t = [Threshold::NONE; 1];
    assert!(matches!(
        topk_blocks(&[1.0; 4], 2, 0.5, &mut t),
        Err(Error::Length { .. })
    ));
    let mut rs = RadixSelect::new(10, 5).unwrap();
    assert!(
        rs.advance(&Histogram::new()).is_err(),
        "an empty histogram cannot hold 5 elements"
    );
}

#[test]
fn kept_count_rounds_and_clamps() {
    assert_eq!(kept_count(10, 0.1), 1);
    assert_eq!(kept_count(784 * 128, 0.1), 10035);
    assert_eq!(kept_count(5, 0.0), 0);
    assert_eq!(kept_count(5, 1.0), 5);
    assert_eq!(kept_count(5, 2.0), 5);
    assert_eq!(kept_count(5, f32::NAN), 0);
    assert_eq!(kept_in_blocks(25, 10, 0.5).unwrap(), 5 + 5 + 3);
}

#[test]
fn sampled_guess_that_misses_falls_back() {
    // The first pass samples every 16th element; make those unrepresentative on purpose.
    let n = 1 << 15;
    let fooled: Vec<f32> = (0..n)
        .map(|i| if i % 16 == 0 { 1e-3 } else { i as f32 })
        .collect();
    let inverse: Vec<f32> = (0..n)
        .map(|i| {
            if i % 16 == 0 {
                1e6
            } else {
                1.0 + (i % 7) as f32
            }
        })
        .collect();
    let spiky: Vec<f32> = normals(n, 11)
        .iter()
        .enumerate()
        .map(|(i, v)| if i % 97 == 0 { v * 1e4 } else { *v })
        .collect();
    for x in [&fooled, &inverse, &spiky] {
        for k in [1, 100, n / 16, n / 10, n / 2, n - 3] {
            check_topk(x, k);
        }
    }
}
