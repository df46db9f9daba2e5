//! Depthwise 2-D convolution (groups = channels, channel multiplier 1), NHWC.
//!
//! Shapes, for a [`ConvGeom`] `g` with `g.cin == g.cout == c` and output `(ho, wo)` =
//! [`ConvGeom::out_hw`]: input `x` `[n, h, w, c]`, output `y` `[n, ho, wo, c]`, weight `w`
//! `[kh, kw, c]` (PyTorch's `[c, 1, kh, kw]` transposed), bias `[c]`. Every slice length is
//! checked first: a wrong size is an [`Error`], never a panic.
//!
//! The summation order is fixed, the same on every target and in the scalar twins of
//! [`crate::reference`] (which therefore agree bitwise); every product is added on its own
//! (`acc + a · b`, no fused multiply-add), so every target rounds alike:
//!
//! - [`forward`]: `y = bias` (or 0), then `+ x · w` for the taps `(a, b)` in row-major order,
//!   skipping taps that fall in the padding;
//! - [`backward_input`]: `dx` (or 0), then `+ dy · w` for the taps `(a, b)` in row-major order
//!   that reach an output;
//! - [`grad_weight`]: `gw +=`, one `x · dy` per output pixel `(n, ho, wo)` in row-major order.
//!
//! The loops walk pixels, then taps, with the channels innermost and contiguous; the channels go
//! in blocks of 32, then 8, then 1, each block's sums held in registers across the taps (or, for
//! the weight gradient, across an output row). On x86_64 with `std` an AVX2 build of the same
//! code is chosen at run time; it does the same operations in the same order, so results are
//! bitwise those of the baseline build.

use crate::spmm::ConvGeom;
use crate::{Error, Result, check_len};

/// The output (height, width) of a depthwise geometry, or an error if `cin != cout` or
/// [`ConvGeom::out_hw`] refuses it.
pub fn out_hw(g: &ConvGeom) -> Result<(usize, usize)> {
    if g.cin != g.cout {
        return Err(Error::Invalid {
            what: "depthwise conv: cout (must equal cin, channel multiplier 1)",
            value: g.cout,
        });
    }
    g.out_hw()
}

/// Elements of a depthwise weight `[kh, kw, c]`.
pub fn weight_len(g: &ConvGeom) -> usize {
    g.kh * g.kw * g.cin
}

/// Depthwise forward: `y[n, ho, wo, c] = bias[c] + Σ_{a, b} x[n, ho·s + a − p, wo·s + b − p, c] ·
/// w[a, b, c]` (taps in the padding skipped; no bias: 0). Overwrites `y` `[n, ho, wo, c]`.
pub fn forward(
    x: &[f32],
    g: &ConvGeom,
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    let (ho, wo) = out_hw(g)?;
    check_len("depthwise forward: x [n,h,w,c]", g.input_len(), x.len())?;
    check_len("depthwise forward: w [kh,kw,c]", weight_len(g), w.len())?;
    if let Some(b) = bias {
        check_len("depthwise forward: bias [c]", g.cin, b.len())?;
    }
    check_len(
        "depthwise forward: y [n,ho,wo,c]",
        g.n * ho * wo * g.cin,
        y.len(),
    )?;
    #[cfg(x86_detect)]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU reported AVX2.
        unsafe { forward_avx2(x, g, (ho, wo), w, bias, y) };
        return Ok(());
    }
    forward_body(x, g, (ho, wo), w, bias, y);
    Ok(())
}

/// Depthwise input gradient: `dx[n, h, w, c] = Σ_{a, b} dy[n, ho, wo, c] · w[a, b, c]` over the
/// taps with `ho·s + a − p = h` and `wo·s + b − p = w`. Overwrites `dx` `[n, h, w, c]`, or adds to
/// it when `acc` (the sum then starts from the old value).
pub fn backward_input(
    dy: &[f32],
    g: &ConvGeom,
    w: &[f32],
    dx: &mut [f32],
    acc: bool,
) -> Result<()> {
    let (ho, wo) = out_hw(g)?;
    check_len(
        "depthwise grad_X: dY [n,ho,wo,c]",
        g.n * ho * wo * g.cin,
        dy.len(),
    )?;
    check_len("depthwise grad_X: w [kh,kw,c]", weight_len(g), w.len())?;
    check_len("depthwise grad_X: dX [n,h,w,c]", g.input_len(), dx.len())?;
    #[cfg(x86_detect)]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU reported AVX2.
        unsafe { backward_input_avx2(dy, g, (ho, wo), w, dx, acc) };
        return Ok(());
    }
    backward_input_body(dy, g, (ho, wo), w, dx, acc);
    Ok(())
}

/// Depthwise weight gradient: `gw[a, b, c] += Σ_{n, ho, wo} x[n, ho·s + a − p, wo·s + b − p, c] ·
/// dy[n, ho, wo, c]` (accumulates into `gw` `[kh, kw, c]`). The bias gradient, the sum of `dy`
/// over `(n, ho, wo)`, is the caller's.
pub fn grad_weight(x: &[f32], g: &ConvGeom, dy: &[f32], gw: &mut [f32]) -> Result<()> {
    let (ho, wo) = out_hw(g)?;
    check_len("depthwise grad_W: x [n,h,w,c]", g.input_len(), x.len())?;
    check_len(
        "depthwise grad_W: dY [n,ho,wo,c]",
        g.n * ho * wo * g.cin,
        dy.len(),
    )?;
    check_len(
        "depthwise grad_W: grad_W [kh,kw,c]",
        weight_len(g),
        gw.len(),
    )?;
    #[cfg(x86_detect)]
    if std::is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU reported AVX2.
        unsafe { grad_weight_avx2(x, g, (ho, wo), dy, gw) };
        return Ok(());
    }
    grad_weight_body(x, g, (ho, wo), dy, gw);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Index helpers

/// The taps `a0..a1` of a kernel of `k` at output index `o` (stride `s`, padding `pad`) whose
/// input index `o·s + a − pad` lies in `0..len`.
#[inline(always)]
fn window(o: usize, s: usize, pad: usize, k: usize, len: usize) -> (usize, usize) {
    let start = o * s;
    let a0 = pad.saturating_sub(start).min(k);
    let a1 = (len + pad).saturating_sub(start).min(k);
    (a0, a1.max(a0))
}

/// The output indices `lo..hi` (of `out`) whose tap `b` (stride `s`, padding `pad`) reads an
/// input index `o·s + b − pad` in `0..len`.
#[inline(always)]
fn reach(b: usize, s: usize, pad: usize, len: usize, out: usize) -> (usize, usize) {
    let lo = pad.saturating_sub(b).div_ceil(s).min(out);
    let hi = (len + pad).saturating_sub(b).div_ceil(s).min(out);
    (lo, hi.max(lo))
}

/// The taps `(a, o)` with `o·s + a = i + pad`, `0 ≤ a < k`, `0 ≤ o < out`, in increasing `a`.
#[derive(Clone, Copy)]
struct Taps {
    a0: usize,
    end: usize,
    o0: usize,
    s: usize,
}

impl Taps {
    #[inline(always)]
    fn new(i: usize, pad: usize, s: usize, k: usize, out: usize) -> Self {
        let p = i + pad;
        // Smallest a ≡ p (mod s) with o = (p − a) / s ≤ out − 1.
        let lo = p.saturating_sub(s * (out - 1));
        let a0 = p - s * ((p - lo) / s);
        Taps {
            a0,
            end: k.min(p + 1),
            o0: (p - a0) / s,
            s,
        }
    }

    #[inline(always)]
    fn iter(self) -> impl Iterator<Item = (usize, usize)> {
        (self.a0..self.end)
            .step_by(self.s)
            .enumerate()
            .map(move |(t, a)| (a, self.o0 - t))
    }
}

/// `L` lanes of `s` from `at`.
#[inline(always)]
fn lanes<const L: usize>(s: &[f32], at: usize) -> &[f32; L] {
    s[at..at + L]
        .try_into()
        .expect("a slice of L elements is an array of L")
}

/// `acc[i] += x[i] · w[i]`, unfused.
#[inline(always)]
fn madd<const L: usize>(acc: &mut [f32; L], x: &[f32; L], w: &[f32; L]) {
    for (acc, (&x, &w)) in acc.iter_mut().zip(x.iter().zip(w)) {
        *acc += x * w;
    }
}

/// Runs `f::<32>`, `f::<8>`, `f::<1>` over the channel ranges `0..c32`, `c32..c8`, `c8..c`.
macro_rules! by_blocks {
    ($c:expr, $f:ident($($arg:expr),*)) => {{
        let c = $c;
        let (c32, c8) = (c - c % 32, c - c % 8);
        $f::<32>($($arg,)* 0, c32);
        $f::<8>($($arg,)* c32, c8);
        $f::<1>($($arg,)* c8, c);
    }};
}

// ---------------------------------------------------------------------------------------------
// Forward

/// One output pixel's taps: rows `a.0..a.1`, columns `b.0..b.1`, the top-left tap at padded
/// input position `(top, left)`.
#[derive(Clone, Copy)]
struct Window {
    a: (usize, usize),
    b: (usize, usize),
    top: usize,
    left: usize,
}

/// Channels `from..to` (a multiple of `L` long) of one output pixel `out`; `img` is the sample's
/// input `[h, w, c]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn forward_lanes<const L: usize>(
    g: &ConvGeom,
    img: &[f32],
    w: &[f32],
    bias: Option<&[f32]>,
    win: Window,
    out: &mut [f32],
    from: usize,
    to: usize,
) {
    let c = g.cin;
    for (j, o) in out[from..to].as_chunks_mut::<L>().0.iter_mut().enumerate() {
        let c0 = from + j * L;
        let mut acc = match bias {
            Some(b) => *lanes::<L>(b, c0),
            None => [0.0; L],
        };
        for a in win.a.0..win.a.1 {
            let ih = win.top + a - g.pad.0;
            for b in win.b.0..win.b.1 {
                let iw = win.left + b - g.pad.1;
                madd(
                    &mut acc,
                    lanes(img, (ih * g.w + iw) * c + c0),
                    lanes(w, (a * g.kw + b) * c + c0),
                );
            }
        }
        *o = acc;
    }
}

#[inline(always)]
fn forward_body(
    x: &[f32],
    g: &ConvGeom,
    (ho, wo): (usize, usize),
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    let c = g.cin;
    let img_len = g.h * g.w * c;
    for n in 0..g.n {
        let img = &x[n * img_len..][..img_len];
        for oh in 0..ho {
            let a = window(oh, g.stride.0, g.pad.0, g.kh, g.h);
            for ow in 0..wo {
                let win = Window {
                    a,
                    b: window(ow, g.stride.1, g.pad.1, g.kw, g.w),
                    top: oh * g.stride.0,
                    left: ow * g.stride.1,
                };
                let out = &mut y[((n * ho + oh) * wo + ow) * c..][..c];
                by_blocks!(c, forward_lanes(g, img, w, bias, win, out));
            }
        }
    }
}

#[cfg(x86_detect)]
#[target_feature(enable = "avx2")]
fn forward_avx2(
    x: &[f32],
    g: &ConvGeom,
    hw: (usize, usize),
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) {
    forward_body(x, g, hw, w, bias, y)
}

// ---------------------------------------------------------------------------------------------
// Input gradient

/// Channels `from..to` of one input pixel `out` (of `dx`), gathered from the taps that reach it;
/// `dimg` is the sample's output gradient `[ho, wo, c]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn backward_lanes<const L: usize>(
    g: &ConvGeom,
    wo: usize,
    dimg: &[f32],
    w: &[f32],
    (rows, cols): (Taps, Taps),
    acc_in: bool,
    out: &mut [f32],
    from: usize,
    to: usize,
) {
    let c = g.cin;
    for (j, o) in out[from..to].as_chunks_mut::<L>().0.iter_mut().enumerate() {
        let c0 = from + j * L;
        let mut acc = if acc_in { *o } else { [0.0; L] };
        for (a, oh) in rows.iter() {
            for (b, ow) in cols.iter() {
                madd(
                    &mut acc,
                    lanes(dimg, (oh * wo + ow) * c + c0),
                    lanes(w, (a * g.kw + b) * c + c0),
                );
            }
        }
        *o = acc;
    }
}

#[inline(always)]
fn backward_input_body(
    dy: &[f32],
    g: &ConvGeom,
    (ho, wo): (usize, usize),
    w: &[f32],
    dx: &mut [f32],
    acc: bool,
) {
    let c = g.cin;
    let dimg_len = ho * wo * c;
    for n in 0..g.n {
        let dimg = &dy[n * dimg_len..][..dimg_len];
        for ih in 0..g.h {
            let rows = Taps::new(ih, g.pad.0, g.stride.0, g.kh, ho);
            for iw in 0..g.w {
                let cols = Taps::new(iw, g.pad.1, g.stride.1, g.kw, wo);
                let out = &mut dx[((n * g.h + ih) * g.w + iw) * c..][..c];
                by_blocks!(c, backward_lanes(g, wo, dimg, w, (rows, cols), acc, out));
            }
        }
    }
}

#[cfg(x86_detect)]
#[target_feature(enable = "avx2")]
fn backward_input_avx2(
    dy: &[f32],
    g: &ConvGeom,
    hw: (usize, usize),
    w: &[f32],
    dx: &mut [f32],
    acc: bool,
) {
    backward_input_body(dy, g, hw, w, dx, acc)
}

// ---------------------------------------------------------------------------------------------
// Weight gradient

/// Channels `from..to` of the weight-gradient row `gw_row` (tap `(a, b)`), summed over the output
/// pixels `ow` in `span` of one output row: `xrow` is the input row `[w, c]` the tap reads,
/// `drow` the output-gradient row `[wo, c]`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
fn grad_lanes<const L: usize>(
    g: &ConvGeom,
    b: usize,
    span: (usize, usize),
    xrow: &[f32],
    drow: &[f32],
    gw_row: &mut [f32],
    from: usize,
    to: usize,
) {
    let c = g.cin;
    for (j, o) in gw_row[from..to]
        .as_chunks_mut::<L>()
        .0
        .iter_mut()
        .enumerate()
    {
        let c0 = from + j * L;
        let mut acc = *o;
        for ow in span.0..span.1 {
            let iw = ow * g.stride.1 + b - g.pad.1;
            madd(&mut acc, lanes(xrow, iw * c + c0), lanes(drow, ow * c + c0));
        }
        *o = acc;
    }
}

#[inline(always)]
fn grad_weight_body(x: &[f32], g: &ConvGeom, (ho, wo): (usize, usize), dy: &[f32], gw: &mut [f32]) {
    let c = g.cin;
    let (xrow_len, drow_len) = (g.w * c, wo * c);
    for n in 0..g.n {
        for oh in 0..ho {
            let drow = &dy[(n * ho + oh) * drow_len..][..drow_len];
            let (a0, a1) = window(oh, g.stride.0, g.pad.0, g.kh, g.h);
            for a in a0..a1 {
                let ih = oh * g.stride.0 + a - g.pad.0;
                let xrow = &x[(n * g.h + ih) * xrow_len..][..xrow_len];
                for b in 0..g.kw {
                    let span = reach(b, g.stride.1, g.pad.1, g.w, wo);
                    let gw_row = &mut gw[(a * g.kw + b) * c..][..c];
                    by_blocks!(c, grad_lanes(g, b, span, xrow, drow, gw_row));
                }
            }
        }
    }
}

#[cfg(x86_detect)]
#[target_feature(enable = "avx2")]
fn grad_weight_avx2(x: &[f32], g: &ConvGeom, hw: (usize, usize), dy: &[f32], gw: &mut [f32]) {
    grad_weight_body(x, g, hw, dy, gw)
}

#[cfg(all(test, x86_detect))]
mod tests {
    use super::*;
    use std::vec::Vec;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    fn same(a: &[f32], b: &[f32]) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
    }

    /// The AVX2 build of each loop gives bitwise the results of the baseline build.
    #[test]
    fn avx2_build_is_bitwise_baseline() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        for (c, k, s, p) in [(77, 3, 1, 1), (45, 3, 2, 1), (5, 5, 1, 2), (96, 2, 2, 0)] {
            let g = ConvGeom {
                n: 2,
                h: 9,
                w: 7,
                cin: c,
                cout: c,
                kh: k,
                kw: k,
                stride: (s, s),
                pad: (p, p),
            };
            let hw = out_hw(&g).unwrap();
            let ylen = g.n * hw.0 * hw.1 * c;
            let x = data(g.input_len(), 1);
            let w = data(weight_len(&g), 2);
            let bias = data(c, 3);
            let dy = data(ylen, 4);

            let (mut a, mut b) = (std::vec![0.0; ylen], std::vec![0.0; ylen]);
            forward_body(&x, &g, hw, &w, Some(&bias), &mut a);
            // SAFETY: AVX2 support was checked above.
            unsafe { forward_avx2(&x, &g, hw, &w, Some(&bias), &mut b) };
            assert!(same(&a, &b));

            let (mut a, mut b) = (data(g.input_len(), 5), data(g.input_len(), 5));
            backward_input_body(&dy, &g, hw, &w, &mut a, true);
            // SAFETY: AVX2 support was checked above.
            unsafe { backward_input_avx2(&dy, &g, hw, &w, &mut b, true) };
            assert!(same(&a, &b));

            let (mut a, mut b) = (data(w.len(), 6), data(w.len(), 6));
            grad_weight_body(&x, &g, hw, &dy, &mut a);
            // SAFETY: AVX2 support was checked above.
            unsafe { grad_weight_avx2(&x, &g, hw, &dy, &mut b) };
            assert!(same(&a, &b));
        }
    }

    /// The index helpers agree with brute force.
    #[test]
    fn index_helpers() {
        for s in 1..4 {
            for pad in 0..3 {
                for k in 1..5 {
                    for len in 1..9 {
                        if len + 2 * pad < k {
                            continue;
                        }
                        let out = (len + 2 * pad - k) / s + 1;
                        let inside =
                            |o: usize, a: usize| (o * s + a) >= pad && (o * s + a - pad) < len;
                        for o in 0..out {
                            let (a0, a1) = window(o, s, pad, k, len);
                            let want: Vec<usize> = (0..k).filter(|&a| inside(o, a)).collect();
                            assert_eq!((a0..a1).collect::<Vec<_>>(), want);
                        }
                        for b in 0..k {
                            let (lo, hi) = reach(b, s, pad, len, out);
                            let want: Vec<usize> = (0..out).filter(|&o| inside(o, b)).collect();
                            assert_eq!((lo..hi).collect::<Vec<_>>(), want);
                        }
                        for i in 0..len {
                            let got: Vec<_> = Taps::new(i, pad, s, k, out).iter().collect();
                            let want: Vec<_> = (0..k)
                                .flat_map(|a| (0..out).map(move |o| (a, o)))
                                .filter(|&(a, o)| o * s + a == i + pad)
                                .collect();
                            assert_eq!(got, want);
                        }
                    }
                }
            }
        }
    }
}
