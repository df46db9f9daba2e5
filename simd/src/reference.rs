//! Plain scalar twins of every kernel: obviously correct, slow, and what the tests trust.

use crate::format::{Packed, PackedMut, Positions, PositionsMut, Value, Values, ValuesMut};
use crate::select::{Threshold, key};
use crate::spmm::ConvGeom;
use crate::{Error, Result, check_len};

/// Top-k threshold by binary search over the key space: the largest key `t` with at least `k`
/// elements at or above it.
pub fn topk_threshold(x: &[f32], k: usize) -> Result<Threshold> {
    let n = x.len();
    if k > n {
        return Err(Error::KTooLarge { k, n });
    }
    if k == 0 {
        return Ok(Threshold::NONE);
    }
    let count_ge = |t: i64| x.iter().filter(|&&v| key(v) as i64 >= t).count();
    let (mut lo, mut hi) = (0i64, 0x7FFF_FFFFi64);
    while lo < hi {
        let mid = (lo + hi + 1) / 2;
        if count_ge(mid) >= k {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let above = x.iter().filter(|&&v| key(v) as i64 > lo).count();
    Ok(Threshold::from_parts(lo as i32, above, k - above))
}

/// `flags[i]` = whether element `i` is kept under `t` (ties in index order).
pub fn keep_flags(x: &[f32], t: &Threshold, flags: &mut [bool]) -> Result<()> {
    check_len("keep flags", x.len(), flags.len())?;
    let mut ties = t.ties();
    for (&v, f) in x.iter().zip(flags.iter_mut()) {
        let k = key(v);
        *f = k > t.key() || (k == t.key() && ties > 0);
        if k == t.key() && ties > 0 {
            ties -= 1;
        }
    }
    Ok(())
}

fn write_value(values: &mut ValuesMut<'_>, slot: usize, v: f32) {
    match values {
        ValuesMut::F32(a) => a[slot] = v,
        ValuesMut::Bf16(a) => a[slot] = Value::from_f32(v),
        ValuesMut::F16(a) => a[slot] = Value::from_f32(v),
    }
}

fn read_value(values: &Values<'_>, slot: usize) -> f32 {
    match values {
        Values::F32(a) => a[slot],
        Values::Bf16(a) => a[slot].to_f32(),
        Values::F16(a) => a[slot].to_f32(),
    }
}

/// Packs `x` in selection blocks (as [`crate::pack::pack_blocks`]), one element at a time.
pub fn pack_blocks(
    x: &[f32],
    block: usize,
    thresholds: &[Threshold],
    out: &mut PackedMut<'_>,
) -> Result<()> {
    check_len("packed tensor length", out.n, x.len())?;
    match &mut out.positions {
        PositionsMut::Bitmap(w) => w.fill(0),
        PositionsMut::Block16 { counts, .. } => counts.fill(0),
        PositionsMut::U32(_) => {}
    }
    let mut slot = 0;
    for (b, t) in thresholds.iter().enumerate() {
        let mut ties = t.ties();
        for i in b * block..((b + 1) * block).min(x.len()) {
            let k = key(x[i]);
            let keep = k > t.key() || (k == t.key() && ties > 0);
            if k == t.key() && ties > 0 {
                ties -= 1;
            }
            if !keep {
                continue;
            }
            if slot >= out.k {
                return Err(Error::KTooLarge {
                    k: slot + 1,
                    n: out.k,
                });
            }
            write_value(&mut out.values, slot, x[i]);
            match &mut out.positions {
                PositionsMut::Bitmap(w) => w[i / 64] |= 1 << (i % 64),
                PositionsMut::Block16 { counts, offsets } => {
                    counts[i / 65536] += 1;
                    offsets[slot] = (i % 65536) as u16;
                }
                PositionsMut::U32(idx) => idx[slot] = i as u32,
            }
            slot += 1;
        }
    }
    check_len("kept elements after packing", out.k, slot)
}

/// Scatters a packed tensor into `out`, one element at a time.
pub fn unpack(p: &Packed<'_>, out: &mut [f32]) -> Result<()> {
    check_len("unpacked tensor", p.n, out.len())?;
    out.fill(0.0);
    match p.positions {
        Positions::Bitmap(w) => {
            let mut slot = 0;
            for i in 0..p.n {
                if (w[i / 64] >> (i % 64)) & 1 == 1 {
                    out[i] = read_value(&p.values, slot);
                    slot += 1;
                }
            }
        }
        Positions::Block16 { counts, offsets } => {
            let mut slot = 0;
            for (b, &c) in counts.iter().enumerate() {
                for _ in 0..c {
                    out[b * 65536 + offsets[slot] as usize] = read_value(&p.values, slot);
                    slot += 1;
                }
            }
        }
        Positions::U32(idx) => {
            for (slot, &i) in idx.iter().enumerate() {
                out[i as usize] = read_value(&p.values, slot);
            }
        }
    }
    Ok(())
}

/// Dense Linear weight gradient: `gwt[i, o] += Σ_r x[r, i] · dy[r, o]` (layouts as
/// [`crate::spmm::linear_grad_w`]).
pub fn linear_grad_w(
    x: &[f32],
    rows: usize,
    inp: usize,
    dy: &[f32],
    out: usize,
    gwt: &mut [f32],
) -> Result<()> {
    check_len("x", rows * inp, x.len())?;
    check_len("dy", rows * out, dy.len())?;
    check_len("gwt", inp * out, gwt.len())?;
    for r in 0..rows {
        for i in 0..inp {
            for o in 0..out {
                gwt[i * out + o] += x[r * inp + i] * dy[r * out + o];
            }
        }
    }
    Ok(())
}

/// Dense NHWC Conv2d weight gradient by direct summation over output positions.
pub fn conv2d_grad_w(x: &[f32], g: &ConvGeom, dy: &[f32], gw: &mut [f32]) -> Result<()> {
    let (ho, wo) = g.out_hw()?;
    check_len("x", g.input_len(), x.len())?;
    check_len("dy", g.n * ho * wo * g.cout, dy.len())?;
    check_len("gw", g.weight_len(), gw.len())?;
    for n in 0..g.n {
        for oh in 0..ho {
            for ow in 0..wo {
                for a in 0..g.kh {
                    for b in 0..g.kw {
                        let ih = (oh * g.stride.0 + a) as isize - g.pad.0 as isize;
                        let iw = (ow * g.stride.1 + b) as isize - g.pad.1 as isize;
                        if ih < 0 || iw < 0 || ih >= g.h as isize || iw >= g.w as isize {
                            continue;
                        }
                        let (ih, iw) = (ih as usize, iw as usize);
                        for c in 0..g.cin {
                            let xv = x[((n * g.h + ih) * g.w + iw) * g.cin + c];
                            for o in 0..g.cout {
                                gw[((a * g.kw + b) * g.cin + c) * g.cout + o] +=
                                    xv * dy[((n * ho + oh) * wo + ow) * g.cout + o];
                            }
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Checks a depthwise geometry (`cin == cout`) and returns the output (height, width).
fn depthwise_hw(g: &ConvGeom) -> Result<(usize, usize)> {
    if g.cin != g.cout {
        return Err(Error::Invalid {
            what: "depthwise conv: cout (must equal cin)",
            value: g.cout,
        });
    }
    g.out_hw()
}

/// The input index `o·s + a − pad` if it lies in `0..len`.
fn conv_in(o: usize, a: usize, s: usize, pad: usize, len: usize) -> Option<usize> {
    (o * s + a).checked_sub(pad).filter(|&i| i < len)
}

/// Dense depthwise forward, one output element at a time (bias, then taps in row-major order;
/// layouts as [`crate::depthwise::forward`]).
pub fn depthwise_forward(
    x: &[f32],
    g: &ConvGeom,
    w: &[f32],
    bias: Option<&[f32]>,
    y: &mut [f32],
) -> Result<()> {
    let (ho, wo) = depthwise_hw(g)?;
    let c = g.cin;
    check_len("x", g.input_len(), x.len())?;
    check_len("w", g.kh * g.kw * c, w.len())?;
    if let Some(b) = bias {
        check_len("bias", c, b.len())?;
    }
    check_len("y", g.n * ho * wo * c, y.len())?;
    for n in 0..g.n {
        for oh in 0..ho {
            for ow in 0..wo {
                for ch in 0..c {
                    let mut s = bias.map_or(0.0, |b| b[ch]);
                    for a in 0..g.kh {
                        for b in 0..g.kw {
                            let (Some(ih), Some(iw)) = (
                                conv_in(oh, a, g.stride.0, g.pad.0, g.h),
                                conv_in(ow, b, g.stride.1, g.pad.1, g.w),
                            ) else {
                                continue;
                            };
                            s += x[((n * g.h + ih) * g.w + iw) * c + ch]
                                * w[(a * g.kw + b) * c + ch];
                        }
                    }
                    y[((n * ho + oh) * wo + ow) * c + ch] = s;
                }
            }
        }
    }
    Ok(())
}

/// Dense depthwise input gradient, one input element at a time (the old value when `acc`, else
/// 0, then the taps that reach an output in row-major order; layouts as
/// [`crate::depthwise::backward_input`]).
pub fn depthwise_backward_input(
    dy: &[f32],
    g: &ConvGeom,
    w: &[f32],
    dx: &mut [f32],
    acc: bool,
) -> Result<()> {
    let (ho, wo) = depthwise_hw(g)?;
    let c = g.cin;
    check_len("dy", g.n * ho * wo * c, dy.len())?;
    check_len("w", g.kh * g.kw * c, w.len())?;
    check_len("dx", g.input_len(), dx.len())?;
    // The output index o with o·s + a = i + pad, if there is one.
    let out = |i: usize, a: usize, s: usize, pad: usize, len: usize| {
        (i + pad)
            .checked_sub(a)
            .filter(|p| p % s == 0)
            .map(|p| p / s)
            .filter(|&o| o < len)
    };
    for n in 0..g.n {
        for ih in 0..g.h {
            for iw in 0..g.w {
                for ch in 0..c {
                    let i = ((n * g.h + ih) * g.w + iw) * c + ch;
                    let mut s = if acc { dx[i] } else { 0.0 };
                    for a in 0..g.kh {
                        for b in 0..g.kw {
                            let (Some(oh), Some(ow)) = (
                                out(ih, a, g.stride.0, g.pad.0, ho),
                                out(iw, b, g.stride.1, g.pad.1, wo),
                            ) else {
                                continue;
                            };
                            s +=
                                dy[((n * ho + oh) * wo + ow) * c + ch] * w[(a * g.kw + b) * c + ch];
                        }
                    }
                    dx[i] = s;
                }
            }
        }
    }
    Ok(())
}

/// Dense depthwise weight gradient by direct summation over output positions (`gw +=`, output
/// pixels in row-major order; layouts as [`crate::depthwise::grad_weight`]).
pub fn depthwise_grad_w(x: &[f32], g: &ConvGeom, dy: &[f32], gw: &mut [f32]) -> Result<()> {
    let (ho, wo) = depthwise_hw(g)?;
    let c = g.cin;
    check_len("x", g.input_len(), x.len())?;
    check_len("dy", g.n * ho * wo * c, dy.len())?;
    check_len("gw", g.kh * g.kw * c, gw.len())?;
    for n in 0..g.n {
        for oh in 0..ho {
            for ow in 0..wo {
                for a in 0..g.kh {
                    for b in 0..g.kw {
                        let (Some(ih), Some(iw)) = (
                            conv_in(oh, a, g.stride.0, g.pad.0, g.h),
                            conv_in(ow, b, g.stride.1, g.pad.1, g.w),
                        ) else {
                            continue;
                        };
                        for ch in 0..c {
                            gw[(a * g.kw + b) * c + ch] += x[((n * g.h + ih) * g.w + iw) * c + ch]
                                * dy[((n * ho + oh) * wo + ow) * c + ch];
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// Bit `i` = `x[i] > 0`.
pub fn positive_mask(x: &[f32], bits: &mut [u64]) -> Result<()> {
    check_len("mask words", x.len().div_ceil(64), bits.len())?;
    bits.fill(0);
    for (i, &v) in x.iter().enumerate() {
        if v > 0.0 {
            bits[i / 64] |= 1 << (i % 64);
        }
    }
    Ok(())
}

/// `dx[i] = dy[i]` where bit `i` is set, else 0.
pub fn apply_mask(dy: &[f32], bits: &[u64], dx: &mut [f32]) -> Result<()> {
    check_len("mask words", dy.len().div_ceil(64), bits.len())?;
    check_len("masked gradient", dy.len(), dx.len())?;
    for i in 0..dy.len() {
        dx[i] = if (bits[i / 64] >> (i % 64)) & 1 == 1 {
            dy[i]
        } else {
            0.0
        };
    }
    Ok(())
}

/// `v[i] = e^{v[i] − shift}` by `libm`; returns the sum.
pub fn exp_shifted(v: &mut [f32], shift: f32) -> f32 {
    v.iter_mut().fold(0.0, |s, x| {
        *x = libm::expf(*x - shift);
        s + *x
    })
}

/// GELU value and derivative at `x` by `libm` (erf, or the tanh form).
pub fn gelu(x: f32, tanh: bool) -> (f32, f32) {
    let x64 = x as f64;
    if tanh {
        let k = libm::sqrt(2.0 / core::f64::consts::PI);
        let u = k * (x64 + 0.044715 * x64 * x64 * x64);
        let t = libm::tanh(u);
        let du = k * (1.0 + 3.0 * 0.044715 * x64 * x64);
        (
            (0.5 * x64 * (1.0 + t)) as f32,
            (0.5 * (1.0 + t) + 0.5 * x64 * (1.0 - t * t) * du) as f32,
        )
    } else {
        let cdf = 0.5 * (1.0 + libm::erf(x64 / core::f64::consts::SQRT_2));
        let pdf = libm::exp(-0.5 * x64 * x64) / libm::sqrt(2.0 * core::f64::consts::PI);
        ((x64 * cdf) as f32, (cdf + x64 * pdf) as f32)
    }
}

/// Batch norm's statistics, one channel after another: `acc[i] = Σ_rows x` or, with `mean`,
/// `Σ_rows (x − mean[i])²`, in f64 over the rows in order (as [`crate::norm::channel_sums`]).
pub fn bn_channel_sums(x: &[f32], c: usize, mean: Option<&[f64]>, acc: &mut [f64]) {
    acc.fill(0.0);
    for row in x.chunks_exact(c.max(1)) {
        for (i, (a, &v)) in acc.iter_mut().zip(row).enumerate() {
            let v = v as f64;
            *a += match mean {
                Some(m) => (v - m[i]) * (v - m[i]),
                None => v,
            };
        }
    }
}

/// Batch norm's extremes per channel, one row after another, NaN skipped (as
/// [`crate::norm::channel_sums_extremes`]).
pub fn bn_channel_extremes(x: &[f32], c: usize, lo: &mut [f64], hi: &mut [f64]) {
    lo.fill(f64::INFINITY);
    hi.fill(f64::NEG_INFINITY);
    for row in x.chunks_exact(c.max(1)) {
        for (i, &v) in row.iter().enumerate() {
            lo[i] = lo[i].min(v as f64);
            hi[i] = hi[i].max(v as f64);
        }
    }
}

/// Batch norm's forward, element by element (as [`crate::norm::normalize`]).
pub fn bn_normalize<H: crate::norm::Xhat>(
    src: Option<&[f32]>,
    y: &mut [f32],
    h: &mut [H],
    c: usize,
    a: crate::norm::Affine<'_>,
) {
    for (e, (yv, hv)) in y.iter_mut().zip(h.iter_mut()).enumerate() {
        let i = e % c;
        let xv = src.map_or(*yv, |x| x[e]);
        let v = (xv - a.mean[i]) * a.inv[i];
        *hv = H::put(v, a.inv_scale.map_or(1.0, |s| s[i]));
        *yv = a.gamma[i] * v + a.beta[i];
    }
}

/// Batch norm's backward sums, element by element (as [`crate::norm::grad_sums`]).
pub fn bn_grad_sums<H: crate::norm::Xhat>(
    dy: &[f32],
    h: &[H],
    c: usize,
    db: &mut [f64],
    dg: &mut [f64],
) {
    db.fill(0.0);
    dg.fill(0.0);
    for (e, (&d, hv)) in dy.iter().zip(h).enumerate() {
        db[e % c] += d as f64;
        dg[e % c] += (d * hv.get()) as f64;
    }
}

/// Batch norm's input gradient, element by element (as [`crate::norm::grad_x`]).
pub fn bn_grad_x<H: crate::norm::Xhat>(
    dy: Option<&[f32]>,
    dx: &mut [f32],
    h: &[H],
    c: usize,
    b: crate::norm::Back<'_>,
    acc: bool,
) {
    for (e, (xv, hv)) in dx.iter_mut().zip(h).enumerate() {
        let i = e % c;
        let d = dy.map_or(*xv, |d| d[e]);
        let v = b.k[i] * (b.m * d - b.dbeta[i] - hv.get() * b.dgamma[i]);
        *xv = if acc { *xv + v } else { v };
    }
}

/// Layer norm's mean (rounded to f32) and `1/√(var + eps)` of one row, one element after
/// another in f64 (as [`crate::norm::row_stats`]).
pub fn ln_row_stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (v as f64 - mean) * (v as f64 - mean))
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / libm::sqrt(var + eps as f64)) as f32)
}

/// Layer norm's forward on one row, element by element (as [`crate::norm::normalize_row`]).
#[allow(clippy::too_many_arguments)]
pub fn ln_normalize_row<H: crate::norm::Xhat>(
    src: Option<&[f32]>,
    y: &mut [f32],
    h: &mut [H],
    (mean, inv, inv_scale): (f32, f32, f32),
    gamma: &[f32],
    beta: &[f32],
) {
    for i in 0..y.len() {
        let xv = src.map_or(y[i], |x| x[i]);
        let v = (xv - mean) * inv;
        h[i] = H::put(v, inv_scale);
        y[i] = gamma[i] * v + beta[i];
    }
}

/// The largest `|(x − mean)·inv|` of a row, one element after another, NaN skipped (as
/// [`crate::norm::abs_max`]).
pub fn ln_abs_max(x: &[f32], mean: f32, inv: f32) -> f32 {
    x.iter()
        .fold(0.0f32, |m, &v| m.max(((v - mean) * inv).abs()))
}

/// Layer norm's backward over `c`-wide rows, one row and one element after another (as
/// [`crate::norm::ln_backward`]), x̂ being each row's `h` times its `scale` (none: 1): per channel `dg += dy·x̂`, `db += dy` (f64, rows in order);
/// per row `ĝ = dy·γ`, `Σĝ` and `Σĝ·x̂` (f64, channels in order), and, when `dx` is given,
/// `dx = inv/c · (c·ĝ − Σĝ − x̂·Σĝ·x̂)` (added when `acc`).
#[allow(clippy::too_many_arguments)]
pub fn ln_backward<H: crate::norm::Xhat>(
    dy: &[f32],
    h: &[H],
    gamma: &[f32],
    (inv, scale): (&[f32], Option<&[f32]>),
    dg: &mut [f64],
    db: &mut [f64],
    mut dx: Option<&mut [f32]>,
    acc: bool,
) {
    let c = gamma.len();
    for (r, (dr, hr)) in dy.chunks_exact(c).zip(h.chunks_exact(c)).enumerate() {
        let (mut sg, mut sgx) = (0.0f64, 0.0f64);
        let s = scale.map_or(1.0, |s| s[r]);
        for i in 0..c {
            let hv = hr[i].get() * s;
            dg[i] += (dr[i] * hv) as f64;
            db[i] += dr[i] as f64;
            let g = dr[i] * gamma[i];
            sg += g as f64;
            sgx += (g * hv) as f64;
        }
        if let Some(dx) = dx.as_deref_mut() {
            let k = inv[r] / c as f32;
            for i in 0..c {
                let g = dr[i] * gamma[i];
                let hv = hr[i].get() * s;
                let v = k * (c as f32 * g - sg as f32 - hv * sgx as f32);
                let d = &mut dx[r * c + i];
                *d = if acc { *d + v } else { v };
            }
        }
    }
}

/// Σ x² in f64 over [`crate::reduce::LANES`] lanes: element `i` into lane `i % LANES`, then the
/// lanes added in order.
pub fn sum_of_squares(x: &[f32]) -> f64 {
    let mut acc = [0f64; crate::reduce::LANES];
    for (i, &v) in x.iter().enumerate() {
        acc[i % crate::reduce::LANES] += v as f64 * v as f64;
    }
    acc.iter().sum()
}
