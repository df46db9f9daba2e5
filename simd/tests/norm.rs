//! Batch norm's loops against their scalar twins, bitwise: every channel count from 1 to 40
//! (whole groups of eight and tails), any number of rows, in place or not, added or not, x̂
//! in f32 and bf16, and values including ±0, ±∞, NaN and subnormals.
use dropit_simd::norm::{Affine, Back, Xhat, channel_sums, grad_sums, grad_x, normalize};
use dropit_simd::reference;
use half::bf16;
use proptest::prelude::*;

fn value() -> impl Strategy<Value = f32> {
    prop_oneof![
        8 => -10.0f32..10.0,
        1 => prop::sample::select(vec![0.0f32, -0.0, f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1e-42, 3.4e38]),
    ]
}

/// The same bits, or both NaN (a NaN's payload is not part of the contract).
fn same(a: f64, b: f64) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

fn same_all<T: Copy>(a: &[T], b: &[T], f: impl Fn(T) -> f64) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(&x, &y)| same(f(x), f(y)))
}

/// A case: `c` channels, rows of values, and per-channel constants.
fn case() -> impl Strategy<Value = (usize, Vec<f32>, Vec<f32>, Vec<f32>)> {
    (1usize..=40, 0usize..12).prop_flat_map(|(c, r)| {
        (
            Just(c),
            prop::collection::vec(value(), r * c),
            prop::collection::vec(value(), r * c),
            prop::collection::vec(-3.0f32..3.0, 4 * c),
        )
    })
}

fn check_forward<H: Xhat + Default>(
    c: usize,
    x: &[f32],
    k: &[f32],
    bits: impl Fn(H) -> f64,
) -> Result<(), TestCaseError> {
    let mean64: Vec<f64> = k[..c].iter().map(|&v| v as f64).collect();
    for m in [None, Some(&mean64[..])] {
        let (mut a, mut b) = (vec![7.0f64; c], vec![0.0f64; c]);
        channel_sums(x, c, m, &mut a).unwrap();
        reference::bn_channel_sums(x, c, m, &mut b);
        prop_assert!(
            same_all(&a, &b, |v| v),
            "channel sums, mean {}",
            m.is_some()
        );
    }
    let aff = Affine {
        mean: &k[..c],
        inv: &k[c..2 * c],
        gamma: &k[2 * c..3 * c],
        beta: &k[3 * c..],
    };
    for in_place in [false, true] {
        let (mut ya, mut yb) = (x.to_vec(), x.to_vec());
        let (mut ha, mut hb) = (vec![H::default(); x.len()], vec![H::default(); x.len()]);
        let src = (!in_place).then_some(x);
        if !in_place {
            ya.iter_mut().for_each(|v| *v = 5.0);
            yb.iter_mut().for_each(|v| *v = 5.0);
        }
        normalize(src, &mut ya, &mut ha, c, aff).unwrap();
        reference::bn_normalize(src, &mut yb, &mut hb, c, aff);
        prop_assert!(same_all(&ya, &yb, |v| v as f64), "y, in place {in_place}");
        prop_assert!(same_all(&ha, &hb, &bits), "x̂, in place {in_place}");
    }
    Ok(())
}

fn check_backward<H: Xhat>(c: usize, dy: &[f32], h: &[H], k: &[f32]) -> Result<(), TestCaseError> {
    let (mut da, mut ga) = (vec![1.0f64; c], vec![1.0f64; c]);
    let (mut db, mut gb) = (vec![0.0f64; c], vec![0.0f64; c]);
    grad_sums(dy, h, c, &mut da, &mut ga).unwrap();
    reference::bn_grad_sums(dy, h, c, &mut db, &mut gb);
    prop_assert!(
        same_all(&da, &db, |v| v) && same_all(&ga, &gb, |v| v),
        "sums"
    );
    let back = Back {
        k: &k[..c],
        dbeta: &k[c..2 * c],
        dgamma: &k[2 * c..3 * c],
        m: dy.len().max(1) as f32 / c as f32,
    };
    for (in_place, acc) in [(false, false), (false, true), (true, false)] {
        let init: Vec<f32> = if in_place {
            dy.to_vec()
        } else {
            dy.iter().map(|v| v * 0.5).collect()
        };
        let (mut xa, mut xb) = (init.clone(), init);
        let src = (!in_place).then_some(dy);
        grad_x(src, &mut xa, h, c, back, acc).unwrap();
        reference::bn_grad_x(src, &mut xb, h, c, back, acc);
        prop_assert!(
            same_all(&xa, &xb, |v| v as f64),
            "dX, in place {in_place}, acc {acc}"
        );
    }
    Ok(())
}

proptest! {
    #[test]
    fn f32_xhat_matches_twin((c, x, dy, k) in case()) {
        check_forward::<f32>(c, &x, &k, |v| v as f64)?;
        check_backward(c, &dy, &x, &k)?;
    }

    #[test]
    fn bf16_xhat_matches_twin((c, x, dy, k) in case()) {
        check_forward::<bf16>(c, &x, &k, |v| v.to_bits() as f64)?;
        let h: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        check_backward(c, &dy, &h, &k)?;
    }
}

/// bf16 rounding is `half`'s, bit for bit, on every exponent and around every tie.
#[test]
fn bf16_rounding_is_halfs() {
    let mut x: Vec<f32> = Vec::new();
    for hi in (0..=0xFFFFu32).step_by(7) {
        for lo in [0u32, 1, 0x7FFF, 0x8000, 0x8001, 0xFFFF] {
            x.push(f32::from_bits((hi << 16) | lo));
        }
    }
    let n = x.len() / 8 * 8;
    let mut got = vec![bf16::ZERO; n];
    for (g, v) in got.chunks_exact_mut(8).zip(x.chunks_exact(8)) {
        let lanes: [f32; 8] = v.try_into().unwrap();
        bf16::store8(g, wide::f32x8::from(lanes));
    }
    for (g, &v) in got.iter().zip(&x) {
        assert_eq!(
            g.to_bits(),
            bf16::from_f32(v).to_bits(),
            "{:#010x}",
            v.to_bits()
        );
    }
}

/// Shapes that do not fit are errors, never panics.
#[test]
fn bad_lengths_are_errors() {
    let mut acc = vec![0.0; 3];
    assert!(channel_sums(&[1.0; 7], 3, None, &mut acc).is_err());
    assert!(channel_sums(&[1.0; 6], 3, None, &mut acc[..2]).is_err());
    assert!(channel_sums(&[], 0, None, &mut []).is_ok());
    let k = [1.0f32; 3];
    let aff = Affine {
        mean: &k,
        inv: &k,
        gamma: &k,
        beta: &k[..2],
    };
    let mut y = vec![0.0; 6];
    let mut h = vec![0.0f32; 6];
    assert!(normalize(None, &mut y, &mut h, 3, aff).is_err());
    let back = Back {
        k: &k,
        dbeta: &k,
        dgamma: &k,
        m: 2.0,
    };
    assert!(grad_x(Some(&[0.0; 5]), &mut y, &h, 3, back, false).is_err());
}

proptest! {
    /// Layer norm's row statistics, eight rows side by side, have the bits of one row at a time
    /// (rows of −0.0 included, where a sum's starting sign shows).
    #[test]
    fn row_stats_match_twin(c in 1usize..=40, r in 0usize..20, seed in prop::collection::vec(value(), 800), zero_row in 0usize..20) {
        let mut x: Vec<f32> = seed.iter().cycle().take(r * c).copied().collect();
        if zero_row < r {
            x[zero_row * c..][..c].fill(-0.0);
        }
        let (mut m, mut iv) = (vec![9.0f32; r], vec![9.0f32; r]);
        dropit_simd::norm::row_stats(&x, c, 1e-6, &mut m, &mut iv).unwrap();
        for k in 0..r {
            let (wm, wi) = reference::ln_row_stats(&x[k * c..][..c], 1e-6);
            prop_assert!(same(m[k] as f64, wm as f64) && same(iv[k] as f64, wi as f64), "row {}", k);
        }
    }
}

proptest! {
    /// Layer norm's row forward against its twin, f32 and bf16 x̂, in place or not.
    #[test]
    fn row_normalize_matches_twin((c, x, _dy, k) in case(), mean in -2.0f32..2.0, inv in 0.1f32..4.0) {
        let c = c.min(x.len().max(1));
        let x = &x[..x.len() / c * c];
        for row in x.chunks_exact(c) {
            let (g, b) = (&k[..c], &k[c..2 * c]);
            for in_place in [false, true] {
                let src = (!in_place).then_some(row);
                let (mut ya, mut yb) = (row.to_vec(), row.to_vec());
                let (mut ha, mut hb) = (vec![0.0f32; c], vec![0.0f32; c]);
                dropit_simd::norm::normalize_row(src, &mut ya, &mut ha, mean, inv, g, b).unwrap();
                reference::ln_normalize_row(src, &mut yb, &mut hb, mean, inv, g, b);
                prop_assert!(same_all(&ya, &yb, |v| v as f64) && same_all(&ha, &hb, |v| v as f64));
                let (mut ya, mut yb) = (row.to_vec(), row.to_vec());
                let (mut ha, mut hb) = (vec![bf16::ZERO; c], vec![bf16::ZERO; c]);
                dropit_simd::norm::normalize_row(src, &mut ya, &mut ha, mean, inv, g, b).unwrap();
                reference::ln_normalize_row(src, &mut yb, &mut hb, mean, inv, g, b);
                prop_assert!(same_all(&ya, &yb, |v| v as f64));
                prop_assert!(same_all(&ha, &hb, |v| v.to_bits() as f64));
            }
        }
    }
}

proptest! {
    /// Layer norm's backward, eight rows at a time, against its row-by-row twin: the channel
    /// sums added onto what was there, and dX written or added, f32 and bf16 x̂.
    #[test]
    fn ln_backward_matches_twin((c, x, dy, k) in case(), start in -2.0f64..2.0) {
        let n = dy.len() / c;
        let (gamma, inv) = (&k[..c], &k[c..].iter().cycle().take(n).map(|v| v.abs() + 0.1).collect::<Vec<f32>>());
        let hb: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
        for acc in [false, true] {
            for with_dx in [false, true] {
                let run = |kernel: bool, bf: bool| {
                    let (mut dg, mut db) = (vec![start; c], vec![-start; c]);
                    let mut dx: Vec<f32> = x.iter().map(|v| v * 0.25).collect();
                    let d = with_dx.then_some(&mut dx[..]);
                    match (kernel, bf) {
                        (true, false) => dropit_simd::norm::ln_backward(&dy, &x, gamma, inv, &mut dg, &mut db, d, acc).unwrap(),
                        (false, false) => reference::ln_backward(&dy, &x, gamma, inv, &mut dg, &mut db, d, acc),
                        (true, true) => dropit_simd::norm::ln_backward(&dy, &hb, gamma, inv, &mut dg, &mut db, d, acc).unwrap(),
                        (false, true) => reference::ln_backward(&dy, &hb, gamma, inv, &mut dg, &mut db, d, acc),
                    }
                    (dg, db, dx)
                };
                for bf in [false, true] {
                    let (a, b) = (run(true, bf), run(false, bf));
                    prop_assert!(same_all(&a.0, &b.0, |v| v) && same_all(&a.1, &b.1, |v| v), "sums, bf16 {}", bf);
                    prop_assert!(same_all(&a.2, &b.2, |v| v as f64), "dX, bf16 {}, acc {}, dx {}", bf, acc, with_dx);
                }
            }
        }
    }
}
