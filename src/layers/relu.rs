//! ReLU. Saves one bit per element — whether the output is positive — never the output itself.

use dropit_simd::mask::{apply_mask, mask_in_place, mask_words, relu_forward};

use super::par::{each, elem_chunk};
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
        let c = elem_chunk(f.y.len(), f.threads);
        let (x, inplace) = (f.x, f.inplace);
        let xs = x.chunks(c).chain(core::iter::repeat(&[][..]));
        if f.saved.is_empty() {
            // Nothing planned to keep (a frozen layer): max(x, 0) alone.
            return each(f.y.chunks_mut(c).zip(xs), |(y, x)| {
                if !inplace {
                    y.copy_from_slice(x);
                }
                y.iter_mut()
                    .for_each(|v| *v = if *v > 0.0 || v.is_nan() { *v } else { 0.0 });
                Ok(())
            });
        }
        // In evaluation the mask is written too (its space is planned anyway) and never read.
        let bits = &mut f.saved[..mask_words(f.y.len())];
        each(
            f.y.chunks_mut(c).zip(xs).zip(bits.chunks_mut(c / 64)),
            |((y, x), b)| {
                if !inplace {
                    y.copy_from_slice(x);
                }
                Ok(relu_forward(y, b)?)
            },
        )
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let c = elem_chunk(b.dx.len(), b.threads);
        let bits = &b.saved[..mask_words(b.dx.len())];
        if b.inplace {
            return each(b.dx.chunks_mut(c).zip(bits.chunks(c / 64)), |(d, bits)| {
                Ok(mask_in_place(d, bits)?)
            });
        }
        let acc = b.acc;
        each(
            b.dy.chunks(c)
                .zip(b.dx.chunks_mut(c))
                .zip(bits.chunks(c / 64)),
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
