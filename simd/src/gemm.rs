//! Dense GEMM that allocates nothing: operands are packed into caller-provided scratch.
//!
//! Layouts are passed as strides, so a transposed operand costs nothing: `Mat::t()` swaps them.
//! The structure is the classic one (Goto; as in matrixmultiply and BLIS): blocks of B
//! (`KC × NC`) and of A (`MC × KC`) are packed into panels, and a register-tiled micro-kernel
//! multiplies an `MR`-row panel of A by an `NR`-column panel of B. Packing pads the edges with
//! zeros, so the micro-kernel has no edge cases.
//!
//! The micro-kernel is plain Rust written for the autovectorizer. On x86_64 with `std` an
//! AVX2+FMA build of the same code is chosen at run time; elsewhere the build's baseline (SSE2,
//! NEON) runs with separate multiplies and adds. (matrixmultiply, which allocates its packing
//! buffers on every call, is 1.4–1.8× faster on AVX-512 machines: it has hand-written 512-bit
//! kernels. Closing that gap is a micro-kernel away; allocating nothing in a step is not
//! negotiable.)

use crate::isa::{Isa, isa};
use crate::{Error, Result};

/// Rows of the micro-tile.
pub const MR: usize = 6;
/// Columns of the micro-tile (16: two AVX2 registers per row).
pub const NR: usize = 16;
/// Columns of the micro-tile in the AVX-512 build (two 512-bit registers per row).
const NR_WIDE: usize = 32;
const KC: usize = 256;
const MC: usize = 96;
const NC: usize = 1024;

/// A read-only matrix view: element `(i, j)` is `data[i * rs + j * cs]`.
#[derive(Debug, Clone, Copy)]
pub struct Mat<'a> {
    data: &'a [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// A writable matrix view (see [`Mat`]).
#[derive(Debug)]
pub struct MatMut<'a> {
    data: &'a mut [f32],
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
}

/// Checks that every element of a `rows × cols` view with strides `(rs, cs)` lies in `len`.
fn fits(
    what: &'static str,
    len: usize,
    rows: usize,
    cols: usize,
    rs: usize,
    cs: usize,
) -> Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let last = (rows - 1)
        .checked_mul(rs)
        .and_then(|a| (cols - 1).checked_mul(cs).and_then(|b| a.checked_add(b)));
    match last {
        Some(l) if l < len && rs <= isize::MAX as usize && cs <= isize::MAX as usize => Ok(()),
        _ => Err(Error::Length {
            what,
            expected: last.map_or(usize::MAX, |l| l + 1),
            given: len,
        }),
    }
}

impl<'a> Mat<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn new(data: &'a [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A matrix with explicit strides.
    pub fn strided(
        data: &'a [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Result<Self> {
        fits("matrix view", data.len(), rows, cols, rs, cs)?;
        Ok(Mat {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }

    /// The transpose (a view; nothing is copied).
    pub fn t(self) -> Self {
        Mat {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }
}

impl<'a> MatMut<'a> {
    /// A row-major `rows × cols` matrix.
    pub fn new(data: &'a mut [f32], rows: usize, cols: usize) -> Result<Self> {
        Self::strided(data, rows, cols, cols, 1)
    }

    /// A matrix with explicit strides (a column band of a wider matrix, say). Distinct
    /// elements may not share a place: rows must not interleave with columns.
    pub fn strided(
        data: &'a mut [f32],
        rows: usize,
        cols: usize,
        rs: usize,
        cs: usize,
    ) -> Result<Self> {
        fits("output matrix view", data.len(), rows, cols, rs, cs)?;
        let disjoint = rows == 0
            || cols == 0
            || match (rows > 1, cols > 1) {
                (false, false) => true,
                (true, false) => rs >= 1,
                (false, true) => cs >= 1,
                (true, true) => rs >= 1 && cs >= 1 && (rs >= cs * cols || cs >= rs * rows),
            };
        if !disjoint {
            return Err(Error::Length {
                what: "output matrix view: overlapping strides",
                expected: rows * cols,
                given: 0,
            });
        }
        Ok(MatMut {
            data,
            rows,
            cols,
            rs,
            cs,
        })
    }
}

/// Floats of scratch [`sgemm`] needs for an `m × k` by `k × n` product (0 when any is 0).
pub const fn scratch_len(m: usize, k: usize, n: usize) -> usize {
    if m == 0 || k == 0 || n == 0 {
        return 0;
    }
    let kc = if k < KC { k } else { KC };
    let mc = (if m < MC { m } else { MC }).div_ceil(MR) * MR;
    // Panels are rounded to the widest build's tile, so one plan serves every CPU.
    let nc = (if n < NC { n } else { NC }).div_ceil(NR_WIDE) * NR_WIDE;
    kc * (mc + nc)
}

/// `c = alpha · a · b + beta · c`, with `scratch` of at least [`scratch_len`] floats. With
/// `beta == 0` the old contents of `c` are ignored (even NaN).
pub fn sgemm(
    alpha: f32,
    a: Mat<'_>,
    b: Mat<'_>,
    beta: f32,
    c: MatMut<'_>,
    scratch: &mut [f32],
) -> Result<()> {
    let shape_err = |what, expected, given| {
        Err(Error::Length {
            what,
            expected,
            given,
        })
    };
    if a.cols != b.rows {
        return shape_err("gemm: rows of B (columns of A)", a.cols, b.rows);
    }
    if c.rows != a.rows {
        return shape_err("gemm: rows of C (rows of A)", a.rows, c.rows);
    }
    if c.cols != b.cols {
        return shape_err("gemm: columns of C (columns of B)", b.cols, c.cols);
    }
    if c.rows == 0 || c.cols == 0 {
        return Ok(());
    }
    let need = scratch_len(a.rows, a.cols, b.cols);
    if scratch.len() < need {
        return shape_err("gemm: scratch floats", need, scratch.len());
    }
    if a.cols == 0 {
        for i in 0..c.rows {
            for j in 0..c.cols {
                let v = &mut c.data[i * c.rs + j * c.cs];
                *v = if beta == 0.0 { 0.0 } else { beta * *v };
            }
        }
        return Ok(());
    }
    match isa() {
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        // SAFETY: the CPU reported AVX-512F besides AVX2 and FMA.
        Isa::Avx2Fma if std::is_x86_feature_detected!("avx512f") => unsafe {
            gemm_avx512(alpha, a, b, beta, c, scratch)
        },
        #[cfg(all(feature = "std", target_arch = "x86_64"))]
        // SAFETY: `isa()` returned Avx2Fma only after the CPU reported AVX2 and FMA.
        Isa::Avx2Fma => unsafe { gemm_avx2(alpha, a, b, beta, c, scratch) },
        Isa::Base => blocked::<Plain, NR>(alpha, a, b, beta, c, scratch),
    }
    Ok(())
}

/// Multiply-add as the target does it best, and the micro-kernel built on it.
trait Madd: Sized {
    fn madd(a: f32, b: f32, c: f32) -> f32;

    /// `MR × N` tile of `Ã · B̃` over `kc`.
    #[inline(always)]
    fn micro<const N: usize>(kc: usize, a: &[f32], b: &[f32]) -> [[f32; N]; MR] {
        micro_generic::<Self, N>(kc, a, b)
    }
}

/// Separate multiply and add (no FMA instruction in the baseline).
struct Plain;
impl Madd for Plain {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Fused multiply-add (only instantiated where the CPU has AVX2 and FMA), with an intrinsics
/// micro-kernel: twelve accumulator registers, two loads of B̃ and six broadcasts of Ã per step
/// of k.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
struct Fused;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
impl Madd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    #[inline(always)]
    fn micro<const N: usize>(kc: usize, a: &[f32], b: &[f32]) -> [[f32; N]; MR] {
        if N != 2 * 8 {
            return micro_generic::<Self, N>(kc, a, b);
        }
        use core::arch::x86_64::*;
        let (a, b) = (&a[..kc * MR], &b[..kc * N]);
        let mut out = [[0.0f32; N]; MR];
        // SAFETY: this impl is only instantiated inside `gemm_avx2`, which runs only on CPUs
        // reporting AVX2 and FMA; every load reads 8 floats at `b[k·16 ..]` /
        // `b[k·16 + 8 ..]` with k < kc, inside `b` (length kc·16, checked by the slice above),
        // `a` is read at k·6 + i < kc·6, and every store writes 8 floats of a row of `out`
        // (16 long).
        unsafe {
            let mut acc = [_mm256_setzero_ps(); 2 * MR];
            for k in 0..kc {
                let bp = b.as_ptr().add(k * N);
                let (b0, b1) = (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)));
                for i in 0..MR {
                    let ai = _mm256_set1_ps(*a.get_unchecked(k * MR + i));
                    acc[2 * i] = _mm256_fmadd_ps(ai, b0, acc[2 * i]);
                    acc[2 * i + 1] = _mm256_fmadd_ps(ai, b1, acc[2 * i + 1]);
                }
            }
            for (i, row) in out.iter_mut().enumerate() {
                _mm256_storeu_ps(row.as_mut_ptr(), acc[2 * i]);
                _mm256_storeu_ps(row.as_mut_ptr().add(8), acc[2 * i + 1]);
            }
        }
        out
    }
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
fn gemm_avx2(alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: MatMut<'_>, s: &mut [f32]) {
    blocked::<Fused, NR>(alpha, a, b, beta, c, s)
}

/// The same blocked loops with a tile twice as wide: each row of the micro-tile is two 512-bit
/// registers.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx512f,avx2,fma")]
fn gemm_avx512(alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: MatMut<'_>, s: &mut [f32]) {
    blocked::<Avx512, NR_WIDE>(alpha, a, b, beta, c, s)
}

/// The AVX-512 micro-kernel: twelve accumulator registers, two loads of B̃ and six broadcasts
/// of Ã per step of k.
#[cfg(all(feature = "std", target_arch = "x86_64"))]
struct Avx512;

#[cfg(all(feature = "std", target_arch = "x86_64"))]
impl Madd for Avx512 {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }

    #[inline(always)]
    fn micro<const N: usize>(kc: usize, a: &[f32], b: &[f32]) -> [[f32; N]; MR] {
        if N != 2 * 16 {
            return micro_generic::<Self, N>(kc, a, b);
        }
        use core::arch::x86_64::*;
        let (a, b) = (&a[..kc * MR], &b[..kc * N]);
        let mut out = [[0.0f32; N]; MR];
        // SAFETY: this impl is only instantiated inside `gemm_avx512`, which runs only on CPUs
        // reporting AVX-512F; every load reads 16 floats at `b[k·32 ..]` / `b[k·32 + 16 ..]`
        // with k < kc, inside `b` (length kc·32, checked by the slice above), and every store
        // writes 16 floats of a row of `out` (32 long).
        unsafe {
            let mut acc = [_mm512_setzero_ps(); 2 * MR];
            for k in 0..kc {
                let bp = b.as_ptr().add(k * N);
                let (b0, b1) = (_mm512_loadu_ps(bp), _mm512_loadu_ps(bp.add(16)));
                for i in 0..MR {
                    let ai = _mm512_set1_ps(*a.get_unchecked(k * MR + i));
                    acc[2 * i] = _mm512_fmadd_ps(ai, b0, acc[2 * i]);
                    acc[2 * i + 1] = _mm512_fmadd_ps(ai, b1, acc[2 * i + 1]);
                }
            }
            for (i, row) in out.iter_mut().enumerate() {
                _mm512_storeu_ps(row.as_mut_ptr(), acc[2 * i]);
                _mm512_storeu_ps(row.as_mut_ptr().add(16), acc[2 * i + 1]);
            }
        }
        out
    }
}

/// Packs `a[i0.., p0..]` (`mc × kc`) into `MR`-row panels, `k` outer, zero-padded.
#[inline(always)]
fn pack_a(a: &Mat<'_>, i0: usize, mc: usize, p0: usize, kc: usize, out: &mut [f32]) {
    for (q, panel) in out
        .chunks_exact_mut(kc * MR)
        .take(mc.div_ceil(MR))
        .enumerate()
    {
        let r0 = i0 + q * MR;
        let rows = MR.min(i0 + mc - r0);
        for (kk, dst) in panel.chunks_exact_mut(MR).enumerate() {
            let col = (p0 + kk) * a.cs;
            for (i, d) in dst.iter_mut().enumerate() {
                *d = if i < rows {
                    a.data[(r0 + i) * a.rs + col]
                } else {
                    0.0
                };
            }
        }
    }
}

/// Packs `b[p0.., j0..]` (`kc × nc`) into `NR`-column panels, `k` outer, zero-padded.
#[inline(always)]
fn pack_b<const NR: usize>(
    b: &Mat<'_>,
    p0: usize,
    kc: usize,
    j0: usize,
    nc: usize,
    out: &mut [f32],
) {
    for (q, panel) in out
        .chunks_exact_mut(kc * NR)
        .take(nc.div_ceil(NR))
        .enumerate()
    {
        let c0 = j0 + q * NR;
        let cols = NR.min(j0 + nc - c0);
        for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
            let row = (p0 + kk) * b.rs;
            if b.cs == 1 && cols == NR {
                dst.copy_from_slice(&b.data[row + c0..row + c0 + NR]);
            } else {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = if j < cols {
                        b.data[row + (c0 + j) * b.cs]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// `MR × NR` tile of `Ã · B̃` over `kc` (panels as packed), accumulated in registers.
#[inline(always)]
fn micro_generic<M: Madd, const NR: usize>(kc: usize, a: &[f32], b: &[f32]) -> [[f32; NR]; MR] {
    let mut acc = [[0.0f32; NR]; MR];
    for (ap, bp) in a[..kc * MR]
        .chunks_exact(MR)
        .zip(b[..kc * NR].chunks_exact(NR))
    {
        let bv: &[f32; NR] = bp.try_into().unwrap();
        for i in 0..MR {
            let av = ap[i];
            for j in 0..NR {
                acc[i][j] = M::madd(av, bv[j], acc[i][j]);
            }
        }
    }
    acc
}

#[inline(always)]
fn blocked<M: Madd, const NR: usize>(
    alpha: f32,
    a: Mat<'_>,
    b: Mat<'_>,
    beta: f32,
    c: MatMut<'_>,
    s: &mut [f32],
) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let kc_max = k.min(KC);
    let (apack, bpack) = s.split_at_mut(kc_max * m.min(MC).div_ceil(MR) * MR);
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let first = p0 == 0;
            pack_b::<NR>(&b, p0, kc, j0, nc, bpack);
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                pack_a(&a, i0, mc, p0, kc, apack);
                for jq in 0..nc.div_ceil(NR) {
                    let bp = &bpack[jq * kc * NR..];
                    let cj = j0 + jq * NR;
                    let cols = NR.min(n - cj);
                    for iq in 0..mc.div_ceil(MR) {
                        let acc = M::micro::<NR>(kc, &apack[iq * kc * MR..], bp);
                        let ci = i0 + iq * MR;
                        let rows = MR.min(m - ci);
                        for (i, row) in acc.iter().enumerate().take(rows) {
                            let at = (ci + i) * c.rs + cj * c.cs;
                            let row = &row[..cols];
                            if c.cs == 1 {
                                // Contiguous: one vectorizable loop per case.
                                let d = &mut c.data[at..at + cols];
                                if !first {
                                    d.iter_mut().zip(row).for_each(|(d, v)| *d += alpha * v);
                                } else if beta == 0.0 {
                                    d.iter_mut().zip(row).for_each(|(d, v)| *d = alpha * v);
                                } else {
                                    let z = d.iter_mut().zip(row);
                                    z.for_each(|(d, v)| *d = alpha * v + beta * *d);
                                }
                                continue;
                            }
                            for (j, &v) in row.iter().enumerate() {
                                let d = &mut c.data[at + j * c.cs];
                                *d = if !first {
                                    *d + alpha * v
                                } else if beta == 0.0 {
                                    alpha * v
                                } else {
                                    alpha * v + beta * *d
                                };
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(all(test, feature = "std", target_arch = "x86_64"))]
mod tests {
    use super::*;
    use std::vec::Vec;

    type Build = fn(f32, Mat<'_>, Mat<'_>, f32, MatMut<'_>, &mut [f32]);

    /// Each x86 build this CPU runs (AVX2+FMA, AVX-512) agrees with the baseline build within
    /// FMA's rounding, on shapes that leave partial tiles and span two k-blocks, with C both
    /// contiguous and strided.
    #[test]
    fn x86_builds_match_baseline() {
        let mut builds: Vec<(&str, Build)> = Vec::new();
        if matches!(isa(), Isa::Avx2Fma) {
            // SAFETY (both closures): called only after the CPU reported the features.
            builds.push(("avx2", |al, a, b, be, c, s| unsafe {
                gemm_avx2(al, a, b, be, c, s)
            }));
            if std::is_x86_feature_detected!("avx512f") {
                builds.push(("avx512", |al, a, b, be, c, s| unsafe {
                    gemm_avx512(al, a, b, be, c, s)
                }));
            }
        }
        for (m, k, n) in [(37, 300, 45), (6, 32, 32), (13, 7, 70), (1, 1, 1)] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0)
                .collect();
            let mut s = std::vec![0.0; scratch_len(m, k, n)];
            let (am, bm) = (Mat::new(&a, m, k).unwrap(), Mat::new(&b, k, n).unwrap());
            for strided in [false, true] {
                // Strided: C is every other column of a 2n-wide matrix.
                let (rs, cs) = if strided { (2 * n, 2) } else { (n, 1) };
                let run = |f: Build, s: &mut [f32]| {
                    let mut c = std::vec![1.0f32; m * n * cs];
                    f(
                        0.5,
                        am,
                        bm,
                        2.0,
                        MatMut::strided(&mut c, m, n, rs, cs).unwrap(),
                        s,
                    );
                    c
                };
                let base = run(blocked::<Plain, NR>, &mut s);
                for &(name, f) in &builds {
                    let got = run(f, &mut s);
                    for (x, y) in got.iter().zip(&base) {
                        assert!(
                            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                            "{name} {m}×{k}×{n} strided {strided}: {x} vs {y}"
                        );
                    }
                }
            }
        }
    }
}
