//! Direct convolution kernels against a naive reference: bitwise on small-integer data (every
//! partial sum is exact, so any order gives the same bits), within rounding on random data,
//! over geometries drawn by proptest; and the refusals (unsupported shapes, short buffers).
use dropit_simd::conv::{
    Direct, buf_len, flip_weights, forward, grad_w, grad_x, supported, tile_width,
};
use dropit_simd::spmm::ConvGeom;
use dropit_simd::{Error, reference};
use proptest::prelude::*;

fn geom(hw: (usize, usize), cin: usize, cout: usize, k: usize, s: usize, p: usize) -> ConvGeom {
    ConvGeom {
        n: 1,
        h: hw.0,
        w: hw.1,
        cin,
        cout,
        kh: k,
        kw: k,
        stride: (s, s),
        pad: (p, p),
    }
}

/// x[(ih, iw), ci] under padding, or 0.
fn at(g: &ConvGeom, x: &[f32], ih: isize, iw: isize, ci: usize) -> f64 {
    if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
        return 0.0;
    }
    x[(ih as usize * g.w + iw as usize) * g.cin + ci] as f64
}

fn naive_forward(g: &ConvGeom, x: &[f32], w: &[f32]) -> Vec<f64> {
    let (oh, ow) = g.out_hw().unwrap();
    let mut y = vec![0.0; oh * ow * g.cout];
    for r in 0..oh {
        for c in 0..ow {
            for a in 0..g.kh {
                for b in 0..g.kw {
                    let ih = (r * g.stride.0 + a) as isize - g.pad.0 as isize;
                    let iw = (c * g.stride.1 + b) as isize - g.pad.1 as isize;
                    for ci in 0..g.cin {
                        let v = at(g, x, ih, iw, ci);
                        for co in 0..g.cout {
                            y[(r * ow + c) * g.cout + co] +=
                                v * w[((a * g.kw + b) * g.cin + ci) * g.cout + co] as f64;
                        }
                    }
                }
            }
        }
    }
    y
}

/// ∂/∂x of Σ y·dy (the weight gradient's reference is `reference::conv2d_grad_w`).
fn naive_grad_x(g: &ConvGeom, w: &[f32], dy: &[f32]) -> Vec<f64> {
    let (oh, ow) = g.out_hw().unwrap();
    let mut gx = vec![0.0; g.h * g.w * g.cin];
    for r in 0..oh {
        for c in 0..ow {
            for a in 0..g.kh {
                for b in 0..g.kw {
                    let ih = (r * g.stride.0 + a) as isize - g.pad.0 as isize;
                    let iw = (c * g.stride.1 + b) as isize - g.pad.1 as isize;
                    if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                        continue;
                    }
                    for ci in 0..g.cin {
                        for co in 0..g.cout {
                            let d = dy[(r * ow + c) * g.cout + co] as f64;
                            let wi = ((a * g.kw + b) * g.cin + ci) * g.cout + co;
                            gx[(ih as usize * g.w + iw as usize) * g.cin + ci] += w[wi] as f64 * d;
                        }
                    }
                }
            }
        }
    }
    gx
}

fn ints(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s % 7) as f32 - 3.0
        })
        .collect()
}

fn floats(n: usize, seed: u64) -> Vec<f32> {
    ints(n, seed)
        .iter()
        .zip(ints(n, seed + 1))
        .map(|(a, b)| a * 0.3 + b * 0.017)
        .collect()
}

/// Runs the three kernels on `g` and compares them with the reference: `exact` bitwise (integer
/// data) or within `tol` relative to the largest magnitude.
fn check(g: &ConvGeom, x: &[f32], w: &[f32], dy: &[f32], exact: bool) {
    let d = supported(g);
    let (oh, ow) = g.out_hw().unwrap();
    let mut buf = vec![f32::NAN; buf_len(g).unwrap()];
    let close = |got: &[f32], want: &[f64], what: &str| {
        let scale = want.iter().fold(1.0f64, |m, v| m.max(v.abs()));
        for (i, (&a, &b)) in got.iter().zip(want).enumerate() {
            let ok = if exact {
                a as f64 == b
            } else {
                (a as f64 - b).abs() <= 1e-5 * scale
            };
            assert!(ok, "{what} [{i}]: {a} vs {b} ({g:?})");
        }
    };
    if d.forward {
        let bias: Vec<f32> = (0..g.cout).map(|i| i as f32 - 2.0).collect();
        let mut y = vec![f32::NAN; oh * ow * g.cout];
        forward(g, Some(x), w, Some(&bias), &mut y, &mut buf).unwrap();
        let want: Vec<f64> = naive_forward(g, x, w)
            .iter()
            .enumerate()
            .map(|(i, v)| v + bias[i % g.cout] as f64)
            .collect();
        close(&y, &want, "forward");
        if x.len() == y.len() {
            // In place: the input is in `y`.
            let mut yx = x.to_vec();
            forward(g, None, w, Some(&bias), &mut yx, &mut buf).unwrap();
            close(&yx, &want, "forward in place");
        }
        let mut y0 = vec![f32::NAN; oh * ow * g.cout];
        forward(g, Some(x), w, None, &mut y0, &mut buf).unwrap();
        close(&y0, &naive_forward(g, x, w), "forward without bias");
        let mut gw_ref = vec![0.0f32; w.len()];
        reference::conv2d_grad_w(x, g, dy, &mut gw_ref).unwrap();
        let gw_want: Vec<f64> = gw_ref.iter().map(|&v| v as f64).collect();
        let gx_want = naive_grad_x(g, w, dy);
        let mut gw = vec![0.0; w.len()];
        grad_w(g, x, dy, &mut gw, &mut buf).unwrap();
        close(&gw, &gw_want, "grad_w");
        if d.grad_x {
            let mut wt = vec![0.0; w.len()];
            flip_weights(g, w, &mut wt).unwrap();
            let mut gx = vec![f32::NAN; x.len()];
            grad_x(g, Some(dy), &wt, &mut gx, false, &mut buf).unwrap();
            close(&gx, &gx_want, "grad_x");
            // Accumulating adds onto what is there.
            let mut gx2 = vec![1.0; x.len()];
            grad_x(g, Some(dy), &wt, &mut gx2, true, &mut buf).unwrap();
            let plus: Vec<f64> = gx_want.iter().map(|v| v + 1.0).collect();
            close(&gx2, &plus, "grad_x accumulated");
            if dy.len() == x.len() {
                // In place: the output gradient is in `dx`.
                let mut gx3 = dy.to_vec();
                grad_x(g, None, &wt, &mut gx3, false, &mut buf).unwrap();
                close(&gx3, &gx_want, "grad_x in place");
            }
        }
    }
}

#[test]
fn the_cnn_shapes_run_direct_and_match_the_reference() {
    let Some(n) = tile_width() else {
        println!("no AVX2 + FMA: direct convolution is not used on this CPU");
        return;
    };
    for (hw, cin, cout, k, s, p) in [
        ((28, 28), 32, 32, 3, 1, 1),
        ((28, 28), 32, 64, 3, 2, 1),
        ((14, 14), 64, 64, 3, 1, 1),
        ((7, 7), 128, 128, 3, 1, 1),
        ((28, 28), 1, 32, 3, 1, 1),
        ((14, 14), 32, 64, 1, 2, 0),
    ] {
        let g = geom(hw, cin, cout, k, s, p);
        let d = supported(&g);
        assert!(d.forward, "{g:?}");
        assert_eq!(d.grad_x, s == 1 && cin % n == 0, "{g:?}");
        let x = ints(hw.0 * hw.1 * cin, 1);
        let w = ints(k * k * cin * cout, 2);
        let (oh, ow) = g.out_hw().unwrap();
        let dy = ints(oh * ow * cout, 3);
        check(&g, &x, &w, &dy, true);
    }
}

#[test]
fn refusals_are_errors() {
    let g = geom((5, 5), 4, 32, 3, 1, 1);
    let x = vec![0.0; 100];
    let w = vec![0.0; 9 * 4 * 32];
    let mut y = vec![0.0; 25 * 32];
    let mut short = vec![0.0; 10];
    assert!(matches!(
        forward(&g, Some(&x), &w, None, &mut y, &mut short),
        Err(Error::Length { .. })
    ));
    let mut buf = vec![0.0; buf_len(&g).unwrap()];
    assert!(forward(&g, Some(&x[..99]), &w, None, &mut y, &mut buf).is_err());
    assert!(forward(&g, Some(&x), &w, Some(&[1.0; 3]), &mut y, &mut buf).is_err());
    // Output channels that are not a multiple of the tile: no direct kernel.
    let odd = geom((5, 5), 4, 24, 3, 1, 1);
    assert_eq!(supported(&odd), Direct::default());
    let mut y24 = vec![0.0; 25 * 24];
    let w24 = vec![0.0; 9 * 4 * 24];
    assert!(forward(&odd, Some(&x), &w24, None, &mut y24, &mut buf).is_err());
    // The input gradient needs stride 1.
    let s2 = geom((6, 6), 32, 32, 3, 2, 1);
    assert!(!supported(&s2).grad_x);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn any_geometry_matches_the_reference(
        h in 1usize..9, w in 1usize..9, cin in 1usize..40, co in 1usize..3,
        k in 1usize..4, s in 1usize..3, p in 0usize..3, seed in 0u64..1000, exact in any::<bool>(),
    ) {
        let Some(n) = tile_width() else { return Ok(()); };
        let p = p.min(k - 1);
        let g = geom((h + k, w + k), cin, co * n, k, s, p);
        let (oh, ow) = g.out_hw().unwrap();
        let data = |len, s| if exact { ints(len, s) } else { floats(len, s) };
        let x = data(g.h * g.w * cin, seed);
        let wt = data(k * k * cin * g.cout, seed + 7);
        let dy = data(oh * ow * g.cout, seed + 13);
        check(&g, &x, &wt, &dy, exact);
    }
}
