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
/// Columns of the micro-tile.
pub const NR: usize = 16;
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
    let nc = (if n < NC { n } else { NC }).div_ceil(NR) * NR;
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
        // SAFETY: `isa()` returned Avx2Fma only after the CPU reported AVX2 and FMA.
        Isa::Avx2Fma => unsafe { gemm_avx2(alpha, a, b, beta, c, scratch) },
        Isa::Base => blocked::<Plain>(alpha, a, b, beta, c, scratch),
    }
    Ok(())
}

/// Multiply-add as the target does it best.
trait Madd {
    fn madd(a: f32, b: f32, c: f32) -> f32;
}

/// Separate multiply and add (no FMA instruction in the baseline).
struct Plain;
impl Madd for Plain {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a * b + c
    }
}

/// Fused multiply-add (only instantiated where the CPU has FMA).
#[cfg(all(feature = "std", target_arch = "x86_64"))]
struct Fused;
#[cfg(all(feature = "std", target_arch = "x86_64"))]
impl Madd for Fused {
    #[inline(always)]
    fn madd(a: f32, b: f32, c: f32) -> f32 {
        a.mul_add(b, c)
    }
}

#[cfg(all(feature = "std", target_arch = "x86_64"))]
#[target_feature(enable = "avx2,fma")]
fn gemm_avx2(alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: MatMut<'_>, s: &mut [f32]) {
    blocked::<Fused>(alpha, a, b, beta, c, s)
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
fn pack_b(b: &Mat<'_>, p0: usize, kc: usize, j0: usize, nc: usize, out: &mut [f32]) {
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
fn micro<M: Madd>(kc: usize, a: &[f32], b: &[f32]) -> [[f32; NR]; MR] {
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
fn blocked<M: Madd>(alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: MatMut<'_>, s: &mut [f32]) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let kc_max = k.min(KC);
    let (apack, bpack) = s.split_at_mut(kc_max * m.min(MC).div_ceil(MR) * MR);
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let first = p0 == 0;
            pack_b(&b, p0, kc, j0, nc, bpack);
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                pack_a(&a, i0, mc, p0, kc, apack);
                for jq in 0..nc.div_ceil(NR) {
                    let bp = &bpack[jq * kc * NR..];
                    let cj = j0 + jq * NR;
                    let cols = NR.min(n - cj);
                    for iq in 0..mc.div_ceil(MR) {
                        let acc = micro::<M>(kc, &apack[iq * kc * MR..], bp);
                        let ci = i0 + iq * MR;
                        let rows = MR.min(m - ci);
                        for (i, row) in acc.iter().enumerate().take(rows) {
                            for (j, &v) in row.iter().enumerate().take(cols) {
                                let d = &mut c.data[(ci + i) * c.rs + (cj + j) * c.cs];
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

    /// The AVX2+FMA build agrees with the baseline build (within FMA's rounding).
    #[test]
    fn avx2_build_matches_baseline() {
        if !matches!(isa(), Isa::Avx2Fma) {
            return;
        }
        let (m, k, n) = (37, 300, 45);
        let a: std::vec::Vec<f32> = (0..m * k)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
            .collect();
        let b: std::vec::Vec<f32> = (0..k * n)
            .map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0)
            .collect();
        let mut s = std::vec![0.0; scratch_len(m, k, n)];
        let (mut c1, mut c2) = (std::vec![1.0; m * n], std::vec![1.0; m * n]);
        let (am, bm) = (Mat::new(&a, m, k).unwrap(), Mat::new(&b, k, n).unwrap());
        blocked::<Plain>(
            0.5,
            am,
            bm,
            2.0,
            MatMut::new(&mut c1, m, n).unwrap(),
            &mut s,
        );
        // SAFETY: `isa()` reported AVX2 and FMA above.
        unsafe {
            gemm_avx2(
                0.5,
                am,
                bm,
                2.0,
                MatMut::new(&mut c2, m, n).unwrap(),
                &mut s,
            )
        };
        for (x, y) in c1.iter().zip(&c2) {
            assert!((x - y).abs() <= 1e-4 * (1.0 + y.abs()), "{x} vs {y}");
        }
    }
}
