//! Fully connected layer over the channel dimension: `y[r, :] = x[r, :] · W + b` for every row
//! `r` (every sample, or every token of every sample).
//!
//! W is stored `[in × out]` — PyTorch's `weight` `[out × in]` transposed — so that the weight
//! gradient, dense or sparse, is one contiguous axpy per input element (DESIGN §5).

use dropit_simd::gemm::{Mat, MatMut};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::{Bwd, Fwd, gemm, gemm_words};
use crate::error::{Result, shape_err};
use crate::init::uniform;
use crate::saved::InputSave;
use crate::shape::Shape;

/// `Linear(in, out)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Linear {
    /// Input features (channels of the input).
    pub inp: usize,
    /// Output features.
    pub out: usize,
    /// Whether a bias is added.
    pub bias: bool,
    /// How the input is kept for the weight gradient.
    pub save: InputSave,
}

impl Linear {
    /// `Linear(inp, out)` with a bias.
    pub fn new(inp: usize, out: usize) -> Self {
        Linear {
            inp,
            out,
            bias: true,
            save: InputSave::Dense,
        }
    }

    /// Without a bias.
    pub fn no_bias(mut self) -> Self {
        self.bias = false;
        self
    }

    pub(crate) fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if x.c != self.inp || self.inp == 0 || self.out == 0 {
            return shape_err(
                name,
                format_args!(
                    "input [h, w, {}] (Linear({}, {}))",
                    self.inp, self.inp, self.out
                ),
                x,
            );
        }
        Ok(Shape::new(x.h, x.w, self.out))
    }

    pub(crate) fn param_count(&self) -> usize {
        self.inp * self.out + if self.bias { self.out } else { 0 }
    }

    /// GEMM packing space for the forward, grad_W and dX products over `rows` rows.
    pub(crate) fn scratch_words(&self, rows: usize) -> usize {
        let (i, o) = (self.inp, self.out);
        gemm_words(rows, i, o)
            .max(gemm_words(i, rows, o))
            .max(gemm_words(rows, o, i))
    }

    /// PyTorch's default: weight and bias uniform in ±1/√in.
    pub(crate) fn init(&self, p: &mut [f32], rng: &mut Xoshiro256PlusPlus) {
        let bound = 1.0 / libm::sqrtf(self.inp as f32);
        for v in p.iter_mut() {
            *v = uniform(rng, -bound, bound);
        }
    }

    pub(crate) fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let rows = f.n * f.x_shape.rows();
        let (w, b) = f.p.split_at(self.inp * self.out);
        if self.bias {
            for row in f.y.chunks_exact_mut(self.out) {
                row.copy_from_slice(b);
            }
        }
        let beta = if self.bias { 1.0 } else { 0.0 };
        gemm(
            1.0,
            Mat::new(f.x, rows, self.inp)?,
            Mat::new(w, self.inp, self.out)?,
            beta,
            MatMut::new(f.y, rows, self.out)?,
            f.scratch,
        )?;
        Ok(())
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let rows = b.n * b.x_shape.rows();
        let (w, _) = b.p.split_at(self.inp * self.out);
        let (gw, gb) = b.g.split_at_mut(self.inp * self.out);
        let dy = Mat::new(b.dy, rows, self.out)?;
        // grad_Wᵀ[in × out] += Xᵀ · dY
        let xt = Mat::new(b.x, rows, self.inp)?.t();
        gemm(
            1.0,
            xt,
            dy,
            1.0,
            MatMut::new(gw, self.inp, self.out)?,
            b.scratch,
        )?;
        if self.bias {
            for row in b.dy.chunks_exact(self.out) {
                for (g, d) in gb.iter_mut().zip(row) {
                    *g += d;
                }
            }
        }
        if !b.dx.is_empty() {
            // dX = dY · Wᵀ
            let beta = if b.acc { 1.0 } else { 0.0 };
            let wt = Mat::new(w, self.inp, self.out)?.t();
            gemm(
                1.0,
                dy,
                wt,
                beta,
                MatMut::new(b.dx, rows, self.inp)?,
                b.scratch,
            )?;
        }
        Ok(())
    }
}
