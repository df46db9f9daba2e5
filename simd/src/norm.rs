//! Batch norm's per-channel loops over NHWC rows (`c` channels each), eight channels at a time,
//! and layer norm's loops over rows.
//!
//! Each channel's sums run over the rows in order, in f64, and every element gets the same
//! operations as in the scalar twins in [`crate::reference`] (no fused multiply-add, no
//! reordering), so the results have the same bits; only more channels are done per
//! instruction. Channels past the last multiple of eight take the scalar path. x̂ is kept as
//! f32, bf16 or 8-bit codes ([`Xhat`]); bf16 rounds to nearest, ties to even, as
//! `half::bf16::from_f32`; a code is `x̂ / scale` rounded to nearest (ties away from zero, as
//! `libm::roundf`) and clamped to ±127, with one scale per channel (batch norm) or row (layer
//! norm).

use half::bf16;
use wide::{f32x8, f64x4, i32x8, u32x8};

use crate::{Result, check_len};

/// How x̂ is kept: f32, bf16 (rounded to nearest even), or an 8-bit code of `x̂ / scale`.
///
/// The float forms ignore the scale: their values are x̂ itself.
pub trait Xhat: Copy + Send + Sync {
    /// Eight values from `h[..8]` as f32 (codes: not yet times their scale).
    fn load8(h: &[Self]) -> f32x8;
    /// Eight values to `h[..8]`, each divided by its scale (given as `1/scale`) where the form
    /// has one.
    fn store8(h: &mut [Self], v: f32x8, inv_scale: f32x8);
    /// One value as f32 (a code: not yet times its scale).
    fn get(self) -> f32;
    /// One value from f32, divided by its scale (given as `1/scale`) where the form has one.
    fn put(v: f32, inv_scale: f32) -> Self;
}

impl Xhat for f32 {
    #[inline(always)]
    fn load8(h: &[f32]) -> f32x8 {
        load(h)
    }
    #[inline(always)]
    fn store8(h: &mut [f32], v: f32x8, _: f32x8) {
        h[..8].copy_from_slice(&v.to_array());
    }
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }
    #[inline(always)]
    fn put(v: f32, _: f32) -> f32 {
        v
    }
}

impl Xhat for bf16 {
    #[inline(always)]
    fn load8(h: &[bf16]) -> f32x8 {
        let b: [u32; 8] = core::array::from_fn(|j| (h[j].to_bits() as u32) << 16);
        bytemuck::cast(u32x8::from(b))
    }
    #[inline(always)]
    fn store8(h: &mut [bf16], v: f32x8, _: f32x8) {
        // Ties to even: add 0x7FFF plus the lowest kept bit, keep the high half; a NaN keeps its
        // high half with the quiet bit set (as `bf16::from_f32`).
        let x: u32x8 = bytemuck::cast(v);
        let lsb = (x >> 16) & u32x8::splat(1);
        let rounded = (x + u32x8::splat(0x7FFF) + lsb) >> 16;
        let quiet = (x >> 16) | u32x8::splat(0x0040);
        let nan: u32x8 = bytemuck::cast(v.is_nan());
        let out: u32x8 = (nan & quiet) | (!nan & rounded);
        let out = out.to_array();
        for (d, &o) in h[..8].iter_mut().zip(&out) {
            *d = bf16::from_bits(o as u16);
        }
    }
    #[inline(always)]
    fn get(self) -> f32 {
        self.to_f32()
    }
    #[inline(always)]
    fn put(v: f32, _: f32) -> bf16 {
        bf16::from_f32(v)
    }
}

/// Largest magnitude of an 8-bit code.
pub const CODE_MAX: f32 = 127.0;

impl Xhat for i8 {
    #[inline(always)]
    fn load8(h: &[i8]) -> f32x8 {
        let w: [i32; 8] = core::array::from_fn(|j| h[j] as i32);
        f32x8::from_i32x8(i32x8::from(w))
    }
    /// As [`Xhat::put`] in each lane: NaN to 0, clamped first (rounding cannot leave ±127
    /// then); the fraction `x − trunc(x)` is exact, so ±0.5 is a tie, away from zero.
    #[inline(always)]
    fn store8(h: &mut [i8], v: f32x8, inv_scale: f32x8) {
        let (q, x) = (f32x8::splat(CODE_MAX), v * inv_scale);
        // No NaN is left for the fast (NaN-unaware) clamp and conversion.
        let x = x.is_nan().select(f32x8::splat(0.0), x);
        let x = x.fast_max(-q).fast_min(q);
        let t = x.fast_trunc_int();
        let frac = x - f32x8::from_i32x8(t);
        let half = f32x8::splat(0.5);
        let up: i32x8 = bytemuck::cast(frac.simd_ge(half));
        let down: i32x8 = bytemuck::cast(frac.simd_le(-half));
        // A true lane is −1: subtracting `up` adds one, adding `down` subtracts one.
        let out = (t - up + down).to_array();
        for (d, &o) in h[..8].iter_mut().zip(&out) {
            *d = o as i8;
        }
    }
    #[inline(always)]
    fn get(self) -> f32 {
        self as f32
    }
    /// Rounded to nearest (ties away from zero) and clamped to ±127; NaN becomes 0.
    #[inline(always)]
    fn put(v: f32, inv_scale: f32) -> i8 {
        libm::roundf(v * inv_scale).clamp(-CODE_MAX, CODE_MAX) as i8
    }
}

/// The scale of a group of x̂ whose largest magnitude is `max`: `max / 127`, or 1 when `max`
/// is 0 or not finite.
pub fn code_scale(max: f32) -> f32 {
    if max > 0.0 && max.is_finite() {
        max / CODE_MAX
    } else {
        1.0
    }
}

#[inline(always)]
fn load(x: &[f32]) -> f32x8 {
    let a: [f32; 8] = x[..8].try_into().unwrap_or([0.0; 8]);
    f32x8::from(a)
}

/// The two halves of eight lanes widened to f64.
#[inline(always)]
fn widen(v: f32x8) -> [f64x4; 2] {
    let a = v.to_array();
    [
        f64x4::from([a[0] as f64, a[1] as f64, a[2] as f64, a[3] as f64]),
        f64x4::from([a[4] as f64, a[5] as f64, a[6] as f64, a[7] as f64]),
    ]
}

#[inline(always)]
fn load4(a: &[f64]) -> f64x4 {
    f64x4::from([a[0], a[1], a[2], a[3]])
}

/// Rows summed per pass over a group of channels: at most 1 024 channels × 64 rows × 4 bytes
/// stay within a 256 KiB L2; the cnn's 32–128 channels within L1.
const BLOCK: usize = 64;

/// Checks that `x` is whole rows of `c` and that each per-channel slice has `c` entries.
fn rows(what: &'static str, x: usize, c: usize, per_channel: &[usize]) -> Result<usize> {
    if c == 0 || !x.is_multiple_of(c) {
        return check_len(what, x.div_ceil(c.max(1)) * c.max(1), x).map(|_| 0);
    }
    for &n in per_channel {
        check_len(what, c, n)?;
    }
    Ok(x / c)
}

/// `acc[i] = Σ_rows x[r·c + i]` in f64 (rows in order), and with `mean`,
/// `acc[i] = Σ_rows (x[r·c + i] − mean[i])²`.
pub fn channel_sums(x: &[f32], c: usize, mean: Option<&[f64]>, acc: &mut [f64]) -> Result<()> {
    let n = match mean {
        Some(m) => rows("batch norm statistics", x.len(), c, &[m.len(), acc.len()])?,
        None => rows("batch norm statistics", x.len(), c, &[acc.len()])?,
    };
    sums(x, c, n, mean, acc, None);
    Ok(())
}

/// [`channel_sums`] without a mean, and in the same read `lo[i]` the smallest and `hi[i]` the
/// largest value of channel `i`, NaN skipped (a channel with no other value keeps +∞ and −∞):
/// where batch norm's largest |x̂| lies. Minima and maxima do not depend on order, so these are
/// [`crate::reference::bn_channel_extremes`]'s values (but for the sign of a zero).
pub fn channel_sums_extremes(
    x: &[f32],
    c: usize,
    acc: &mut [f64],
    lo: &mut [f64],
    hi: &mut [f64],
) -> Result<()> {
    let lens = [acc.len(), lo.len(), hi.len()];
    let n = rows("batch norm statistics", x.len(), c, &lens)?;
    sums(x, c, n, None, acc, Some((lo, hi)));
    Ok(())
}

/// The loops of [`channel_sums`] and [`channel_sums_extremes`] over `n` checked rows.
#[inline(always)]
fn sums(
    x: &[f32],
    c: usize,
    n: usize,
    mean: Option<&[f64]>,
    acc: &mut [f64],
    mut ext: Option<(&mut [f64], &mut [f64])>,
) {
    acc.fill(0.0);
    if let Some((lo, hi)) = ext.as_mut() {
        lo.fill(f64::INFINITY);
        hi.fill(f64::NEG_INFINITY);
    }
    let v8 = c / 8 * 8;
    let (inf, minus_inf) = (f32x8::splat(f32::INFINITY), f32x8::splat(f32::NEG_INFINITY));
    crate::isa::vectorized(|| {
        // Blocks of rows that stay in L1 while each group of eight channels sums them in
        // registers (each channel still adds its rows in order).
        for r0 in (0..n).step_by(BLOCK) {
            let rows = r0..n.min(r0 + BLOCK);
            for j in (0..v8).step_by(8) {
                let (mut sl, mut sh) = (load4(&acc[j..]), load4(&acc[j + 4..]));
                let (mut l, mut h) = (inf, minus_inf);
                let (ml, mh) = match mean {
                    Some(m) => (load4(&m[j..]), load4(&m[j + 4..])),
                    None => (f64x4::splat(0.0), f64x4::splat(0.0)),
                };
                for r in rows.clone() {
                    let v = load(&x[r * c + j..]);
                    let [lo, hi] = widen(v);
                    match mean {
                        Some(_) => {
                            let (dl, dh) = (lo - ml, hi - mh);
                            (sl, sh) = (sl + dl * dl, sh + dh * dh);
                        }
                        None => (sl, sh) = (sl + lo, sh + hi),
                    }
                    if ext.is_some() {
                        // `wide`'s min and max skip a NaN on either side.
                        (l, h) = (l.min(v), h.max(v));
                    }
                }
                acc[j..j + 4].copy_from_slice(&sl.to_array());
                acc[j + 4..j + 8].copy_from_slice(&sh.to_array());
                if let Some((lo, hi)) = ext.as_mut() {
                    for (k, (&a, &b)) in l.to_array().iter().zip(&h.to_array()).enumerate() {
                        lo[j + k] = lo[j + k].min(a as f64);
                        hi[j + k] = hi[j + k].max(b as f64);
                    }
                }
            }
        }
        for r in 0..n {
            let row = &x[r * c..][..c];
            for i in v8..c {
                let v = row[i] as f64;
                acc[i] += match mean {
                    Some(m) => (v - m[i]) * (v - m[i]),
                    None => v,
                };
                if let Some((lo, hi)) = ext.as_mut() {
                    lo[i] = lo[i].min(v);
                    hi[i] = hi[i].max(v);
                }
            }
        }
    });
}

/// Per-channel constants of [`normalize`]: the batch mean (as f32), `1/σ`, γ and β.
#[derive(Debug, Clone, Copy)]
pub struct Affine<'a> {
    /// The batch mean of each channel, rounded to f32.
    pub mean: &'a [f32],
    /// `1/√(var + eps)` of each channel.
    pub inv: &'a [f32],
    /// γ.
    pub gamma: &'a [f32],
    /// β.
    pub beta: &'a [f32],
    /// With 8-bit x̂: `1/scale` of each channel's codes (ignored by the float forms; none: 1).
    pub inv_scale: Option<&'a [f32]>,
}

/// `h = (x − mean)·inv` kept as `H`, `y = γ·h + β` from the unrounded `h`; `x` is `src`, or `y`
/// itself when `None` (in place).
pub fn normalize<H: Xhat>(
    src: Option<&[f32]>,
    y: &mut [f32],
    h: &mut [H],
    c: usize,
    a: Affine<'_>,
) -> Result<()> {
    let lens = [a.mean.len(), a.inv.len(), a.gamma.len(), a.beta.len()];
    let n = rows("batch norm output", y.len(), c, &lens)?;
    if let Some(s) = a.inv_scale {
        check_len("batch norm code scales", c, s.len())?;
    }
    let one = f32x8::splat(1.0);
    check_len("batch norm x̂", y.len(), h.len())?;
    if let Some(x) = src {
        check_len("batch norm input", y.len(), x.len())?;
    }
    let v8 = c / 8 * 8;
    crate::isa::vectorized(|| {
        for r in 0..n {
            let (yr, hr) = (&mut y[r * c..][..c], &mut h[r * c..][..c]);
            let xr = src.map(|x| &x[r * c..][..c]);
            for j in (0..v8).step_by(8) {
                let xv = load(xr.map_or(&yr[j..], |x| &x[j..]));
                let v = (xv - load(&a.mean[j..])) * load(&a.inv[j..]);
                H::store8(&mut hr[j..], v, a.inv_scale.map_or(one, |s| load(&s[j..])));
                let out = load(&a.gamma[j..]) * v + load(&a.beta[j..]);
                yr[j..j + 8].copy_from_slice(&out.to_array());
            }
            for i in v8..c {
                let xv = xr.map_or(yr[i], |x| x[i]);
                let v = (xv - a.mean[i]) * a.inv[i];
                hr[i] = H::put(v, a.inv_scale.map_or(1.0, |s| s[i]));
                yr[i] = a.gamma[i] * v + a.beta[i];
            }
        }
    });
    Ok(())
}

/// Backward's sums: `db[i] = Σ dy`, `dg[i] = Σ (dy·x̂)` per channel, in f64 (rows in order; each
/// product in f32).
pub fn grad_sums<H: Xhat>(
    dy: &[f32],
    h: &[H],
    c: usize,
    db: &mut [f64],
    dg: &mut [f64],
) -> Result<()> {
    let n = rows("batch norm dY", dy.len(), c, &[db.len(), dg.len()])?;
    check_len("batch norm x̂", dy.len(), h.len())?;
    db.fill(0.0);
    dg.fill(0.0);
    let v8 = c / 8 * 8;
    crate::isa::vectorized(|| {
        for r0 in (0..n).step_by(BLOCK) {
            let rows = r0..n.min(r0 + BLOCK);
            for j in (0..v8).step_by(8) {
                let (mut bl, mut bh) = (load4(&db[j..]), load4(&db[j + 4..]));
                let (mut gl, mut gh) = (load4(&dg[j..]), load4(&dg[j + 4..]));
                for r in rows.clone() {
                    let d = load(&dy[r * c + j..]);
                    let [dl, dh] = widen(d);
                    let [pl, ph] = widen(d * H::load8(&h[r * c + j..]));
                    (bl, bh, gl, gh) = (bl + dl, bh + dh, gl + pl, gh + ph);
                }
                db[j..j + 4].copy_from_slice(&bl.to_array());
                db[j + 4..j + 8].copy_from_slice(&bh.to_array());
                dg[j..j + 4].copy_from_slice(&gl.to_array());
                dg[j + 4..j + 8].copy_from_slice(&gh.to_array());
            }
        }
        for r in 0..n {
            let (dr, hr) = (&dy[r * c..][..c], &h[r * c..][..c]);
            for i in v8..c {
                db[i] += dr[i] as f64;
                dg[i] += (dr[i] * hr[i].get()) as f64;
            }
        }
    });
    Ok(())
}

/// Per-channel constants of [`grad_x`]: `k = γ·inv/m`, and the sums of [`grad_sums`] as f32.
#[derive(Debug, Clone, Copy)]
pub struct Back<'a> {
    /// `γ·(1/σ)/m` of each channel.
    pub k: &'a [f32],
    /// `Σ dy` of each channel, as f32.
    pub dbeta: &'a [f32],
    /// `Σ dy·x̂` of each channel (times the code scale), as f32.
    pub dgamma: &'a [f32],
    /// Rows of the whole batch (`m`).
    pub m: f32,
}

/// `dx = k·(m·dy − dbeta − x̂·dgamma)`, added onto `dx` when `acc`; `dy` is `dy`, or `dx` itself
/// when `None` (in place).
pub fn grad_x<H: Xhat>(
    dy: Option<&[f32]>,
    dx: &mut [f32],
    h: &[H],
    c: usize,
    b: Back<'_>,
    acc: bool,
) -> Result<()> {
    let n = rows(
        "batch norm dX",
        dx.len(),
        c,
        &[b.k.len(), b.dbeta.len(), b.dgamma.len()],
    )?;
    check_len("batch norm x̂", dx.len(), h.len())?;
    if let Some(dy) = dy {
        check_len("batch norm dY", dx.len(), dy.len())?;
    }
    let v8 = c / 8 * 8;
    let m8 = f32x8::splat(b.m);
    crate::isa::vectorized(|| {
        for r in 0..n {
            let (xr, hr) = (&mut dx[r * c..][..c], &h[r * c..][..c]);
            let dr = dy.map(|d| &d[r * c..][..c]);
            for j in (0..v8).step_by(8) {
                let d = load(dr.map_or(&xr[j..], |d| &d[j..]));
                let t = m8 * d - load(&b.dbeta[j..]) - H::load8(&hr[j..]) * load(&b.dgamma[j..]);
                let v = load(&b.k[j..]) * t;
                let out = if acc { load(&xr[j..]) + v } else { v };
                xr[j..j + 8].copy_from_slice(&out.to_array());
            }
            for i in v8..c {
                let d = dr.map_or(xr[i], |d| d[i]);
                let v = b.k[i] * (b.m * d - b.dbeta[i] - hr[i].get() * b.dgamma[i]);
                xr[i] = if acc { xr[i] + v } else { v };
            }
        }
    });
    Ok(())
}

/// Layer norm's statistics of each `c`-wide row of `x`: `mean[r]` (rounded to f32) and
/// `inv[r] = 1/√(var + eps)`, both from f64 sums over the row in order (the mean, then the
/// squared deviations from the unrounded mean). Eight rows run side by side, one per lane, so
/// each row's sums are still one sequential chain (the same bits as one row at a time) but
/// eight chains overlap instead of waiting on each addition's latency.
pub fn row_stats(x: &[f32], c: usize, eps: f32, mean: &mut [f32], inv: &mut [f32]) -> Result<()> {
    let n = rows("layer norm rows", x.len(), c, &[])?;
    check_len("layer norm means", n, mean.len())?;
    check_len("layer norm 1/σ", n, inv.len())?;
    let (nf, e) = (c as f64, eps as f64);
    let eight = n / 8 * 8;
    crate::isa::vectorized(|| {
        for r0 in (0..eight).step_by(8) {
            let lane = |i: usize, k: usize| x[(r0 + k) * c + i] as f64;
            // Starting from −0.0, as `Iterator::sum` of floats does.
            let (mut s0, mut s1) = (f64x4::splat(-0.0), f64x4::splat(-0.0));
            for i in 0..c {
                s0 += f64x4::from([lane(i, 0), lane(i, 1), lane(i, 2), lane(i, 3)]);
                s1 += f64x4::from([lane(i, 4), lane(i, 5), lane(i, 6), lane(i, 7)]);
            }
            let (m0, m1) = (s0 / f64x4::splat(nf), s1 / f64x4::splat(nf));
            let (mut v0, mut v1) = (f64x4::splat(-0.0), f64x4::splat(-0.0));
            for i in 0..c {
                let d0 = f64x4::from([lane(i, 0), lane(i, 1), lane(i, 2), lane(i, 3)]) - m0;
                let d1 = f64x4::from([lane(i, 4), lane(i, 5), lane(i, 6), lane(i, 7)]) - m1;
                v0 += d0 * d0;
                v1 += d1 * d1;
            }
            let one = f64x4::splat(1.0);
            let i0 = one / (v0 / f64x4::splat(nf) + f64x4::splat(e)).sqrt();
            let i1 = one / (v1 / f64x4::splat(nf) + f64x4::splat(e)).sqrt();
            let (m, iv) = (
                [m0.to_array(), m1.to_array()],
                [i0.to_array(), i1.to_array()],
            );
            for k in 0..8 {
                mean[r0 + k] = m[k / 4][k % 4] as f32;
                inv[r0 + k] = iv[k / 4][k % 4] as f32;
            }
        }
    });
    for r in eight..n {
        let (m, iv) = crate::reference::ln_row_stats(&x[r * c..][..c], eps);
        mean[r] = m;
        inv[r] = iv;
    }
    Ok(())
}

/// Layer norm's forward on one row: `h = (x − mean)·inv` kept as `H` (8-bit: divided by the
/// row's scale, given as `inv_scale`), `y = γ·h + β` from the unrounded `h` (as one row of
/// [`crate::reference::ln_normalize_row`]); `x` is `src`, or `y` itself when `None` (in place).
#[allow(clippy::too_many_arguments)]
pub fn normalize_row<H: Xhat>(
    src: Option<&[f32]>,
    y: &mut [f32],
    h: &mut [H],
    (mean, inv, inv_scale): (f32, f32, f32),
    gamma: &[f32],
    beta: &[f32],
) -> Result<()> {
    let c = y.len();
    for n in [h.len(), gamma.len(), beta.len()] {
        check_len("layer norm row", c, n)?;
    }
    if let Some(x) = src {
        check_len("layer norm input row", c, x.len())?;
    }
    let v8 = c / 8 * 8;
    let (m8, i8, s8) = (
        f32x8::splat(mean),
        f32x8::splat(inv),
        f32x8::splat(inv_scale),
    );
    crate::isa::vectorized(|| {
        for j in (0..v8).step_by(8) {
            let xv = load(src.map_or(&y[j..], |x| &x[j..]));
            let v = (xv - m8) * i8;
            H::store8(&mut h[j..], v, s8);
            let out = load(&gamma[j..]) * v + load(&beta[j..]);
            y[j..j + 8].copy_from_slice(&out.to_array());
        }
        for i in v8..c {
            let xv = src.map_or(y[i], |x| x[i]);
            let v = (xv - mean) * inv;
            h[i] = H::put(v, inv_scale);
            y[i] = gamma[i] * v + beta[i];
        }
    });
    Ok(())
}

/// The largest `|(x − mean)·inv|` over a row, NaN skipped (0 for an empty row): the magnitude
/// its 8-bit scale covers. Maxima do not depend on order, so this is
/// [`crate::reference::ln_abs_max`]'s value.
pub fn abs_max(x: &[f32], mean: f32, inv: f32) -> f32 {
    let v8 = x.len() / 8 * 8;
    let (m8, i8) = (f32x8::splat(mean), f32x8::splat(inv));
    crate::isa::vectorized(|| {
        let mut acc = f32x8::splat(0.0);
        for j in (0..v8).step_by(8) {
            // `wide`'s max skips a NaN on either side.
            acc = acc.max(((load(&x[j..]) - m8) * i8).abs());
        }
        let tail = x[v8..].iter().map(|&v| ((v - mean) * inv).abs());
        acc.to_array().into_iter().chain(tail).fold(0.0, f32::max)
    })
}

/// Layer norm's backward over `c`-wide rows (`c = gamma.len()`), x̂ being each row's `h` times its
/// `scale` (8-bit; none: 1): adds each channel's `Σ dy·x̂`
/// and `Σ dy` over the rows onto `dg` and `db` (f64, rows in order), and, when `dx` is given,
/// writes (or, with `acc`, adds) `dx = inv/c · (c·ĝ − Σĝ − x̂·Σĝ·x̂)` with `ĝ = dy·γ` and the
/// row sums in f64 over the channels in order — the bits of
/// [`crate::reference::ln_backward`]. Eight rows at a time: the channel sums run eight
/// channels per step, the row sums eight rows side by side (one chain per lane).
#[allow(clippy::too_many_arguments)]
pub fn ln_backward<H: Xhat>(
    dy: &[f32],
    h: &[H],
    gamma: &[f32],
    (inv, scale): (&[f32], Option<&[f32]>),
    dg: &mut [f64],
    db: &mut [f64],
    mut dx: Option<&mut [f32]>,
    acc: bool,
) -> Result<()> {
    let c = gamma.len();
    let n = rows("layer norm dY", dy.len(), c, &[dg.len(), db.len()])?;
    check_len("layer norm x̂", dy.len(), h.len())?;
    check_len("layer norm 1/σ", n, inv.len())?;
    if let Some(s) = scale {
        check_len("layer norm code scales", n, s.len())?;
    }
    let row_scale = |r: usize| scale.map_or(1.0, |s| s[r]);
    if let Some(dx) = dx.as_deref() {
        check_len("layer norm dX", dy.len(), dx.len())?;
    }
    let (v8, eight) = (c / 8 * 8, n / 8 * 8);
    let cf = c as f32;
    crate::isa::vectorized(|| {
        for r0 in (0..eight).step_by(8) {
            // Per channel, over the block's rows in order.
            for j in (0..v8).step_by(8) {
                let (mut gl, mut gh) = (load4(&dg[j..]), load4(&dg[j + 4..]));
                let (mut bl, mut bh) = (load4(&db[j..]), load4(&db[j + 4..]));
                for r in r0..r0 + 8 {
                    let d = load(&dy[r * c + j..]);
                    let hv = H::load8(&h[r * c + j..]) * f32x8::splat(row_scale(r));
                    let ([pl, ph], [dl, dh]) = (widen(d * hv), widen(d));
                    (gl, gh, bl, bh) = (gl + pl, gh + ph, bl + dl, bh + dh);
                }
                dg[j..j + 4].copy_from_slice(&gl.to_array());
                dg[j + 4..j + 8].copy_from_slice(&gh.to_array());
                db[j..j + 4].copy_from_slice(&bl.to_array());
                db[j + 4..j + 8].copy_from_slice(&bh.to_array());
            }
            for i in v8..c {
                for r in r0..r0 + 8 {
                    let (d, hv) = (dy[r * c + i], h[r * c + i].get() * row_scale(r));
                    dg[i] += (d * hv) as f64;
                    db[i] += d as f64;
                }
            }
            // Per row, over the channels in order: one row per lane.
            let zero = f64x4::splat(0.0);
            let (mut s0, mut s1, mut x0, mut x1) = (zero, zero, zero, zero);
            let scales = f32x8::from(core::array::from_fn::<f32, 8, _>(|k| row_scale(r0 + k)));
            for (i, &gi) in gamma.iter().enumerate() {
                let d = f32x8::from(core::array::from_fn::<f32, 8, _>(|k| dy[(r0 + k) * c + i]));
                let hv = f32x8::from(core::array::from_fn::<f32, 8, _>(|k| {
                    h[(r0 + k) * c + i].get()
                })) * scales;
                let g = d * f32x8::splat(gi);
                let ([gl, gh], [ql, qh]) = (widen(g), widen(g * hv));
                (s0, s1, x0, x1) = (s0 + gl, s1 + gh, x0 + ql, x1 + qh);
            }
            let Some(dx) = dx.as_deref_mut() else {
                continue;
            };
            let (sg, sgx) = (
                [s0.to_array(), s1.to_array()],
                [x0.to_array(), x1.to_array()],
            );
            for k in 0..8 {
                let r = r0 + k;
                let kk = f32x8::splat(inv[r] / cf);
                let (sgf, sgxf) = (sg[k / 4][k % 4] as f32, sgx[k / 4][k % 4] as f32);
                let (sg8, sgx8) = (f32x8::splat(sgf), f32x8::splat(sgxf));
                let (s, s8) = (row_scale(r), f32x8::splat(row_scale(r)));
                for j in (0..v8).step_by(8) {
                    let g = load(&dy[r * c + j..]) * load(&gamma[j..]);
                    let hv = H::load8(&h[r * c + j..]) * s8;
                    let v = kk * (f32x8::splat(cf) * g - sg8 - hv * sgx8);
                    let at = &mut dx[r * c + j..r * c + j + 8];
                    let out = if acc { load(at) + v } else { v };
                    at.copy_from_slice(&out.to_array());
                }
                for i in v8..c {
                    let g = dy[r * c + i] * gamma[i];
                    let hv = h[r * c + i].get() * s;
                    let v = (inv[r] / cf) * (cf * g - sgf - hv * sgxf);
                    let d = &mut dx[r * c + i];
                    *d = if acc { *d + v } else { v };
                }
            }
        }
    });
    let rest = eight * c;
    let dx_rest = dx.map(|d| &mut d[rest..]);
    crate::reference::ln_backward(
        &dy[rest..],
        &h[rest..],
        gamma,
        (&inv[eight..], scale.map(|s| &s[eight..])),
        dg,
        db,
        dx_rest,
        acc,
    );
    Ok(())
}
