//! Dropout. Saves one bit per element — kept or dropped — never a float mask.
//!
//! The mask is a hash of (seed, element index), the seed drawn from the trainer's seed, the step
//! and the node: the same for any number of workers, and the same when a step is repeated
//! (`loss_and_grads` twice gives the same mask, so finite differences see one function).

use super::contract::{Dims, Mode, Needs, Op, Rebuild};
use super::par::{each, elem_chunk};
use super::{Bwd, Fwd, Rb, planner_bug, put};
use crate::collections::msg;
use crate::error::{Result, config_err};
use crate::shape::Shape;

/// `Dropout(p)`: in training, zeroes each element with probability `p` and scales the rest by
/// `1 / (1 − p)`; in evaluation, the identity.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Dropout {
    /// Probability of dropping an element, in `[0, 1)`.
    pub p: f32,
}

impl Op for Dropout {
    const KIND: &'static str = "Dropout";

    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if !(0.0..1.0).contains(&self.p) {
            return config_err(name, msg!("dropout p = {} is not in [0, 1)", self.p));
        }
        Ok(x)
    }

    /// One bit per element; PyTorch keeps a mask of the output's size (counted as f32).
    fn needs(&self, d: &Dims) -> Needs {
        Needs::one_bit_mask(d.y_elems())
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        self.run_forward(f)
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        self.run_backward(b)
    }

    /// The rebuilt input under the kept mask.
    fn rebuilds(&self) -> Rebuild {
        Rebuild::FromInput
    }

    /// `x · 1/(1 − p)` where the mask is set, else 0, as forward computed it.
    fn rebuild(&self, r: &mut Rb<'_, '_>) -> Result<()> {
        let bits = r.saved.bits(0)?;
        if bits.len().saturating_mul(64) < r.at.saturating_add(r.y.len()) {
            return Err(planner_bug(
                Self::KIND,
                "the mask is shorter than the output",
            ));
        }
        let scale = 1.0 / (1.0 - self.p);
        for (j, v) in (r.at..).zip(r.y.iter_mut()) {
            *v = if (bits[j / 64] >> (j % 64)) & 1 == 1 {
                *v * scale
            } else {
                0.0
            };
        }
        Ok(())
    }
}

impl Dropout {
    /// Whether element `i` is kept under `seed`.
    #[inline]
    fn kept(&self, seed: u64, i: usize) -> bool {
        let mut z = seed ^ (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        // splitmix64's finaliser: every input bit reaches every output bit.
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        ((z >> 40) as f32) / (1u64 << 24) as f32 >= self.p
    }

    fn run_forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let c = elem_chunk(f.y.len(), f.threads);
        if f.mode != Mode::Train {
            if let Some(x) = f.x.buf() {
                f.y.copy_from_slice(x);
            }
            return Ok(());
        }
        let (seed, scale) = (f.seed, 1.0 / (1.0 - self.p));
        let bits = f.saved.bits(0)?;
        let work =
            f.y.chunks_mut(c)
                .zip(f.x.chunks(c))
                .zip(bits.chunks_mut(c / 64))
                .enumerate();
        each(work, |(g, ((y, x), bits))| {
            if let Some(x) = x {
                y.copy_from_slice(x);
            }
            bits.fill(0);
            for (j, v) in y.iter_mut().enumerate() {
                if self.kept(seed, g * c + j) {
                    bits[j / 64] |= 1 << (j % 64);
                    *v *= scale;
                } else {
                    *v = 0.0;
                }
            }
            Ok(())
        })
    }

    fn run_backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let bits = b.saved.bits(0)?;
        let scale = 1.0 / (1.0 - self.p);
        let (dys, acc) = (b.dy, b.acc);
        let inplace = dys.buf().is_none();
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        if bits.len() * 64 < dx.len() {
            return Err(planner_bug(Self::KIND, "the mask is shorter than dX"));
        }
        let c = elem_chunk(dx.len(), b.threads);
        each(
            dx.chunks_mut(c).zip(dys.chunks(c)).zip(bits.chunks(c / 64)),
            |((dx, dy), bits)| {
                for (j, d) in dx.iter_mut().enumerate() {
                    let g = dy.map_or(*d, |dy| dy[j]);
                    let m = if (bits[j / 64] >> (j % 64)) & 1 == 1 {
                        scale
                    } else {
                        0.0
                    };
                    put(d, g * m, acc && !inplace);
                }
                Ok(())
            },
        )
    }
}
