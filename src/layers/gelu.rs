//! GELU, `x·Φ(x)`, exact (erf) or with PyTorch's tanh approximation. Saves its input — the
//! derivative needs `x` itself, not only its sign — or, when lean, the derivative as one byte.

use dropit_simd::act;

use super::par::{each, elem_chunk};
use super::{Bwd, Fwd, put};
use crate::error::Result;
use crate::shape::Shape;

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

    pub(crate) fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let c = elem_chunk(f.y.len(), f.threads);
        let len = f.y.len();
        let tanh = self.tanh;
        // In place, `y` holds the input and `x` is empty.
        let xs = f.x.chunks(c).chain(core::iter::repeat(&[][..]));
        let load = |y: &mut [f32], x: &[f32]| {
            if !x.is_empty() {
                y.copy_from_slice(x);
            }
        };
        if f.saved.is_empty() {
            return each(f.y.chunks_mut(c).zip(xs), |(y, x)| {
                load(y, x);
                act::gelu(y, tanh);
                Ok(())
            });
        }
        if self.lean {
            let s: &mut [u8] = &mut bytemuck::cast_slice_mut(&mut *f.saved)[..len];
            each(
                f.y.chunks_mut(c).zip(xs).zip(s.chunks_mut(c)),
                |((y, x), s)| {
                    load(y, x);
                    let mut d = [0.0f32; TILE];
                    for (y, s) in y.chunks_mut(TILE).zip(s.chunks_mut(TILE)) {
                        let d = &mut d[..y.len()];
                        act::gelu_with_slope(y, d, tanh)?;
                        s.iter_mut().zip(d).for_each(|(s, d)| *s = slope_code(*d));
                    }
                    Ok(())
                },
            )
        } else {
            let s: &mut [f32] = &mut bytemuck::cast_slice_mut(&mut *f.saved)[..len];
            each(
                f.y.chunks_mut(c).zip(xs).zip(s.chunks_mut(c)),
                |((y, x), s)| {
                    load(y, x);
                    s.copy_from_slice(y);
                    act::gelu(y, tanh);
                    Ok(())
                },
            )
        }
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let len = b.dx.len();
        let tanh = self.tanh;
        if self.lean {
            let s: &[u8] = &bytemuck::cast_slice(b.saved)[..len];
            Self::bwd(b, s, |s, d| {
                d.iter_mut().zip(s).for_each(|(d, &c)| *d = slope_of(c))
            })
        } else {
            let s: &[f32] = &bytemuck::cast_slice(b.saved)[..len];
            Self::bwd(b, s, |s, d| {
                d.copy_from_slice(s);
                act::gelu_slope(d, tanh);
            })
        }
    }

    /// `dx = dy · gelu'`, the derivatives decoded from what was saved a tile at a time.
    fn bwd<S: Sync>(
        b: &mut Bwd<'_>,
        saved: &[S],
        slopes: impl Fn(&[S], &mut [f32]) + Sync + Send,
    ) -> Result<()> {
        let c = elem_chunk(b.dx.len(), b.threads);
        // In place, `dx` holds dy and `dy` is empty.
        let (acc, inplace) = (b.acc && !b.inplace, b.inplace);
        let dys = b.dy.chunks(c).chain(core::iter::repeat(&[][..]));
        each(
            b.dx.chunks_mut(c).zip(dys).zip(saved.chunks(c)),
            |((dx, dy), s)| {
                let mut d = [0.0f32; TILE];
                for (k, (dx, s)) in dx.chunks_mut(TILE).zip(s.chunks(TILE)).enumerate() {
                    let d = &mut d[..dx.len()];
                    slopes(s, d);
                    for (j, (x, slope)) in dx.iter_mut().zip(&*d).enumerate() {
                        let g = if inplace { *x } else { dy[k * TILE + j] };
                        put(x, g * slope, acc);
                    }
                }
                Ok(())
            },
        )
    }
}

/// Elements per stack tile of derivatives.
const TILE: usize = 256;

/// Lean GELU keeps the derivative, not the input, as one byte: `gelu'` lies in
/// [−0.129, 1.129], so levels `(code − 26) / 200` cover it with 0 and 1 exact and an error of
/// at most 1/400 — finer than what a bf16 input gives through `gelu''`, at half the bytes.
fn slope_code(d: f32) -> u8 {
    libm::roundf(d * 200.0 + 26.0).clamp(0.0, 255.0) as u8
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
        for tanh in [false, true] {
            for i in -12_000..12_000 {
                let x = i as f32 / 1000.0;
                let d = dropit_simd::reference::gelu(x, tanh).1;
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
