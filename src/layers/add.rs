//! Elementwise sum of two tensors of one shape: the join of a residual connection.

use super::par::{each, elem_chunk};
use super::{Bwd, Fwd, put};
use crate::error::Result;
use crate::shape::Shape;

/// `a + b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Add;

impl Add {
    pub(crate) fn out_shape(&self, _name: &str, x: Shape) -> Result<Shape> {
        Ok(x)
    }

    pub(crate) fn param_count(&self) -> usize {
        0
    }

    pub(crate) fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let c = elem_chunk(f.y.len(), f.threads);
        each(
            f.y.chunks_mut(c).zip(f.x.chunks(c)).zip(f.x2.chunks(c)),
            |((y, a), b)| {
                for ((y, a), b) in y.iter_mut().zip(a).zip(b) {
                    *y = a + b;
                }
                Ok(())
            },
        )
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let c = elem_chunk(b.dy.len(), b.threads);
        for (dx, acc) in [(&mut *b.dx, b.acc), (&mut *b.dx2, b.acc2)] {
            each(dx.chunks_mut(c).zip(b.dy.chunks(c)), |(dx, dy)| {
                for (d, &g) in dx.iter_mut().zip(dy) {
                    put(d, g, acc);
                }
                Ok(())
            })?;
        }
        Ok(())
    }
}
