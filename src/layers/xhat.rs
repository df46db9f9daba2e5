//! How a batch or layer norm keeps its normalized input x̂ for backward: f32, bf16 (lean), or
//! 8-bit codes with one scale per normalization group (lean, 8-bit) — per channel for batch
//! norm, whose x̂ is normalized over a channel, per row for layer norm, whose x̂ is normalized
//! over a row. As ActNN and GACT do: x̂ ≈ code · scale, the scale the group's largest |x̂| / 127,
//! codes rounded to nearest.

use half::bf16;

use super::contract::{Elem, Entry};

/// The form of a kept x̂.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// f32: exact.
    F32,
    /// bf16 (`lean`).
    Bf16,
    /// One signed byte per element and one f32 scale per group (`lean` with 8-bit norms).
    Int8,
}

impl Form {
    /// The form of a norm with these settings.
    pub fn of(lean: bool, int8: bool) -> Self {
        match (lean, int8) {
            (false, _) => Form::F32,
            (true, false) => Form::Bf16,
            (true, true) => Form::Int8,
        }
    }

    /// The saved entry of `len` elements.
    pub fn entry(self, len: usize) -> Entry {
        match self {
            Form::F32 => Entry::new("normalized f32", Elem::F32, len),
            Form::Bf16 => Entry::new("normalized bf16", Elem::Bf16, len),
            Form::Int8 => Entry::new("normalized int8", Elem::Byte, len),
        }
    }
}

/// An element of a kept x̂, without its group's scale.
pub(crate) trait Code: Copy + Send + Sync + bytemuck::Pod {
    /// The code of `v` for a group whose scale has inverse `inv_scale` (ignored by the float
    /// forms).
    fn encode(v: f32, inv_scale: f32) -> Self;
    /// Back to f32, still to be multiplied by the group's scale (1 for the float forms).
    fn decode(self) -> f32;

    /// Layer norm's forward on one row: `h = (x − mean)·inv` kept as codes, `y = γ·h + β`
    /// (`x` is `src`, or `y` in place). The float forms run `dropit_simd::norm::normalize_row`,
    /// which gives these bits eight channels at a time.
    #[allow(clippy::too_many_arguments)]
    fn normalize_row(
        src: Option<&[f32]>,
        y: &mut [f32],
        h: &mut [Self],
        (mean, inv, inv_scale): (f32, f32, f32),
        gamma: &[f32],
        beta: &[f32],
    ) -> crate::error::Result<()> {
        for (i, (yv, hv)) in y.iter_mut().zip(h).enumerate() {
            let v = (src.map_or(*yv, |x| x[i]) - mean) * inv;
            *hv = Self::encode(v, inv_scale);
            *yv = gamma[i] * v + beta[i];
        }
        Ok(())
    }

    /// [`ln_backward_scalar`]; the float forms run `dropit_simd::norm::ln_backward`, which
    /// gives its bits eight rows at a time.
    #[allow(clippy::too_many_arguments)]
    fn ln_backward(
        dy: &[f32],
        h: &[Self],
        gamma: &[f32],
        rows: (&[f32], Option<&[f32]>),
        sums: (&mut [f64], &mut [f64]),
        dx: Option<&mut [f32]>,
        acc: bool,
    ) -> crate::error::Result<()> {
        ln_backward_scalar(dy, h, gamma, rows, sums, dx, acc)
    }
}

/// Layer norm's backward over the rows of one worker: adds each channel's `Σ dy·x̂` and `Σ dy`
/// onto `dg`, `db`; writes (or, with `acc`, adds) dX from the row sums of `ĝ = dy·γ` and
/// `ĝ·x̂`: `dx = inv/C · (C·ĝ − Σĝ − x̂·Σĝ·x̂)`. `scale` holds each row's code scale (8-bit).
#[allow(clippy::too_many_arguments)]
pub(crate) fn ln_backward_scalar<V: Code>(
    dy: &[f32],
    h: &[V],
    gamma: &[f32],
    (inv, scale): (&[f32], Option<&[f32]>),
    (dg, db): (&mut [f64], &mut [f64]),
    mut dx: Option<&mut [f32]>,
    acc: bool,
) -> crate::error::Result<()> {
    let c = gamma.len();
    for (r, (dr, hr)) in dy.chunks_exact(c).zip(h.chunks_exact(c)).enumerate() {
        let (mut sg, mut sgx) = (0.0f64, 0.0f64);
        let row_scale = scale.map_or(1.0, |s| s[r]);
        for i in 0..c {
            let hv = hr[i].decode() * row_scale;
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
                let hv = hr[i].decode() * row_scale;
                let v = k * (c as f32 * g - sg as f32 - hv * sgx as f32);
                super::put(&mut dx[r * c + i], v, acc);
            }
        }
    }
    Ok(())
}

/// The float forms' rows through the vector kernels.
macro_rules! float_rows {
    () => {
        fn ln_backward(
            dy: &[f32],
            h: &[Self],
            gamma: &[f32],
            (inv, _): (&[f32], Option<&[f32]>),
            (dg, db): (&mut [f64], &mut [f64]),
            dx: Option<&mut [f32]>,
            acc: bool,
        ) -> crate::error::Result<()> {
            Ok(dropit_simd::norm::ln_backward(
                dy, h, gamma, inv, dg, db, dx, acc,
            )?)
        }

        fn normalize_row(
            src: Option<&[f32]>,
            y: &mut [f32],
            h: &mut [Self],
            (mean, inv, _): (f32, f32, f32),
            gamma: &[f32],
            beta: &[f32],
        ) -> crate::error::Result<()> {
            Ok(dropit_simd::norm::normalize_row(
                src, y, h, mean, inv, gamma, beta,
            )?)
        }
    };
}

impl Code for f32 {
    #[inline(always)]
    fn encode(v: f32, _: f32) -> Self {
        v
    }
    #[inline(always)]
    fn decode(self) -> f32 {
        self
    }
    float_rows!();
}

impl Code for bf16 {
    #[inline(always)]
    fn encode(v: f32, _: f32) -> Self {
        bf16::from_f32(v)
    }
    #[inline(always)]
    fn decode(self) -> f32 {
        self.to_f32()
    }
    float_rows!();
}

/// Largest code magnitude.
const Q: f32 = 127.0;

impl Code for i8 {
    /// Rounded to nearest and clamped to ±127; NaN becomes 0 (a step with a NaN is skipped).
    #[inline(always)]
    fn encode(v: f32, inv_scale: f32) -> Self {
        libm::roundf(v * inv_scale).clamp(-Q, Q) as i8
    }
    #[inline(always)]
    fn decode(self) -> f32 {
        self as f32
    }
}

/// The scale of a group whose largest |x̂| is `max` (1 when that is 0 or not finite).
pub(crate) fn scale_for(max: f32) -> f32 {
    if max > 0.0 && max.is_finite() {
        max / Q
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_to_nearest_within_half_a_step() {
        let max = 3.7f32;
        let s = scale_for(max);
        for i in -1000..=1000 {
            let v = max * i as f32 / 1000.0;
            let q = i8::encode(v, 1.0 / s);
            assert!((q.decode() * s - v).abs() <= 0.5 * s * 1.0001, "{v}");
        }
        assert_eq!(i8::encode(max, 1.0 / s), 127);
        assert_eq!(i8::encode(-max, 1.0 / s), -127);
        assert_eq!(i8::encode(10.0 * max, 1.0 / s), 127);
        assert_eq!(i8::encode(f32::NAN, 1.0 / s), 0);
        assert_eq!(scale_for(0.0), 1.0);
        assert_eq!(scale_for(f32::INFINITY), 1.0);
        // The float forms are exact (bf16: its own rounding) and ignore the scale.
        assert_eq!(f32::encode(0.1, 7.0).decode(), 0.1);
        assert_eq!(bf16::encode(1.5, 7.0).decode(), 1.5);
    }
}
