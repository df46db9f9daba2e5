//! Elementwise sum of two tensors of one shape: the join of a residual connection.

use super::contract::{Dims, Needs, Op};
use super::par::{each, elem_chunk};
use super::{Bwd, Fwd, planner_bug, put};
use crate::error::Result;
use crate::shape::Shape;

/// `a + b`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Add;

impl Op for Add {
    const KIND: &'static str = "Add";

    fn arity(&self) -> usize {
        2
    }

    fn out_shape(&self, _name: &str, x: Shape) -> Result<Shape> {
        Ok(x)
    }

    /// Saves nothing; runs in place over its first input.
    fn needs(&self, _d: &Dims) -> Needs {
        Needs::none().in_place(true)
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let c = elem_chunk(f.y.len(), f.threads);
        let b =
            f.x2.ok_or_else(|| planner_bug(Self::KIND, "no second input"))?;
        each(
            f.y.chunks_mut(c).zip(f.x.chunks(c)).zip(b.chunks(c)),
            |((y, a), b)| {
                match a {
                    None => y.iter_mut().zip(b).for_each(|(y, b)| *y += b),
                    Some(a) => y
                        .iter_mut()
                        .zip(a)
                        .zip(b)
                        .for_each(|((y, a), b)| *y = a + b),
                }
                Ok(())
            },
        )
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let (acc, acc2, t) = (b.acc, b.acc2, b.threads);
        match (b.dy.buf(), b.dx.as_deref_mut(), b.dx2.as_deref_mut()) {
            // In place: dY is in dX already.
            (None, Some(dx), dx2) => copy_grad(dx, dx2, acc2, t),
            (None, None, _) => Err(planner_bug(Self::KIND, "in place without dX")),
            (Some(dy), dx, dx2) => {
                copy_grad(dy, dx, acc, t)?;
                copy_grad(dy, dx2, acc2, t)
            }
        }
    }
}

/// `dx = dy` (or `+=`), by worker groups; nothing when no gradient is wanted.
fn copy_grad(dy: &[f32], dx: Option<&mut [f32]>, acc: bool, threads: usize) -> Result<()> {
    let Some(dx) = dx else {
        return Ok(());
    };
    let c = elem_chunk(dy.len(), threads);
    each(dx.chunks_mut(c).zip(dy.chunks(c)), |(dx, dy)| {
        for (d, &g) in dx.iter_mut().zip(dy) {
            put(d, g, acc);
        }
        Ok(())
    })
}
