//! 1-bit masks: what ReLU (and dropout) keep for backward instead of a whole tensor.
//!
//! Bit `i % 64` of word `i / 64` belongs to element `i`; bits past the end are zero.

use wide::{f32x8, i32x8};

use crate::{Result, check_len};

/// Words needed for a mask of `n` elements.
pub const fn mask_words(n: usize) -> usize {
    n.div_ceil(64)
}

#[inline(always)]
fn load8(x: &[f32]) -> f32x8 {
    let a: [f32; 8] = x[..8].try_into().unwrap();
    f32x8::from(a)
}

/// Sets bit `i` of `bits` when `x[i] > 0` (NaN and ±0 give 0).
pub fn positive_mask(x: &[f32], bits: &mut [u64]) -> Result<()> {
    check_len("mask words", mask_words(x.len()), bits.len())?;
    let zero = f32x8::splat(0.0);
    for (w, xs) in bits.iter_mut().zip(x.chunks(64)) {
        let mut word = 0u64;
        let mut chunks = xs.chunks_exact(8);
        for (j, c) in (&mut chunks).enumerate() {
            word |= (load8(c).simd_gt(zero).to_bitmask() as u64) << (8 * j);
        }
        let done = xs.len() - chunks.remainder().len();
        for (j, &v) in chunks.remainder().iter().enumerate() {
            word |= ((v > 0.0) as u64) << (done + j);
        }
        *w = word;
    }
    Ok(())
}

/// ReLU forward in place, recording the mask: `x[i] = max(x[i], 0)`, bit `i` = `x[i] > 0`.
/// NaN passes through unchanged (with bit 0), so the loss check still sees it.
pub fn relu_forward(x: &mut [f32], bits: &mut [u64]) -> Result<()> {
    check_len("mask words", mask_words(x.len()), bits.len())?;
    // One pass: the tensor is usually larger than the caches, so mask and clamp together.
    let zero = f32x8::splat(0.0);
    for (w, xs) in bits.iter_mut().zip(x.chunks_mut(64)) {
        let mut word = 0u64;
        let done = xs.len() / 8 * 8;
        let mut chunks = xs.chunks_exact_mut(8);
        for (j, c) in (&mut chunks).enumerate() {
            let v = load8(c);
            word |= (v.simd_gt(zero).to_bitmask() as u64) << (8 * j);
            // v ≤ 0 → 0; NaN (not ≤ 0) passes through.
            c.copy_from_slice(&v.simd_le(zero).bitselect(zero, v).to_array());
        }
        for (j, v) in chunks.into_remainder().iter_mut().enumerate() {
            word |= ((*v > 0.0) as u64) << (done + j);
            if *v <= 0.0 {
                *v = 0.0;
            }
        }
        *w = word;
    }
    Ok(())
}

/// ReLU6 forward in place, recording the mask: `x[i] = min(max(x[i], 0), 6)`, bit `i` =
/// `0 < x[i] < 6` (where the gradient passes, as PyTorch's hardtanh backward). NaN passes
/// through unchanged (with bit 0).
pub fn relu6_forward(x: &mut [f32], bits: &mut [u64]) -> Result<()> {
    check_len("mask words", mask_words(x.len()), bits.len())?;
    let (zero, six) = (f32x8::splat(0.0), f32x8::splat(6.0));
    for (w, xs) in bits.iter_mut().zip(x.chunks_mut(64)) {
        let mut word = 0u64;
        let done = xs.len() / 8 * 8;
        let mut chunks = xs.chunks_exact_mut(8);
        for (j, c) in (&mut chunks).enumerate() {
            let v = load8(c);
            let inside = v.simd_gt(zero) & v.simd_lt(six);
            word |= (inside.to_bitmask() as u64) << (8 * j);
            // v ≤ 0 → 0, v ≥ 6 → 6; NaN (neither) passes through.
            let v = v.simd_le(zero).bitselect(zero, v);
            let v = v.simd_ge(six).bitselect(six, v);
            c.copy_from_slice(&v.to_array());
        }
        for (j, v) in chunks.into_remainder().iter_mut().enumerate() {
            word |= ((*v > 0.0 && *v < 6.0) as u64) << (done + j);
            if !v.is_nan() {
                *v = v.clamp(0.0, 6.0);
            }
        }
        *w = word;
    }
    Ok(())
}

/// Lane `j` of the result is all ones when bit `j` of `byte` is set.
#[inline(always)]
fn lanes(byte: u64) -> i32x8 {
    let sel = i32x8::new([1, 2, 4, 8, 16, 32, 64, 128]);
    (i32x8::splat(byte as i32) & sel).simd_eq(sel)
}

/// `dx[i] = dy[i]` where bit `i` is set, else 0 (ReLU backward).
pub fn apply_mask(dy: &[f32], bits: &[u64], dx: &mut [f32]) -> Result<()> {
    check_len("mask words", mask_words(dy.len()), bits.len())?;
    check_len("masked gradient", dy.len(), dx.len())?;
    for ((&w, d), o) in bits.iter().zip(dy.chunks(64)).zip(dx.chunks_mut(64)) {
        let mut dc = d.chunks_exact(8);
        let mut oc = o.chunks_exact_mut(8);
        for (j, (d8, o8)) in (&mut dc).zip(&mut oc).enumerate() {
            let keep: f32x8 = bytemuck::cast(lanes(w >> (8 * j)));
            let r = load8(d8) & keep;
            o8.copy_from_slice(&r.to_array());
        }
        let done = d.len() - dc.remainder().len();
        for (j, (&v, out)) in dc.remainder().iter().zip(oc.into_remainder()).enumerate() {
            *out = if (w >> (done + j)) & 1 == 1 { v } else { 0.0 };
        }
    }
    Ok(())
}

/// `d[i] = 0` where bit `i` is clear (ReLU backward in place).
pub fn mask_in_place(d: &mut [f32], bits: &[u64]) -> Result<()> {
    check_len("mask words", mask_words(d.len()), bits.len())?;
    for (&w, d) in bits.iter().zip(d.chunks_mut(64)) {
        let len = d.len();
        let mut dc = d.chunks_exact_mut(8);
        for (j, d8) in (&mut dc).enumerate() {
            let keep: f32x8 = bytemuck::cast(lanes(w >> (8 * j)));
            let r = load8(d8) & keep;
            d8.copy_from_slice(&r.to_array());
        }
        let done = len - dc.into_remainder().len();
        for (j, v) in d[done..].iter_mut().enumerate() {
            if (w >> (done + j)) & 1 == 0 {
                *v = 0.0;
            }
        }
    }
    Ok(())
}

/// Number of set bits: how many elements a mask keeps.
pub fn count_ones(bits: &[u64]) -> usize {
    bits.iter().map(|w| w.count_ones() as usize).sum()
}
