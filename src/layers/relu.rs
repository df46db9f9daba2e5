//! ReLU. Saves one bit per element — whether the output is positive — never the output itself.

use dropit_simd::mask::{apply_mask, relu_forward};

use super::{Bwd, Fwd};
use crate::error::Result;
use crate::shape::Shape;

/// `ReLU()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Relu;

impl Relu {
    pub(crate) fn out_shape(&self, _name: &str, x: Shape) -> Result<Shape> {
        Ok(x)
    }

    pub(crate) fn param_count(&self) -> usize {
        0
    }

    pub(crate) fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        f.y.copy_from_slice(f.x);
        // In evaluation the mask is written too (its space is planned anyway) and never read.
        let bits = &mut f.saved[..dropit_simd::mask::mask_words(f.y.len())];
        Ok(relu_forward(f.y, bits)?)
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let bits = &b.saved[..dropit_simd::mask::mask_words(b.dy.len())];
        if b.acc {
            for (i, (d, &g)) in b.dx.iter_mut().zip(b.dy).enumerate() {
                if (bits[i / 64] >> (i % 64)) & 1 == 1 {
                    *d += g;
                }
            }
            Ok(())
        } else {
            Ok(apply_mask(b.dy, bits, b.dx)?)
        }
    }
}
