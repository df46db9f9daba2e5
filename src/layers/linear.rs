//! Fully connected layer over the channel dimension: `y[r, :] = x[r, :] · W + b` for every row
//! `r` (every sample, or every token of every sample).
//!
//! W is stored `[in × out]` — PyTorch's `weight` `[out × in]` transposed — so that the weight
//! gradient, dense or sparse, is one contiguous axpy per input element.

use dropit_simd::gemm::{Mat, MatMut};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::bands::Bands;
use super::contract::{Dims, Layout, Mode, Needs, Op, ParamDecl, Params, params};
use super::par::{each, split};
use super::{Bwd, Fwd, gemm, gemm_words, held, missing, not_in_place, pack_input, packed_input};
use crate::arena::{f32s_mut, words_for_f32};
use crate::error::{Result, shape_err};
use crate::init::uniform;
use crate::saved::InputSave;
use crate::shape::Shape;
use dropit_simd::pack::unpack;
use dropit_simd::spmm;

/// `Linear(in, out)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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

    /// Per worker, GEMM packing space for its share of the forward, grad_W and dX products
    /// (rows are shared out for Y and dX, input features for grad_W); with DropIT's scatter
    /// path, also the dense input it scatters into.
    fn scratch_words(&self, rows: usize, threads: usize) -> usize {
        let (i, o) = (self.inp, self.out);
        let banded = self.bands().words(rows, threads);
        let scatter = self.save.sparse().is_some_and(|s| !s.direct(false));
        banded.max(if scatter {
            words_for_f32(rows * i) + gemm_words(i, rows, o)
        } else {
            0
        })
    }
}

impl Linear {
    /// The dense products, shared out among the workers.
    fn bands(&self) -> Bands {
        Bands {
            kind: Self::KIND,
            inp: self.inp,
            out: self.out,
        }
    }
}

impl Op for Linear {
    const KIND: &'static str = "Linear";

    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
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

    fn input_save(&self) -> Option<&InputSave> {
        Some(&self.save)
    }

    fn input_save_mut(&mut self) -> Option<&mut InputSave> {
        Some(&mut self.save)
    }

    /// `weight` `[out, in]` (ours `[in, out]`), `bias` `[out]`.
    fn params(&self) -> Params {
        let (i, o) = (self.inp, self.out);
        let w = ParamDecl::param("weight", &[o, i], Layout::Transposed { rows: i, cols: o });
        if self.bias {
            params([w, ParamDecl::param("bias", &[o], Layout::Same)])
        } else {
            params([w])
        }
    }

    /// Saves its input for grad_W — held, or packed under DropIT; PyTorch keeps it dense. A
    /// rebuilt input is taken a block of rows at a time ([`Bands::grad_w_rebuilt`]).
    fn needs(&self, d: &Dims) -> Needs {
        Needs::none()
            .input(&self.save, d.x_elems())
            .scratch(self.scratch_words(d.n * d.x.rows(), d.threads))
            .rebuild_scratch(self.bands().rebuild_words())
    }

    /// PyTorch's default: weight and bias uniform in ±1/√in.
    fn init(&self, p: &mut [f32], _state: &mut [f32], rng: &mut Xoshiro256PlusPlus) {
        let bound = 1.0 / libm::sqrtf(self.inp as f32);
        for v in p.iter_mut() {
            *v = uniform(rng, -bound, bound);
        }
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let rows = f.n * f.x_shape.rows();
        let (i, o) = (self.inp, self.out);
        let (w, b) = f.p.split_at(i * o);
        let x = not_in_place(f.x, Self::KIND)?;
        let bias = self.bias.then_some(b);
        (self.bands()).forward(x, rows, w, bias, f.y, f.scratch, f.threads)?;
        match (self.save.sparse(), f.packed.take()) {
            (Some(sp), Some(p)) if f.mode == Mode::Train && p.packs => {
                pack_input(sp, x, f.n, f.x_shape.numel(), p, f.threads)
            }
            _ => Ok(()),
        }
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let rows = b.n * b.x_shape.rows();
        let (i, o) = (self.inp, self.out);
        let (gw, gb) = b.g.split_at_mut(i * o);
        let dy_all = not_in_place(b.dy, Self::KIND)?;
        if self.bias {
            for row in dy_all.chunks_exact(o) {
                for (g, d) in gb.iter_mut().zip(row) {
                    *g += d;
                }
            }
        }
        let dy = Mat::new(dy_all, rows, o)?;
        if let Some(rb) = b.rebuild {
            // The planner rebuilds the input (instead of DropIT, if the layer has it).
            (self.bands()).grad_w_rebuilt(rb, rows, dy_all, gw, b.scratch, b.threads)?;
        } else if let Some(sp) = self.save.sparse().filter(|_| b.x.is_none()) {
            let packed = b.packed.ok_or_else(|| missing("Linear"))?;
            let pk = packed_input(sp, b.n, b.x_shape.numel(), packed)?;
            if sp.direct(false) {
                // Each worker a band of input features, the same bits for any number of workers.
                let (per, _) = split(i, b.threads);
                each(gw.chunks_mut(per * o).enumerate(), |(k, part)| {
                    Ok(spmm::linear_grad_w_rows(
                        &pk,
                        rows,
                        i,
                        dy_all,
                        o,
                        part,
                        k * per,
                    )?)
                })?;
            } else {
                let (dense, pack) = b.scratch.split_at_mut(words_for_f32(rows * i));
                let dense = &mut f32s_mut(dense)[..rows * i];
                unpack(&pk, dense)?;
                let xt = Mat::new(dense, rows, i)?.t();
                gemm(1.0, xt, dy, 1.0, MatMut::new(gw, i, o)?, pack)?;
            }
        } else {
            let x = held(b.x, Self::KIND)?;
            (self.bands()).grad_w(x, rows, dy, gw, b.scratch, b.threads)?;
        }
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        (self.bands()).grad_x(dy_all, &b.p[..i * o], b.acc, dx, b.scratch, b.threads)
    }
}
