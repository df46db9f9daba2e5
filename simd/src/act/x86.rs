//! The activation kernels of [`super`] on AVX2 and AVX-512 registers ([`super::regs`]): the
//! same operations in the same order as the portable eight-lane code (which `wide` builds from
//! two SSE2 halves on x86_64), so the same bits, without splitting every vector in two — and on
//! AVX-512, sixteen lanes at a time. The tests below hold both to the portable code bit for bit.

use super::regs::{Reg, Y, Z};
use super::{EXP_HI, EXP_LO, FRAC_1_SQRT_2, FRAC_1_SQRT_2PI, LN2_HI, LN2_LO, LOG2E};
use super::{SQRT_2_OVER_PI, TANH_C};

/// `e^x`, as `super::exp8`.
///
/// # Safety
/// The CPU has `R`'s features (as every function here).
#[inline(always)]
unsafe fn exp<R: Reg>(x: R) -> R {
    // SAFETY: the caller guarantees `R`'s features.
    unsafe {
        let s = |v| R::splat(v);
        let xc = x.max(s(EXP_LO)).min(s(EXP_HI));
        let n = xc.mul(s(LOG2E)).round();
        let r = xc.sub(n.mul(s(LN2_HI))).sub(n.mul(s(LN2_LO)));
        let mut p = s(1.987_569_1e-4);
        for c in super::EXP_POLY {
            p = p.mul(r).add(s(c));
        }
        p = p.mul(r.mul(r)).add(r.add(s(1.0)));
        let y = p.scale2(n);
        let y = R::select(x.gt(s(EXP_HI)), s(f32::INFINITY), y);
        let y = R::select(x.lt(s(EXP_LO)), s(0.0), y);
        R::select(x.is_nan(), x, y)
    }
}

/// `(Φ(x), φ(x))`, as `super::phi8`.
#[inline(always)]
unsafe fn phi<R: Reg>(x: R) -> (R, R) {
    // SAFETY: the caller guarantees `R`'s features.
    unsafe {
        let s = |v| R::splat(v);
        let z = x.mul(s(FRAC_1_SQRT_2)).abs();
        let t = s(1.0).div(z.mul(s(0.327_591_1)).add(s(1.0)));
        let mut poly = s(1.061_405_4);
        for c in super::ERF_POLY {
            poly = poly.mul(t).add(s(c));
        }
        poly = poly.mul(t);
        let e = exp(x.mul(x).neg().mul(s(0.5)));
        let tail = s(0.5).mul(poly).mul(e);
        let cdf = R::select(x.lt(s(0.0)), tail, s(1.0).sub(tail));
        (cdf, e.mul(s(FRAC_1_SQRT_2PI)))
    }
}

/// `tanh(u)`, as `super::tanh8`.
#[inline(always)]
unsafe fn tanh<R: Reg>(u: R) -> R {
    // SAFETY: the caller guarantees `R`'s features.
    unsafe {
        let one = R::splat(1.0);
        let a = u.abs();
        let e = exp(a.add(a).neg());
        let t = one.sub(e).div(one.add(e));
        R::select(u.lt(R::splat(0.0)), t.neg(), t)
    }
}

/// GELU value and derivative, as `super::gelu8`.
#[inline(always)]
unsafe fn gelu<R: Reg>(x: R, tanh_form: bool) -> (R, R) {
    // SAFETY: the caller guarantees `R`'s features.
    unsafe {
        let s = |v| R::splat(v);
        let half = s(0.5);
        if tanh_form {
            let k = s(SQRT_2_OVER_PI);
            let x2 = x.mul(x);
            let u = k.mul(x.mul(x2.mul(s(TANH_C))).add(x));
            let du = k.mul(x2.mul(s(3.0 * TANH_C)).add(s(1.0)));
            let t = tanh(u);
            let one_t = s(1.0).add(t);
            let d = half
                .mul(one_t)
                .add(half.mul(x).mul(s(1.0).sub(t.mul(t))).mul(du));
            (half.mul(x).mul(one_t), d)
        } else {
            let (cdf, pdf) = phi(x);
            (x.mul(cdf), x.mul(pdf).add(cdf))
        }
    }
}

/// Up to `R::LANES` floats of `c` in a register (zeros past its end).
#[inline(always)]
unsafe fn load_part<R: Reg>(c: &[f32]) -> R {
    let mut a = [0.0f32; 16];
    a[..c.len()].copy_from_slice(c);
    // SAFETY: the caller guarantees `R`'s features; `a` holds at least `R::LANES` floats.
    unsafe { R::load(&a) }
}

/// The first `c.len()` lanes of `v` into `c`.
#[inline(always)]
unsafe fn store_part<R: Reg>(c: &mut [f32], v: R) {
    let mut a = [0.0f32; 16];
    // SAFETY: the caller guarantees `R`'s features; `a` has room for `R::LANES` floats.
    unsafe { v.store(&mut a) };
    let n = c.len();
    c.copy_from_slice(&a[..n]);
}

/// GELU (`SLOPE` false) or its derivative over `v` in place, a register at a time (the tail
/// padded with zeros). No closure: a closure would be compiled without the caller's target
/// features.
#[inline(always)]
unsafe fn gelu_map<R: Reg, const SLOPE: bool>(v: &mut [f32], tanh_form: bool) {
    let pick = |(g, d): (R, R)| if SLOPE { d } else { g };
    let mut chunks = v.chunks_exact_mut(R::LANES);
    for c in &mut chunks {
        // SAFETY: the caller guarantees `R`'s features; `c` holds `R::LANES` floats.
        unsafe { pick(gelu(R::load(c), tanh_form)).store(c) };
    }
    let tail = chunks.into_remainder();
    if !tail.is_empty() {
        // SAFETY: as above; the tail is shorter than a register.
        unsafe { store_part(tail, pick(gelu(load_part(tail), tanh_form))) };
    }
}

/// GELU into `v` and its derivative into `d` (as long as `v`).
#[inline(always)]
unsafe fn gelu_both<R: Reg>(v: &mut [f32], d: &mut [f32], tanh_form: bool) {
    let l = R::LANES;
    for (vc, dc) in v.chunks_mut(l).zip(d.chunks_mut(l)) {
        // SAFETY: the caller guarantees `R`'s features; whole chunks hold `l` floats.
        unsafe {
            if vc.len() == l {
                let (g, s) = gelu(R::load(vc), tanh_form);
                g.store(vc);
                s.store(dc);
            } else {
                let (g, s) = gelu(load_part::<R>(vc), tanh_form);
                store_part(vc, g);
                store_part(dc, s);
            }
        }
    }
}

/// GELU on AVX2.
#[target_feature(enable = "avx2,fma")]
pub(super) fn gelu_avx2(v: &mut [f32], tanh_form: bool) {
    // SAFETY: this function runs only where AVX2 and FMA are enabled.
    unsafe { gelu_map::<Y, false>(v, tanh_form) }
}

/// GELU on AVX-512.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) fn gelu_avx512(v: &mut [f32], tanh_form: bool) {
    // SAFETY: this function runs only where AVX-512F is enabled.
    unsafe { gelu_map::<Z, false>(v, tanh_form) }
}

/// GELU's derivative on AVX2.
#[target_feature(enable = "avx2,fma")]
pub(super) fn gelu_slope_avx2(v: &mut [f32], tanh_form: bool) {
    // SAFETY: this function runs only where AVX2 and FMA are enabled.
    unsafe { gelu_map::<Y, true>(v, tanh_form) }
}

/// GELU's derivative on AVX-512.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) fn gelu_slope_avx512(v: &mut [f32], tanh_form: bool) {
    // SAFETY: this function runs only where AVX-512F is enabled.
    unsafe { gelu_map::<Z, true>(v, tanh_form) }
}

/// GELU and its derivative on AVX2.
#[target_feature(enable = "avx2,fma")]
pub(super) fn gelu_with_slope_avx2(v: &mut [f32], d: &mut [f32], tanh_form: bool) {
    // SAFETY: this function runs only where AVX2 and FMA are enabled.
    unsafe { gelu_both::<Y>(v, d, tanh_form) }
}

/// GELU and its derivative on AVX-512.
#[target_feature(enable = "avx512f,avx2,fma")]
pub(super) fn gelu_with_slope_avx512(v: &mut [f32], d: &mut [f32], tanh_form: bool) {
    // SAFETY: this function runs only where AVX-512F is enabled.
    unsafe { gelu_both::<Z>(v, d, tanh_form) }
}

/// `v[i] = e^{v[i] − shift}` and their sum on AVX2, as `super::exp_shifted_portable`: whole
/// vectors summed lane by lane, the eight lanes reduced as `wide` reduces them (each half in
/// order, then the two halves), then the tail one by one. (AVX-512 CPUs run it too: sixteen
/// lanes would change the order of the sum.)
#[target_feature(enable = "avx2,fma")]
pub(super) fn exp_shifted_avx2(v: &mut [f32], shift: f32) -> f32 {
    // SAFETY: this function runs only where AVX2 and FMA are enabled; every load and store is
    // of a whole chunk of eight floats or goes through `store_part`.
    unsafe {
        let s = Y::splat(shift);
        let mut acc = Y::splat(0.0);
        let mut chunks = v.chunks_exact_mut(Y::LANES);
        for c in &mut chunks {
            let r = exp(Y::load(c).sub(s));
            acc = acc.add(r);
            r.store(c);
        }
        let mut lanes = [0.0f32; 8];
        acc.store(&mut lanes);
        let mut sum = lanes[..4].iter().sum::<f32>() + lanes[4..].iter().sum::<f32>();
        for x in chunks.into_remainder() {
            let mut one = [0.0f32; 1];
            store_part(&mut one, exp(Y::splat(*x - shift)));
            *x = one[0];
            sum += one[0];
        }
        sum
    }
}

#[cfg(test)]
mod tests {
    use super::super::{exp_shifted_portable, gelu8, map8};
    use std::vec::Vec;

    /// The bits, every NaN as one (a NaN's sign and payload are not part of the contract).
    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter()
            .map(|x| if x.is_nan() { u32::MAX } else { x.to_bits() })
            .collect()
    }

    /// Random values over the ranges that matter, and the edges: ±0, ±∞, NaN, subnormals,
    /// the float just below 0.5 (scaled so exp's rounding meets it), ties, huge and tiny.
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
        let l = core::f32::consts::LOG2_E;
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
            half / l,
            -half / l,
            1.5 / l,
            -2.5 / l,
        ]);
        v
    }

    /// The portable GELU (`which` 0) or derivative (1) of `x`.
    fn portable(x: &[f32], tanh: bool, which: usize) -> Vec<f32> {
        let mut v = x.to_vec();
        map8(&mut v, |v| {
            let (g, d) = gelu8(v, tanh);
            if which == 0 { g } else { d }
        });
        v
    }

    type Map = fn(&mut [f32], bool);
    type Both = fn(&mut [f32], &mut [f32], bool);

    /// One build's GELU, derivative and both, against the portable code.
    fn check_build(x: &[f32], gelu: Map, slope: Map, both: Both, build: &str) {
        for tanh in [false, true] {
            let len = x.len();
            let (mut g, mut d) = (x.to_vec(), x.to_vec());
            gelu(&mut g, tanh);
            slope(&mut d, tanh);
            let (want_g, want_d) = (portable(x, tanh, 0), portable(x, tanh, 1));
            assert_eq!(bits(&g), bits(&want_g), "{build} gelu, tanh {tanh}, {len}");
            assert_eq!(bits(&d), bits(&want_d), "{build} slope, tanh {tanh}, {len}");
            let (mut g, mut d) = (x.to_vec(), std::vec![0.0; len]);
            both(&mut g, &mut d, tanh);
            assert_eq!(bits(&g), bits(&want_g), "{build} both, tanh {tanh}, {len}");
            assert_eq!(bits(&d), bits(&want_d), "{build} both', tanh {tanh}, {len}");
        }
    }

    #[test]
    fn the_x86_kernels_are_the_portable_ones_bit_for_bit() {
        let avx2 = std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma");
        let avx512 = avx2 && std::is_x86_feature_detected!("avx512f");
        if !avx2 {
            std::println!("skipped: this CPU has no AVX2 and FMA");
            return;
        }
        let x = inputs();
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 33, x.len()] {
            let x = &x[x.len() - len..];
            // SAFETY (each closure): the CPU reported the build's features above.
            check_build(
                x,
                |v, t| unsafe { super::gelu_avx2(v, t) },
                |v, t| unsafe { super::gelu_slope_avx2(v, t) },
                |v, d, t| unsafe { super::gelu_with_slope_avx2(v, d, t) },
                "AVX2",
            );
            if avx512 {
                check_build(
                    x,
                    |v, t| unsafe { super::gelu_avx512(v, t) },
                    |v, t| unsafe { super::gelu_slope_avx512(v, t) },
                    |v, d, t| unsafe { super::gelu_with_slope_avx512(v, d, t) },
                    "AVX-512",
                );
            }
            for shift in [0.0, 1.5, -3.25] {
                let (mut a, mut b) = (x.to_vec(), x.to_vec());
                let sa = exp_shifted_portable(&mut a, shift);
                // SAFETY: the CPU reported AVX2 and FMA.
                let sb = unsafe { super::exp_shifted_avx2(&mut b, shift) };
                assert_eq!(bits(&a), bits(&b), "exp, shift {shift}, {len}");
                assert_eq!(bits(&[sa]), bits(&[sb]), "exp sum, shift {shift}, {len}");
            }
        }
        if !avx512 {
            std::println!("AVX-512 build not checked: this CPU has no AVX-512F");
        }
    }
}
