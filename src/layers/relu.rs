//! ReLU. Saves one bit per element — whether the output is positive — never the output itself.

use dropit_simd::mask::relu_forward;

use super::contract::{Dims, Mode, Needs, Op, Rebuild};
use super::par::{each, elem_chunk};
use super::{Bwd, Fwd, Rb, mask_backward, rebuild_elementwise};
use crate::error::Result;
use crate::shape::Shape;

/// `ReLU()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Relu;

impl Op for Relu {
    const KIND: &'static str = "ReLU";

    fn out_shape(&self, _name: &str, x: Shape) -> Result<Shape> {
        Ok(x)
    }

    /// One bit per output; PyTorch keeps the f32 output.
    fn needs(&self, d: &Dims) -> Needs {
        Needs::one_bit_mask(d.y_elems())
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
        mask_backward(b, Self::KIND)
    }

    /// max(x, 0) of the rebuilt input.
    fn rebuilds(&self) -> Rebuild {
        Rebuild::FromInput
    }

    /// As `relu_forward`: x ≤ 0 (−0 too) becomes +0, NaN passes.
    fn rebuild(&self, r: &mut Rb<'_, '_>) -> Result<()> {
        rebuild_elementwise(r, |v| if v <= 0.0 { 0.0 } else { v })
    }
}
