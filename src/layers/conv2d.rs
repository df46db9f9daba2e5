//! 2-D convolution, NHWC, weights `[kh, kw, cin, cout]`.
//!
//! Forward and backward work one sample at a time through an im2col matrix of that sample only
//! (`[ho·wo × kh·kw·cin]` in the shared scratch — never a whole batch), then a GEMM. A 1×1
//! stride-1 unpadded convolution is a plain GEMM over every pixel and needs no scratch.

use dropit_simd::gemm::{Mat, MatMut};
use dropit_simd::spmm::ConvGeom;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::par::{MAX_THREADS, each, max_groups, run, split};
use super::{Bwd, Fwd, gemm, gemm_words, missing, pack_input, packed_input};
use crate::arena::{f32s_mut, words_for_f32};
use crate::error::{Result, shape_err};
use crate::init::{normal, uniform};
use crate::saved::InputSave;
use crate::shape::Shape;
use dropit_simd::spmm;

/// `Conv2d(cin, cout, kernel, stride, padding)`.
#[derive(Debug, Clone, PartialEq)]
pub struct Conv2d {
    /// Input channels.
    pub cin: usize,
    /// Output channels.
    pub cout: usize,
    /// Kernel (height, width).
    pub k: (usize, usize),
    /// Stride (rows, columns).
    pub stride: (usize, usize),
    /// Zero padding (rows, columns), each side.
    pub pad: (usize, usize),
    /// Whether a bias is added.
    pub bias: bool,
    /// How the input is kept for the weight gradient.
    pub save: InputSave,
}

impl Conv2d {
    /// A square `k×k` convolution with the given stride and padding, without bias (as in ResNets).
    pub fn new(cin: usize, cout: usize, k: usize, stride: usize, pad: usize) -> Self {
        Conv2d {
            cin,
            cout,
            k: (k, k),
            stride: (stride, stride),
            pad: (pad, pad),
            bias: false,
            save: InputSave::Dense,
        }
    }

    /// With a bias.
    pub fn with_bias(mut self) -> Self {
        self.bias = true;
        self
    }

    pub(crate) fn geom(&self, n: usize, x: Shape) -> ConvGeom {
        ConvGeom {
            n,
            h: x.h,
            w: x.w,
            cin: self.cin,
            cout: self.cout,
            kh: self.k.0,
            kw: self.k.1,
            stride: self.stride,
            pad: self.pad,
        }
    }

    fn pointwise(&self) -> bool {
        self.k == (1, 1) && self.stride == (1, 1) && self.pad == (0, 0)
    }

    fn kdim(&self) -> usize {
        self.k.0 * self.k.1 * self.cin
    }

    pub(crate) fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if x.c != self.cin || self.cout == 0 {
            return shape_err(name, format_args!("input [h, w, {}]", self.cin), x);
        }
        match self.geom(1, x).out_hw() {
            Ok((ho, wo)) => Ok(Shape::new(ho, wo, self.cout)),
            Err(e) => shape_err(
                name,
                format_args!(
                    "a {}×{} kernel, stride {:?}, padding {:?} that fits ({e})",
                    self.k.0, self.k.1, self.stride, self.pad
                ),
                x,
            ),
        }
    }

    pub(crate) fn param_count(&self) -> usize {
        self.k.0 * self.k.1 * self.cin * self.cout + if self.bias { self.cout } else { 0 }
    }

    /// Words one worker needs for one sample: the im2col matrix, then the GEMMs' packing space.
    fn unit_words(&self, y: Shape) -> usize {
        let (r, kd, co) = (y.rows(), self.kdim(), self.cout);
        let pack = gemm_words(r, kd, co)
            .max(gemm_words(kd, r, co))
            .max(gemm_words(r, co, kd));
        words_for_f32(r * kd) + pack
    }

    /// Splits a worker's scratch into the im2col matrix and the GEMMs' packing space.
    fn split_scratch<'s>(
        &self,
        ys: Shape,
        scratch: &'s mut [u64],
    ) -> (&'s mut [f32], &'s mut [u64]) {
        let (col, rest) = scratch.split_at_mut(words_for_f32(ys.rows() * self.kdim()));
        (&mut f32s_mut(col)[..ys.rows() * self.kdim()], rest)
    }

    fn weight_len(&self) -> usize {
        self.k.0 * self.k.1 * self.cin * self.cout
    }

    /// Per worker: a sample's im2col matrix and packing space; with more than one worker, also
    /// a private weight gradient that is summed in worker order (so a run is reproducible for a
    /// given thread count). A pointwise convolution needs only packing space for the batch.
    pub(crate) fn scratch_words(&self, n: usize, x: Shape, y: Shape, threads: usize) -> usize {
        if self.pointwise() {
            let (r, c, co) = (n * x.rows(), self.cin, self.cout);
            return gemm_words(r, c, co)
                .max(gemm_words(c, r, co))
                .max(gemm_words(r, co, c));
        }
        let t = max_groups(n, threads);
        let partial = if t > 1 {
            words_for_f32(self.weight_len())
        } else {
            0
        };
        t * (self.unit_words(y) + partial)
    }

    /// He initialisation (normal, fan-out, as torchvision's ResNets); bias as PyTorch's default.
    pub(crate) fn init(&self, p: &mut [f32], rng: &mut Xoshiro256PlusPlus) {
        let wl = self.k.0 * self.k.1 * self.cin * self.cout;
        let std = libm::sqrtf(2.0 / (self.cout * self.k.0 * self.k.1) as f32);
        let (w, b) = p.split_at_mut(wl);
        for v in w {
            *v = std * normal(rng);
        }
        let bound = 1.0 / libm::sqrtf(self.kdim() as f32);
        for v in b {
            *v = uniform(rng, -bound, bound);
        }
    }

    /// Writes the im2col matrix of one sample: row `oh·wo + ow`, column `(a·kw + b)·cin + c`.
    fn im2col(&self, x: &[f32], xs: Shape, ys: Shape, col: &mut [f32]) {
        let (kh, kw, cin) = (self.k.0, self.k.1, self.cin);
        let kd = self.kdim();
        for oh in 0..ys.h {
            for ow in 0..ys.w {
                let row = &mut col[(oh * ys.w + ow) * kd..][..kd];
                for a in 0..kh {
                    let ih = (oh * self.stride.0 + a) as isize - self.pad.0 as isize;
                    for b in 0..kw {
                        let iw = (ow * self.stride.1 + b) as isize - self.pad.1 as isize;
                        let dst = &mut row[(a * kw + b) * cin..][..cin];
                        if ih < 0 || iw < 0 || ih >= xs.h as isize || iw >= xs.w as isize {
                            dst.fill(0.0);
                        } else {
                            dst.copy_from_slice(
                                &x[(ih as usize * xs.w + iw as usize) * cin..][..cin],
                            );
                        }
                    }
                }
            }
        }
    }

    /// Adds the im2col-shaped gradient `col` back onto one sample's input gradient.
    fn col2im(&self, col: &[f32], xs: Shape, ys: Shape, dx: &mut [f32]) {
        let (kh, kw, cin) = (self.k.0, self.k.1, self.cin);
        let kd = self.kdim();
        for oh in 0..ys.h {
            for ow in 0..ys.w {
                let row = &col[(oh * ys.w + ow) * kd..][..kd];
                for a in 0..kh {
                    let ih = (oh * self.stride.0 + a) as isize - self.pad.0 as isize;
                    if ih < 0 || ih >= xs.h as isize {
                        continue;
                    }
                    for b in 0..kw {
                        let iw = (ow * self.stride.1 + b) as isize - self.pad.1 as isize;
                        if iw < 0 || iw >= xs.w as isize {
                            continue;
                        }
                        let dst = &mut dx[(ih as usize * xs.w + iw as usize) * cin..][..cin];
                        for (d, s) in dst.iter_mut().zip(&row[(a * kw + b) * cin..][..cin]) {
                            *d += s;
                        }
                    }
                }
            }
        }
    }

    /// Whether the output can overwrite the input sample by sample (forward) and the input
    /// gradient the output gradient (backward): same size per sample, not the whole-batch GEMM.
    pub(crate) fn in_place(&self, x: Shape, y: Shape) -> bool {
        x.numel() == y.numel() && !self.pointwise()
    }

    pub(crate) fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let (xs, ys) = (f.x_shape, f.y_shape);
        // In place, the input is in `y`: pack it (DropIT) before it is overwritten.
        let src: &[f32] = if f.inplace { f.y } else { f.x };
        match (self.save.sparse(), f.packed.take()) {
            (Some(sp), Some(p)) if f.train && p.packs => {
                pack_input(sp, src, f.n, xs.numel(), p, f.threads)?
            }
            _ => {}
        }
        let (w, bias) = f.p.split_at(self.weight_len());
        let beta = if self.bias { 1.0 } else { 0.0 };
        let wm = Mat::new(w, self.kdim(), self.cout)?;
        if self.pointwise() {
            let rows = f.n * xs.rows();
            if self.bias {
                f.y.chunks_exact_mut(self.cout)
                    .for_each(|r| r.copy_from_slice(bias));
            }
            let xm = Mat::new(f.x, rows, self.cin)?;
            return gemm(
                1.0,
                xm,
                wm,
                beta,
                MatMut::new(f.y, rows, self.cout)?,
                f.scratch,
            );
        }
        let (per, _) = split(f.n, f.threads);
        let unit = self.unit_words(ys);
        let xs_iter =
            f.x.chunks(per * xs.numel())
                .chain(core::iter::repeat(&[][..]));
        let groups =
            f.y.chunks_mut(per * ys.numel())
                .zip(xs_iter)
                .zip(f.scratch.chunks_mut(unit));
        each(groups, |((y, x), s)| {
            let (col, pack) = self.split_scratch(ys, s);
            for (i, y) in y.chunks_exact_mut(ys.numel()).enumerate() {
                // im2col copies the sample first, so `y` may hold the input (in place).
                let xi = if x.is_empty() {
                    &*y
                } else {
                    &x[i * xs.numel()..][..xs.numel()]
                };
                self.im2col(xi, xs, ys, col);
                if self.bias {
                    y.chunks_exact_mut(self.cout)
                        .for_each(|r| r.copy_from_slice(bias));
                }
                let cm = Mat::new(col, ys.rows(), self.kdim())?;
                gemm(
                    1.0,
                    cm,
                    wm,
                    beta,
                    MatMut::new(y, ys.rows(), self.cout)?,
                    pack,
                )?;
            }
            Ok(())
        })
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let (xs, ys) = (b.x_shape, b.y_shape);
        let wl = self.weight_len();
        let w = Mat::new(&b.p[..wl], self.kdim(), self.cout)?;
        let (gw, gb) = b.g.split_at_mut(wl);
        // In place, dY is in `dx` (still whole here: the loop below overwrites it sample by sample).
        let dy_all: &[f32] = if b.inplace { b.dx } else { b.dy };
        if self.bias {
            for row in dy_all.chunks_exact(self.cout) {
                for (g, d) in gb.iter_mut().zip(row) {
                    *g += d;
                }
            }
        }
        // DropIT: grad_W straight from the packed input, with no im2col.
        let sparse = self.save.sparse();
        if let Some(sp) = sparse {
            let packed = b.packed.ok_or_else(|| missing("Conv2d"))?;
            let pk = packed_input(sp, b.n, xs.numel(), packed)?;
            spmm::conv2d_grad_w(&pk, &self.geom(b.n, xs), dy_all, gw)?;
        }
        if self.pointwise() {
            let rows = b.n * xs.rows();
            let dy = Mat::new(b.dy, rows, self.cout)?;
            if sparse.is_none() {
                let xt = Mat::new(b.x, rows, self.cin)?.t();
                gemm(
                    1.0,
                    xt,
                    dy,
                    1.0,
                    MatMut::new(gw, self.cin, self.cout)?,
                    b.scratch,
                )?;
            }
            if !b.dx.is_empty() {
                let beta = if b.acc { 1.0 } else { 0.0 };
                gemm(
                    1.0,
                    dy,
                    w.t(),
                    beta,
                    MatMut::new(b.dx, rows, self.cin)?,
                    b.scratch,
                )?;
            }
            return Ok(());
        }
        if sparse.is_some() && b.dx.is_empty() {
            return Ok(());
        }
        let (per, t) = split(b.n, b.threads);
        let unit = self.unit_words(ys);
        let (units, partials) = b.scratch.split_at_mut(t * unit);
        type Group<'g> = (
            &'g [f32],
            &'g [f32],
            &'g mut [f32],
            &'g mut [u64],
            &'g mut [f32],
        );
        let mut groups: [Option<Group<'_>>; MAX_THREADS] = [const { None }; MAX_THREADS];
        // Dense grad_W: one worker accumulates straight into it; several get private, zeroed
        // partials, summed below in worker order.
        let dense_gw = sparse.is_none();
        let (mut gw_slot, gw_sum) = if dense_gw && t == 1 {
            (Some(gw), None)
        } else {
            (None, Some(gw))
        };
        let (mut dx_rest, mut partial_rest): (&mut [f32], &mut [u64]) = (b.dx, partials);
        let x_chunks =
            b.x.chunks(per * xs.numel())
                .chain(core::iter::repeat(&[][..]));
        let dy_chunks =
            b.dy.chunks(per * ys.numel())
                .chain(core::iter::repeat(&[][..]));
        let parts = x_chunks.zip(dy_chunks).zip(units.chunks_mut(unit));
        for (g, ((x, dy), s)) in groups.iter_mut().zip(parts).take(t) {
            let take = (per * xs.numel()).min(dx_rest.len());
            let (dx, rest) = core::mem::take(&mut dx_rest).split_at_mut(take);
            dx_rest = rest;
            let part: &mut [f32] = match gw_slot.take() {
                Some(gw) => gw,
                None if dense_gw => {
                    let (p, rest) =
                        core::mem::take(&mut partial_rest).split_at_mut(words_for_f32(wl));
                    partial_rest = rest;
                    let p = &mut f32s_mut(p)[..wl];
                    p.fill(0.0);
                    p
                }
                None => &mut [],
            };
            *g = Some((x, dy, dx, s, part));
        }
        let (r, kd, acc) = (ys.rows(), self.kdim(), b.acc);
        run(&mut groups[..t], |g| {
            let Some((x, dy, dx, s, part)) = g else {
                return Ok(());
            };
            let (col, pack) = self.split_scratch(ys, s);
            let (xn, yn) = (xs.numel(), ys.numel());
            // In place, dY is in `dx`; each sample's dY is used up before its dX is written.
            let inplace = dy.is_empty();
            let count = if inplace {
                dx.len() / xn
            } else {
                dy.len() / yn
            };
            for i in 0..count {
                let dyi: &[f32] = if inplace {
                    &dx[i * xn..][..yn]
                } else {
                    &dy[i * yn..][..yn]
                };
                let dyi = Mat::new(dyi, r, self.cout)?;
                if !part.is_empty() {
                    self.im2col(&x[i * xn..][..xn], xs, ys, col);
                    gemm(
                        1.0,
                        Mat::new(col, r, kd)?.t(),
                        dyi,
                        1.0,
                        MatMut::new(part, kd, self.cout)?,
                        pack,
                    )?;
                }
                if !dx.is_empty() {
                    gemm(1.0, dyi, w.t(), 0.0, MatMut::new(col, r, kd)?, pack)?;
                    let dxi = &mut dx[i * xn..][..xn];
                    if !acc {
                        dxi.fill(0.0);
                    }
                    self.col2im(col, xs, ys, dxi);
                }
            }
            Ok(())
        })?;
        if let (true, Some(gw)) = (dense_gw && t > 1, gw_sum) {
            for g in groups[..t].iter().flatten() {
                for (a, p) in gw.iter_mut().zip(g.4.iter()) {
                    *a += p;
                }
            }
        }
        Ok(())
    }
}
