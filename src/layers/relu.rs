//! ReLU. Saves one bit per element — whether the output is positive — never the output itself.

use dropit_simd::mask::{apply_mask, mask_in_place, relu_forward};

use super::contract::{Dims, Elem, Entry, Mode, Needs, Op};
use super::par::{each, elem_chunk};
use super::{Bwd, Fwd, planner_bug};
use crate::error::Result;
use crate::shape::Shape;

/// `ReLU()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relu;

impl Op for Relu {
    const KIND: &'static str = "ReLU";

    fn out_shape(&self, _name: &str, x: Shape) -> Result<Shape> {
        Ok(x)
    }

    /// One bit per output; PyTorch keeps the f32 output.
    fn needs(&self, d: &Dims) -> Needs {
        Needs::none()
            .save(Entry::new("1-bit mask", Elem::Bit, d.y_elems()))
            .in_place(true)
            .torch(4 * d.y_elems())
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let c = elem_chunk(f.y.len(), f.threads);
        if f.mode == Mode::Frozen {
            // Nothing planned to keep: max(x, 0) alone.
            return each(f.y.chunks_mut(c).zip(f.x.chunks(c)), |(y, x)| {
                if let Some(x) = x {
                    y.copy_from_slice(x);
                }
                y.iter_mut()
                    .for_each(|v| *v = if *v > 0.0 || v.is_nan() { *v } else { 0.0 });
                Ok(())
            });
        }
        // In evaluation the mask is written too (its space is planned anyway) and never read.
        let bits = f.saved.bits(0)?;
        each(
            f.y.chunks_mut(c)
                .zip(f.x.chunks(c))
                .zip(bits.chunks_mut(c / 64)),
            |((y, x), b)| {
                if let Some(x) = x {
                    y.copy_from_slice(x);
                }
                Ok(relu_forward(y, b)?)
            },
        )
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let bits = b.saved.bits(0)?;
        let (dy, acc) = (b.dy.buf(), b.acc);
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        let c = elem_chunk(dx.len(), b.threads);
        let Some(dy) = dy else {
            return each(dx.chunks_mut(c).zip(bits.chunks(c / 64)), |(d, bits)| {
                Ok(mask_in_place(d, bits)?)
            });
        };
        if dy.len() != dx.len() {
            return Err(planner_bug(Self::KIND, "dY and dX differ in length"));
        }
        each(
            dy.chunks(c).zip(dx.chunks_mut(c)).zip(bits.chunks(c / 64)),
            |((dy, dx), bits)| {
                if !acc {
                    return Ok(apply_mask(dy, bits, dx)?);
                }
                for (i, (d, &g)) in dx.iter_mut().zip(dy).enumerate() {
                    if (bits[i / 64] >> (i % 64)) & 1 == 1 {
                        *d += g;
                    }
                }
                Ok(())
            },
        )
    }
}
