//! GELU, `x·Φ(x)`, exact (erf) or with PyTorch's tanh approximation. Saves its input (bf16 when
//! lean): the derivative needs `x` itself, not only its sign.

use dropit_simd::format::Value;
use half::bf16;

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
    /// Keep the input for backward as bf16.
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
                self.fwd::<f32>(y, x, &mut [])
            });
        }
        if self.lean {
            let s: &mut [bf16] = &mut bytemuck::cast_slice_mut(&mut *f.saved)[..len];
            each(
                f.y.chunks_mut(c).zip(xs).zip(s.chunks_mut(c)),
                |((y, x), s)| self.fwd(y, x, s),
            )
        } else {
            let s: &mut [f32] = &mut bytemuck::cast_slice_mut(&mut *f.saved)[..len];
            each(
                f.y.chunks_mut(c).zip(xs).zip(s.chunks_mut(c)),
                |((y, x), s)| self.fwd(y, x, s),
            )
        }
    }

    /// `y = gelu(x)` (of `y` itself when `x` is empty), keeping the input in `saved` unless it
    /// is empty.
    fn fwd<V: Value>(&self, y: &mut [f32], x: &[f32], saved: &mut [V]) -> Result<()> {
        for (j, y) in y.iter_mut().enumerate() {
            let v = if x.is_empty() { *y } else { x[j] };
            if let Some(s) = saved.get_mut(j) {
                *s = V::from_f32(v);
            }
            *y = self.eval(v).0;
        }
        Ok(())
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let len = b.dx.len();
        if self.lean {
            let s: &[bf16] = &bytemuck::cast_slice(b.saved)[..len];
            self.bwd(b, s)
        } else {
            let s: &[f32] = &bytemuck::cast_slice(b.saved)[..len];
            self.bwd(b, s)
        }
    }

    fn bwd<V: Value + Sync>(&self, b: &mut Bwd<'_>, saved: &[V]) -> Result<()> {
        let c = elem_chunk(b.dx.len(), b.threads);
        // In place, `dx` holds dy and `dy` is empty.
        let (acc, inplace) = (b.acc && !b.inplace, b.inplace);
        let dys = b.dy.chunks(c).chain(core::iter::repeat(&[][..]));
        each(
            b.dx.chunks_mut(c).zip(dys).zip(saved.chunks(c)),
            |((dx, dy), s)| {
                for (j, (d, x)) in dx.iter_mut().zip(s).enumerate() {
                    let g = if inplace { *d } else { dy[j] };
                    put(d, g * self.eval(x.to_f32()).1, acc);
                }
                Ok(())
            },
        )
    }
}
