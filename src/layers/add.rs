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
        let (a, inplace) = (f.x, f.inplace);
        let firsts = a.chunks(c).chain(core::iter::repeat(&[][..]));
        each(
            f.y.chunks_mut(c).zip(firsts).zip(f.x2.chunks(c)),
            |((y, a), b)| {
                if inplace {
                    y.iter_mut().zip(b).for_each(|(y, b)| *y += b);
                } else {
                    y.iter_mut()
                        .zip(a)
                        .zip(b)
                        .for_each(|((y, a), b)| *y = a + b);
                }
                Ok(())
            },
        )
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        if b.inplace {
            // dx already is dy: only the second input's gradient is written.
            return copy_grad(b.dx, b.dx2, b.acc2, b.threads);
        }
        copy_grad(b.dy, b.dx, b.acc, b.threads)?;
        copy_grad(b.dy, b.dx2, b.acc2, b.threads)
    }
}

/// `dx = dy` (or `+=`), by worker groups.
fn copy_grad(dy: &[f32], dx: &mut [f32], acc: bool, threads: usize) -> Result<()> {
    let c = elem_chunk(dy.len(), threads);
    each(dx.chunks_mut(c).zip(dy.chunks(c)), |(dx, dy)| {
        for (d, &g) in dx.iter_mut().zip(dy) {
            put(d, g, acc);
        }
        Ok(())
    })
}
