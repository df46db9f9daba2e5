//! Direct convolution, NHWC input and HWIO (`[kh][kw][cin][cout]`) weights, one sample at a
//! time, on x86_64 with AVX2 + FMA or AVX-512F.
//!
//! im2col + GEMM copies every input element `kh·kw` times and then packs the copy again; for
//! the few output channels of small CNNs (16–128) its GEMM runs narrow tiles. The direct
//! kernels read the input where it lies — once copied into a zero-padded buffer, so that no tap
//! needs a bounds check — and the weights as they are stored (a weight row `[tap][ci][..]` is
//! already a row of the GEMM's B over the output channels):
//!
//! - **forward**: a tile of `P` output pixels of one row × two registers of output channels,
//!   summed over taps and input channels: `P` broadcasts of the input and two loads of the
//!   weights per `2P` fused multiply-adds;
//! - **weight gradient**: per tap, a tile of `R` input channels × two registers of output
//!   channels, summed over every output pixel (the input at the pixel shifted by the tap, and
//!   the output gradient);
//! - **input gradient** (stride 1): the forward kernel over the output gradient padded by
//!   `k − 1 − pad`, with the weights flipped and transposed ([`flip_weights`]).
//!
//! The layer chooses them where [`supported`] says so and keeps im2col elsewhere (ARM and other
//! targets, output channels that are not a multiple of the register pair).

use crate::spmm::ConvGeom;
use crate::{Error, Result, check_len};

/// Output pixels of a forward tile on AVX2 (12 accumulators of 16 registers).
#[cfg(x86_detect)]
const P_AVX2: usize = 6;
/// The same on AVX-512. (12 pixels — 24 of its 32 registers — measured 2–3× slower: the
/// accumulators spilled.)
const P_AVX512: usize = 6;
/// Input channels of a weight-gradient tile.
const R: usize = 6;

/// Which direct kernels run for a geometry on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Direct {
    /// Forward and weight gradient.
    pub forward: bool,
    /// Input gradient.
    pub grad_x: bool,
}

/// Output channels one tile covers on this CPU (two registers), or `None` without AVX2 + FMA.
pub fn tile_width() -> Option<usize> {
    #[cfg(x86_detect)]
    if let crate::isa::Isa::Avx2Fma = crate::isa::isa() {
        return Some(if std::is_x86_feature_detected!("avx512f") {
            32
        } else {
            16
        });
    }
    None
}

/// The direct kernels this CPU runs for `g`: output channels a multiple of [`tile_width`]; the
/// input gradient also needs stride 1, padding below the kernel size and input channels a
/// multiple of the tile width.
pub fn supported(g: &ConvGeom) -> Direct {
    let Some(n) = tile_width() else {
        return Direct::default();
    };
    if g.out_hw().is_err() || g.cout == 0 || g.cin == 0 {
        return Direct::default();
    }
    let forward = g.cout.is_multiple_of(n);
    let grad_x = forward
        && g.stride == (1, 1)
        && g.pad.0 < g.kh
        && g.pad.1 < g.kw
        && g.cin.is_multiple_of(n);
    Direct { forward, grad_x }
}

/// Floats of the zero-padded copy of a `h × w × c` sample padded by `(ph, pw)`, with room for a
/// tile's reads past the last pixel (they land in discarded lanes).
fn padded_len(h: usize, w: usize, c: usize, (ph, pw): (usize, usize), sw: usize) -> Option<usize> {
    let hp = h.checked_add(ph.checked_mul(2)?)?;
    let wp = w.checked_add(pw.checked_mul(2)?)?;
    let slack = (P_AVX512 * sw + 1).checked_mul(c)?.checked_add(R)?;
    hp.checked_mul(wp)?.checked_mul(c)?.checked_add(slack)
}

/// The geometry of the input gradient as a forward convolution of the output gradient.
fn transposed(g: &ConvGeom, (oh, ow): (usize, usize)) -> ConvGeom {
    ConvGeom {
        n: 1,
        h: oh,
        w: ow,
        cin: g.cout,
        cout: g.cin,
        kh: g.kh,
        kw: g.kw,
        stride: (1, 1),
        pad: (g.kh - 1 - g.pad.0, g.kw - 1 - g.pad.1),
    }
}

/// Floats of the per-call buffer the kernels of `g` need (the padded input, or the padded output
/// gradient); `None` if it cannot be addressed.
pub fn buf_len(g: &ConvGeom) -> Option<usize> {
    let (oh, ow) = g.out_hw().ok()?;
    let x = padded_len(g.h, g.w, g.cin, g.pad, g.stride.1)?;
    if g.kh <= g.pad.0 || g.kw <= g.pad.1 {
        return Some(x);
    }
    let t = transposed(g, (oh, ow));
    Some(x.max(padded_len(t.h, t.w, t.cin, t.pad, 1)?))
}

/// Copies a `h × w × c` sample into `dst`, zero-padded by `(ph, pw)` on each side.
fn pad_into(
    src: &[f32],
    (h, w, c): (usize, usize, usize),
    (ph, pw): (usize, usize),
    dst: &mut [f32],
) {
    let wp = w + 2 * pw;
    dst.fill(0.0);
    for (r, row) in src.chunks_exact(w * c).take(h).enumerate() {
        dst[((r + ph) * wp + pw) * c..][..w * c].copy_from_slice(row);
    }
}

/// The weights `w` of `g` flipped in both spatial axes and with input and output channels
/// swapped, into `wt` (`kh·kw·cin·cout` floats): the weights of the input gradient as a
/// forward convolution.
pub fn flip_weights(g: &ConvGeom, w: &[f32], wt: &mut [f32]) -> Result<()> {
    let (kh, kw, ci, co) = (g.kh, g.kw, g.cin, g.cout);
    crate::check_dims("conv weights", &[kh, kw, ci, co], w.len())?;
    check_len("flipped conv weights", w.len(), wt.len())?;
    for a in 0..kh {
        for b in 0..kw {
            let src = &w[((kh - 1 - a) * kw + (kw - 1 - b)) * ci * co..][..ci * co];
            let dst = &mut wt[(a * kw + b) * co * ci..][..co * ci];
            for i in 0..ci {
                for o in 0..co {
                    dst[o * ci + i] = src[i * co + o];
                }
            }
        }
    }
    Ok(())
}

/// Checks the lengths of one sample's call and returns the output height and width.
fn check(g: &ConvGeom, x: usize, w: usize, y: usize, buf: usize) -> Result<(usize, usize)> {
    let (oh, ow) = g.out_hw()?;
    crate::check_dims("conv input sample", &[g.h, g.w, g.cin], x)?;
    crate::check_dims("conv weights", &[g.kh, g.kw, g.cin, g.cout], w)?;
    crate::check_dims("conv output sample", &[oh, ow, g.cout], y)?;
    let need = buf_len(g).ok_or(Error::Invalid {
        what: "conv buffer size",
        value: usize::MAX,
    })?;
    if buf < need {
        return Err(Error::Length {
            what: "conv direct buffer",
            expected: need,
            given: buf,
        });
    }
    Ok((oh, ow))
}

fn unsupported() -> Error {
    Error::Invalid {
        what: "direct convolution on this CPU and geometry",
        value: 0,
    }
}

/// `y = conv(x, w) + bias` for one sample, with `buf` of at least [`buf_len`] floats; `x`
/// `None`: the input is in `y` (same size), and is copied before `y` is written. Only where
/// [`supported`] says `forward`.
pub fn forward(
    g: &ConvGeom,
    x: Option<&[f32]>,
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
    buf: &mut [f32],
) -> Result<()> {
    let xl = x.map_or(y.len(), <[f32]>::len);
    let hw = check(g, xl, w.len(), y.len(), buf.len())?;
    if !supported(g).forward {
        return Err(unsupported());
    }
    if let Some(b) = bias {
        check_len("conv bias", g.cout, b.len())?;
    }
    let len = padded_len(g.h, g.w, g.cin, g.pad, g.stride.1).unwrap_or(usize::MAX);
    pad_into(x.unwrap_or(y), (g.h, g.w, g.cin), g.pad, &mut buf[..len]);
    match bias {
        Some(b) => y
            .chunks_exact_mut(g.cout)
            .for_each(|r| r.copy_from_slice(b)),
        None => y.fill(0.0),
    }
    run_forward(g, hw, &buf[..len], w, y);
    Ok(())
}

/// `gw += ∂L/∂W` of one sample from its input `x` and output gradient `dy` (`gw` in the
/// weights' HWIO layout), with `buf` of at least [`buf_len`] floats. Only where [`supported`]
/// says `forward`.
pub fn grad_w(g: &ConvGeom, x: &[f32], dy: &[f32], gw: &mut [f32], buf: &mut [f32]) -> Result<()> {
    let (oh, ow) = check(g, x.len(), gw.len(), dy.len(), buf.len())?;
    if !supported(g).forward {
        return Err(unsupported());
    }
    let len = padded_len(g.h, g.w, g.cin, g.pad, g.stride.1).unwrap_or(usize::MAX);
    pad_into(x, (g.h, g.w, g.cin), g.pad, &mut buf[..len]);
    run_grad_w(g, (oh, ow), &buf[..len], dy, gw);
    Ok(())
}

/// `dx (+)= ∂L/∂x` of one sample from its output gradient `dy` and the flipped weights `wt`
/// ([`flip_weights`]); `dx` is overwritten unless `acc`. `dy` `None`: the output gradient is in
/// `dx` (same size), and is copied before `dx` is written. Only where [`supported`] says
/// `grad_x`.
pub fn grad_x(
    g: &ConvGeom,
    dy: Option<&[f32]>,
    wt: &[f32],
    dx: &mut [f32],
    acc: bool,
    buf: &mut [f32],
) -> Result<()> {
    let dyl = dy.map_or(dx.len(), <[f32]>::len);
    let (oh, ow) = check(g, dx.len(), wt.len(), dyl, buf.len())?;
    if !supported(g).grad_x {
        return Err(unsupported());
    }
    let t = transposed(g, (oh, ow));
    let len = padded_len(t.h, t.w, t.cin, t.pad, 1).unwrap_or(usize::MAX);
    pad_into(dy.unwrap_or(dx), (t.h, t.w, t.cin), t.pad, &mut buf[..len]);
    if !acc {
        dx.fill(0.0);
    }
    run_forward(&t, (g.h, g.w), &buf[..len], wt, dx);
    Ok(())
}

/// The forward loops in the best build this CPU has (checked by the callers).
fn run_forward(g: &ConvGeom, hw: (usize, usize), xp: &[f32], w: &[f32], y: &mut [f32]) {
    #[cfg(x86_detect)]
    if tile_width() == Some(32) {
        // SAFETY: the CPU reported AVX-512F (with AVX2 and FMA).
        unsafe { forward_avx512(g, hw, xp, w, y) }
    } else {
        // SAFETY: `supported` said yes, so the CPU reported AVX2 and FMA.
        unsafe { forward_avx2(g, hw, xp, w, y) }
    }
    #[cfg(not(x86_detect))]
    let _ = (g, hw, xp, w, y);
}

/// The weight-gradient loops in the best build this CPU has (checked by the callers).
fn run_grad_w(g: &ConvGeom, hw: (usize, usize), xp: &[f32], dy: &[f32], gw: &mut [f32]) {
    #[cfg(x86_detect)]
    if tile_width() == Some(32) {
        // SAFETY: the CPU reported AVX-512F (with AVX2 and FMA).
        unsafe { grad_w_avx512(g, hw, xp, dy, gw) }
    } else {
        // SAFETY: `supported` said yes, so the CPU reported AVX2 and FMA.
        unsafe { grad_w_avx2(g, hw, xp, dy, gw) }
    }
    #[cfg(not(x86_detect))]
    let _ = (g, hw, xp, dy, gw);
}

#[cfg(x86_detect)]
mod x86 {
    use super::{P_AVX2, P_AVX512, R};
    use crate::gemm::{Avx2, Avx512, Vector};
    use crate::spmm::ConvGeom;

    /// The forward loops: every `P`-pixel tile of every output row, every register pair of
    /// output channels.
    ///
    /// # Safety
    ///
    /// The CPU has `V`'s features; `xp` is the padded input with [`super::padded_len`] floats,
    /// `w` and `y` have the geometry's lengths and `g.cout` is a multiple of `2·V::LANES`.
    #[inline(always)]
    unsafe fn forward<V: Vector, const P: usize>(
        g: &ConvGeom,
        (oh_n, ow_n): (usize, usize),
        xp: &[f32],
        w: &[f32],
        y: &mut [f32],
    ) {
        let (cin, cout, l) = (g.cin, g.cout, V::LANES);
        let wp = g.w + 2 * g.pad.1;
        let (sh, sw) = g.stride;
        for oh in 0..oh_n {
            for ow0 in (0..ow_n).step_by(P) {
                let valid = P.min(ow_n - ow0);
                let base = (oh * sh * wp + ow0 * sw) * cin;
                for co0 in (0..cout).step_by(2 * l) {
                    // SAFETY: the caller guarantees `V`'s features.
                    let mut acc = [[unsafe { V::zero() }; 2]; P];
                    // SAFETY: tap (a, b), channel ci and pixel p < P read the padded input at
                    // base + ((a·wp + b) + p·sw)·cin + ci, below hp·wp·cin + P·sw·cin, inside
                    // `xp` (its slack covers the pixels past the row, whose lanes are dropped);
                    // the weights at (tap·cin + ci)·cout + co0 + 2·LANES ≤ w.len().
                    unsafe {
                        let mut wk = w.as_ptr().add(co0);
                        for a in 0..g.kh {
                            for b in 0..g.kw {
                                let xt = xp.as_ptr().add(base + (a * wp + b) * cin);
                                for ci in 0..cin {
                                    let (b0, b1) = (V::load(wk), V::load(wk.add(l)));
                                    wk = wk.add(cout);
                                    for (p, acc) in acc.iter_mut().enumerate() {
                                        let av = V::splat(*xt.add(p * sw * cin + ci));
                                        acc[0] = V::fmadd(av, b0, acc[0]);
                                        acc[1] = V::fmadd(av, b1, acc[1]);
                                    }
                                }
                            }
                        }
                        let yt = y.as_mut_ptr().add((oh * ow_n + ow0) * cout + co0);
                        for (p, acc) in acc.iter().enumerate().take(valid) {
                            let yp = yt.add(p * cout);
                            V::store(yp, V::add(V::load(yp), acc[0]));
                            V::store(yp.add(l), V::add(V::load(yp.add(l)), acc[1]));
                        }
                    }
                }
            }
        }
    }

    /// The weight-gradient loops: per tap, every `R`-channel tile of the input channels and
    /// register pair of output channels, summed over all output pixels.
    ///
    /// # Safety
    ///
    /// As [`forward`], with `dy` the output gradient and `gw` the weights' length.
    #[inline(always)]
    unsafe fn grad_w<V: Vector>(
        g: &ConvGeom,
        (oh_n, ow_n): (usize, usize),
        xp: &[f32],
        dy: &[f32],
        gw: &mut [f32],
    ) {
        let (cin, cout, l) = (g.cin, g.cout, V::LANES);
        let wp = g.w + 2 * g.pad.1;
        let (sh, sw) = g.stride;
        for a in 0..g.kh {
            for b in 0..g.kw {
                let tap = a * g.kw + b;
                for ci0 in (0..cin).step_by(R) {
                    let rows = R.min(cin - ci0);
                    for co0 in (0..cout).step_by(2 * l) {
                        // SAFETY: the caller guarantees `V`'s features.
                        let mut acc = [[unsafe { V::zero() }; 2]; R];
                        // SAFETY: pixel (oh, ow) reads the padded input at
                        // ((oh·sh + a)·wp + ow·sw + b)·cin + ci0 + i, i < R, below
                        // hp·wp·cin + R, inside `xp` (channels past `cin` land in dropped
                        // rows); dy at (oh·ow_n + ow)·cout + co0 + 2·LANES ≤ dy.len(); gw at
                        // (tap·cin + ci0 + i)·cout + co0 + 2·LANES ≤ gw.len() for i < rows.
                        unsafe {
                            for oh in 0..oh_n {
                                let xr = xp.as_ptr().add(((oh * sh + a) * wp + b) * cin + ci0);
                                let dr = dy.as_ptr().add(oh * ow_n * cout + co0);
                                for ow in 0..ow_n {
                                    let xa = xr.add(ow * sw * cin);
                                    let d = dr.add(ow * cout);
                                    let (b0, b1) = (V::load(d), V::load(d.add(l)));
                                    for (i, acc) in acc.iter_mut().enumerate() {
                                        let av = V::splat(*xa.add(i));
                                        acc[0] = V::fmadd(av, b0, acc[0]);
                                        acc[1] = V::fmadd(av, b1, acc[1]);
                                    }
                                }
                            }
                            let gt = gw.as_mut_ptr().add((tap * cin + ci0) * cout + co0);
                            for (i, acc) in acc.iter().enumerate().take(rows) {
                                let gp = gt.add(i * cout);
                                V::store(gp, V::add(V::load(gp), acc[0]));
                                V::store(gp.add(l), V::add(V::load(gp.add(l)), acc[1]));
                            }
                        }
                    }
                }
            }
        }
    }

    /// The AVX2 + FMA build of the forward loops.
    ///
    /// # Safety
    ///
    /// As [`forward`] for `Avx2`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn forward_avx2(
        g: &ConvGeom,
        hw: (usize, usize),
        xp: &[f32],
        w: &[f32],
        y: &mut [f32],
    ) {
        // SAFETY: the caller's guarantees, and this function's features are `Avx2`'s.
        unsafe { forward::<Avx2, P_AVX2>(g, hw, xp, w, y) }
    }

    /// The AVX-512 build of the forward loops.
    ///
    /// # Safety
    ///
    /// As [`forward`] for `Avx512`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn forward_avx512(
        g: &ConvGeom,
        hw: (usize, usize),
        xp: &[f32],
        w: &[f32],
        y: &mut [f32],
    ) {
        // SAFETY: the caller's guarantees, and this function's features are `Avx512`'s.
        unsafe { forward::<Avx512, P_AVX512>(g, hw, xp, w, y) }
    }

    /// The AVX2 + FMA build of the weight-gradient loops.
    ///
    /// # Safety
    ///
    /// As [`grad_w`] for `Avx2`.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn grad_w_avx2(
        g: &ConvGeom,
        hw: (usize, usize),
        xp: &[f32],
        dy: &[f32],
        gw: &mut [f32],
    ) {
        // SAFETY: the caller's guarantees, and this function's features are `Avx2`'s.
        unsafe { grad_w::<Avx2>(g, hw, xp, dy, gw) }
    }

    /// The AVX-512 build of the weight-gradient loops.
    ///
    /// # Safety
    ///
    /// As [`grad_w`] for `Avx512`.
    #[target_feature(enable = "avx512f,avx2,fma")]
    pub(super) unsafe fn grad_w_avx512(
        g: &ConvGeom,
        hw: (usize, usize),
        xp: &[f32],
        dy: &[f32],
        gw: &mut [f32],
    ) {
        // SAFETY: the caller's guarantees, and this function's features are `Avx512`'s.
        unsafe { grad_w::<Avx512>(g, hw, xp, dy, gw) }
    }
}

#[cfg(x86_detect)]
use x86::{forward_avx2, forward_avx512, grad_w_avx2, grad_w_avx512};
