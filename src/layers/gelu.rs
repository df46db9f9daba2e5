//! GELU, `x·Φ(x)`, exact (erf) or with PyTorch's tanh approximation. Saves its input — the
//! derivative needs `x` itself, not only its sign — or, when lean, the derivative as one byte.

use super::par::{each, elem_chunk};
use super::{Bwd, Fwd, put};
use crate::error::Result;
use crate::shape::Shape;

const SQRT_2_OVER_PI: f32 = 0.797_884_6;
const FRAC_1_SQRT_2: f32 = core::f32::consts::FRAC_1_SQRT_2;
const FRAC_1_SQRT_2PI: f32 = 0.398_942_3;

/// `GELU(approximate = "none" | "tanh")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Gelu {
    /// The tanh approximation instead of erf.
    pub tanh: bool,
    /// Keep the derivative for backward as a one-byte code instead of the f32 input.
    pub lean: bool,
}

impl Gelu {
    pub(crate) fn out_shape(&self, _name: &str, x: Shape) -> Result<Shape> {
        Ok(x)
    }

    pub(crate) fn param_count(&self) -> usize {
        0
    }

    /// (value, derivative) at `x`.
    #[inline]
    fn eval(&self, x: f32) -> (f32, f32) {
        if self.tanh {
            let u = SQRT_2_OVER_PI * (x + 0.044_715 * x * x * x);
            let t = libm::tanhf(u);
            let du = SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044_715 * x * x);
            (
                0.5 * x * (1.0 + t),
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du,
            )
        } else {
            let cdf = 0.5 * (1.0 + libm::erff(x * FRAC_1_SQRT_2));
            (
                x * cdf,
                cdf + x * FRAC_1_SQRT_2PI * libm::expf(-0.5 * x * x),
            )
        }
    }

    pub(crate) fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let c = elem_chunk(f.y.len(), f.threads);
        let len = f.y.len();
        // In place, `y` holds the input and `x` is empty.
        let xs = f.x.chunks(c).chain(core::iter::repeat(&[][..]));
        if f.saved.is_empty() {
            return each(f.y.chunks_mut(c).zip(xs), |(y, x)| {
                self.fwd(y, x, &mut [], |_: &mut f32, _, _| {})
            });
        }
        if self.lean {
            let s: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut *f.saved)[..len];
            each(
                f.y.chunks_mut(c).zip(xs).zip(s.chunks_mut(c)),
                |((y, x), s)| self.fwd(y, x, s, |s, _, d| *s = slope_code(d)),
            )
        } else {
            let s: &mut [f32] = &mut bytemuck::cast_slice_mut(&mut *f.saved)[..len];
            each(
                f.y.chunks_mut(c).zip(xs).zip(s.chunks_mut(c)),
                |((y, x), s)| self.fwd(y, x, s, |s, x, _| *s = x),
            )
        }
    }

    /// `y = gelu(x)` (of `y` itself when `x` is empty), keeping `keep(saved, x, gelu'(x))` per
    /// element where `saved` is not empty.
    fn fwd<S>(
        &self,
        y: &mut [f32],
        x: &[f32],
        saved: &mut [S],
        keep: impl Fn(&mut S, f32, f32),
    ) -> Result<()> {
        for (j, y) in y.iter_mut().enumerate() {
            let v = if x.is_empty() { *y } else { x[j] };
            let (g, d) = self.eval(v);
            if let Some(s) = saved.get_mut(j) {
                keep(s, v, d);
            }
            *y = g;
        }
        Ok(())
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let len = b.dx.len();
        if self.lean {
            let s: &[u8] = &bytemuck::cast_slice(b.saved)[..len];
            self.bwd(b, s, |&c| slope_of(c))
        } else {
            let s: &[f32] = &bytemuck::cast_slice(b.saved)[..len];
            self.bwd(b, s, |&x| self.eval(x).1)
        }
    }

    fn bwd<S: Sync>(
        &self,
        b: &mut Bwd<'_>,
        saved: &[S],
        slope: impl Fn(&S) -> f32 + Sync,
    ) -> Result<()> {
        let c = elem_chunk(b.dx.len(), b.threads);
        // In place, `dx` holds dy and `dy` is empty.
        let (acc, inplace) = (b.acc && !b.inplace, b.inplace);
        let dys = b.dy.chunks(c).chain(core::iter::repeat(&[][..]));
        each(
            b.dx.chunks_mut(c).zip(dys).zip(saved.chunks(c)),
            |((dx, dy), s)| {
                for (j, (d, k)) in dx.iter_mut().zip(s).enumerate() {
                    let g = if inplace { *d } else { dy[j] };
                    put(d, g * slope(k), acc);
                }
                Ok(())
            },
        )
    }
}

/// Lean GELU keeps the derivative, not the input, as one byte: `gelu'` lies in
/// [−0.129, 1.129], so levels `(code − 26) / 200` cover it with 0 and 1 exact and an error of
/// at most 1/400 — finer than what a bf16 input gives through `gelu''`, at half the bytes.
fn slope_code(d: f32) -> u8 {
    (d * 200.0 + 26.0).round().clamp(0.0, 255.0) as u8
}

/// The derivative a [`slope_code`] stands for.
fn slope_of(code: u8) -> f32 {
    (code as f32 - 26.0) / 200.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_codes_cover_the_derivative_within_a_four_hundredth() {
        for g in [
            Gelu::default(),
            Gelu {
                tanh: true,
                lean: true,
            },
        ] {
            for i in -12_000..12_000 {
                let x = i as f32 / 1000.0;
                let d = g.eval(x).1;
                let back = slope_of(slope_code(d));
                assert!(
                    (back - d).abs() <= 1.0 / 400.0 + 1e-6,
                    "x = {x}: {d} → {back}"
                );
            }
        }
        assert_eq!(slope_of(slope_code(0.0)), 0.0);
        assert_eq!(slope_of(slope_code(1.0)), 1.0);
    }
}
