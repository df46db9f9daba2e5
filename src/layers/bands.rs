//! The three products of a dense layer over rows (`Y = X·W`, grad_W `+= Xᵀ·dY`, `dX = dY·Wᵀ`),
//! shared out among the workers: rows for Y and dX, input features for grad_W. Each worker
//! runs one GEMM on its band with its share of the scratch; since every output element is
//! computed by one worker with the same k-order as a single GEMM, the result has the same bits
//! for any number of workers. Linear runs over every token; a 1×1 convolution over every pixel.

use dropit_simd::gemm::{Mat, MatMut};

use super::par::{each, max_groups, split};
use super::{Rebuilder, gemm, gemm_words, planner_bug};
use crate::arena::{f32s_mut, words_for_f32};
use crate::error::Result;

/// Rows of a rebuilt input taken at a time: a multiple of the GEMM's block depth, so that
/// grad_W summed part by part has the bits of one product over all rows.
const REBUILT_ROWS: usize = dropit_simd::gemm::KC;

/// A dense `inp → out` product over rows of `inp` features, `W` stored `[inp × out]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Bands {
    /// The layer's kind, for errors.
    pub kind: &'static str,
    pub inp: usize,
    pub out: usize,
}

impl Bands {
    /// Each of `t` workers' share of `scratch` (an error when there is none to share).
    fn unit(self, scratch: &[u64], t: usize) -> Result<usize> {
        match scratch.len() / t.max(1) {
            0 => Err(planner_bug(self.kind, "no GEMM scratch for its workers")),
            u => Ok(u),
        }
    }

    /// Scratch words for `rows` rows on `threads` workers: each worker's packing space for the
    /// largest of its three products.
    pub fn words(self, rows: usize, threads: usize) -> usize {
        let t = max_groups(rows, threads);
        let (i, o) = (self.inp, self.out);
        let (r, ip) = (rows.div_ceil(t), i.div_ceil(t.min(i).max(1)));
        let one = gemm_words(r, i, o)
            .max(gemm_words(ip, rows, o))
            .max(gemm_words(r, o, i));
        t.saturating_mul(one)
    }

    /// `y = x·W (+ bias)` for `rows` rows, each worker a band of rows.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        self,
        x: &[f32],
        rows: usize,
        w: &[f32],
        bias: Option<&[f32]>,
        y: &mut [f32],
        scratch: &mut [u64],
        threads: usize,
    ) -> Result<()> {
        let (i, o) = (self.inp, self.out);
        let wm = Mat::new(w, i, o)?;
        let (per, t) = split(rows, threads);
        let unit = self.unit(scratch, t)?;
        let groups = x
            .chunks(per * i)
            .zip(y.chunks_mut(per * o))
            .zip(scratch.chunks_mut(unit));
        each(groups, |((x, y), s)| {
            let r = x.len() / i;
            if let Some(b) = bias {
                // The GEMM adds onto the bias (each worker fills its own rows).
                y.chunks_exact_mut(o).for_each(|row| row.copy_from_slice(b));
            }
            let beta = if bias.is_some() { 1.0 } else { 0.0 };
            gemm(1.0, Mat::new(x, r, i)?, wm, beta, MatMut::new(y, r, o)?, s)
        })
    }

    /// grad_W `[inp × out] += xᵀ · dy` over `rows` rows, each worker a band of input features.
    pub fn grad_w(
        self,
        x: &[f32],
        rows: usize,
        dy: Mat<'_>,
        gw: &mut [f32],
        scratch: &mut [u64],
        threads: usize,
    ) -> Result<()> {
        let (i, o) = (self.inp, self.out);
        let t = max_groups(rows, threads);
        let ip = i.div_ceil(t.min(i).max(1));
        let unit = self.unit(scratch, t)?;
        each(
            gw.chunks_mut(ip * o)
                .enumerate()
                .zip(scratch.chunks_mut(unit)),
            |((k, g), s)| {
                let band = g.len() / o;
                let xt = Mat::strided(&x[k * ip..], band, rows, 1, i)?;
                gemm(1.0, xt, dy, 1.0, MatMut::new(g, band, o)?, s)
            },
        )
    }

    /// `dx = dy·Wᵀ` (added onto `dx` when `acc`) for the rows of `dy`, each worker a band of
    /// rows.
    #[allow(clippy::too_many_arguments)]
    pub fn grad_x(
        self,
        dy: &[f32],
        w: &[f32],
        acc: bool,
        dx: &mut [f32],
        scratch: &mut [u64],
        threads: usize,
    ) -> Result<()> {
        let (i, o) = (self.inp, self.out);
        let rows = dy.len() / o.max(1);
        let (beta, wt) = (if acc { 1.0 } else { 0.0 }, Mat::new(w, i, o)?.t());
        let (per, t) = split(rows, threads);
        let unit = self.unit(scratch, t)?;
        let groups = dx
            .chunks_mut(per * i)
            .zip(dy.chunks(per * o))
            .zip(scratch.chunks_mut(unit));
        each(groups, |((dx, dy), s)| {
            let r = dy.len() / o;
            gemm(
                1.0,
                Mat::new(dy, r, o)?,
                wt,
                beta,
                MatMut::new(dx, r, i)?,
                s,
            )
        })
    }

    /// Scratch words for an input rebuilt [`REBUILT_ROWS`] rows at a time
    /// ([`Bands::grad_w_rebuilt`]), on top of [`Bands::words`].
    pub fn rebuild_words(self) -> usize {
        words_for_f32(REBUILT_ROWS.saturating_mul(self.inp))
    }

    /// grad_W `+= xᵀ · dy` over `rows` rows of an input that nobody holds: rebuilt
    /// [`REBUILT_ROWS`] rows at a time into the head of `scratch` (its rows shared out among
    /// the workers), each part's product added onto grad_W — the bits of [`Bands::grad_w`]
    /// over the whole input.
    pub fn grad_w_rebuilt(
        self,
        rb: &Rebuilder<'_>,
        rows: usize,
        dy: &[f32],
        gw: &mut [f32],
        scratch: &mut [u64],
        threads: usize,
    ) -> Result<()> {
        let (i, o) = (self.inp, self.out);
        let words = self.rebuild_words();
        if scratch.len() <= words {
            return Err(planner_bug(self.kind, "no scratch for the rebuilt input"));
        }
        let (xbuf, rest) = scratch.split_at_mut(words);
        let xbuf = &mut f32s_mut(xbuf)[..REBUILT_ROWS * i];
        for r0 in (0..rows).step_by(REBUILT_ROWS) {
            let rr = REBUILT_ROWS.min(rows - r0);
            let x = &mut xbuf[..rr * i];
            let (per, _) = split(rr, threads);
            each(x.chunks_mut(per * i).enumerate(), |(g, part)| {
                rb.fill((r0 + g * per) * i, part)
            })?;
            let dyc = Mat::new(&dy[r0 * o..(r0 + rr) * o], rr, o)?;
            self.grad_w(x, rr, dyc, gw, rest, threads)?;
        }
        Ok(())
    }
}
