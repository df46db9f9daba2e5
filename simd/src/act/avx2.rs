//! The activation kernels of [`super`] on AVX2 registers: the same operations in the same order
//! as the portable eight-lane code (which `wide` builds from two SSE2 halves on x86_64), so the
//! same bits — a rounding that `wide` does by truncation is done by truncation here, a
//! multiply-add stays a multiply then an add — only without splitting every vector in two. The
//! tests below hold each function to the portable one bit for bit.

use core::arch::x86_64::*;

use super::{EXP_HI, EXP_LO, FRAC_1_SQRT_2, FRAC_1_SQRT_2PI, LN2_HI, LN2_LO, LOG2E};
use super::{SQRT_2_OVER_PI, TANH_C};

#[target_feature(enable = "avx2,fma")]
fn splat(v: f32) -> __m256 {
    _mm256_set1_ps(v)
}

/// `a · b + c`, two roundings (as `wide`'s `mul_add` without FMA in the build).
#[target_feature(enable = "avx2,fma")]
fn mul_add(a: __m256, b: __m256, c: __m256) -> __m256 {
    _mm256_add_ps(_mm256_mul_ps(a, b), c)
}

#[target_feature(enable = "avx2,fma")]
fn abs(x: __m256) -> __m256 {
    _mm256_and_ps(x, _mm256_castsi256_ps(_mm256_set1_epi32(i32::MAX)))
}

#[target_feature(enable = "avx2,fma")]
fn neg(x: __m256) -> __m256 {
    _mm256_xor_ps(x, splat(-0.0))
}

/// Bits of `one` where `mask` is set, else of `zero`.
#[target_feature(enable = "avx2,fma")]
fn select(mask: __m256, one: __m256, zero: __m256) -> __m256 {
    _mm256_or_ps(_mm256_and_ps(one, mask), _mm256_andnot_ps(mask, zero))
}

/// Round half away from zero by truncating `|x| + 0.5` (`wide`'s SSE2 `round`), `x` kept at
/// |x| ≥ 2²³, ∞ and NaN.
#[target_feature(enable = "avx2,fma")]
fn round(x: __m256) -> __m256 {
    let ax = abs(x);
    let truncated = _mm256_cvtepi32_ps(_mm256_cvttps_epi32(_mm256_add_ps(ax, splat(0.5))));
    // |x| + 0.5 rounds up to 1 for the float just below 0.5.
    let below_half = _mm256_cmp_ps::<_CMP_NEQ_UQ>(ax, splat(0.5f32.next_down()));
    let r = _mm256_and_ps(truncated, below_half);
    let small = _mm256_cmpgt_epi32(
        _mm256_castps_si256(splat(8_388_608.0)),
        _mm256_castps_si256(ax),
    );
    select(abs(_mm256_castsi256_ps(small)), r, x)
}

/// To i32, rounding to nearest (`wide`'s `round_int`: NaN to 0, too large to `i32::MIN` flipped).
#[target_feature(enable = "avx2,fma")]
fn round_int(x: __m256) -> __m256i {
    let non_nan = _mm256_and_ps(x, _mm256_cmp_ps::<_CMP_EQ_OQ>(x, x));
    let flip = _mm256_castps_si256(_mm256_cmp_ps::<_CMP_GE_OQ>(x, splat(2_147_483_648.0)));
    _mm256_xor_si256(flip, _mm256_cvtps_epi32(non_nan))
}

/// `e^x`, as `super::exp8`.
#[target_feature(enable = "avx2,fma")]
fn exp8(x: __m256) -> __m256 {
    let xc = _mm256_min_ps(_mm256_max_ps(x, splat(EXP_LO)), splat(EXP_HI));
    let n = round(_mm256_mul_ps(xc, splat(LOG2E)));
    let r = _mm256_sub_ps(
        _mm256_sub_ps(xc, _mm256_mul_ps(n, splat(LN2_HI))),
        _mm256_mul_ps(n, splat(LN2_LO)),
    );
    let mut p = splat(1.987_569_1e-4);
    for c in super::EXP_POLY {
        p = mul_add(p, r, splat(c));
    }
    p = mul_add(p, _mm256_mul_ps(r, r), _mm256_add_ps(r, splat(1.0)));
    let ni = round_int(n);
    let half = _mm256_srai_epi32::<1>(ni);
    let pow = |k: __m256i| {
        _mm256_castsi256_ps(_mm256_slli_epi32::<23>(_mm256_add_epi32(
            k,
            _mm256_set1_epi32(127),
        )))
    };
    let y = _mm256_mul_ps(_mm256_mul_ps(p, pow(half)), pow(_mm256_sub_epi32(ni, half)));
    let y = select(
        _mm256_cmp_ps::<_CMP_GT_OQ>(x, splat(EXP_HI)),
        splat(f32::INFINITY),
        y,
    );
    let y = select(_mm256_cmp_ps::<_CMP_LT_OQ>(x, splat(EXP_LO)), splat(0.0), y);
    select(_mm256_cmp_ps::<_CMP_UNORD_Q>(x, x), x, y)
}

/// `(Φ(x), φ(x))`, as `super::phi8`.
#[target_feature(enable = "avx2,fma")]
fn phi8(x: __m256) -> (__m256, __m256) {
    let z = abs(_mm256_mul_ps(x, splat(FRAC_1_SQRT_2)));
    let t = _mm256_div_ps(splat(1.0), mul_add(z, splat(0.327_591_1), splat(1.0)));
    let mut poly = splat(1.061_405_4);
    for c in super::ERF_POLY {
        poly = mul_add(poly, t, splat(c));
    }
    poly = _mm256_mul_ps(poly, t);
    let e = exp8(_mm256_mul_ps(neg(_mm256_mul_ps(x, x)), splat(0.5)));
    let tail = _mm256_mul_ps(_mm256_mul_ps(splat(0.5), poly), e);
    let cdf = select(
        _mm256_cmp_ps::<_CMP_LT_OQ>(x, splat(0.0)),
        tail,
        _mm256_sub_ps(splat(1.0), tail),
    );
    (cdf, _mm256_mul_ps(e, splat(FRAC_1_SQRT_2PI)))
}

/// `tanh(u)`, as `super::tanh8`.
#[target_feature(enable = "avx2,fma")]
fn tanh8(u: __m256) -> __m256 {
    let a = abs(u);
    let e = exp8(neg(_mm256_add_ps(a, a)));
    let t = _mm256_div_ps(_mm256_sub_ps(splat(1.0), e), _mm256_add_ps(splat(1.0), e));
    select(_mm256_cmp_ps::<_CMP_LT_OQ>(u, splat(0.0)), neg(t), t)
}

/// GELU value and derivative, as `super::gelu8`.
#[target_feature(enable = "avx2,fma")]
fn gelu8(x: __m256, tanh: bool) -> (__m256, __m256) {
    let half = splat(0.5);
    if tanh {
        let k = splat(SQRT_2_OVER_PI);
        let x2 = _mm256_mul_ps(x, x);
        let u = _mm256_mul_ps(k, mul_add(x, _mm256_mul_ps(x2, splat(TANH_C)), x));
        let du = _mm256_mul_ps(
            k,
            _mm256_add_ps(_mm256_mul_ps(x2, splat(3.0 * TANH_C)), splat(1.0)),
        );
        let t = tanh8(u);
        let one_t = _mm256_add_ps(splat(1.0), t);
        let slope = _mm256_mul_ps(
            _mm256_mul_ps(
                _mm256_mul_ps(half, x),
                _mm256_sub_ps(splat(1.0), _mm256_mul_ps(t, t)),
            ),
            du,
        );
        let d = _mm256_add_ps(_mm256_mul_ps(half, one_t), slope);
        (_mm256_mul_ps(_mm256_mul_ps(half, x), one_t), d)
    } else {
        let (cdf, pdf) = phi8(x);
        (_mm256_mul_ps(x, cdf), mul_add(x, pdf, cdf))
    }
}

/// Eight floats from `c[..8]` (zeros past its end).
#[target_feature(enable = "avx2,fma")]
fn load(c: &[f32]) -> __m256 {
    let mut a = [0.0f32; 8];
    let n = c.len().min(8);
    a[..n].copy_from_slice(&c[..n]);
    // SAFETY: `a` holds eight floats; the load is unaligned.
    unsafe { _mm256_loadu_ps(a.as_ptr()) }
}

/// The first `c.len()` (at most eight) lanes of `v` into `c`.
#[target_feature(enable = "avx2,fma")]
fn store(c: &mut [f32], v: __m256) {
    let mut a = [0.0f32; 8];
    // SAFETY: `a` has room for eight floats; the store is unaligned.
    unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
    let n = c.len().min(8);
    c[..n].copy_from_slice(&a[..n]);
}

/// Eight floats from a chunk of eight.
#[target_feature(enable = "avx2,fma")]
fn load8(c: &[f32; 8]) -> __m256 {
    // SAFETY: `c` holds eight floats; the load is unaligned.
    unsafe { _mm256_loadu_ps(c.as_ptr()) }
}

/// Eight floats into a chunk of eight.
#[target_feature(enable = "avx2,fma")]
fn store8(c: &mut [f32; 8], v: __m256) {
    // SAFETY: `c` has room for eight floats; the store is unaligned.
    unsafe { _mm256_storeu_ps(c.as_mut_ptr(), v) }
}

/// `f` over `v` in place, eight lanes at a time (the tail padded with zeros), as `super::map8`.
#[target_feature(enable = "avx2,fma")]
fn map8(v: &mut [f32], f: impl Fn(__m256) -> __m256) {
    let (chunks, tail) = v.as_chunks_mut::<8>();
    for c in chunks {
        let r = f(load8(c));
        store8(c, r);
    }
    if !tail.is_empty() {
        let r = f(load(tail));
        store(tail, r);
    }
}

/// [`super::gelu`] on AVX2.
#[target_feature(enable = "avx2,fma")]
pub(super) fn gelu(v: &mut [f32], tanh: bool) {
    map8(v, |x| gelu8(x, tanh).0);
}

/// [`super::gelu_slope`] on AVX2.
#[target_feature(enable = "avx2,fma")]
pub(super) fn gelu_slope(v: &mut [f32], tanh: bool) {
    map8(v, |x| gelu8(x, tanh).1);
}

/// [`super::gelu_with_slope`] on AVX2 (`d` as long as `v`).
#[target_feature(enable = "avx2,fma")]
pub(super) fn gelu_with_slope(v: &mut [f32], d: &mut [f32], tanh: bool) {
    let ((vs, vt), (ds, dt)) = (v.as_chunks_mut::<8>(), d.as_chunks_mut::<8>());
    for (vc, dc) in vs.iter_mut().zip(ds) {
        let (g, s) = gelu8(load8(vc), tanh);
        store8(vc, g);
        store8(dc, s);
    }
    if !vt.is_empty() {
        let (g, s) = gelu8(load(vt), tanh);
        store(vt, g);
        store(dt, s);
    }
}

/// [`super::exp_shifted`] on AVX2: the whole vectors' sum lane by lane, reduced as `wide`
/// reduces eight lanes (each half in order, then the two halves), then the tail one by one.
#[target_feature(enable = "avx2,fma")]
pub(super) fn exp_shifted(v: &mut [f32], shift: f32) -> f32 {
    let s = splat(shift);
    let mut acc = splat(0.0);
    let (chunks, tail) = v.as_chunks_mut::<8>();
    for c in chunks {
        let r = exp8(_mm256_sub_ps(load8(c), s));
        acc = _mm256_add_ps(acc, r);
        store8(c, r);
    }
    let mut lanes = [0.0f32; 8];
    store(&mut lanes, acc);
    let mut sum = lanes[..4].iter().sum::<f32>() + lanes[4..].iter().sum::<f32>();
    for x in tail {
        let mut one = [0.0f32; 1];
        store(&mut one, exp8(splat(*x - shift)));
        *x = one[0];
        sum += one[0];
    }
    sum
}

#[cfg(test)]
mod tests {
    use std::vec::Vec;

    /// The bits, every NaN as one (a NaN's sign and payload are not part of the contract).
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter()
            .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
            .collect()
    }

    /// Random values over the ranges that matter, and the edges: ±0, ±∞, NaN, subnormals,
    /// the float just below 0.5 (scaled so exp's rounding meets it), huge and tiny.
    fn inputs() -> Vec<f32> {
        let mut s = 0x9E37_79B9u32;
        let mut v: Vec<f32> = (0..4099)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 17;
                s ^= s << 5;
                (s as f32 / u32::MAX as f32) * 40.0 - 20.0
            })
            .collect();
        let half = 0.5f32.next_down();
        v.extend([
            0.0,
            -0.0,
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e-42,
            -1e-42,
            f32::MAX,
            f32::MIN,
            88.72284,
            88.7229,
            -87.33655,
            -87.3366,
            -103.0,
            half / core::f32::consts::LOG2_E,
            -half / core::f32::consts::LOG2_E,
            1.5 / core::f32::consts::LOG2_E,
            -2.5 / core::f32::consts::LOG2_E,
        ]);
        v
    }

    /// The portable GELU (`which` 0) or derivative (1) of `x`.
    fn a_gelu(x: &[f32], tanh: bool, which: usize) -> Vec<f32> {
        let mut v = x.to_vec();
        super::super::map8(&mut v, |v| {
            let (g, d) = super::super::gelu8(v, tanh);
            if which == 0 { g } else { d }
        });
        v
    }

    #[test]
    fn the_avx2_kernels_are_the_portable_ones_bit_for_bit() {
        if !(std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")) {
            std::println!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        let x = inputs();
        for len in [0, 1, 7, 8, 9, 17, x.len()] {
            let x = &x[x.len() - len..];
            for tanh in [false, true] {
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                super::super::map8(&mut a, |v| super::super::gelu8(v, tanh).0);
                // SAFETY: the CPU reported AVX2 and FMA (checked above).
                unsafe { super::gelu(&mut b, tanh) };
                assert_eq!(bits(&a), bits(&b), "gelu, tanh {tanh}, {len}");
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                super::super::map8(&mut a, |v| super::super::gelu8(v, tanh).1);
                // SAFETY: as above.
                unsafe { super::gelu_slope(&mut b, tanh) };
                assert_eq!(bits(&a), bits(&b), "slope, tanh {tanh}, {len}");
                let (mut g, mut d) = (x.to_vec(), std::vec![0.0; len]);
                // SAFETY: as above.
                unsafe { super::gelu_with_slope(&mut g, &mut d, tanh) };
                assert_eq!(
                    bits(&g),
                    bits(&a_gelu(x, tanh, 0)),
                    "with slope {tanh} {len}"
                );
                assert_eq!(bits(&d), bits(&a_gelu(x, tanh, 1)), "slope of {tanh} {len}");
            }
            for shift in [0.0, 1.5, -3.25] {
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                let sa = super::super::exp_shifted_portable(&mut a, shift);
                // SAFETY: as above.
                let sb = unsafe { super::exp_shifted(&mut b, shift) };
                assert_eq!(bits(&a), bits(&b), "exp, shift {shift}, {len}");
                assert_eq!(bits(&[sa]), bits(&[sb]), "exp sum, shift {shift}, {len}");
            }
        }
    }
}
