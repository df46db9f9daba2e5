//! One register of float lanes, as the activation kernels use it: AVX2's eight (`Y`) and
//! AVX-512's sixteen (`Z`). Every operation does lane by lane exactly what `wide`'s SSE2 build
//! does (a rounding by truncation stays one, a multiply-add stays a multiply then an add), so
//! both give the portable kernels' bits.
//!
//! Every function is `unsafe`: the caller guarantees the CPU has the register's features
//! (AVX2 and FMA for `Y`; AVX-512F too for `Z`), as the entry points in [`super::x86`] do after
//! run-time detection.

use core::arch::x86_64::*;

/// A register of `LANES` floats and its lane masks.
pub(super) trait Reg: Copy {
    /// Floats per register.
    const LANES: usize;
    /// One flag per lane.
    type Mask: Copy;
    /// `LANES` floats from `p`.
    unsafe fn load(p: &[f32]) -> Self;
    /// The lanes into `p[..LANES]`.
    unsafe fn store(self, p: &mut [f32]);
    unsafe fn splat(v: f32) -> Self;
    unsafe fn add(self, o: Self) -> Self;
    unsafe fn sub(self, o: Self) -> Self;
    unsafe fn mul(self, o: Self) -> Self;
    unsafe fn div(self, o: Self) -> Self;
    /// `maxps`: `o` where either is NaN.
    unsafe fn max(self, o: Self) -> Self;
    /// `minps`: `o` where either is NaN.
    unsafe fn min(self, o: Self) -> Self;
    /// The sign bit cleared.
    unsafe fn abs(self) -> Self;
    /// The sign bit flipped.
    unsafe fn neg(self) -> Self;
    /// Ordered `self > o`.
    unsafe fn gt(self, o: Self) -> Self::Mask;
    /// Ordered `self < o`.
    unsafe fn lt(self, o: Self) -> Self::Mask;
    unsafe fn is_nan(self) -> Self::Mask;
    /// `one` where `m`, else `zero`.
    unsafe fn select(m: Self::Mask, one: Self, zero: Self) -> Self;
    /// Half away from zero by truncating `|x| + 0.5` (x kept at |x| ≥ 2²³, ∞, NaN).
    unsafe fn round(self) -> Self;
    /// `self · 2ⁿ` for the integer-valued `n` (|n| ≤ 254), as two powers of two built from
    /// exponent bits: `n` rounded to i32 (`wide`'s `round_int`), halved by an arithmetic shift.
    unsafe fn scale2(self, n: Self) -> Self;
}

/// AVX2's eight lanes.
#[derive(Clone, Copy)]
pub(super) struct Y(__m256);

/// AVX-512's sixteen lanes.
#[derive(Clone, Copy)]
pub(super) struct Z(__m512);

impl Reg for Y {
    const LANES: usize = 8;
    type Mask = __m256;
    #[inline(always)]
    unsafe fn load(p: &[f32]) -> Self {
        assert!(p.len() >= 8);
        // SAFETY: AVX (the caller); `p` holds eight floats; the load is unaligned.
        Y(unsafe { _mm256_loadu_ps(p.as_ptr()) })
    }
    #[inline(always)]
    unsafe fn store(self, p: &mut [f32]) {
        assert!(p.len() >= 8);
        // SAFETY: AVX (the caller); `p` has room for eight floats; the store is unaligned.
        unsafe { _mm256_storeu_ps(p.as_mut_ptr(), self.0) }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: AVX (the caller).
        Y(unsafe { _mm256_set1_ps(v) })
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        // SAFETY: AVX (the caller).
        Y(unsafe { _mm256_add_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        // SAFETY: AVX (the caller).
        Y(unsafe { _mm256_sub_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        // SAFETY: AVX (the caller).
        Y(unsafe { _mm256_mul_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        // SAFETY: AVX (the caller).
        Y(unsafe { _mm256_div_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        // SAFETY: AVX (the caller).
        Y(unsafe { _mm256_max_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        // SAFETY: AVX (the caller).
        Y(unsafe { _mm256_min_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        // SAFETY: AVX (the caller).
        Y(unsafe { _mm256_and_ps(self.0, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX))) })
    }
    #[inline(always)]
    unsafe fn neg(self) -> Self {
        // SAFETY: AVX (the caller).
        Y(unsafe { _mm256_xor_ps(self.0, _mm256_set1_ps(-0.0)) })
    }
    #[inline(always)]
    unsafe fn gt(self, o: Self) -> __m256 {
        // SAFETY: AVX (the caller).
        unsafe { _mm256_cmp_ps::<_CMP_GT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn lt(self, o: Self) -> __m256 {
        // SAFETY: AVX (the caller).
        unsafe { _mm256_cmp_ps::<_CMP_LT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn is_nan(self) -> __m256 {
        // SAFETY: AVX (the caller).
        unsafe { _mm256_cmp_ps::<_CMP_UNORD_Q>(self.0, self.0) }
    }
    #[inline(always)]
    unsafe fn select(m: __m256, one: Self, zero: Self) -> Self {
        // SAFETY: AVX (the caller).
        Y(unsafe { _mm256_or_ps(_mm256_and_ps(one.0, m), _mm256_andnot_ps(m, zero.0)) })
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        // SAFETY: AVX2 (the caller).
        unsafe {
            let ax = self.abs().0;
            let half = _mm256_add_ps(ax, _mm256_set1_ps(0.5));
            let truncated = _mm256_cvtepi32_ps(_mm256_cvttps_epi32(half));
            // |x| + 0.5 rounds up to 1 for the float just below 0.5.
            let not_below_half =
                _mm256_cmp_ps::<_CMP_NEQ_UQ>(ax, _mm256_set1_ps(0.5f32.next_down()));
            let r = _mm256_and_ps(truncated, not_below_half);
            let small = _mm256_cmpgt_epi32(
                _mm256_castps_si256(_mm256_set1_ps(8_388_608.0)),
                _mm256_castps_si256(ax),
            );
            // In range: `r` with the sign of x; else x.
            let keep = Y(_mm256_castsi256_ps(small)).abs().0;
            Y(_mm256_or_ps(
                _mm256_and_ps(r, keep),
                _mm256_andnot_ps(keep, self.0),
            ))
        }
    }
    #[inline(always)]
    unsafe fn scale2(self, n: Self) -> Self {
        // SAFETY: AVX2 (the caller).
        unsafe {
            let non_nan = _mm256_and_ps(n.0, _mm256_cmp_ps::<_CMP_EQ_OQ>(n.0, n.0));
            let flip = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(
                n.0,
                _mm256_set1_ps(2_147_483_648.0),
            ));
            let ni = _mm256_xor_si256(flip, _mm256_cvtps_epi32(non_nan));
            let half = _mm256_srai_epi32::<1>(ni);
            let pow = |k: __m256i| {
                _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
                    k,
                    _mm256_set1_epi32(127),
                )))
            };
            Y(_mm256_mul_ps(
                _mm256_mul_ps(self.0, pow(half)),
                pow(_mm256_sub_epi32(ni, half)),
            ))
        }
    }
}

impl Reg for Z {
    const LANES: usize = 16;
    type Mask = __mmask16;
    #[inline(always)]
    unsafe fn load(p: &[f32]) -> Self {
        assert!(p.len() >= 16);
        // SAFETY: AVX-512F (the caller); `p` holds sixteen floats; the load is unaligned.
        Z(unsafe { _mm512_loadu_ps(p.as_ptr()) })
    }
    #[inline(always)]
    unsafe fn store(self, p: &mut [f32]) {
        assert!(p.len() >= 16);
        // SAFETY: AVX-512F (the caller); `p` has room for sixteen floats; unaligned store.
        unsafe { _mm512_storeu_ps(p.as_mut_ptr(), self.0) }
    }
    #[inline(always)]
    unsafe fn splat(v: f32) -> Self {
        // SAFETY: AVX-512F (the caller).
        Z(unsafe { _mm512_set1_ps(v) })
    }
    #[inline(always)]
    unsafe fn add(self, o: Self) -> Self {
        // SAFETY: AVX-512F (the caller).
        Z(unsafe { _mm512_add_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn sub(self, o: Self) -> Self {
        // SAFETY: AVX-512F (the caller).
        Z(unsafe { _mm512_sub_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn mul(self, o: Self) -> Self {
        // SAFETY: AVX-512F (the caller).
        Z(unsafe { _mm512_mul_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn div(self, o: Self) -> Self {
        // SAFETY: AVX-512F (the caller).
        Z(unsafe { _mm512_div_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn max(self, o: Self) -> Self {
        // SAFETY: AVX-512F (the caller).
        Z(unsafe { _mm512_max_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn min(self, o: Self) -> Self {
        // SAFETY: AVX-512F (the caller).
        Z(unsafe { _mm512_min_ps(self.0, o.0) })
    }
    #[inline(always)]
    unsafe fn abs(self) -> Self {
        // SAFETY: AVX-512F (the caller).
        Z(unsafe {
            _mm512_castsi512_ps(_mm512_and_si512(
                _mm512_castps_si512(self.0),
                _mm512_set1_epi32(i32::MAX),
            ))
        })
    }
    #[inline(always)]
    unsafe fn neg(self) -> Self {
        // SAFETY: AVX-512F (the caller).
        Z(unsafe {
            _mm512_castsi512_ps(_mm512_xor_si512(
                _mm512_castps_si512(self.0),
                _mm512_set1_epi32(i32::MIN),
            ))
        })
    }
    #[inline(always)]
    unsafe fn gt(self, o: Self) -> __mmask16 {
        // SAFETY: AVX-512F (the caller).
        unsafe { _mm512_cmp_ps_mask::<_CMP_GT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn lt(self, o: Self) -> __mmask16 {
        // SAFETY: AVX-512F (the caller).
        unsafe { _mm512_cmp_ps_mask::<_CMP_LT_OQ>(self.0, o.0) }
    }
    #[inline(always)]
    unsafe fn is_nan(self) -> __mmask16 {
        // SAFETY: AVX-512F (the caller).
        unsafe { _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(self.0, self.0) }
    }
    #[inline(always)]
    unsafe fn select(m: __mmask16, one: Self, zero: Self) -> Self {
        // SAFETY: AVX-512F (the caller).
        Z(unsafe { _mm512_mask_blend_ps(m, zero.0, one.0) })
    }
    #[inline(always)]
    unsafe fn round(self) -> Self {
        // SAFETY: AVX-512F (the caller).
        unsafe {
            let ax = self.abs().0;
            let half = _mm512_add_ps(ax, _mm512_set1_ps(0.5));
            let truncated = _mm512_cvtepi32_ps(_mm512_cvttps_epi32(half));
            // |x| + 0.5 rounds up to 1 for the float just below 0.5.
            let not_below_half =
                _mm512_cmp_ps_mask::<_CMP_NEQ_UQ>(ax, _mm512_set1_ps(0.5f32.next_down()));
            let r = _mm512_maskz_mov_ps(not_below_half, truncated);
            let small = _mm512_cmpgt_epi32_mask(
                _mm512_castps_si512(_mm512_set1_ps(8_388_608.0)),
                _mm512_castps_si512(ax),
            );
            // In range: `r` (non-negative) with the sign of x; else x.
            let sign = _mm512_and_si512(_mm512_castps_si512(self.0), _mm512_set1_epi32(i32::MIN));
            let signed = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r), sign));
            Z(_mm512_mask_blend_ps(small, self.0, signed))
        }
    }
    #[inline(always)]
    unsafe fn scale2(self, n: Self) -> Self {
        // SAFETY: AVX-512F (the caller).
        unsafe {
            let nan = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(n.0, n.0);
            let non_nan = _mm512_mask_blend_ps(nan, n.0, _mm512_setzero_ps());
            let big = _mm512_cmp_ps_mask::<_CMP_GE_OQ>(n.0, _mm512_set1_ps(2_147_483_648.0));
            let flip = _mm512_maskz_mov_epi32(big, _mm512_set1_epi32(-1));
            let rounded = _mm512_cvtps_epi32(non_nan);
            let ni = _mm512_xor_si512(flip, rounded);
            let half = _mm512_srai_epi32::<1>(ni);
            let pow = |k: __m512i| {
                _mm512_castsi512_ps(_mm512_slli_epi32::<23>(_mm512_add_epi32(
                    k,
                    _mm512_set1_epi32(127),
                )))
            };
            Z(_mm512_mul_ps(
                _mm512_mul_ps(self.0, pow(half)),
                pow(_mm512_sub_epi32(ni, half)),
            ))
        }
    }
}
