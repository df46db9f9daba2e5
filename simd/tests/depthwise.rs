//! Depthwise Conv2d kernels: bitwise equal to their scalar twins, exact adjoint identities on
//! integer data, the sparse (DropIT) weight gradient against the dense one on the scattered
//! input, PyTorch fixtures, and the edge cases (one element, ties, keep nothing/all, NaN, bad
//! sizes).
mod common;

use common::fixture::Fixture;
use common::{Buf, FORMATS, normals};
use dropit_simd::Error;
use dropit_simd::depthwise::{backward_input, forward, grad_weight, weight_len};
use dropit_simd::format::{Format, PosForm, ValueType};
use dropit_simd::pack::{pack, select_and_pack, unpack};
use dropit_simd::reference;
use dropit_simd::select::{kept_in_blocks, topk_threshold};
use dropit_simd::spmm::{ConvGeom, depthwise_grad_w};
use proptest::prelude::*;

/// A depthwise geometry with a square kernel, stride and padding.
fn geom(n: usize, hw: (usize, usize), c: usize, k: usize, s: usize, p: usize) -> ConvGeom {
    ConvGeom {
        n,
        h: hw.0,
        w: hw.1,
        cin: c,
        cout: c,
        kh: k,
        kw: k,
        stride: (s, s),
        pad: (p, p),
    }
}

fn y_len(g: &ConvGeom) -> usize {
    let (ho, wo) = g.out_hw().unwrap();
    g.n * ho * wo * g.cin
}

/// Small integers in `-3..=3`: every sum below is exact in f32, whatever its order.
fn ints(n: usize, seed: u64) -> Vec<f32> {
    normals(n, seed)
        .iter()
        .map(|v| (v * 2.0).round().clamp(-3.0, 3.0) + 0.0)
        .collect()
}

/// Bitwise equality (any two NaNs count as equal).
#[track_caller]
fn assert_bits(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!(
            a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()),
            "{what}[{i}]: {a:e} vs {b:e}"
        );
    }
}

/// `|got − want| ≤ tol · max(1, scale)` elementwise, NaN where and only where `want` is NaN.
#[track_caller]
fn assert_within(what: &str, got: &[f32], want: &[f32], scale: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, ((&a, &b), &s)) in got.iter().zip(want).zip(scale).enumerate() {
        if b.is_nan() {
            assert!(a.is_nan(), "{what}[{i}]: {a} vs NaN");
        } else {
            assert!(
                (a - b).abs() <= tol * s.abs().max(1.0),
                "{what}[{i}]: {a:e} vs {b:e} (scale {s:e})"
            );
        }
    }
}

/// Every dense kernel is bitwise equal to its scalar twin (same summation order).
fn check_dense(g: ConvGeom, seed: u64) {
    let c = g.cin;
    let x = normals(g.input_len(), seed);
    let w = normals(weight_len(&g), seed + 1);
    let bias = normals(c, seed + 2);
    let dy = normals(y_len(&g), seed + 3);

    for b in [None, Some(&bias[..])] {
        let mut got = vec![f32::NAN; y_len(&g)];
        let mut want = vec![0.0; y_len(&g)];
        forward(&x, &g, &w, b, &mut got).unwrap();
        reference::depthwise_forward(&x, &g, &w, b, &mut want).unwrap();
        assert_bits("forward", &got, &want);
    }
    for acc in [false, true] {
        // Overwriting must not read the old contents: start from NaN.
        let start = if acc {
            normals(g.input_len(), seed + 4)
        } else {
            vec![f32::NAN; g.input_len()]
        };
        let (mut got, mut want) = (start.clone(), start);
        backward_input(&dy, &g, &w, &mut got, acc).unwrap();
        reference::depthwise_backward_input(&dy, &g, &w, &mut want, acc).unwrap();
        assert_bits("backward_input", &got, &want);
    }
    // Accumulates: start from a non-zero gradient.
    let mut got = normals(weight_len(&g), seed + 5);
    let mut want = got.clone();
    grad_weight(&x, &g, &dy, &mut got).unwrap();
    reference::depthwise_grad_w(&x, &g, &dy, &mut want).unwrap();
    assert_bits("grad_weight", &got, &want);
}

/// Exact checks on integer data: the three kernels are mutually adjoint,
/// `⟨conv(x, w), dy⟩ = ⟨x, dx⟩ = ⟨w, gw⟩`, and the bias only shifts the output.
fn check_exact(g: ConvGeom, seed: u64) {
    let x = ints(g.input_len(), seed);
    let w = ints(weight_len(&g), seed + 1);
    let dy = ints(y_len(&g), seed + 2);
    let bias = ints(g.cin, seed + 3);
    let dot = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(a, b)| (a * b) as f64).sum::<f64>();

    let mut y = vec![0.0; y_len(&g)];
    forward(&x, &g, &w, None, &mut y).unwrap();
    let mut yb = vec![0.0; y_len(&g)];
    forward(&x, &g, &w, Some(&bias), &mut yb).unwrap();
    for (i, (a, b)) in y.iter().zip(&yb).enumerate() {
        assert_eq!(a + bias[i % g.cin], *b);
    }
    let mut dx = vec![0.0; g.input_len()];
    backward_input(&dy, &g, &w, &mut dx, false).unwrap();
    let mut gw = vec![0.0; weight_len(&g)];
    grad_weight(&x, &g, &dy, &mut gw).unwrap();
    let (a, b, c) = (dot(&y, &dy), dot(&x, &dx), dot(&w, &gw));
    assert_eq!(a, b, "⟨y, dy⟩ vs ⟨x, dx⟩");
    assert_eq!(a, c, "⟨y, dy⟩ vs ⟨w, gw⟩");

    // Accumulating input gradient: exactly the old value plus the fresh one.
    let old = ints(g.input_len(), seed + 4);
    let mut acc = old.clone();
    backward_input(&dy, &g, &w, &mut acc, true).unwrap();
    for ((a, o), d) in acc.iter().zip(&old).zip(&dx) {
        assert_eq!(*a, o + d);
    }
}

/// Packs `x` keeping its `k` largest magnitudes; returns the buffer and the scattered input.
fn packed(x: &[f32], k: usize, fmt: Format) -> (Buf, Vec<f32>) {
    let mut b = Buf::new(fmt, x.len(), k);
    pack(x, &topk_threshold(x, k).unwrap(), &mut b.packed_mut()).unwrap();
    let mut dense = vec![0.0; x.len()];
    unpack(&b.packed(), &mut dense).unwrap();
    (b, dense)
}

/// The sparse weight gradient against the dense twin on the scattered input: within 1e-5 of
/// the sum of the magnitudes of what is summed (the orders differ), bitwise on integer data.
fn check_sparse(g: ConvGeom, keep: f64, fmt: Format, seed: u64, integer: bool) {
    let data = if integer { ints } else { normals };
    let x = data(g.input_len(), seed);
    let dy = data(y_len(&g), seed + 1);
    let k = (x.len() as f64 * keep) as usize;
    let (b, dense) = packed(&x, k, fmt);
    let start = data(weight_len(&g), seed + 2);
    let (mut got, mut want) = (start.clone(), start.clone());
    depthwise_grad_w(&b.packed(), &g, &dy, &mut got).unwrap();
    reference::depthwise_grad_w(&dense, &g, &dy, &mut want).unwrap();
    if integer {
        // Equal values (a skipped `+ 0·dy` may leave a −0 where the dense sum has +0).
        assert_eq!(got, want, "sparse grad_w (integers)");
    } else {
        let abs = |v: &[f32]| v.iter().map(|v| v.abs()).collect::<Vec<_>>();
        let mut scale = abs(&start);
        reference::depthwise_grad_w(&abs(&dense), &g, &abs(&dy), &mut scale).unwrap();
        assert_within("sparse grad_w", &got, &want, &scale, 1e-5);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn dense_kernels_match_twins(n in 1usize..3, h in 1usize..9, w in 1usize..9, c in 1usize..20,
                                 kh in 1usize..5, kw in 1usize..5, sh in 1usize..4,
                                 sw in 1usize..4, ph in 0usize..3, pw in 0usize..3,
                                 seed in 0u64..1000) {
        let g = ConvGeom { n, h, w, cin: c, cout: c, kh, kw, stride: (sh, sw), pad: (ph, pw) };
        prop_assume!(g.out_hw().is_ok());
        check_dense(g, seed);
        check_exact(g, seed);
    }

    #[test]
    fn sparse_matches_dense(n in 1usize..3, h in 1usize..9, w in 1usize..9, c in 1usize..20,
                            kh in 1usize..5, kw in 1usize..5, sh in 1usize..4, sw in 1usize..4,
                            ph in 0usize..3, pw in 0usize..3, keep in 0.0f64..=1.0,
                            f in 0usize..9, seed in 0u64..1000) {
        let g = ConvGeom { n, h, w, cin: c, cout: c, kh, kw, stride: (sh, sw), pad: (ph, pw) };
        prop_assume!(g.out_hw().is_ok());
        check_sparse(g, keep, FORMATS[f], seed, false);
        check_sparse(g, keep, FORMATS[f], seed, true);
    }
}

/// Channel counts that exercise every block width (32, 8, 1) and the trainer's shapes.
#[test]
fn block_widths_and_workload_shapes() {
    for (i, c) in [1, 7, 8, 9, 31, 32, 33, 45, 77, 96].into_iter().enumerate() {
        for (k, s, p) in [(3, 1, 1), (3, 2, 1), (5, 1, 2), (1, 1, 0)] {
            let g = geom(2, (6, 5), c, k, s, p);
            check_dense(g, 10 * i as u64);
            check_exact(g, 10 * i as u64);
        }
    }
    let g = geom(2, (14, 14), 96, 3, 1, 1);
    check_dense(g, 1);
    check_sparse(
        g,
        0.1,
        Format::new(ValueType::Bf16, PosForm::Bitmap),
        2,
        false,
    );
    check_sparse(g, 0.1, Format::new(ValueType::F32, PosForm::U32), 3, true);
    let g = geom(2, (28, 28), 32, 3, 2, 1);
    check_dense(g, 4);
    check_sparse(
        g,
        0.3,
        Format::new(ValueType::F32, PosForm::Block16),
        5,
        false,
    );
}

/// Per-block selection (`select_and_pack`) feeds the sparse gradient as well as a global one.
#[test]
fn block_selection() {
    let g = geom(3, (7, 6), 13, 3, 2, 1);
    let x = normals(g.input_len(), 1);
    let dy = normals(y_len(&g), 2);
    for (block, keep) in [(64, 0.1f32), (100, 0.5), (g.input_len(), 0.25)] {
        let k = kept_in_blocks(x.len(), block, keep).unwrap();
        for fmt in FORMATS {
            let mut b = Buf::new(fmt, x.len(), k);
            select_and_pack(&x, block, keep, &mut b.packed_mut()).unwrap();
            let mut dense = vec![0.0; x.len()];
            unpack(&b.packed(), &mut dense).unwrap();
            let (mut got, mut want) = (vec![0.0; weight_len(&g)], vec![0.0; weight_len(&g)]);
            depthwise_grad_w(&b.packed(), &g, &dy, &mut got).unwrap();
            reference::depthwise_grad_w(&dense, &g, &dy, &mut want).unwrap();
            let scale = vec![100.0; want.len()];
            assert_within("block-selected sparse grad_w", &got, &want, &scale, 1e-5);
        }
    }
}

#[test]
fn one_element() {
    let g = geom(1, (1, 1), 1, 1, 1, 0);
    let mut y = [0.0];
    forward(&[2.5], &g, &[-1.5], Some(&[0.25]), &mut y).unwrap();
    assert_eq!(y, [0.25 + 2.5 * -1.5]);
    let mut dx = [7.0];
    backward_input(&[3.0], &g, &[-1.5], &mut dx, false).unwrap();
    assert_eq!(dx, [-4.5]);
    backward_input(&[3.0], &g, &[-1.5], &mut dx, true).unwrap();
    assert_eq!(dx, [-9.0]);
    let mut gw = [1.0];
    grad_weight(&[2.5], &g, &[3.0], &mut gw).unwrap();
    assert_eq!(gw, [8.5]);
    for (k, want) in [(0, 1.0), (1, 8.5)] {
        for fmt in FORMATS {
            let (b, _) = packed(&[2.5], k, fmt);
            let mut gw = [1.0];
            depthwise_grad_w(&b.packed(), &g, &[3.0], &mut gw).unwrap();
            assert_eq!(gw, [want], "{fmt:?}, k = {k}");
        }
    }
    // A 1×1 input under a 3×3 kernel with padding 1: only the centre tap is inside.
    let g = geom(1, (1, 1), 2, 3, 1, 1);
    let w: Vec<f32> = (0..18).map(|i| i as f32).collect();
    let mut y = [0.0; 2];
    forward(&[1.0, 2.0], &g, &w, None, &mut y).unwrap();
    assert_eq!(y, [8.0, 18.0]);
}

/// Every element the same magnitude: ties are kept in index order, and the sparse gradient is
/// exactly the dense one on the kept prefix.
#[test]
fn all_ties() {
    let g = geom(2, (5, 4), 3, 3, 1, 1);
    let x: Vec<f32> = (0..g.input_len())
        .map(|i| if i % 3 == 0 { -1.25 } else { 1.25 })
        .collect();
    let dy = ints(y_len(&g), 9);
    for k in [0, 1, 17, x.len() / 2, x.len() - 1, x.len()] {
        for fmt in FORMATS {
            let (b, dense) = packed(&x, k, fmt);
            for (i, (&d, &v)) in dense.iter().zip(&x).enumerate() {
                assert_eq!(d, if i < k { v } else { 0.0 }, "k = {k}, element {i}");
            }
            let (mut got, mut want) = (vec![0.5; weight_len(&g)], vec![0.5; weight_len(&g)]);
            depthwise_grad_w(&b.packed(), &g, &dy, &mut got).unwrap();
            reference::depthwise_grad_w(&dense, &g, &dy, &mut want).unwrap();
            assert_bits("ties", &got, &want);
        }
    }
}

#[test]
fn keep_nothing_and_keep_all() {
    let g = geom(2, (7, 7), 5, 3, 2, 1);
    let x = normals(g.input_len(), 3);
    let dy = normals(y_len(&g), 4);
    let start = normals(weight_len(&g), 5);
    for fmt in FORMATS {
        // Nothing kept: the gradient is untouched.
        let (b, _) = packed(&x, 0, fmt);
        let mut gw = start.clone();
        depthwise_grad_w(&b.packed(), &g, &dy, &mut gw).unwrap();
        assert_bits("keep nothing", &gw, &start);

        // Everything kept: the dense weight gradient (of the rounded values).
        let (b, dense) = packed(&x, x.len(), fmt);
        let (mut got, mut want) = (start.clone(), start.clone());
        depthwise_grad_w(&b.packed(), &g, &dy, &mut got).unwrap();
        grad_weight(&dense, &g, &dy, &mut want).unwrap();
        if fmt.values == ValueType::F32 {
            assert_eq!(dense, x);
        }
        let scale = vec![50.0; want.len()];
        assert_within("keep all", &got, &want, &scale, 1e-5);
    }
}

/// A NaN input reaches exactly the outputs (and weight-gradient taps) whose window covers it, in
/// its channel, in every kernel alike.
#[test]
fn nan_input() {
    let g = geom(1, (6, 6), 4, 3, 2, 1);
    let mut x = normals(g.input_len(), 6);
    let nan_at = ((2 * g.w + 3) * g.cin) + 1; // pixel (2, 3), channel 1
    x[nan_at] = f32::NAN;
    let w = normals(weight_len(&g), 7);
    let dy = normals(y_len(&g), 8);

    let (mut y, mut yr) = (vec![0.0; y_len(&g)], vec![0.0; y_len(&g)]);
    forward(&x, &g, &w, None, &mut y).unwrap();
    reference::depthwise_forward(&x, &g, &w, None, &mut yr).unwrap();
    assert_bits("forward with NaN", &y, &yr);
    let (ho, wo) = g.out_hw().unwrap();
    // Output o's window (stride 2, padding 1, kernel 3) covers input i iff 0 ≤ i + 1 − 2·o < 3.
    let hit = |i: usize, o: usize| (i + 1).checked_sub(2 * o).is_some_and(|a| a < 3);
    let mut nans = 0;
    for oh in 0..ho {
        for ow in 0..wo {
            for c in 0..g.cin {
                let covers = c == 1 && hit(2, oh) && hit(3, ow);
                assert_eq!(
                    y[(oh * wo + ow) * g.cin + c].is_nan(),
                    covers,
                    "({oh}, {ow}, {c})"
                );
                nans += covers as usize;
            }
        }
    }
    assert_eq!(nans, 2);

    let (mut gw, mut gwr) = (vec![0.0; weight_len(&g)], vec![0.0; weight_len(&g)]);
    grad_weight(&x, &g, &dy, &mut gw).unwrap();
    reference::depthwise_grad_w(&x, &g, &dy, &mut gwr).unwrap();
    assert_bits("grad_weight with NaN", &gw, &gwr);
    assert!(gw.iter().any(|v| v.is_nan()));
    for (i, v) in gw.iter().enumerate() {
        assert!(
            !v.is_nan() || i % g.cin == 1,
            "NaN leaked to channel {}",
            i % g.cin
        );
    }

    // NaN sorts above every magnitude, so it is always kept.
    for fmt in FORMATS {
        let (b, dense) = packed(&x, 10, fmt);
        assert!(dense[nan_at].is_nan());
        let (mut got, mut want) = (vec![0.0; weight_len(&g)], vec![0.0; weight_len(&g)]);
        depthwise_grad_w(&b.packed(), &g, &dy, &mut got).unwrap();
        reference::depthwise_grad_w(&dense, &g, &dy, &mut want).unwrap();
        assert_within("sparse with NaN", &got, &want, &[20.0; 36], 1e-5);
        assert!(got.iter().any(|v| v.is_nan()));
    }
}

/// Empty batches and zero channels do nothing and succeed.
#[test]
fn empty_shapes() {
    for g in [geom(0, (4, 4), 3, 3, 1, 1), geom(2, (4, 4), 0, 3, 1, 1)] {
        let mut y = vec![0.0; y_len(&g)];
        forward(
            &vec![0.0; g.input_len()],
            &g,
            &vec![0.0; weight_len(&g)],
            None,
            &mut y,
        )
        .unwrap();
        let mut dx = vec![0.0; g.input_len()];
        backward_input(&y, &g, &vec![0.0; weight_len(&g)], &mut dx, false).unwrap();
        let mut gw = vec![0.0; weight_len(&g)];
        grad_weight(&dx, &g, &y, &mut gw).unwrap();
        let (b, _) = packed(&dx, 0, FORMATS[0]);
        depthwise_grad_w(&b.packed(), &g, &y, &mut gw).unwrap();
    }
}

#[test]
fn bad_sizes_are_errors() {
    let g = geom(2, (5, 5), 3, 3, 1, 1);
    let (xl, wl, yl) = (g.input_len(), weight_len(&g), y_len(&g));
    let v = |n: usize| vec![0.5f32; n];
    let is_len = |r: dropit_simd::Result<()>| matches!(r, Err(Error::Length { .. }));
    let is_invalid = |r: dropit_simd::Result<()>| matches!(r, Err(Error::Invalid { .. }));

    assert!(is_len(forward(&v(xl - 1), &g, &v(wl), None, &mut v(yl))));
    assert!(is_len(forward(&v(xl), &g, &v(wl + 1), None, &mut v(yl))));
    assert!(is_len(forward(&v(xl), &g, &v(wl), Some(&v(2)), &mut v(yl))));
    assert!(is_len(forward(&v(xl), &g, &v(wl), None, &mut v(yl + 3))));
    assert!(is_len(backward_input(
        &v(yl - 1),
        &g,
        &v(wl),
        &mut v(xl),
        false
    )));
    assert!(is_len(backward_input(&v(yl), &g, &v(0), &mut v(xl), true)));
    assert!(is_len(backward_input(
        &v(yl),
        &g,
        &v(wl),
        &mut v(xl + 1),
        false
    )));
    assert!(is_len(grad_weight(&v(xl + 1), &g, &v(yl), &mut v(wl))));
    assert!(is_len(grad_weight(&v(xl), &g, &v(yl - 1), &mut v(wl))));
    assert!(is_len(grad_weight(
        &v(xl),
        &g,
        &v(yl),
        &mut v(g.kh * g.kw * 9)
    )));

    let fmt = Format::new(ValueType::F32, PosForm::U32);
    let (b, _) = packed(&normals(xl, 1), 7, fmt);
    let (short, _) = packed(&normals(xl - 1, 1), 7, fmt);
    assert!(is_len(depthwise_grad_w(
        &short.packed(),
        &g,
        &v(yl),
        &mut v(wl)
    )));
    assert!(is_len(depthwise_grad_w(
        &b.packed(),
        &g,
        &v(yl + 1),
        &mut v(wl)
    )));
    assert!(is_len(depthwise_grad_w(
        &b.packed(),
        &g,
        &v(yl),
        &mut v(wl - 1)
    )));

    // Geometry: cin ≠ cout, a kernel larger than the padded input, a zero stride.
    let multiplier = ConvGeom { cout: 6, ..g };
    let too_big = geom(1, (2, 2), 3, 5, 1, 1);
    let zero_stride = ConvGeom {
        stride: (1, 0),
        ..g
    };
    for bad in [multiplier, too_big, zero_stride] {
        assert!(is_invalid(forward(&v(xl), &bad, &v(wl), None, &mut v(yl))));
        assert!(is_invalid(backward_input(
            &v(yl),
            &bad,
            &v(wl),
            &mut v(xl),
            false
        )));
        assert!(is_invalid(grad_weight(&v(xl), &bad, &v(yl), &mut v(wl))));
        assert!(is_invalid(depthwise_grad_w(
            &b.packed(),
            &bad,
            &v(yl),
            &mut v(wl)
        )));
        assert!(is_invalid(reference::depthwise_forward(
            &v(xl),
            &bad,
            &v(wl),
            None,
            &mut v(yl)
        )));
    }
}

// ---------------------------------------------------------------------------------------------
// PyTorch fixtures (tests/fixtures/torch_reference.py)

const DEPTHWISE_TXT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/depthwise.txt"
));
const MOBILE_TINY_TXT: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../tests/fixtures/mobile_tiny.txt"
));

/// `|got − want| ≤ tol · max(1, |want|)`.
#[track_caller]
fn assert_rel(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_within(what, got, want, want, tol);
}

#[test]
fn matches_pytorch_depthwise() {
    let f = Fixture::parse(DEPTHWISE_TXT).unwrap();
    for case in 0..4 {
        let t = |name: &str| format!("g{case}.{name}");
        let p = f.get(&t("geom")).ints();
        let [n, h, w, c, k, s, pad] = p[..] else {
            panic!("geom: {p:?}")
        };
        let g = geom(
            n as usize,
            (h as usize, w as usize),
            c as usize,
            k as usize,
            s as usize,
            pad as usize,
        );
        let (ho, wo) = g.out_hw().unwrap();
        let (n, h, w, c, k) = (g.n, g.h, g.w, g.cin, g.kh);
        let x = f.shaped(&t("x"), &[n, h, w, c]);
        let wt = f.shaped(&t("w"), &[k, k, c]);
        let b = f.shaped(&t("b"), &[c]);
        let dy = f.shaped(&t("dy"), &[n, ho, wo, c]);

        let mut y = vec![0.0; y_len(&g)];
        forward(x, &g, wt, Some(b), &mut y).unwrap();
        assert_rel(&t("y"), &y, f.shaped(&t("y"), &[n, ho, wo, c]), 1e-5);

        let mut dx = vec![f32::NAN; x.len()];
        backward_input(dy, &g, wt, &mut dx, false).unwrap();
        assert_rel(&t("dx"), &dx, f.shaped(&t("dx"), &[n, h, w, c]), 1e-5);

        let want_dw = f.shaped(&t("dw"), &[k, k, c]);
        let mut dw = vec![0.0; wt.len()];
        grad_weight(x, &g, dy, &mut dw).unwrap();
        assert_rel(&t("dw"), &dw, want_dw, 1e-5);

        // DropIT keeping everything (f32 values) is the same gradient.
        let (pb, _) = packed(x, x.len(), Format::new(ValueType::F32, PosForm::Bitmap));
        let mut dw = vec![0.0; wt.len()];
        depthwise_grad_w(&pb.packed(), &g, dy, &mut dw).unwrap();
        assert_rel(&t("dw (sparse, keep all)"), &dw, want_dw, 1e-5);

        // The bias gradient (the caller's) is the sum of dY over (n, ho, wo).
        let mut db = vec![0.0f32; c];
        for (i, v) in dy.iter().enumerate() {
            db[i % c] += v;
        }
        assert_rel(&t("db"), &db, f.shaped(&t("db"), &[c]), 1e-5);
    }
}

/// The tiny network's fixture parses, has the documented names and shapes, and its depthwise
/// layer agrees with ours: `act.dw = relu6(depthwise(act.stem, dw.weight))`.
#[test]
fn mobile_tiny_fixture_is_consistent() {
    let f = Fixture::parse(MOBILE_TINY_TXT).unwrap();
    let shapes: [(&str, &[usize]); 18] = [
        ("x", &[4, 8, 8, 1]),
        ("labels", &[4]),
        ("stem.weight", &[3, 3, 1, 8]),
        ("dw.weight", &[3, 3, 8]),
        ("pw.weight", &[1, 1, 8, 6]),
        ("fc.weight", &[6, 3]),
        ("fc.bias", &[3]),
        ("loss", &[1]),
        ("stem.weight.grad", &[3, 3, 1, 8]),
        ("dw.weight.grad", &[3, 3, 8]),
        ("pw.weight.grad", &[1, 1, 8, 6]),
        ("fc.weight.grad", &[6, 3]),
        ("fc.bias.grad", &[3]),
        ("act.stem", &[4, 8, 8, 8]),
        ("act.dw", &[4, 4, 4, 8]),
        ("act.pw", &[4, 4, 4, 6]),
        ("act.pool", &[4, 6]),
        ("logits", &[4, 3]),
    ];
    assert_eq!(f.names, shapes.map(|(n, _)| n.to_string()));
    for (name, dims) in shapes {
        f.shaped(name, dims);
    }
    assert!(f.get("labels").ints().iter().all(|&l| (0..3).contains(&l)));

    let g = geom(4, (8, 8), 8, 3, 2, 1);
    let mut y = vec![0.0; y_len(&g)];
    forward(
        f.get("act.stem").data.as_slice(),
        &g,
        &f.get("dw.weight").data,
        None,
        &mut y,
    )
    .unwrap();
    let y: Vec<f32> = y.iter().map(|v| v.clamp(0.0, 6.0)).collect();
    assert_rel("act.dw", &y, &f.get("act.dw").data, 1e-5);
}
