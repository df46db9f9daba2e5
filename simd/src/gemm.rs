//! Dense GEMM that allocates nothing: operands are packed into caller-provided scratch.
//!
//! Layouts are passed as strides, so a transposed operand costs nothing: `Mat::t()` swaps them.
//! The structure is the classic one (Goto; as in matrixmultiply and BLIS): blocks of B
//! (`KC × NC`) and of A (`MC × KC`) are packed into panels, and a register-tiled micro-kernel
//! multiplies an `MR`-row panel of A by an `NR`-column panel of B. Packing pads the edges with
//! zeros, so the micro-kernel has no edge cases.
//!
//! Three builds, chosen at run time (x86_64 with `std`; elsewhere only the first):
//!
//! - the baseline (SSE2, NEON): a plain Rust micro-kernel (6×16 tile) for the autovectorizer,
//!   with separate multiplies and adds;
//! - AVX2 + FMA: an intrinsics micro-kernel on a 6×16 tile (two 256-bit registers per row);
//! - AVX-512: the same micro-kernel on a 6×32 tile (two 512-bit registers per row).
//!
//! The two intrinsics kernels are one generic body over the register width (the `Vector`
//! trait, as in matrixmultiply's kernels), compiled inside `#[target_feature]` entry points.
//! Every output element gets the same sequence of fused multiply-adds in both (k ascending
//! from zero within a `KC` block, then the same write-back), so they agree bitwise; the
//! baseline differs from them by FMA's rounding. matrixmultiply, which allocates its packing
//! buffers on every call, is still 1.05–1.7× faster on this machine (see the README); allocating
//! nothing in a step is not negotiable.

use crate::isa::{Isa, isa};
use crate::{Error, Result};

/// Rows of the micro-tile.
pub const MR: usize = 6;
/// Columns of the micro-tile (16: two AVX2 registers per row).
pub const NR: usize = 16;
/// Columns of the micro-tile in the AVX-512 build (two 512-bit registers per row).
const NR_WIDE: usize = 32;
/// Rows of the micro-tile in the AVX-512 build.
const MR_WIDE: usize = 12;
/// Depth of a packed block: C is updated once per `KC` of the inner dimension, so a product
/// split along it at multiples of `KC` (each part added onto C) gives the same bits as one.
pub const KC: usize = 256;
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
    /// The transpose (a view; nothing is copied).
    fn t(self) -> Self {
        MatMut {
            rows: self.cols,
            cols: self.rows,
            rs: self.cs,
            cs: self.rs,
            ..self
        }
    }

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
    // Row panels are rounded to the taller build's tile (MC is a multiple of both).
    let mc = if m < MC { m } else { MC };
    let mc = if mc.div_ceil(MR) * MR > mc.div_ceil(TALLEST) * TALLEST {
        mc.div_ceil(MR) * MR
    } else {
        mc.div_ceil(TALLEST) * TALLEST
    };
    // Panels are rounded to the widest build's tile, so one plan serves every CPU.
    let nc = (if n < NC { n } else { NC }).div_ceil(NR_WIDE) * NR_WIDE;
    // On x86_64 both panels start on a cache line (`ALIGN` floats), so no load of B̃ splits
    // a line.
    kc * (mc + nc) + 2 * ALIGN
}

/// Rows of the tallest tile a build for this target can run.
const TALLEST: usize = if cfg!(target_arch = "x86_64") {
    MR_WIDE
} else {
    MR
};

/// Rows of C up to which a row-major B is read in place rather than packed.
const B_IN_PLACE_ROWS: usize = 64;

/// Widest row stride (floats) of a B read in place: a column panel read in place spans `kc`
/// rows, and with a wider stride (512 floats, 2 KB, say) those rows fall on so few L1 sets that
/// they evict each other between the row tiles that reuse the panel. Packed, the panel is
/// contiguous. (Bench group `gemm` alone, with B hot in L2, hides this; a training step does
/// not: the mlp's forward went from 1.07 to 0.80 ms with its 512-wide W packed.)
const B_IN_PLACE_STRIDE: usize = 256;

/// Floats in a 64-byte cache line: where the packed panels start (on x86_64; elsewhere they
/// are not aligned and the scratch has no room for it).
const ALIGN: usize = if cfg!(target_arch = "x86_64") { 16 } else { 1 };

/// `s` from its first 64-byte-aligned float on (`s` as given if the address cannot be aligned,
/// which only costs speed).
fn aligned(s: &mut [f32]) -> &mut [f32] {
    let skip = s.as_ptr().align_offset(4 * ALIGN);
    if skip < ALIGN && skip <= s.len() {
        &mut s[skip..]
    } else {
        s
    }
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
        #[cfg(x86_detect)]
        // SAFETY: the CPU reported AVX-512F besides AVX2 and FMA.
        Isa::Avx2Fma if std::is_x86_feature_detected!("avx512f") => unsafe {
            gemm_avx512(alpha, a, b, beta, c, scratch)
        },
        #[cfg(x86_detect)]
        // SAFETY: `isa()` returned Avx2Fma only after the CPU reported AVX2 and FMA.
        Isa::Avx2Fma => unsafe { gemm_avx2(alpha, a, b, beta, c, scratch) },
        // SAFETY: the baseline build uses no target feature beyond the compilation target's.
        Isa::Base => unsafe { blocked::<Plain, MR, NR>(alpha, a, b, beta, c, scratch) },
    }
    Ok(())
}

/// A build of the micro-kernel.
trait Micro {
    /// The `MR × N` tile of `Ã · B̃` over `kc`, from an `MR`-row panel of Ã and an `N`-column
    /// panel of B̃ (as packed: `k` outer); with `H = 1` only its first `N / 2` columns need
    /// be right (an edge tile half as wide; the builds that can then do half the work).
    ///
    /// # Safety
    ///
    /// The CPU has the target features this build uses (none for [`Plain`]).
    unsafe fn tile<const MR: usize, const N: usize, const H: usize>(
        kc: usize,
        a: Panel<'_>,
        b: Panel<'_>,
    ) -> [[f32; N]; MR];

    /// [`Micro::tile`] written into a full `MR × N` tile of C: row `i` is `c[i·rs ..][..N]`,
    /// from a packed panel of A, or one in place where [`Micro::READS_ROWS`];
    /// each element updated by `store` (the same two roundings as the edge path in
    /// [`blocked`], so both give the same bits).
    ///
    /// # Safety
    ///
    /// As [`Micro::tile`].
    /// Whether [`Micro::tile_into`] reads A in place (a panel of `Ap` with any strides); the
    /// others take packed panels only.
    const READS_ROWS: bool = false;

    #[inline(always)]
    unsafe fn tile_into<const MR: usize, const N: usize>(
        kc: usize,
        a: Panel<'_>,
        b: Panel<'_>,
        c: &mut [f32],
        rs: usize,
        alpha: f32,
        store: Store,
    ) {
        // SAFETY: passed on from the caller.
        let acc = unsafe { Self::tile::<MR, N, 2>(kc, a, b) };
        for (i, row) in acc.iter().enumerate() {
            store.row(&mut c[i * rs..][..N], row, alpha);
        }
    }
}

/// How a finished tile meets C: the first `KC` block sets it (`Set`: `alpha·v`, or `Blend`:
/// `alpha·v + beta·c`), later blocks add (`Add`: `c + alpha·v`).
#[derive(Debug, Clone, Copy)]
enum Store {
    Set,
    Blend(f32),
    Add,
}

impl Store {
    fn new(first: bool, beta: f32) -> Self {
        match (first, beta == 0.0) {
            (false, _) => Store::Add,
            (true, true) => Store::Set,
            (true, false) => Store::Blend(beta),
        }
    }

    /// `d[j] ← store(d[j], alpha · v[j])` along a contiguous row.
    #[inline(always)]
    fn row(self, d: &mut [f32], v: &[f32], alpha: f32) {
        let z = d.iter_mut().zip(v);
        match self {
            Store::Add => z.for_each(|(d, v)| *d += alpha * v),
            Store::Set => z.for_each(|(d, v)| *d = alpha * v),
            Store::Blend(beta) => z.for_each(|(d, v)| *d = alpha * v + beta * *d),
        }
    }

    /// The same for one element.
    #[inline(always)]
    fn one(self, d: &mut f32, v: f32, alpha: f32) {
        *d = match self {
            Store::Add => *d + alpha * v,
            Store::Set => alpha * v,
            Store::Blend(beta) => alpha * v + beta * *d,
        };
    }
}

/// Where a micro-kernel reads a panel: element `(k, i)` at `a[k·ks + i·is]`. An `MR`-row panel
/// of A packed (`ks = MR`, `is = 1`) or in place (A's strides); an `N`-column panel of B packed
/// (`ks = N`, `is = 1`) or in place in a row-major B (`ks` its row stride).
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(x86_detect), allow(dead_code))]
struct Panel<'a> {
    a: &'a [f32],
    ks: usize,
    is: usize,
}

impl<'a> Panel<'a> {
    /// A packed panel.
    fn packed<const MR: usize>(a: &'a [f32]) -> Self {
        Panel { a, ks: MR, is: 1 }
    }

    /// `a` cut to the `kc × MR` elements the panel reaches (panics if it is shorter); for B,
    /// `MR` is the panel's width `N` (`is = 1`).
    #[cfg(x86_detect)]
    #[inline(always)]
    fn checked<const MR: usize>(self, kc: usize) -> Self {
        let end = match kc {
            0 => 0,
            _ => (kc - 1) * self.ks + (MR - 1) * self.is + 1,
        };
        Panel {
            a: &self.a[..end],
            ..self
        }
    }
}

/// The baseline: plain Rust for the autovectorizer, separate multiply and add (the baseline
/// has no FMA instruction).
struct Plain;
impl Micro for Plain {
    /// Every column, whatever `H` is.
    #[inline(always)]
    unsafe fn tile<const MR: usize, const N: usize, const H: usize>(
        kc: usize,
        a: Panel<'_>,
        b: Panel<'_>,
    ) -> [[f32; N]; MR] {
        debug_assert!(
            a.ks == MR && b.ks == N,
            "the baseline reads packed panels only"
        );
        let (a, b) = (a.a, b.a);
        #[cfg(all(target_arch = "arm", not(target_feature = "neon")))]
        return micro_strips::<MR, N>(kc, a, b);
        #[cfg(not(all(target_arch = "arm", not(target_feature = "neon"))))]
        micro_scalar::<MR, N>(kc, a, b, |a, b, c| a * b + c)
    }
}

/// Columns per strip of [`micro_strips`].
const STRIP: usize = 4;

/// The baseline tile for FPUs without SIMD registers (Cortex-M4F/M7, ARMv7 without NEON): the
/// `MR × N` tile in strips of [`STRIP`] columns, so that 24 accumulators stay in the 32 single
/// registers instead of 96 spilling to the stack. Each output adds the same products in the
/// same order, unfused: bitwise [`micro_scalar`] with `a·b + c` (tested).
#[inline(always)]
#[cfg_attr(
    not(any(test, all(target_arch = "arm", not(target_feature = "neon")))),
    allow(dead_code)
)]
fn micro_strips<const MR: usize, const N: usize>(
    kc: usize,
    a: &[f32],
    b: &[f32],
) -> [[f32; N]; MR] {
    const { assert!(N.is_multiple_of(STRIP)) };
    let mut acc = [[0.0f32; N]; MR];
    for j0 in (0..N).step_by(STRIP) {
        let mut s = [[0.0f32; STRIP]; MR];
        for (ap, bp) in a[..kc * MR]
            .chunks_exact(MR)
            .zip(b[..kc * N].chunks_exact(N))
        {
            let bv: &[f32; STRIP] = bp[j0..j0 + STRIP].try_into().unwrap();
            for i in 0..MR {
                let av = ap[i];
                for j in 0..STRIP {
                    s[i][j] += av * bv[j];
                }
            }
        }
        for (row, strip) in acc.iter_mut().zip(&s) {
            row[j0..j0 + STRIP].copy_from_slice(strip);
        }
    }
    acc
}

/// `MR × N` tile of `Ã · B̃` over `kc` (panels as packed), accumulated in registers, with
/// `madd(a, b, c) = a·b + c` as given.
#[inline(always)]
#[cfg_attr(
    all(target_arch = "arm", not(target_feature = "neon"), not(test)),
    allow(dead_code)
)]
fn micro_scalar<const MR: usize, const N: usize>(
    kc: usize,
    a: &[f32],
    b: &[f32],
    madd: impl Fn(f32, f32, f32) -> f32,
) -> [[f32; N]; MR] {
    let mut acc = [[0.0f32; N]; MR];
    for (ap, bp) in a[..kc * MR]
        .chunks_exact(MR)
        .zip(b[..kc * N].chunks_exact(N))
    {
        let bv: &[f32; N] = bp.try_into().unwrap();
        for i in 0..MR {
            let av = ap[i];
            for j in 0..N {
                acc[i][j] = madd(av, bv[j], acc[i][j]);
            }
        }
    }
    acc
}

/// A SIMD register of `f32` lanes and the five operations the intrinsics micro-kernel needs
/// (an implementing type names one x86 vector extension).
///
/// # Safety
///
/// Every function may be called only on a CPU with the implementing type's target features;
/// `load` and `store` also need `p` valid for reading (writing) `LANES` floats, no alignment
/// required.
#[cfg(x86_detect)]
pub(crate) trait Vector {
    /// The register.
    type Reg: Copy;
    /// Floats in a register.
    const LANES: usize;
    /// All lanes 0.
    unsafe fn zero() -> Self::Reg;
    /// All lanes `x`.
    unsafe fn splat(x: f32) -> Self::Reg;
    /// `LANES` floats from `p`.
    unsafe fn load(p: *const f32) -> Self::Reg;
    /// `a·b + c` in each lane, rounded once.
    unsafe fn fmadd(a: Self::Reg, b: Self::Reg, c: Self::Reg) -> Self::Reg;
    /// `v` to `LANES` floats at `p`.
    unsafe fn store(p: *mut f32, v: Self::Reg);
    /// `a + b` in each lane.
    unsafe fn add(a: Self::Reg, b: Self::Reg) -> Self::Reg;
    /// `a · b` in each lane.
    unsafe fn mul(a: Self::Reg, b: Self::Reg) -> Self::Reg;
}

/// AVX2 + FMA: 256-bit registers (used inside `gemm_avx2` only).
#[cfg(x86_detect)]
pub(crate) struct Avx2;

#[cfg(x86_detect)]
impl Vector for Avx2 {
    type Reg = core::arch::x86_64::__m256;
    const LANES: usize = 8;
    #[inline(always)]
    unsafe fn zero() -> Self::Reg {
        // SAFETY: the caller guarantees AVX2 (which includes AVX).
        unsafe { core::arch::x86_64::_mm256_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::Reg {
        // SAFETY: the caller guarantees AVX2 (which includes AVX).
        unsafe { core::arch::x86_64::_mm256_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::Reg {
        // SAFETY: the caller guarantees AVX and that `p` is readable for 8 floats.
        unsafe { core::arch::x86_64::_mm256_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self::Reg, b: Self::Reg, c: Self::Reg) -> Self::Reg {
        // SAFETY: the caller guarantees FMA.
        unsafe { core::arch::x86_64::_mm256_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::Reg) {
        // SAFETY: the caller guarantees AVX and that `p` is writable for 8 floats.
        unsafe { core::arch::x86_64::_mm256_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: Self::Reg, b: Self::Reg) -> Self::Reg {
        // SAFETY: the caller guarantees AVX.
        unsafe { core::arch::x86_64::_mm256_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: Self::Reg, b: Self::Reg) -> Self::Reg {
        // SAFETY: the caller guarantees AVX.
        unsafe { core::arch::x86_64::_mm256_mul_ps(a, b) }
    }
}

/// AVX-512F: 512-bit registers (used inside `gemm_avx512` only).
#[cfg(x86_detect)]
pub(crate) struct Avx512;

#[cfg(x86_detect)]
impl Vector for Avx512 {
    type Reg = core::arch::x86_64::__m512;
    const LANES: usize = 16;
    #[inline(always)]
    unsafe fn zero() -> Self::Reg {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { core::arch::x86_64::_mm512_setzero_ps() }
    }
    #[inline(always)]
    unsafe fn splat(x: f32) -> Self::Reg {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { core::arch::x86_64::_mm512_set1_ps(x) }
    }
    #[inline(always)]
    unsafe fn load(p: *const f32) -> Self::Reg {
        // SAFETY: the caller guarantees AVX-512F and that `p` is readable for 16 floats.
        unsafe { core::arch::x86_64::_mm512_loadu_ps(p) }
    }
    #[inline(always)]
    unsafe fn fmadd(a: Self::Reg, b: Self::Reg, c: Self::Reg) -> Self::Reg {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { core::arch::x86_64::_mm512_fmadd_ps(a, b, c) }
    }
    #[inline(always)]
    unsafe fn store(p: *mut f32, v: Self::Reg) {
        // SAFETY: the caller guarantees AVX-512F and that `p` is writable for 16 floats.
        unsafe { core::arch::x86_64::_mm512_storeu_ps(p, v) }
    }
    #[inline(always)]
    unsafe fn add(a: Self::Reg, b: Self::Reg) -> Self::Reg {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { core::arch::x86_64::_mm512_add_ps(a, b) }
    }
    #[inline(always)]
    unsafe fn mul(a: Self::Reg, b: Self::Reg) -> Self::Reg {
        // SAFETY: the caller guarantees AVX-512F.
        unsafe { core::arch::x86_64::_mm512_mul_ps(a, b) }
    }
}

#[cfg(x86_detect)]
impl<V: Vector> Micro for V {
    #[inline(always)]
    unsafe fn tile<const MR: usize, const N: usize, const H: usize>(
        kc: usize,
        a: Panel<'_>,
        b: Panel<'_>,
    ) -> [[f32; N]; MR] {
        let mut out = [[0.0f32; N]; MR];
        // SAFETY: the caller guarantees `V`'s target features, as `micro_simd` needs. Every
        // store writes LANES floats at offset h·LANES (h < H ≤ 2) of a row of `out`, N = 2·LANES
        // long (asserted in `micro_simd`).
        unsafe {
            let acc = micro_simd::<V, MR, N, H>(kc, a, b);
            for (i, row) in out.iter_mut().enumerate() {
                for (h, &v) in acc[i].iter().enumerate().take(H) {
                    V::store(row.as_mut_ptr().add(h * V::LANES), v);
                }
            }
        }
        out
    }

    const READS_ROWS: bool = true;

    #[inline(always)]
    unsafe fn tile_into<const MR: usize, const N: usize>(
        kc: usize,
        a: Panel<'_>,
        b: Panel<'_>,
        c: &mut [f32],
        rs: usize,
        alpha: f32,
        store: Store,
    ) {
        // Row i of the tile is c[i·rs ..][..N]; the last row ends at (MR − 1)·rs + N.
        let c = &mut c[..(MR - 1) * rs + N];
        // SAFETY: the caller guarantees `V`'s target features. Each load and store touches
        // LANES floats at c[i·rs + h·LANES ..] for i < MR and h < 2, which ends at most at
        // (MR − 1)·rs + 2·LANES = (MR − 1)·rs + N (N = 2·LANES, asserted in `micro_simd`):
        // inside `c`, whose length was checked by the slice above.
        unsafe {
            let acc = micro_simd::<V, MR, N, 2>(kc, a, b);
            let al = V::splat(alpha);
            for (i, pair) in acc.iter().enumerate() {
                for (h, &v) in pair.iter().enumerate() {
                    let p = c.as_mut_ptr().add(i * rs + h * V::LANES);
                    let v = V::mul(al, v);
                    let out = match store {
                        Store::Add => V::add(V::load(p), v),
                        Store::Set => v,
                        Store::Blend(beta) => V::add(v, V::mul(V::splat(beta), V::load(p))),
                    };
                    V::store(p, out);
                }
            }
        }
    }
}

/// The intrinsics micro-kernel, one body for every register width: `N = 2 · LANES` columns,
/// `2·MR` accumulator registers (row `i` in `2i` and `2i + 1`), two loads of B̃ and `MR`
/// broadcasts of Ã per step of k; with `H = 1` only the first register of each row (the
/// first `LANES` columns: one load of B̃ per step, and the rest of the tile is zero).
///
/// # Safety
///
/// The CPU has `V`'s target features.
#[cfg(x86_detect)]
#[inline(always)]
unsafe fn micro_simd<V: Vector, const MR: usize, const N: usize, const H: usize>(
    kc: usize,
    a: Panel<'_>,
    b: Panel<'_>,
) -> [[V::Reg; 2]; MR] {
    const { assert!(N == 2 * V::LANES, "a row of the tile is two registers") };
    const { assert!(H == 1 || H == 2, "one or two registers of a row") };
    let (a, b) = (a.checked::<MR>(kc), b.checked::<N>(kc));
    // SAFETY: the caller guarantees `V`'s target features. Every load reads LANES floats at
    // `b[k·ks ..]` or `b[k·ks + LANES ..]` with k < kc and N = 2·LANES (asserted above), so at
    // most up to (kc − 1)·ks + N, inside `b.a` (cut to that by `checked`); `a` is read at
    // k·ks + i·is for k < kc and i < MR, at most (kc − 1)·ks + (MR − 1)·is, inside `a.a` (cut
    // to that by `checked`).
    unsafe {
        let mut acc = [[V::zero(); 2]; MR];
        for k in 0..kc {
            let bp = b.a.as_ptr().add(k * b.ks);
            let b0 = V::load(bp);
            let b1 = if H == 2 {
                V::load(bp.add(V::LANES))
            } else {
                b0
            };
            let ak = a.a.as_ptr().add(k * a.ks);
            for (i, row) in acc.iter_mut().enumerate() {
                let ai = V::splat(*ak.add(i * a.is));
                row[0] = V::fmadd(ai, b0, row[0]);
                if H == 2 {
                    row[1] = V::fmadd(ai, b1, row[1]);
                }
            }
        }
        acc
    }
}

/// The AVX2 + FMA build: the blocked loops with the 6×16 intrinsics micro-kernel.
#[cfg(x86_detect)]
#[target_feature(enable = "avx2,fma")]
fn gemm_avx2(alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: MatMut<'_>, s: &mut [f32]) {
    // SAFETY: a `#[target_feature]` function runs only on CPUs with its features (a caller
    // without them must vouch for them in `unsafe`, as `sgemm` does after detection), so AVX2
    // and FMA, all that `Avx2` uses, are present.
    unsafe { blocked::<Avx2, MR, NR>(alpha, a, b, beta, c, s) }
}

/// The AVX-512 build: the same loops with a tile twice as wide (each row of the micro-tile is
/// two 512-bit registers).
#[cfg(x86_detect)]
#[target_feature(enable = "avx512f,avx2,fma")]
fn gemm_avx512(alpha: f32, a: Mat<'_>, b: Mat<'_>, beta: f32, c: MatMut<'_>, s: &mut [f32]) {
    // SAFETY: a `#[target_feature]` function runs only on CPUs with its features (a caller
    // without them must vouch for them in `unsafe`, as `sgemm` does after detection), so
    // AVX-512F, all that `Avx512` uses, is present.
    unsafe { blocked::<Avx512, MR_WIDE, NR_WIDE>(alpha, a, b, beta, c, s) }
}

/// Packs `a[i0.., p0..]` (`mc × kc`) into `MR`-row panels, `k` outer, zero-padded.
#[inline(always)]
fn pack_a<const MR: usize>(
    a: &Mat<'_>,
    i0: usize,
    mc: usize,
    p0: usize,
    kc: usize,
    out: &mut [f32],
) {
    for (q, panel) in out
        .chunks_exact_mut(kc * MR)
        .take(mc.div_ceil(MR))
        .enumerate()
    {
        let r0 = i0 + q * MR;
        let rows = MR.min(i0 + mc - r0);
        if a.rs == 1 && rows == MR {
            // Aᵀ stored row-major: the panel's MR values of each k are contiguous.
            for (kk, dst) in panel.chunks_exact_mut(MR).enumerate() {
                let at = r0 + (p0 + kk) * a.cs;
                dst.copy_from_slice(&a.data[at..at + MR]);
            }
            continue;
        }
        if rows < MR {
            panel.fill(0.0);
        }
        // Row by row: each row of A is read along k (contiguous when `cs == 1`).
        for i in 0..rows {
            gather(
                a.data,
                (r0 + i) * a.rs + p0 * a.cs,
                a.cs,
                kc,
                &mut panel[i..],
                MR,
            );
        }
    }
}

/// `dst[t · to] = src[from + t · step]` for `t < n` (`step` may be 0: a repeated element).
#[inline(always)]
fn gather(src: &[f32], from: usize, step: usize, n: usize, dst: &mut [f32], to: usize) {
    let dst = dst.iter_mut().step_by(to).take(n);
    if step == 1 {
        dst.zip(&src[from..from + n]).for_each(|(d, &v)| *d = v);
    } else {
        dst.enumerate().for_each(|(t, d)| *d = src[from + t * step]);
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
        if b.cs == 1 && cols == NR {
            for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                let at = (p0 + kk) * b.rs + c0;
                dst.copy_from_slice(&b.data[at..at + NR]);
            }
            continue;
        }
        if cols < NR {
            panel.fill(0.0);
        }
        // Column by column: each column of B is read along k (contiguous for Wᵀ, `rs == 1`).
        for j in 0..cols {
            gather(
                b.data,
                p0 * b.rs + (c0 + j) * b.cs,
                b.rs,
                kc,
                &mut panel[j..],
                NR,
            );
        }
    }
}

/// A tile at the edge of C (`rows ≤ MR`, `cols ≤ NR` of it wanted) through a smaller tile
/// that covers it: 4 or 8 rows (or all `MR`), half the columns where they fit, so that a thin
/// edge — the 49th row of 49, the last 16 of 48 columns — does not cost a whole tile. (Only
/// these few sizes: every size is inlined into the blocked loops, and more of them slowed
/// the whole tiles' loop by up to 8%, bench group `gemm`.) Each element gets the same products in the same order whatever the tile, so the
/// bits are the same.
///
/// # Safety
///
/// As [`Micro::tile`].
#[inline(always)]
unsafe fn edge_tile<M: Micro, const MR: usize, const NR: usize>(
    kc: usize,
    a: Panel<'_>,
    b: Panel<'_>,
    rows: usize,
    cols: usize,
) -> [[f32; NR]; MR] {
    // SAFETY: passed on from the caller.
    unsafe {
        match 2 * cols <= NR {
            true => edge_rows::<M, MR, NR, 1>(kc, a, b, rows),
            false => edge_rows::<M, MR, NR, 2>(kc, a, b, rows),
        }
    }
}

/// [`edge_tile`] for `H` registers of columns: the fewest rows covering `rows`.
///
/// # Safety
///
/// As [`Micro::tile`].
#[inline(always)]
unsafe fn edge_rows<M: Micro, const MR: usize, const NR: usize, const H: usize>(
    kc: usize,
    a: Panel<'_>,
    b: Panel<'_>,
    rows: usize,
) -> [[f32; NR]; MR] {
    /// The `R`-row tile in the first rows of an `MR`-row one.
    ///
    /// # Safety
    ///
    /// As [`Micro::tile`].
    #[inline(always)]
    unsafe fn part<M: Micro, const R: usize, const MR: usize, const NR: usize, const H: usize>(
        kc: usize,
        a: Panel<'_>,
        b: Panel<'_>,
    ) -> [[f32; NR]; MR] {
        // SAFETY: passed on from the caller.
        let t = unsafe { M::tile::<R, NR, H>(kc, a, b) };
        let mut out = [[0.0f32; NR]; MR];
        out.iter_mut().zip(&t).for_each(|(o, t)| *o = *t);
        out
    }
    // SAFETY: passed on from the caller; an `R`-row tile reads the first R ≤ MR rows of the
    // panel (R is checked against MR first) through its strides, which only the builds that
    // read A in place honour (the others assume a panel packed `R` wide).
    unsafe {
        match rows {
            _ if !M::READS_ROWS => M::tile::<MR, NR, H>(kc, a, b),
            ..=4 if MR > 4 => part::<M, 4, MR, NR, H>(kc, a, b),
            5..=8 if MR > 8 => part::<M, 8, MR, NR, H>(kc, a, b),
            _ => M::tile::<MR, NR, H>(kc, a, b),
        }
    }
}

/// The blocked loops around micro-kernel `M` with an `MR × NR` tile.
///
/// # Safety
///
/// The CPU has the target features `M` uses (see [`Micro::tile`]).
#[inline(always)]
unsafe fn blocked<M: Micro, const MR: usize, const NR: usize>(
    alpha: f32,
    a: Mat<'_>,
    b: Mat<'_>,
    beta: f32,
    c: MatMut<'_>,
    s: &mut [f32],
) {
    // A B that must be packed (not row-major) costs k·n copies; the transposed product
    // Cᵀ = Bᵀ·Aᵀ reads it in place and writes C through the strided path instead, m·n stores per
    // block of k. Each element gets the same products in the same order, so the bits are the
    // same either way.
    let (m, k, n) = (a.rows, a.cols, b.cols);
    let (a, b, c) = match M::READS_ROWS
        && b.cs != 1
        && k > m * k.div_ceil(KC)
        && scratch_len(n, k, m) <= s.len()
    {
        true => (b.t(), a.t(), c.t()),
        false => (a, b, c),
    };
    let (m, n) = (a.rows, b.cols);
    let kc_max = k.min(KC);
    const { assert!(MC.is_multiple_of(MR)) };
    let apack_len = (kc_max * m.min(MC).div_ceil(MR) * MR).next_multiple_of(ALIGN);
    let (apack, bpack) = aligned(s).split_at_mut(apack_len);
    for j0 in (0..n).step_by(NC) {
        let nc = NC.min(n - j0);
        for p0 in (0..k).step_by(KC) {
            let kc = KC.min(k - p0);
            let store = Store::new(p0 == 0, beta);
            // Full column panels of a row-major B are read in place too when few row panels
            // reuse them (at most `B_IN_PLACE_ROWS` rows) and its rows are close enough
            // (`B_IN_PLACE_STRIDE`): then packing costs more than the strided reads (bench
            // group `gemm`).
            let b_in_place =
                M::READS_ROWS && b.cs == 1 && m <= B_IN_PLACE_ROWS && b.rs <= B_IN_PLACE_STRIDE;
            let bfull = if b_in_place { nc / NR } else { 0 };
            pack_b::<NR>(&b, p0, kc, j0 + bfull * NR, nc - bfull * NR, bpack);
            for i0 in (0..m).step_by(MC) {
                let mc = MC.min(m - i0);
                // Full row panels of A are read in place (no packing) by the builds that can;
                // only a last, partial panel is packed.
                let full = if M::READS_ROWS { mc / MR } else { 0 };
                pack_a::<MR>(&a, i0 + full * MR, mc - full * MR, p0, kc, apack);
                for jq in 0..nc.div_ceil(NR) {
                    let bp = match jq < bfull {
                        true => Panel {
                            a: &b.data[p0 * b.rs + j0 + jq * NR..],
                            ks: b.rs,
                            is: 1,
                        },
                        false => Panel::packed::<NR>(&bpack[(jq - bfull) * kc * NR..]),
                    };
                    let cj = j0 + jq * NR;
                    let cols = NR.min(n - cj);
                    for iq in 0..mc.div_ceil(MR) {
                        let ap = match iq < full {
                            true => Panel {
                                a: &a.data[(i0 + iq * MR) * a.rs + p0 * a.cs..],
                                ks: a.cs,
                                is: a.rs,
                            },
                            false => Panel::packed::<MR>(&apack[(iq - full) * kc * MR..]),
                        };
                        let ci = i0 + iq * MR;
                        let rows = MR.min(m - ci);
                        let at = ci * c.rs + cj * c.cs;
                        if c.cs == 1 && rows == MR && cols == NR {
                            // SAFETY: the caller guarantees `M`'s target features.
                            unsafe {
                                M::tile_into::<MR, NR>(
                                    kc,
                                    ap,
                                    bp,
                                    &mut c.data[at..],
                                    c.rs,
                                    alpha,
                                    store,
                                )
                            };
                            continue;
                        }
                        // SAFETY: the caller guarantees `M`'s target features.
                        let acc = unsafe { edge_tile::<M, MR, NR>(kc, ap, bp, rows, cols) };
                        if c.rs == 1 && c.cs != 1 {
                            // Column-major C (the transposed product): a tile's columns are
                            // contiguous.
                            (0..cols).for_each(|j| {
                                let at = at + j * c.cs;
                                let col: [f32; MR] = core::array::from_fn(|i| acc[i][j]);
                                store.row(&mut c.data[at..at + rows], &col[..rows], alpha);
                            });
                            continue;
                        }
                        for (i, row) in acc.iter().enumerate().take(rows) {
                            let at = at + i * c.rs;
                            if c.cs == 1 {
                                store.row(&mut c.data[at..at + cols], &row[..cols], alpha);
                            } else {
                                for (j, &v) in row[..cols].iter().enumerate() {
                                    store.one(&mut c.data[at + j * c.cs], v, alpha);
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

#[cfg(all(test, x86_detect))]
mod tests {
    use super::*;
    use std::vec::Vec;

    type Build = fn(f32, Mat<'_>, Mat<'_>, f32, MatMut<'_>, &mut [f32]);

    /// The blocked loops with a scalar micro-kernel that fuses each multiply-add: what the
    /// intrinsics builds compute, element by element.
    struct ScalarFma;
    impl Micro for ScalarFma {
        unsafe fn tile<const MR: usize, const N: usize, const H: usize>(
            kc: usize,
            a: Panel<'_>,
            b: Panel<'_>,
        ) -> [[f32; N]; MR] {
            micro_scalar::<MR, N>(kc, a.a, b.a, f32::mul_add)
        }
    }

    /// Each x86 build this CPU runs (AVX2+FMA, AVX-512) agrees with the baseline build within
    /// FMA's rounding, and bitwise with a scalar fused build and with each other, on shapes
    /// that leave partial tiles and span several k-blocks (and two row blocks), with C both
    /// contiguous and strided, with and without `beta`.
    #[test]
    fn x86_builds_match_baseline() {
        let mut builds: Vec<(&str, Build)> = Vec::new();
        if matches!(isa(), Isa::Avx2Fma) {
            // SAFETY: pushed only after `isa()` saw the CPU report AVX2 and FMA.
            builds.push(("avx2", |al, a, b, be, c, s| unsafe {
                gemm_avx2(al, a, b, be, c, s)
            }));
            if std::is_x86_feature_detected!("avx512f") {
                // SAFETY: pushed only after the CPU reported AVX-512F besides AVX2 and FMA.
                builds.push(("avx512", |al, a, b, be, c, s| unsafe {
                    gemm_avx512(al, a, b, be, c, s)
                }));
            }
        }
        std::eprintln!(
            "x86 builds on this CPU: {:?}",
            builds.iter().map(|b| b.0).collect::<Vec<_>>()
        );
        // SAFETY: both scalar micro-kernels use no target feature beyond the target's.
        let base: Build =
            |al, a, b, be, c, s| unsafe { blocked::<Plain, MR, NR>(al, a, b, be, c, s) };
        // SAFETY: as above.
        let fused: Build =
            |al, a, b, be, c, s| unsafe { blocked::<ScalarFma, MR, NR>(al, a, b, be, c, s) };
        let shapes = [
            (37, 300, 45),
            (6, 32, 32),
            (13, 7, 70),
            (1, 1, 1),
            (100, 520, 70),
            // Edge tiles of several heights (2, 6, 8 and 7 rows past the last whole AVX-512
            // tile; 2, 0, 2 and 1 past an AVX2 one) and half widths (16 of 48, 8, 16 of 40).
            (26, 40, 48),
            (30, 17, 8),
            (44, 64, 16),
            (19, 300, 40),
        ];
        for (m, k, n) in shapes {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0)
                .collect();
            let mut s = std::vec![0.0; scratch_len(m, k, n)];
            let (am, bm) = (Mat::new(&a, m, k).unwrap(), Mat::new(&b, k, n).unwrap());
            for (strided, beta) in [(false, 2.0), (true, 2.0), (false, 0.0), (true, 0.0)] {
                // Strided: C is every other column of a 2n-wide matrix.
                let (rs, cs) = if strided { (2 * n, 2) } else { (n, 1) };
                let run = |f: Build, s: &mut [f32]| {
                    let mut c = std::vec![1.0f32; m * n * cs];
                    let cm = MatMut::strided(&mut c, m, n, rs, cs).unwrap();
                    f(0.5, am, bm, beta, cm, s);
                    c
                };
                let case = std::format!("{m}×{k}×{n} strided {strided} beta {beta}");
                let base = run(base, &mut s);
                let fused = run(fused, &mut s);
                let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
                let mut first: Option<(&str, Vec<f32>)> = None;
                for &(name, f) in &builds {
                    let got = run(f, &mut s);
                    for (x, y) in got.iter().zip(&base) {
                        assert!(
                            (x - y).abs() <= 1e-4 * (1.0 + y.abs()),
                            "{name} {case}: {x} vs {y}"
                        );
                    }
                    assert!(
                        bits(&got) == bits(&fused),
                        "{name} {case}: not the scalar FMA build"
                    );
                    match &first {
                        Some((other, want)) => {
                            assert!(bits(&got) == bits(want), "{name} vs {other} {case}: differ")
                        }
                        None => first = Some((name, got)),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod layout_tests {
    use super::*;
    use std::vec::Vec;

    /// `rows × cols` row-major `v` stored transposed (`cols × rows` row-major).
    fn transposed(v: &[f32], rows: usize, cols: usize) -> Vec<f32> {
        (0..rows * cols)
            .map(|t| v[(t % rows) * cols + t / rows])
            .collect()
    }

    /// A transposed operand (Aᵀ or Bᵀ stored row-major, as grad_W and grad_X pass them) and a
    /// repeated one (stride 0) are packed into the same panels as the row-major operand, so the
    /// product has the same bits, on the build this CPU runs; shapes with full and edge tiles
    /// and more than one block of k, m and n.
    #[test]
    fn operand_layouts_give_the_same_bits() {
        for (m, k, n) in [
            (37, 300, 45),
            (6, 32, 32),
            (1, 1, 1),
            (100, 520, 70),
            (12, 7, 1100),
        ] {
            let a: Vec<f32> = (0..m * k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0)
                .collect();
            let b: Vec<f32> = (0..k * n)
                .map(|i| ((i * 53 % 89) as f32 - 44.0) / 44.0)
                .collect();
            let (at, bt) = (transposed(&a, m, k), transposed(&b, k, n));
            let mut s = std::vec![0.0; scratch_len(m, k, n)];
            let mut run = |a: Mat<'_>, b: Mat<'_>| {
                let mut c = std::vec![1.0f32; m * n];
                sgemm(0.5, a, b, 2.0, MatMut::new(&mut c, m, n).unwrap(), &mut s).unwrap();
                c.iter().map(|x| x.to_bits()).collect::<Vec<_>>()
            };
            let (am, bm) = (Mat::new(&a, m, k).unwrap(), Mat::new(&b, k, n).unwrap());
            let (atm, btm) = (
                Mat::new(&at, k, m).unwrap().t(),
                Mat::new(&bt, n, k).unwrap().t(),
            );
            let want = run(am, bm);
            assert!(run(atm, bm) == want, "{m}×{k}×{n}: Aᵀ stored");
            assert!(run(am, btm) == want, "{m}×{k}×{n}: Bᵀ stored");
            assert!(run(atm, btm) == want, "{m}×{k}×{n}: both stored transposed");
            // A column repeated along k (stride 0) is the matrix of that column.
            let col: Vec<f32> = (0..m).map(|i| a[i * k]).collect();
            let rep: Vec<f32> = (0..m * k).map(|t| col[t / k]).collect();
            let rep_view = Mat::strided(&col, m, k, 1, 0).unwrap();
            assert!(
                run(rep_view, bm) == run(Mat::new(&rep, m, k).unwrap(), bm),
                "{m}×{k}×{n}: stride 0"
            );
        }
    }
}

#[cfg(test)]
mod strip_tests {
    use super::*;

    /// The strip tile is bitwise the plain tile, for both panel widths and several depths,
    /// with values whose sums round (so any change of order would show).
    #[test]
    fn strips_are_bitwise_the_plain_tile() {
        fn check<const N: usize>(kc: usize) {
            let a: std::vec::Vec<f32> = (0..kc * MR)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) * 0.013_7)
                .collect();
            let b: std::vec::Vec<f32> = (0..kc * N)
                .map(|i| ((i * 53 % 97) as f32 - 48.0) * 1.7e-3)
                .collect();
            let want = micro_scalar::<MR, N>(kc, &a, &b, |a, b, c| a * b + c);
            let got = micro_strips::<MR, N>(kc, &a, &b);
            for (g, w) in got.iter().flatten().zip(want.iter().flatten()) {
                assert_eq!(g.to_bits(), w.to_bits(), "N = {N}, kc = {kc}");
            }
        }
        for kc in [0, 1, 7, 64, 257] {
            check::<NR>(kc);
            check::<NR_WIDE>(kc);
        }
    }
}
