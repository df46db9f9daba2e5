//! `[h, w, c]` → `[1, 1, h·w·c]`. In NHWC the data does not move.

use super::{Bwd, Fwd, put};
use crate::error::Result;
use crate::shape::Shape;

/// `Flatten()`. (Channels-last order: a checkpoint's first Linear after a flatten differs from
/// PyTorch's NCHW flatten by a permutation of its input features.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flatten;

impl Flatten {
    pub(crate) fn out_shape(&self, _name: &str, x: Shape) -> Result<Shape> {
        Ok(Shape::flat(x.numel()))
    }

    pub(crate) fn param_count(&self) -> usize {
        0
    }

    pub(crate) fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        f.y.copy_from_slice(f.x);
        Ok(())
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        for (d, &g) in b.dx.iter_mut().zip(b.dy) {
            put(d, g, b.acc);
        }
        Ok(())
    }
}
