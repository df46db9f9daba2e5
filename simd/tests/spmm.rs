//! Sparse-recovery weight gradients equal the dense computation on the unpacked input.
mod common;

use common::{Buf, FORMATS, assert_close, normals};
use dropit_simd::Error;
use dropit_simd::format::{Format, PosForm, ValueType};
use dropit_simd::pack::{pack, unpack};
use dropit_simd::reference;
use dropit_simd::select::topk_threshold;
use dropit_simd::spmm::{
    ConvGeom, conv2d_grad_w, conv2d_grad_w_rows, linear_grad_w, linear_grad_w_rows,
};
use proptest::prelude::*;

fn packed(x: &[f32], k: usize, fmt: Format) -> (Buf, Vec<f32>) {
    let mut b = Buf::new(fmt, x.len(), k);
    pack(x, &topk_threshold(x, k).unwrap(), &mut b.packed_mut()).unwrap();
    let mut dense = vec![0.0; x.len()];
    unpack(&b.packed(), &mut dense).unwrap();
    (b, dense)
}

fn check_linear(rows: usize, inp: usize, out: usize, keep: f64, fmt: Format, seed: u64) {
    let x = normals(rows * inp, seed);
    let dy = normals(rows * out, seed + 1);
    let k = ((rows * inp) as f64 * keep) as usize;
    let (b, dense) = packed(&x, k, fmt);
    // Start from a non-zero gradient: the kernels accumulate.
    let mut got = normals(inp * out, seed + 2);
    let mut want = got.clone();
    let start = got.clone();
    linear_grad_w(&b.packed(), rows, inp, &dy, out, &mut got).unwrap();
    reference::linear_grad_w(&dense, rows, inp, &dy, out, &mut want).unwrap();
    assert_close(&got, &want, 1e-4);
    // In row ranges (as workers take them): the same bits.
    let mut parts = start;
    for (first, part) in split_rows(&mut parts, inp, out, seed) {
        linear_grad_w_rows(&b.packed(), rows, inp, &dy, out, part, first).unwrap();
    }
    assert_eq!(bits(&parts), bits(&got));
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `g` (`rows` rows of `width`) cut into up to three row ranges at points chosen by `seed`,
/// each with its first row (some may be empty).
fn split_rows(g: &mut [f32], rows: usize, width: usize, seed: u64) -> Vec<(usize, &mut [f32])> {
    let mut cuts = [seed as usize % (rows + 1), (seed as usize / 7) % (rows + 1)];
    cuts.sort();
    let (a, rest) = g.split_at_mut(cuts[0] * width);
    let (b, c) = rest.split_at_mut((cuts[1] - cuts[0]) * width);
    vec![(0, a), (cuts[0], b), (cuts[1], c)]
}

fn check_conv(g: ConvGeom, keep: f64, fmt: Format, seed: u64) {
    let (ho, wo) = g.out_hw().unwrap();
    let x = normals(g.input_len(), seed);
    let dy = normals(g.n * ho * wo * g.cout, seed + 1);
    let k = (x.len() as f64 * keep) as usize;
    let (b, dense) = packed(&x, k, fmt);
    let mut got = normals(g.weight_len(), seed + 2);
    let mut want = got.clone();
    let start = got.clone();
    conv2d_grad_w(&b.packed(), &g, &dy, &mut got).unwrap();
    reference::conv2d_grad_w(&dense, &g, &dy, &mut want).unwrap();
    assert_close(&got, &want, 1e-4);
    let mut parts = start;
    let rows = g.kh * g.kw * g.cin;
    for (first, part) in split_rows(&mut parts, rows, g.cout, seed) {
        conv2d_grad_w_rows(&b.packed(), &g, &dy, part, first).unwrap();
    }
    assert_eq!(bits(&parts), bits(&got));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn linear_matches_dense(rows in 0usize..20, inp in 1usize..40, out in 0usize..150,
                            keep in 0.0f64..=1.0, f in 0usize..9, seed in 0u64..1000) {
        check_linear(rows, inp, out, keep, FORMATS[f], seed);
    }

    #[test]
    fn conv_matches_dense(n in 1usize..3, h in 1usize..9, w in 1usize..9, cin in 1usize..5,
                          cout in 1usize..12, kh in 1usize..5, kw in 1usize..5,
                          sh in 1usize..4, sw in 1usize..4, ph in 0usize..3, pw in 0usize..3,
                          keep in 0.0f64..=1.0, f in 0usize..9, seed in 0u64..1000) {
        let g = ConvGeom { n, h, w, cin, cout, kh, kw, stride: (sh, sw), pad: (ph, pw) };
        prop_assume!(g.out_hw().is_ok());
        check_conv(g, keep, FORMATS[f], seed);
    }
}

#[test]
fn workload_shapes() {
    let bm = Format::new(ValueType::Bf16, PosForm::Bitmap);
    check_linear(128, 512, 64, 0.1, bm, 1);
    check_linear(
        16,
        784,
        512,
        0.3,
        Format::new(ValueType::F32, PosForm::Block16),
        2,
    );
    let g = ConvGeom {
        n: 2,
        h: 28,
        w: 28,
        cin: 32,
        cout: 32,
        kh: 3,
        kw: 3,
        stride: (1, 1),
        pad: (1, 1),
    };
    check_conv(g, 0.1, bm, 3);
    let s2 = ConvGeom {
        n: 2,
        h: 14,
        w: 14,
        cin: 32,
        cout: 64,
        kh: 3,
        kw: 3,
        stride: (2, 2),
        pad: (1, 1),
    };
    check_conv(s2, 0.1, Format::new(ValueType::F32, PosForm::U32), 4);
    let p = ConvGeom {
        n: 2,
        h: 14,
        w: 14,
        cin: 32,
        cout: 64,
        kh: 1,
        kw: 1,
        stride: (2, 2),
        pad: (0, 0),
    };
    check_conv(p, 0.5, bm, 5);
}

#[test]
fn bad_shapes_are_errors() {
    let fmt = Format::new(ValueType::F32, PosForm::U32);
    let (b, _) = packed(&normals(12, 1), 3, fmt);
    let mut g = vec![0.0; 12];
    assert!(matches!(
        linear_grad_w(&b.packed(), 3, 4, &[0.0; 8], 3, &mut g),
        Err(Error::Length { .. })
    ));
    assert!(matches!(
        linear_grad_w(&b.packed(), 2, 4, &[0.0; 6], 3, &mut g),
        Err(Error::Length { .. })
    ));
    // Parts of whole rows that exist, or errors.
    for (len, first) in [(5, 0), (6, 3), (3, usize::MAX)] {
        assert!(
            matches!(
                linear_grad_w_rows(&b.packed(), 3, 4, &[0.0; 9], 3, &mut g[..len], first),
                Err(Error::Length { .. })
            ),
            "{len} from row {first}"
        );
    }
    let one = ConvGeom {
        n: 1,
        h: 2,
        w: 2,
        cin: 3,
        cout: 2,
        kh: 1,
        kw: 1,
        stride: (1, 1),
        pad: (0, 0),
    };
    assert!(matches!(
        conv2d_grad_w_rows(&b.packed(), &one, &[0.0; 8], &mut g[..4], 2),
        Err(Error::Length { .. })
    ));
    conv2d_grad_w_rows(&b.packed(), &one, &[0.0; 8], &mut g[..4], 1).unwrap();
    let geom = ConvGeom {
        n: 1,
        h: 2,
        w: 2,
        cin: 3,
        cout: 1,
        kh: 3,
        kw: 3,
        stride: (1, 1),
        pad: (0, 0),
    };
    assert!(matches!(
        conv2d_grad_w(&b.packed(), &geom, &[], &mut g),
        Err(Error::Invalid { .. })
    ));
    let zero_stride = ConvGeom {
        stride: (0, 1),
        kh: 1,
        kw: 1,
        ..geom
    };
    assert!(matches!(
        conv2d_grad_w(&b.packed(), &zero_stride, &[], &mut g),
        Err(Error::Invalid { .. })
    ));
}
