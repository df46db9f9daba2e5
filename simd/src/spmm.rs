//! Weight gradients straight from a packed input: the "sparse-recovery GEMM".
//!
//! Each kept input element contributes one contiguous axpy of output-gradient rows into rows of
//! the weight gradient, so the work is proportional to k, and no dense copy of the input exists.
//! (Depthwise Conv2d has one channel per group: there each kept element is a few scalar
//! multiply-adds, one per kernel tap that covers it.)
//!
//! Kept elements are decoded in batches into a small stack buffer, then the batch is applied. The
//! apply step is the hot loop: on x86_64 with `std` it runs in an AVX2 build of the same code
//! (chosen at run time); elsewhere in the build's baseline (SSE2, NEON). Both paths do the same
//! multiplies and adds in the same order, so results are bitwise the same on every machine.

use crate::format::Packed;
use crate::isa::{Isa, isa};
use crate::pack::for_each_kept;
use crate::{Error, Result, check_dims};

/// Kept elements decoded per batch.
const BATCH: usize = 512;

/// `y += a · x`, element by element (written for the autovectorizer; no fused multiply-add, so
/// every target rounds identically).
#[inline(always)]
fn axpy(y: &mut [f32], a: f32, x: &[f32]) {
    for (y, &x) in y.iter_mut().zip(x) {
        *y += a * x;
    }
}

/// Decodes the kept elements of `p` in batches of [`BATCH`] and hands each to `apply`.
fn batched(p: &Packed<'_>, mut apply: impl FnMut(&[usize], &[f32])) -> Result<()> {
    let mut idx = [0usize; BATCH];
    let mut val = [0f32; BATCH];
    let mut len = 0;
    for_each_kept(p, |i, v| {
        idx[len] = i;
        val[len] = v;
        len += 1;
        if len == BATCH {
            apply(&idx, &val);
            len = 0;
        }
    })?;
    apply(&idx[..len], &val[..len]);
    Ok(())
}

/// Linear weight gradient from a packed input.
///
/// `x` is the packed input `[rows × inp]` (row-major), `dy` the output gradient `[rows × out]`,
/// and `gwt` the weight gradient **transposed**, `[inp × out]` row-major (that is, PyTorch's
/// `weight.grad` `[out × inp]` read with strides swapped). Accumulates
/// `gwt[i, :] += x[r, i] · dy[r, :]` for every kept `(r, i)`: one contiguous axpy per kept element.
pub fn linear_grad_w(
    x: &Packed<'_>,
    rows: usize,
    inp: usize,
    dy: &[f32],
    out: usize,
    gwt: &mut [f32],
) -> Result<()> {
    check_dims("linear grad_W: grad_Wᵀ (in × out)", &[inp, out], gwt.len())?;
    linear_grad_w_rows(x, rows, inp, dy, out, gwt, 0)
}

/// [`linear_grad_w`] for the rows `first..` of grad_Wᵀ that `part` holds (whole rows of
/// `out`): only the kept elements of those input features. Workers that take disjoint row
/// ranges together compute grad_Wᵀ bit for bit as one call does (each element gets the same
/// products in the same order), however it is split.
pub fn linear_grad_w_rows(
    x: &Packed<'_>,
    rows: usize,
    inp: usize,
    dy: &[f32],
    out: usize,
    part: &mut [f32],
    first: usize,
) -> Result<()> {
    check_dims("linear grad_W: packed input (rows × in)", &[rows, inp], x.n)?;
    check_dims("linear grad_W: dY (rows × out)", &[rows, out], dy.len())?;
    if out == 0 {
        return Ok(());
    }
    let end = part_rows(
        part.len(),
        out,
        first,
        inp,
        "linear grad_W: rows of grad_Wᵀ",
    )?;
    let isa = isa();
    // Kept indices arrive in increasing order, so rows are found with a forward-only cursor
    // instead of a division per element.
    let (mut row, mut row_start) = (0usize, 0usize);
    let mut dy_off = [0usize; BATCH];
    let mut gw_off = [0usize; BATCH];
    let mut vals = [0f32; BATCH];
    batched(x, |idx, val| {
        let mut len = 0;
        for (&i, &v) in idx.iter().zip(val) {
            while i >= row_start + inp {
                row += 1;
                row_start += inp;
            }
            let feature = i - row_start;
            if (first..end).contains(&feature) {
                (dy_off[len], gw_off[len], vals[len]) = (row * out, (feature - first) * out, v);
                len += 1;
            }
        }
        let (d, g, v) = (&dy_off[..len], &gw_off[..len], &vals[..len]);
        match isa {
            Isa::Base => linear_apply(d, g, v, dy, out, part),
            #[cfg(x86_detect)]
            // SAFETY: `isa()` returned Avx2Fma only after the CPU reported AVX2 (and FMA).
            Isa::Avx2Fma => unsafe { linear_apply_avx2(d, g, v, dy, out, part) },
        }
    })
}

/// The end of the rows `first..` that a part of `len` elements holds (rows of `width`), within
/// `total` rows; an error unless it holds whole rows that exist.
fn part_rows(
    len: usize,
    width: usize,
    first: usize,
    total: usize,
    what: &'static str,
) -> Result<usize> {
    let end = first.checked_add(len / width);
    match end {
        Some(end) if len.is_multiple_of(width) && end <= total => Ok(end),
        _ => Err(Error::Length {
            what,
            expected: total.saturating_sub(first).saturating_mul(width),
            given: len,
        }),
    }
}

/// `gwt[g..g + out] += v · dy[d..d + out]` for each decoded kept element. (Tiling the columns
/// to keep part of grad_Wᵀ in L1 measured slower: the per-element overhead grows faster than the
/// cache traffic shrinks.)
#[inline(always)]
fn linear_apply(
    dy_off: &[usize],
    gw_off: &[usize],
    val: &[f32],
    dy: &[f32],
    out: usize,
    gwt: &mut [f32],
) {
    for ((&d, &g), &v) in dy_off.iter().zip(gw_off).zip(val) {
        axpy(&mut gwt[g..g + out], v, &dy[d..d + out]);
    }
}

#[cfg(x86_detect)]
#[target_feature(enable = "avx2")]
fn linear_apply_avx2(
    dy_off: &[usize],
    gw_off: &[usize],
    val: &[f32],
    dy: &[f32],
    out: usize,
    gwt: &mut [f32],
) {
    linear_apply(dy_off, gw_off, val, dy, out, gwt)
}

/// Shape of an NHWC 2-D convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeom {
    /// Batch.
    pub n: usize,
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Stride (rows, columns).
    pub stride: (usize, usize),
    /// Zero padding (rows, columns), each side.
    pub pad: (usize, usize),
}

impl ConvGeom {
    /// Output (height, width), or an error naming the parameter that cannot work.
    pub fn out_hw(&self) -> Result<(usize, usize)> {
        let bad = |what, value| Err(Error::Invalid { what, value });
        if self.stride.0 == 0 || self.stride.1 == 0 {
            return bad("conv stride", 0);
        }
        if self.kh == 0 || self.kw == 0 {
            return bad("conv kernel size", 0);
        }
        // Padded sides, checked: sizes near usize::MAX must not wrap.
        let padded = |n: usize, p: usize| p.checked_mul(2).and_then(|pp| n.checked_add(pp));
        let (Some(ph), Some(pw)) = (padded(self.h, self.pad.0), padded(self.w, self.pad.1)) else {
            return bad(
                "conv padding (the padded input size overflows)",
                self.pad.0.max(self.pad.1),
            );
        };
        if ph < self.kh {
            return bad("conv kernel height (exceeds padded input height)", self.kh);
        }
        if pw < self.kw {
            return bad("conv kernel width (exceeds padded input width)", self.kw);
        }
        Ok((
            (ph - self.kh) / self.stride.0 + 1,
            (pw - self.kw) / self.stride.1 + 1,
        ))
    }

    /// Elements of the input `[n, h, w, cin]`.
    pub fn input_len(&self) -> usize {
        self.n * self.h * self.w * self.cin
    }

    /// Elements of the weight `[kh, kw, cin, cout]`.
    pub fn weight_len(&self) -> usize {
        self.kh * self.kw * self.cin * self.cout
    }
}

/// The kernel taps `(a, out_index)` that input row/column `i` reaches: `i + pad - a = s · o`
/// with `0 ≤ a < k`, `0 ≤ o < out`. Calls `f(a, o)`.
#[inline(always)]
fn taps(i: usize, pad: usize, s: usize, k: usize, out: usize, mut f: impl FnMut(usize, usize)) {
    let p = i + pad;
    let mut o = (p / s).min(out - 1);
    let mut a = p - s * o;
    while a < k {
        f(a, o);
        if o == 0 {
            break;
        }
        a += s;
        o -= 1;
    }
}

/// NHWC Conv2d weight gradient from a packed input, with no im2col.
///
/// `x`: packed input `[n, h, w, cin]`; `dy`: `[n, ho, wo, cout]`; `gw`: `[kh, kw, cin, cout]`.
/// Every kept `x[n, h, w, c]` adds `v · dy[n, ho, wo, :]` to `gw[a, b, c, :]` for each tap
/// `(a, b)` whose window covers it.
pub fn conv2d_grad_w(x: &Packed<'_>, g: &ConvGeom, dy: &[f32], gw: &mut [f32]) -> Result<()> {
    g.out_hw()?;
    check_dims(
        "conv grad_W: grad_W [kh,kw,cin,cout]",
        &[g.kh, g.kw, g.cin, g.cout],
        gw.len(),
    )?;
    conv2d_grad_w_rows(x, g, dy, gw, 0)
}

/// [`conv2d_grad_w`] for the rows `first..` of grad_W (viewed as `kh·kw·cin` rows of `cout`)
/// that `part` holds: only the products that land there. Workers that take disjoint row ranges
/// together compute grad_W bit for bit as one call does (each element gets the same products in
/// the same order), however it is split.
pub fn conv2d_grad_w_rows(
    x: &Packed<'_>,
    g: &ConvGeom,
    dy: &[f32],
    part: &mut [f32],
    first: usize,
) -> Result<()> {
    let (ho, wo) = g.out_hw()?;
    check_dims(
        "conv grad_W: packed input [n,h,w,cin]",
        &[g.n, g.h, g.w, g.cin],
        x.n,
    )?;
    check_dims(
        "conv grad_W: dY [n,ho,wo,cout]",
        &[g.n, ho, wo, g.cout],
        dy.len(),
    )?;
    if g.cout == 0 {
        return Ok(());
    }
    let total = g.kh * g.kw * g.cin;
    let end = part_rows(
        part.len(),
        g.cout,
        first,
        total,
        "conv grad_W: rows of grad_W",
    )?;
    let isa = isa();
    let mut cur = PixelCursor::default();
    let rows = first..end;
    batched(x, |idx, val| match isa {
        Isa::Base => conv_apply(idx, val, g, (ho, wo), dy, part, &rows, &mut cur),
        #[cfg(x86_detect)]
        // SAFETY: `isa()` returned Avx2Fma only after the CPU reported AVX2 (and FMA).
        Isa::Avx2Fma => unsafe {
            conv_apply_avx2(idx, val, g, (ho, wo), dy, part, &rows, &mut cur)
        },
    })
}

/// Where in `[n, h, w, ·]` a run of increasing flat indices is: moves forward one pixel at a
/// time, so decoding a whole tensor costs O(pixels + kept) instead of a division per element.
#[derive(Default)]
struct PixelCursor {
    start: usize,
    n: usize,
    h: usize,
    w: usize,
}

impl PixelCursor {
    #[inline(always)]
    fn locate(&mut self, i: usize, g: &ConvGeom) -> usize {
        while i >= self.start + g.cin {
            self.start += g.cin;
            self.w += 1;
            if self.w == g.w {
                self.w = 0;
                self.h += 1;
                if self.h == g.h {
                    self.h = 0;
                    self.n += 1;
                }
            }
        }
        i - self.start
    }
}

/// Applies the decoded kept elements' products that land in grad_W's `rows` (`part` holds
/// them).
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn conv_apply(
    idx: &[usize],
    val: &[f32],
    g: &ConvGeom,
    (ho, wo): (usize, usize),
    dy: &[f32],
    part: &mut [f32],
    rows: &core::ops::Range<usize>,
    cur: &mut PixelCursor,
) {
    let co = g.cout;
    for (&i, &v) in idx.iter().zip(val) {
        let c = cur.locate(i, g);
        let (n, h, w) = (cur.n, cur.h, cur.w);
        taps(h, g.pad.0, g.stride.0, g.kh, ho, |a, oh| {
            taps(w, g.pad.1, g.stride.1, g.kw, wo, |b, ow| {
                let row = (a * g.kw + b) * g.cin + c;
                if rows.contains(&row) {
                    let wrow = (row - rows.start) * co;
                    let drow = ((n * ho + oh) * wo + ow) * co;
                    axpy(&mut part[wrow..wrow + co], v, &dy[drow..drow + co]);
                }
            })
        });
    }
}

#[allow(clippy::too_many_arguments)]
#[cfg(x86_detect)]
#[target_feature(enable = "avx2")]
fn conv_apply_avx2(
    idx: &[usize],
    val: &[f32],
    g: &ConvGeom,
    hw: (usize, usize),
    dy: &[f32],
    part: &mut [f32],
    rows: &core::ops::Range<usize>,
    cur: &mut PixelCursor,
) {
    conv_apply(idx, val, g, hw, dy, part, rows, cur)
}

/// Depthwise (groups = channels, channel multiplier 1) NHWC Conv2d weight gradient from a packed
/// input.
///
/// `g.cin == g.cout == c`; `x`: packed input `[n, h, w, c]`; `dy`: `[n, ho, wo, c]`; `gw`:
/// `[kh, kw, c]` (as [`crate::depthwise`]). Every kept `x[n, h, w, c]` with value `v` adds
/// `v · dy[n, ho, wo, c]` to `gw[a, b, c]` for each tap `(a, b)` whose window covers it (kept
/// elements in index order, taps in increasing `a`, then `b`; unfused multiply-adds). With one
/// channel per group each product is a scalar, so the work is `k · taps` multiply-adds.
pub fn depthwise_grad_w(x: &Packed<'_>, g: &ConvGeom, dy: &[f32], gw: &mut [f32]) -> Result<()> {
    let (ho, wo) = crate::depthwise::out_hw(g)?;
    let c = g.cin;
    check_dims(
        "depthwise grad_W: packed input [n,h,w,c]",
        &[g.n, g.h, g.w, c],
        x.n,
    )?;
    check_dims(
        "depthwise grad_W: dY [n,ho,wo,c]",
        &[g.n, ho, wo, c],
        dy.len(),
    )?;
    check_dims(
        "depthwise grad_W: grad_W [kh,kw,c]",
        &[g.kh, g.kw, c],
        gw.len(),
    )?;
    if c == 0 {
        return Ok(());
    }
    let mut cur = PixelCursor::default();
    let mut chan = [0usize; BATCH];
    batched(x, |idx, val| {
        // Runs of kept elements in one pixel share their taps: for each tap, one gradient row and
        // one dY row take the run's scalar multiply-adds. (Each weight-gradient element gets at
        // most one product per pixel, so the order per element is the index order either way.)
        let mut j = 0;
        while j < idx.len() {
            chan[j] = cur.locate(idx[j], g);
            let (start, end) = (j, cur.start + c);
            j += 1;
            while j < idx.len() && idx[j] < end {
                chan[j] = idx[j] - cur.start;
                j += 1;
            }
            let run = (&chan[start..j], &val[start..j]);
            depthwise_run(run, (cur.n, cur.h, cur.w), g, (ho, wo), dy, gw);
        }
    })
}

/// Adds the products of one pixel's kept elements (channels `run.0`, values `run.1`) for every
/// tap whose window covers the pixel.
#[inline(always)]
fn depthwise_run(
    (chan, val): (&[usize], &[f32]),
    (n, h, w): (usize, usize, usize),
    g: &ConvGeom,
    (ho, wo): (usize, usize),
    dy: &[f32],
    gw: &mut [f32],
) {
    let c = g.cin;
    taps(h, g.pad.0, g.stride.0, g.kh, ho, |a, oh| {
        taps(w, g.pad.1, g.stride.1, g.kw, wo, |b, ow| {
            let grow = &mut gw[(a * g.kw + b) * c..][..c];
            let drow = &dy[((n * ho + oh) * wo + ow) * c..][..c];
            for (&ch, &v) in chan.iter().zip(val) {
                grow[ch] += v * drow[ch];
            }
        })
    });
}

#[cfg(all(test, x86_detect))]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> std::vec::Vec<f32> {
        (0..n as u32)
            .map(|i| ((i.wrapping_mul(2_654_435_761) ^ seed) % 1000) as f32 / 250.0 - 2.0)
            .collect()
    }

    /// The AVX2 build of each hot loop gives bitwise the results of the baseline build.
    #[test]
    fn avx2_build_is_bitwise_baseline() {
        if !std::is_x86_feature_detected!("avx2") {
            return;
        }
        let (inp, out) = (37, 141);
        let d: std::vec::Vec<usize> = (0..300).map(|i| (i * 7919) % 5 * out).collect();
        let gw: std::vec::Vec<usize> = (0..300).map(|i| (i * 131) % inp * out).collect();
        let val = data(300, 1);
        let dy = data(5 * out, 2);
        let mut a = data(inp * out, 3);
        let mut b = a.clone();
        linear_apply(&d, &gw, &val, &dy, out, &mut a);
        // SAFETY: AVX2 support was checked above.
        unsafe { linear_apply_avx2(&d, &gw, &val, &dy, out, &mut b) };
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));

        let g = ConvGeom {
            n: 2,
            h: 5,
            w: 6,
            cin: 3,
            cout: 19,
            kh: 3,
            kw: 2,
            stride: (2, 1),
            pad: (1, 1),
        };
        let hw = g.out_hw().unwrap();
        let idx: std::vec::Vec<usize> = (0..100)
            .map(|i| (i * 31 % 97 + i * 3) % g.input_len())
            .collect();
        let dy = data(g.n * hw.0 * hw.1 * g.cout, 4);
        let mut a = data(g.weight_len(), 5);
        let mut b = a.clone();
        let mut sorted = idx.clone();
        sorted.sort_unstable();
        let rows = 0..g.kh * g.kw * g.cin;
        conv_apply(
            &sorted,
            &val[..100],
            &g,
            hw,
            &dy,
            &mut a,
            &rows,
            &mut PixelCursor::default(),
        );
        // SAFETY: AVX2 support was checked above.
        unsafe {
            conv_apply_avx2(
                &sorted,
                &val[..100],
                &g,
                hw,
                &dy,
                &mut b,
                &rows,
                &mut PixelCursor::default(),
            )
        };
        assert!(a.iter().zip(&b).all(|(x, y)| x.to_bits() == y.to_bits()));
    }
}
