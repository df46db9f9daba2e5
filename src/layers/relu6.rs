//! ReLU6, `min(max(x, 0), 6)` (MobileNets). Saves one bit per element — whether the input lay
//! strictly inside (0, 6), where the gradient passes — never the output itself.

use super::contract::{Dims, Mode, Needs, Op, Rebuild};
use super::par::{each, elem_chunk};
use super::{Bwd, Fwd, Rb, mask_backward, rebuild_elementwise};
use crate::error::Result;
use crate::shape::Shape;
use dropit_simd::mask::relu6_forward;

/// `ReLU6()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Relu6;

/// `min(max(v, 0), 6)`, NaN passed on (as PyTorch's clamp does).
#[inline(always)]
fn clamp6(v: f32) -> f32 {
    if v.is_nan() { v } else { v.clamp(0.0, 6.0) }
}

impl Op for Relu6 {
    const KIND: &'static str = "ReLU6";

    fn out_shape(&self, _name: &str, x: Shape) -> Result<Shape> {
        Ok(x)
    }

    /// One bit per element; PyTorch keeps the f32 input.
    fn needs(&self, d: &Dims) -> Needs {
        Needs::one_bit_mask(d.y_elems())
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let c = elem_chunk(f.y.len(), f.threads);
        let bits: &mut [u64] = match f.mode {
            Mode::Frozen => &mut [],
            _ => f.saved.bits(0)?,
        };
        let masks = bits
            .chunks_mut(c / 64)
            .map(Some)
            .chain(core::iter::repeat_with(|| None));
        each(
            f.y.chunks_mut(c).zip(f.x.chunks(c)).zip(masks),
            |((y, x), bits)| {
                if let Some(x) = x {
                    y.copy_from_slice(x);
                }
                let Some(bits) = bits else {
                    y.iter_mut().for_each(|v| *v = clamp6(*v));
                    return Ok(());
                };
                // The gradient passes where 0 < x < 6 (PyTorch's hardtanh backward); NaN blocks.
                Ok(relu6_forward(y, bits)?)
            },
        )
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        mask_backward(b, Self::KIND)
    }

    /// min(max(x, 0), 6) of the rebuilt input.
    fn rebuilds(&self) -> Rebuild {
        Rebuild::FromInput
    }

    fn rebuild(&self, r: &mut Rb<'_, '_>) -> Result<()> {
        rebuild_elementwise(r, clamp6)
    }
}
