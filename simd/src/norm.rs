//! Batch norm's per-channel loops over NHWC rows (`c` channels each), eight channels at a time.
//!
//! Each channel's sums run over the rows in order, in f64, and every element gets the same
//! operations as in the scalar twins in [`crate::reference`] (no fused multiply-add, no
//! reordering), so the results have the same bits; only more channels are done per
//! instruction. Channels past the last multiple of eight take the scalar path. x̂ is kept as
//! f32 or bf16 ([`Xhat`]); bf16 rounds to nearest, ties to even, as `half::bf16::from_f32`.

use half::bf16;
use wide::{f32x8, f64x4, u32x8};

use crate::{Result, check_len};

/// How x̂ is kept: f32, or bf16 (rounded to nearest even).
pub trait Xhat: Copy + Send + Sync {
    /// Eight values from `h[..8]` as f32.
    fn load8(h: &[Self]) -> f32x8;
    /// Eight values to `h[..8]`.
    fn store8(h: &mut [Self], v: f32x8);
    /// One value as f32.
    fn get(self) -> f32;
    /// One value from f32.
    fn put(v: f32) -> Self;
}

impl Xhat for f32 {
    #[inline(always)]
    fn load8(h: &[f32]) -> f32x8 {
        load(h)
    }
    #[inline(always)]
    fn store8(h: &mut [f32], v: f32x8) {
        h[..8].copy_from_slice(&v.to_array());
    }
    #[inline(always)]
    fn get(self) -> f32 {
        self
    }
    #[inline(always)]
    fn put(v: f32) -> f32 {
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
    fn store8(h: &mut [bf16], v: f32x8) {
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
    fn put(v: f32) -> bf16 {
        bf16::from_f32(v)
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
    acc.fill(0.0);
    let v8 = c / 8 * 8;
    crate::isa::vectorized(|| {
        // Blocks of rows that stay in L1 while each group of eight channels sums them in
        // registers (each channel still adds its rows in order).
        for r0 in (0..n).step_by(BLOCK) {
            let rows = r0..n.min(r0 + BLOCK);
            for j in (0..v8).step_by(8) {
                let (mut sl, mut sh) = (load4(&acc[j..]), load4(&acc[j + 4..]));
                let (ml, mh) = match mean {
                    Some(m) => (load4(&m[j..]), load4(&m[j + 4..])),
                    None => (f64x4::splat(0.0), f64x4::splat(0.0)),
                };
                for r in rows.clone() {
                    let [lo, hi] = widen(load(&x[r * c + j..]));
                    match mean {
                        Some(_) => {
                            let (dl, dh) = (lo - ml, hi - mh);
                            (sl, sh) = (sl + dl * dl, sh + dh * dh);
                        }
                        None => (sl, sh) = (sl + lo, sh + hi),
                    }
                }
                acc[j..j + 4].copy_from_slice(&sl.to_array());
                acc[j + 4..j + 8].copy_from_slice(&sh.to_array());
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
            }
        }
    });
    Ok(())
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
                H::store8(&mut hr[j..], v);
                let out = load(&a.gamma[j..]) * v + load(&a.beta[j..]);
                yr[j..j + 8].copy_from_slice(&out.to_array());
            }
            for i in v8..c {
                let xv = xr.map_or(yr[i], |x| x[i]);
                let v = (xv - a.mean[i]) * a.inv[i];
                hr[i] = H::put(v);
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

/// Layer norm's forward on one row: `h = (x − mean)·inv` kept as `H`, `y = γ·h + β` from the
/// unrounded `h` (as one row of [`crate::reference::ln_normalize_row`]); `x` is `src`, or `y`
/// itself when `None` (in place).
#[allow(clippy::too_many_arguments)]
pub fn normalize_row<H: Xhat>(
    src: Option<&[f32]>,
    y: &mut [f32],
    h: &mut [H],
    mean: f32,
    inv: f32,
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
    let (m8, i8) = (f32x8::splat(mean), f32x8::splat(inv));
    crate::isa::vectorized(|| {
        for j in (0..v8).step_by(8) {
            let xv = load(src.map_or(&y[j..], |x| &x[j..]));
            let v = (xv - m8) * i8;
            H::store8(&mut h[j..], v);
            let out = load(&gamma[j..]) * v + load(&beta[j..]);
            y[j..j + 8].copy_from_slice(&out.to_array());
        }
        for i in v8..c {
            let xv = src.map_or(y[i], |x| x[i]);
            let v = (xv - mean) * inv;
            h[i] = H::put(v);
            y[i] = gamma[i] * v + beta[i];
        }
    });
    Ok(())
}

/// Layer norm's backward over `c`-wide rows (`c = gamma.len()`): adds each channel's `Σ dy·x̂`
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
    inv: &[f32],
    dg: &mut [f64],
    db: &mut [f64],
    mut dx: Option<&mut [f32]>,
    acc: bool,
) -> Result<()> {
    let c = gamma.len();
    let n = rows("layer norm dY", dy.len(), c, &[dg.len(), db.len()])?;
    check_len("layer norm x̂", dy.len(), h.len())?;
    check_len("layer norm 1/σ", n, inv.len())?;
    if let Some(dx) = dx.as_deref() {
        check_len("layer norm dX", dy.len(), dx.len())?;
    }
    let (v8, eight) = (c / 8 * 8, n / 8 * 8);
    let (one, cf) = (f32x8::splat(1.0), c as f32);
    crate::isa::vectorized(|| {
        for r0 in (0..eight).step_by(8) {
            // Per channel, over the block's rows in order.
            for j in (0..v8).step_by(8) {
                let (mut gl, mut gh) = (load4(&dg[j..]), load4(&dg[j + 4..]));
                let (mut bl, mut bh) = (load4(&db[j..]), load4(&db[j + 4..]));
                for r in r0..r0 + 8 {
                    let d = load(&dy[r * c + j..]);
                    let hv = H::load8(&h[r * c + j..]) * one;
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
                    let (d, hv) = (dy[r * c + i], h[r * c + i].get() * 1.0);
                    dg[i] += (d * hv) as f64;
                    db[i] += d as f64;
                }
            }
            // Per row, over the channels in order: one row per lane.
            let zero = f64x4::splat(0.0);
            let (mut s0, mut s1, mut x0, mut x1) = (zero, zero, zero, zero);
            for (i, &gi) in gamma.iter().enumerate() {
                let d = f32x8::from(core::array::from_fn::<f32, 8, _>(|k| dy[(r0 + k) * c + i]));
                let hv = f32x8::from(core::array::from_fn::<f32, 8, _>(|k| {
                    h[(r0 + k) * c + i].get() * 1.0
                }));
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
                for j in (0..v8).step_by(8) {
                    let g = load(&dy[r * c + j..]) * load(&gamma[j..]);
                    let hv = H::load8(&h[r * c + j..]) * one;
                    let v = kk * (f32x8::splat(cf) * g - sg8 - hv * sgx8);
                    let at = &mut dx[r * c + j..r * c + j + 8];
                    let out = if acc { load(at) + v } else { v };
                    at.copy_from_slice(&out.to_array());
                }
                for i in v8..c {
                    let g = dy[r * c + i] * gamma[i];
                    let hv = h[r * c + i].get() * 1.0;
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
        &inv[eight..],
        dg,
        db,
        dx_rest,
        acc,
    );
    Ok(())
}
