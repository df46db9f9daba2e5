//! GELU, `x·Φ(x)`, exact (erf) or with PyTorch's tanh approximation. Saves its input — the
//! derivative needs `x` itself, not only its sign — or, when lean, the derivative as one byte.

use dropit_simd::act;

use super::contract::{Dims, Elem, Entry, Mode, Needs, Op, Rebuild};
use super::par::{each, elem_chunk};
use super::{Bwd, Fwd, Rb, planner_bug, put, rebuilt_part};
use crate::error::Result;
use crate::shape::Shape;

/// `GELU(approximate = "none" | "tanh")`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct Gelu {
    /// The tanh approximation instead of erf.
    pub tanh: bool,
    /// Keep the derivative for backward as a one-byte code instead of the f32 input.
    pub lean: bool,
}

impl Op for Gelu {
    const KIND: &'static str = "GELU";

    fn out_shape(&self, _name: &str, x: Shape) -> Result<Shape> {
        Ok(x)
    }

    /// Its input as f32, or when lean its derivative as a one-byte code; PyTorch keeps the
    /// f32 input.
    fn needs(&self, d: &Dims) -> Needs {
        let e = d.x_elems();
        let saved = match self.lean {
            false => Entry::new("input f32", Elem::F32, e),
            true => Entry::new("slope u8", Elem::Byte, e),
        };
        Needs::none().save(saved).in_place(true).torch(4 * e)
    }

    fn set_lean(&mut self, lean: bool) {
        self.lean = lean;
    }

    /// GELU of the kept input; not when lean (only the derivative is kept).
    fn rebuilds(&self) -> Rebuild {
        if self.lean {
            Rebuild::No
        } else {
            Rebuild::FromSaved
        }
    }

    /// GELU of the kept input: the vector kernel is the same lane by lane (a short tail is
    /// padded into a full vector), so any piece gives forward's values.
    fn rebuild(&self, r: &mut Rb<'_, '_>) -> Result<()> {
        if self.lean {
            return Err(planner_bug(Self::KIND, "no kept input to rebuild from"));
        }
        let s = rebuilt_part(r, r.saved.f32(0)?, Self::KIND)?;
        r.y.copy_from_slice(s);
        act::gelu(r.y, self.tanh);
        Ok(())
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let c = elem_chunk(f.y.len(), f.threads);
        let tanh = self.tanh;
        // In place, `y` holds the input.
        let xs = f.x.chunks(c);
        let load = |y: &mut [f32], x: Option<&[f32]>| {
            if let Some(x) = x {
                y.copy_from_slice(x);
            }
        };
        if f.mode == Mode::Frozen {
            return each(f.y.chunks_mut(c).zip(xs), |(y, x)| {
                load(y, x);
                act::gelu(y, tanh);
                Ok(())
            });
        }
        if self.lean {
            let s = f.saved.bytes(0)?;
            each(
                f.y.chunks_mut(c).zip(xs).zip(s.chunks_mut(c)),
                |((y, x), s)| {
                    load(y, x);
                    let mut d = [0.0f32; TILE];
                    for (y, s) in y.chunks_mut(TILE).zip(s.chunks_mut(TILE)) {
                        let d = &mut d[..y.len()];
                        act::gelu_with_slope(y, d, tanh)?;
                        s.iter_mut().zip(d).for_each(|(s, d)| *s = slope_code(*d));
                    }
                    Ok(())
                },
            )
        } else {
            let s = f.saved.f32(0)?;
            each(
                f.y.chunks_mut(c).zip(xs).zip(s.chunks_mut(c)),
                |((y, x), s)| {
                    load(y, x);
                    s.copy_from_slice(y);
                    act::gelu(y, tanh);
                    Ok(())
                },
            )
        }
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let tanh = self.tanh;
        if self.lean {
            let s = b.saved.bytes(0)?;
            Self::bwd(b, s, |s, d| {
                d.iter_mut().zip(s).for_each(|(d, &c)| *d = slope_of(c))
            })
        } else {
            let s = b.saved.f32(0)?;
            Self::bwd(b, s, |s, d| {
                d.copy_from_slice(s);
                act::gelu_slope(d, tanh);
            })
        }
    }
}

impl Gelu {
    /// `dx = dy · gelu'`, the derivatives decoded from what was saved a tile at a time.
    fn bwd<S: Sync>(
        b: &mut Bwd<'_>,
        saved: &[S],
        slopes: impl Fn(&[S], &mut [f32]) + Sync + Send,
    ) -> Result<()> {
        // In place, `dx` holds dy.
        let dys = b.dy;
        let acc = b.acc && dys.buf().is_some();
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        if dx.len() != saved.len() {
            return Err(planner_bug(
                <Self as Op>::KIND,
                "dX and the saved input differ in length",
            ));
        }
        let c = elem_chunk(dx.len(), b.threads);
        each(
            dx.chunks_mut(c).zip(dys.chunks(c)).zip(saved.chunks(c)),
            |((dx, dy), s)| {
                let mut d = [0.0f32; TILE];
                for (k, (dx, s)) in dx.chunks_mut(TILE).zip(s.chunks(TILE)).enumerate() {
                    let d = &mut d[..dx.len()];
                    slopes(s, d);
                    for (j, (x, slope)) in dx.iter_mut().zip(&*d).enumerate() {
                        let g = dy.map_or(*x, |dy| dy[k * TILE + j]);
                        put(x, g * slope, acc);
                    }
                }
                Ok(())
            },
        )
    }
}

/// Elements per stack tile of derivatives.
const TILE: usize = 256;

/// Lean GELU keeps the derivative, not the input, as one byte: `gelu'` lies in
/// [−0.129, 1.129], so levels `(code − 26) / 200` cover it with 0 and 1 exact and an error of
/// at most 1/400 — finer than what a bf16 input gives through `gelu''`, at half the bytes.
fn slope_code(d: f32) -> u8 {
    libm::roundf(d * 200.0 + 26.0).clamp(0.0, 255.0) as u8
}

/// The derivative a [`slope_code`] stands for.
fn slope_of(code: u8) -> f32 {
    (code as f32 - 26.0) / 200.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slope_codes_cover_the_derivative_within_a_four_hundredth() {
        for tanh in [false, true] {
            for i in -12_000..12_000 {
                let x = i as f32 / 1000.0;
                let d = dropit_simd::reference::gelu(x, tanh).1;
                let back = slope_of(slope_code(d));
                assert!(
                    (back - d).abs() <= 1.0 / 400.0 + 1e-6,
                    "x = {x}: {d} → {back}"
                );
            }
        }
        assert_eq!(slope_of(slope_code(0.0)), 0.0);
        assert_eq!(slope_of(slope_code(1.0)), 1.0);
    }
}
