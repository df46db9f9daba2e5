//! The checked GEMM against a triple loop, with transposed operands as strides.
mod common;

use common::{assert_close, normals};
use dropit_simd::Error;
use dropit_simd::gemm::{Mat, MatMut, scratch_len, sgemm};
use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    #[test]
    fn matches_triple_loop(m in 0usize..120, k in 0usize..300, n in 0usize..40, ta: bool, tb: bool, beta in prop::sample::select(vec![0.0f32, 1.0, 0.5])) {
        let a = normals(m * k, 1);
        let b = normals(k * n, 2);
        // Stored as given: A is m×k row-major, or k×m row-major read transposed.
        let av = if ta { Mat::new(&a, k, m).unwrap().t() } else { Mat::new(&a, m, k).unwrap() };
        let bv = if tb { Mat::new(&b, n, k).unwrap().t() } else { Mat::new(&b, k, n).unwrap() };
        let at = |i: usize, p: usize| if ta { a[p * m + i] } else { a[i * k + p] };
        let bt = |p: usize, j: usize| if tb { b[j * k + p] } else { b[p * n + j] };
        let c0 = normals(m * n, 3);
        let mut c = c0.clone();
        let mut scratch = vec![f32::NAN; scratch_len(m, k, n)];
        sgemm(2.0, av, bv, beta, MatMut::new(&mut c, m, n).unwrap(), &mut scratch).unwrap();
        let want: Vec<f32> = (0..m * n).map(|ij| {
            let (i, j) = (ij / n, ij % n);
            2.0 * (0..k).map(|p| at(i, p) * bt(p, j)).sum::<f32>() + beta * c0[ij]
        }).collect();
        assert_close(&c, &want, 1e-4 * (1.0 + k as f32).sqrt());
    }
}

#[test]
fn strided_output_writes_its_band_only() {
    // C is a 5×3 column band (columns 2..5) of a 5×7 matrix: the rest stays as it was.
    let (m, k, n, width) = (5, 4, 3, 7);
    let (a, b) = (normals(m * k, 4), normals(k * n, 5));
    let mut wide = normals(m * width, 6);
    let before = wide.clone();
    let mut scratch = vec![0.0; scratch_len(m, k, n)];
    let c = MatMut::strided(&mut wide[2..], m, n, width, 1).unwrap();
    sgemm(
        1.0,
        Mat::new(&a, m, k).unwrap(),
        Mat::new(&b, k, n).unwrap(),
        1.0,
        c,
        &mut scratch,
    )
    .unwrap();
    for i in 0..m {
        for j in 0..width {
            let old = before[i * width + j];
            let want = if (2..5).contains(&j) {
                old + (0..k).map(|p| a[i * k + p] * b[p * n + j - 2]).sum::<f32>()
            } else {
                old
            };
            assert!((wide[i * width + j] - want).abs() < 1e-5, "({i}, {j})");
        }
    }
    // Views whose elements would share a place are refused; empty ones are fine.
    let mut d = [0.0f32; 16];
    assert!(MatMut::strided(&mut d, 3, 3, 2, 1).is_err(), "rows overlap");
    assert!(MatMut::strided(&mut d, 2, 2, 0, 1).is_err(), "rows alias");
    assert!(MatMut::strided(&mut d, 3, 3, 1, 3).is_ok(), "column-major");
    assert!(MatMut::strided(&mut d, 0, 4, 0, 0).is_ok(), "empty");
}

#[test]
fn bad_views_and_shapes_are_errors() {
    let d = [0.0f32; 6];
    assert!(matches!(Mat::new(&d, 2, 4), Err(Error::Length { .. })));
    assert!(matches!(
        Mat::strided(&d, 2, 2, 5, 1),
        Err(Error::Length { .. })
    ));
    assert!(Mat::strided(&d, 2, 2, 4, 1).is_ok());
    let (a, b) = (Mat::new(&d, 2, 3).unwrap(), Mat::new(&d, 2, 3).unwrap());
    let mut c = [0.0f32; 4];
    let mut s = vec![0.0; scratch_len(2, 3, 2)];
    assert!(sgemm(1.0, a, b, 0.0, MatMut::new(&mut c, 2, 2).unwrap(), &mut s).is_err());
    assert!(
        sgemm(
            1.0,
            a,
            b.t(),
            0.0,
            MatMut::new(&mut c, 2, 2).unwrap(),
            &mut s[1..]
        )
        .is_err(),
        "scratch too small"
    );
    assert!(
        sgemm(
            1.0,
            a,
            b.t(),
            0.0,
            MatMut::new(&mut c, 2, 2).unwrap(),
            &mut s
        )
        .is_ok()
    );
    let mut nan = [f32::NAN; 4];
    sgemm(
        1.0,
        a,
        b.t(),
        0.0,
        MatMut::new(&mut nan, 2, 2).unwrap(),
        &mut s,
    )
    .unwrap();
    assert!(
        nan.iter().all(|v| *v == 0.0),
        "beta = 0 ignores the old contents, NaN included"
    );
}
