//! Transcendental activations, eight lanes at a time: `exp` (softmax), GELU and its derivative.
//!
//! The scalar versions from `libm` cost more than the attention's GEMMs around them; these are
//! polynomial approximations within a few ulp of them (the tests hold them to their scalar
//! twins in [`crate::reference`]).

use wide::{f32x8, i32x8};

#[cfg(x86_detect)]
mod regs;
#[cfg(x86_detect)]
mod x86;

const LOG2E: f32 = core::f32::consts::LOG2_E;
const LN2_HI: f32 = 0.693_359_4;
const LN2_LO: f32 = -2.121_944_4e-4;
/// Above this exp overflows to +∞; below the lower bound it is flushed to 0.
const EXP_HI: f32 = 88.722_84;
const EXP_LO: f32 = -87.336_55;
const FRAC_1_SQRT_2: f32 = core::f32::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;
const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const TANH_C: f32 = 0.044_715;
/// exp's polynomial after its leading coefficient, highest degree first.
const EXP_POLY: [f32; 5] = [
    1.398_199_9e-3,
    8.333_452e-3,
    4.166_579_6e-2,
    0.166_666_65,
    0.5,
];
/// Abramowitz–Stegun 7.1.26 after its leading coefficient.
const ERF_POLY: [f32; 4] = [-1.453_152_1, 1.421_413_8, -0.284_496_74, 0.254_829_6];

/// `e^x` of eight lanes: `2^n · p(r)` with `x = n·ln 2 + r`, |r| ≤ ln2/2, `p` the Cephes
/// polynomial (about 1 ulp). NaN stays NaN, large x gives +∞, very negative x 0.
#[inline(always)]
fn exp8(x: f32x8) -> f32x8 {
    let xc = x
        .fast_max(f32x8::splat(EXP_LO))
        .fast_min(f32x8::splat(EXP_HI));
    let n = (xc * f32x8::splat(LOG2E)).round();
    let r = xc - n * f32x8::splat(LN2_HI) - n * f32x8::splat(LN2_LO);
    let mut p = f32x8::splat(1.987_569_1e-4);
    for c in EXP_POLY {
        p = p.mul_add(r, f32x8::splat(c));
    }
    p = p.mul_add(r * r, r + f32x8::splat(1.0));
    // 2^n through the exponent bits; n ∈ [−126, 128] here, so split it to stay finite.
    let ni = n.round_int();
    let half = ni >> 1;
    let pow = |k: i32x8| -> f32x8 { bytemuck::cast((k + i32x8::splat(127)) << 23) };
    let y = p * pow(half) * pow(ni - half);
    let y = x
        .simd_gt(f32x8::splat(EXP_HI))
        .bitselect(f32x8::splat(f32::INFINITY), y);
    let y = x
        .simd_lt(f32x8::splat(EXP_LO))
        .bitselect(f32x8::splat(0.0), y);
    x.is_nan().bitselect(x, y)
}

/// `(Φ(x), φ(x))` of eight lanes, the normal CDF and density, sharing one exp: the CDF by
/// Abramowitz–Stegun 7.1.26 for erf (absolute error under 1.5e-7).
#[inline(always)]
fn phi8(x: f32x8) -> (f32x8, f32x8) {
    let z = (x * f32x8::splat(FRAC_1_SQRT_2)).abs();
    let t = f32x8::splat(1.0) / z.mul_add(f32x8::splat(0.327_591_1), f32x8::splat(1.0));
    let mut poly = f32x8::splat(1.061_405_4);
    for c in ERF_POLY {
        poly = poly.mul_add(t, f32x8::splat(c));
    }
    poly *= t;
    let e = exp8(-(x * x) * f32x8::splat(0.5));
    // erf(|z|) = 1 − poly·e^{−z²}; Φ(x) = (1 + sign(x)·erf(|z|)) / 2.
    let tail = f32x8::splat(0.5) * poly * e;
    let cdf = x
        .simd_lt(f32x8::splat(0.0))
        .bitselect(tail, f32x8::splat(1.0) - tail);
    (cdf, e * f32x8::splat(FRAC_1_SQRT_2PI))
}

/// `tanh(u)` of eight lanes as `1 − 2 / (e^{2u} + 1)`, sign-symmetric for accuracy near 0.
#[inline(always)]
fn tanh8(u: f32x8) -> f32x8 {
    let a = u.abs();
    let e = exp8(-(a + a));
    let t = (f32x8::splat(1.0) - e) / (f32x8::splat(1.0) + e);
    u.simd_lt(f32x8::splat(0.0)).bitselect(-t, t)
}

/// GELU value and derivative of eight lanes (erf, or PyTorch's tanh form).
#[inline(always)]
fn gelu8(x: f32x8, tanh: bool) -> (f32x8, f32x8) {
    let half = f32x8::splat(0.5);
    if tanh {
        let k = f32x8::splat(SQRT_2_OVER_PI);
        let x2 = x * x;
        let u = k * x.mul_add(x2 * f32x8::splat(TANH_C), x);
        let du = k * (x2 * f32x8::splat(3.0 * TANH_C) + f32x8::splat(1.0));
        let t = tanh8(u);
        let one_t = f32x8::splat(1.0) + t;
        let d = half * one_t + half * x * (f32x8::splat(1.0) - t * t) * du;
        (half * x * one_t, d)
    } else {
        let (cdf, pdf) = phi8(x);
        (x * cdf, x.mul_add(pdf, cdf))
    }
}

/// Applies `f` to `v` in place, eight lanes at a time (the tail padded with zeros).
#[inline(always)]
fn map8(v: &mut [f32], f: impl Fn(f32x8) -> f32x8) {
    let mut chunks = v.chunks_exact_mut(8);
    for c in &mut chunks {
        let r = f(f32x8::from(<[f32; 8]>::try_from(&*c).unwrap_or([0.0; 8])));
        c.copy_from_slice(&r.to_array());
    }
    let rest = chunks.into_remainder();
    if !rest.is_empty() {
        let mut a = [0.0f32; 8];
        a[..rest.len()].copy_from_slice(rest);
        let r = f(f32x8::from(a)).to_array();
        rest.copy_from_slice(&r[..rest.len()]);
    }
}

/// Runs `body` in a build for the best ISA of this CPU (the same code; AVX2 lets the compiler
/// use whole 256-bit registers for the eight lanes).
#[inline(always)]
fn dispatch(body: impl FnOnce()) {
    crate::isa::vectorized(body)
}

/// Which x86 build of the kernels in [`x86`] this CPU runs (the same bits as the portable
/// code): none, AVX2, or AVX-512.
#[cfg(x86_detect)]
#[derive(Clone, Copy, PartialEq)]
enum X86 {
    None,
    Avx2,
    Avx512,
}

#[cfg(x86_detect)]
fn x86() -> X86 {
    match crate::isa::isa() {
        crate::isa::Isa::Avx2Fma if std::is_x86_feature_detected!("avx512f") => X86::Avx512,
        crate::isa::Isa::Avx2Fma => X86::Avx2,
        crate::isa::Isa::Base => X86::None,
    }
}

/// `v[i] = e^{v[i] − shift}`; returns the sum of the results (a softmax row's denominator).
pub fn exp_shifted(v: &mut [f32], shift: f32) -> f32 {
    #[cfg(x86_detect)]
    if x86() != X86::None {
        // SAFETY: `isa()` reported AVX2 and FMA.
        return unsafe { x86::exp_shifted_avx2(v, shift) };
    }
    exp_shifted_portable(v, shift)
}

/// [`exp_shifted`] in `wide`'s lanes.
fn exp_shifted_portable(v: &mut [f32], shift: f32) -> f32 {
    let mut sum = 0.0;
    dispatch(|| {
        let s = f32x8::splat(shift);
        let mut acc = f32x8::splat(0.0);
        let mut chunks = v.chunks_exact_mut(8);
        for c in &mut chunks {
            let r = exp8(f32x8::from(<[f32; 8]>::try_from(&*c).unwrap_or([0.0; 8])) - s);
            acc += r;
            c.copy_from_slice(&r.to_array());
        }
        sum = acc.reduce_add();
        for x in chunks.into_remainder() {
            let r = exp8(f32x8::splat(*x - shift)).to_array()[0];
            *x = r;
            sum += r;
        }
    });
    sum
}

/// GELU in place: `v[i] = v[i]·Φ(v[i])` (or the tanh form).
pub fn gelu(v: &mut [f32], tanh: bool) {
    #[cfg(x86_detect)]
    match x86() {
        // SAFETY: the CPU reported AVX-512F (and AVX2, FMA).
        X86::Avx512 => return unsafe { x86::gelu_avx512(v, tanh) },
        // SAFETY: `isa()` reported AVX2 and FMA.
        X86::Avx2 => return unsafe { x86::gelu_avx2(v, tanh) },
        X86::None => {}
    }
    dispatch(|| map8(v, |x| gelu8(x, tanh).0));
}

/// GELU's derivative in place: `v[i] = gelu'(v[i])`.
pub fn gelu_slope(v: &mut [f32], tanh: bool) {
    #[cfg(x86_detect)]
    match x86() {
        // SAFETY: the CPU reported AVX-512F (and AVX2, FMA).
        X86::Avx512 => return unsafe { x86::gelu_slope_avx512(v, tanh) },
        // SAFETY: `isa()` reported AVX2 and FMA.
        X86::Avx2 => return unsafe { x86::gelu_slope_avx2(v, tanh) },
        X86::None => {}
    }
    dispatch(|| map8(v, |x| gelu8(x, tanh).1));
}

/// GELU value and derivative: `v[i] = gelu(v[i])`, `d[i] = gelu'(v[i])` (`d` as long as `v`).
pub fn gelu_with_slope(v: &mut [f32], d: &mut [f32], tanh: bool) -> crate::Result<()> {
    crate::check_len("GELU derivative", v.len(), d.len())?;
    #[cfg(x86_detect)]
    match x86() {
        X86::Avx512 => {
            // SAFETY: the CPU reported AVX-512F (and AVX2, FMA).
            unsafe { x86::gelu_with_slope_avx512(v, d, tanh) };
            return Ok(());
        }
        X86::Avx2 => {
            // SAFETY: `isa()` reported AVX2 and FMA.
            unsafe { x86::gelu_with_slope_avx2(v, d, tanh) };
            return Ok(());
        }
        X86::None => {}
    }
    dispatch(|| {
        for (vc, dc) in v.chunks_mut(8).zip(d.chunks_mut(8)) {
            let mut a = [0.0f32; 8];
            a[..vc.len()].copy_from_slice(vc);
            let (g, s) = gelu8(f32x8::from(a), tanh);
            vc.copy_from_slice(&g.to_array()[..vc.len()]);
            dc.copy_from_slice(&s.to_array()[..vc.len()]);
        }
    });
    Ok(())
}
