//! `[h, w, c]` → `[1, 1, h·w·c]`. NHWC order is already the flat order, so forward is one copy
//! into the output buffer (the planner gives every tensor its own), and backward one copy back.

use super::contract::{Dims, Needs, Op};
use super::{Bwd, Fwd, not_in_place, put};
use crate::error::Result;
use crate::shape::Shape;

/// `Flatten()`. (Channels-last order: a checkpoint's first Linear after a flatten differs from
/// PyTorch's NCHW flatten by a permutation of its input features.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Flatten;

impl Op for Flatten {
    const KIND: &'static str = "Flatten";

    fn out_shape(&self, _name: &str, x: Shape) -> Result<Shape> {
        Ok(Shape::flat(x.numel()))
    }

    fn needs(&self, _d: &Dims) -> Needs {
        Needs::none()
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        f.y.copy_from_slice(not_in_place(f.x, Self::KIND)?);
        Ok(())
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let (acc, dy) = (b.acc, not_in_place(b.dy, Self::KIND)?);
        for (d, &g) in b.dx.iter_mut().flat_map(|d| d.iter_mut()).zip(dy) {
            put(d, g, acc);
        }
        Ok(())
    }
}
