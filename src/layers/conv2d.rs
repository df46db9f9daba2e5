//! 2-D convolution, NHWC, weights `[kh, kw, cin, cout]`.
//!
//! Forward and backward work one sample at a time through an im2col matrix of that sample only
//! (`[ho·wo × kh·kw·cin]` in the shared scratch — never a whole batch), then a GEMM. A 1×1
//! stride-1 unpadded convolution is a plain GEMM over every pixel and needs no scratch.

use dropit_simd::conv;
use dropit_simd::gemm::{Mat, MatMut};
use dropit_simd::spmm::ConvGeom;
use rand_xoshiro::Xoshiro256PlusPlus;

use super::bands::Bands;
use super::contract::{Dims, Layout, Mode, Needs, Op, ParamDecl, Params, params};
use super::par::{each, max_groups, split};
use super::{Bwd, Fwd, gemm, gemm_words, held, missing, not_in_place, pack_input, packed_input};
use crate::arena::{f32s_mut, words_for_f32};
use crate::error::{Result, shape_err};
use crate::init::{normal, uniform};
use crate::saved::InputSave;
use crate::shape::Shape;
use dropit_simd::spmm;

/// `Conv2d(cin, cout, kernel, stride, padding)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
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

    /// A 1×1 convolution's products, shared out among the workers as a Linear's.
    fn bands(&self) -> Bands {
        Bands {
            kind: Self::KIND,
            inp: self.cin,
            out: self.cout,
        }
    }

    fn kdim(&self) -> usize {
        self.k.0 * self.k.1 * self.cin
    }

    /// Which passes run the direct kernels (`dropit_simd::conv`) for input shape `x` on this
    /// CPU, chosen from bench group `conv` on the cnn's 3×3 layers: the weight gradient wherever
    /// there is a kernel at stride 1 (at stride 2, im2col + GEMM measured faster); forward and
    /// the input gradient at stride 1 while the kernel's depth (`kh·kw` times the channels it
    /// sums over) is at most [`DIRECT_MAX_DEPTH`] — deeper, the weights no longer stay in L1
    /// across pixel tiles and im2col + GEMM (which reads the im2col rows in place and blocks
    /// the depth) measured faster.
    fn direct(&self, x: Shape) -> Direct {
        if self.pointwise() {
            return Direct::default();
        }
        let d = conv::supported(&self.geom(1, x));
        let taps = self.k.0 * self.k.1;
        let s1 = self.stride == (1, 1);
        Direct {
            grad_w: d.forward && s1,
            forward: d.forward && s1 && taps * self.cin <= DIRECT_MAX_DEPTH,
            grad_x: d.grad_x && taps * self.cout <= DIRECT_MAX_DEPTH,
        }
    }

    /// Words one worker needs for one sample: the im2col matrix, the GEMMs' packing space, and
    /// the direct weight gradient's padded input.
    fn unit_parts(&self, x: Shape, y: Shape) -> [usize; 3] {
        let (r, kd, co) = (y.rows(), self.kdim(), self.cout);
        let pack = gemm_words(r, kd, co)
            .max(gemm_words(kd, r, co))
            .max(gemm_words(r, co, kd));
        let d = self.direct(x);
        let direct = match d.forward || d.grad_w || d.grad_x {
            true => words_for_f32(conv::buf_len(&self.geom(1, x)).unwrap_or(usize::MAX)),
            false => 0,
        };
        // Saturating: an absurd size becomes a plan too large to allocate, never a wrapped one.
        [words_for_f32(r.saturating_mul(kd)), pack, direct]
    }

    fn unit_words(&self, x: Shape, y: Shape) -> usize {
        self.unit_parts(x, y)
            .iter()
            .fold(0, |a, &w| a.saturating_add(w))
    }

    /// Splits a worker's scratch into the im2col matrix, the GEMMs' packing space and the direct
    /// kernel's buffer.
    fn split_scratch<'s>(
        &self,
        xs: Shape,
        ys: Shape,
        scratch: &'s mut [u64],
    ) -> (&'s mut [f32], &'s mut [u64], &'s mut [f32]) {
        let [col, pack, _] = self.unit_parts(xs, ys);
        let (c, rest) = scratch.split_at_mut(col);
        let (p, d) = rest.split_at_mut(pack.min(rest.len()));
        (&mut f32s_mut(c)[..ys.rows() * self.kdim()], p, f32s_mut(d))
    }

    fn weight_len(&self) -> usize {
        self.k.0 * self.k.1 * self.cin * self.cout
    }

    /// Per worker: a sample's im2col matrix and packing space (and the direct kernels' padded
    /// copy); with more than one worker, also a private weight gradient that is summed in worker
    /// order (so a run is reproducible for a given thread count); the flipped weights of the
    /// direct input gradient. A pointwise convolution needs only packing space for the batch.
    fn scratch_words(&self, n: usize, x: Shape, y: Shape, threads: usize) -> usize {
        if self.pointwise() {
            return self.bands().words(n * x.rows(), threads);
        }
        let t = max_groups(n, threads);
        let wl = words_for_f32(self.weight_len());
        let partial = if t > 1 { wl } else { 0 };
        let flipped = if self.direct(x).grad_x { wl } else { 0 };
        t.saturating_mul(self.unit_words(x, y).saturating_add(partial))
            .saturating_add(flipped)
    }

    /// He initialisation (normal, fan-out, as torchvision's ResNets); bias as PyTorch's default.
    fn init_weights(&self, p: &mut [f32], rng: &mut Xoshiro256PlusPlus) {
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
    fn in_place(&self, x: Shape, y: Shape) -> bool {
        x.numel() == y.numel() && !self.pointwise()
    }

    /// Forward.
    fn run_forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let (xs, ys) = (f.x_shape, f.y_shape);
        // In place, the input is in `y`: pack it (DropIT) before it is overwritten.
        let src: &[f32] = f.x.buf().unwrap_or(f.y);
        match (self.save.sparse(), f.packed.take()) {
            (Some(sp), Some(p)) if f.mode == Mode::Train && p.packs => {
                pack_input(sp, src, f.n, xs.numel(), p, f.threads)?
            }
            _ => {}
        }
        let (w, bias) = f.p.split_at(self.weight_len());
        let beta = if self.bias { 1.0 } else { 0.0 };
        let wm = Mat::new(w, self.kdim(), self.cout)?;
        if self.pointwise() {
            let x = not_in_place(f.x, Self::KIND)?;
            let rows = f.n * xs.rows();
            let b = self.bias.then_some(bias);
            return (self.bands()).forward(x, rows, w, b, f.y, f.scratch, f.threads);
        }
        let (per, _) = split(f.n, f.threads);
        let unit = self.unit_words(xs, ys);
        let groups =
            f.y.chunks_mut(per * ys.numel())
                .zip(f.x.chunks(per * xs.numel()))
                .zip(f.scratch.chunks_mut(unit));
        let (direct, g1) = (self.direct(xs).forward, self.geom(1, xs));
        each(groups, |((y, x), s)| {
            let (col, pack, dbuf) = self.split_scratch(xs, ys, s);
            for (i, y) in y.chunks_exact_mut(ys.numel()).enumerate() {
                if direct {
                    // The kernel copies the sample first, so `y` may hold the input (in place).
                    let xi = x.map(|x| &x[i * xs.numel()..][..xs.numel()]);
                    let b = self.bias.then_some(bias);
                    conv::forward(&g1, xi, &w[..self.weight_len()], b, y, dbuf)?;
                    continue;
                }
                // im2col copies the sample first, so `y` may hold the input (in place).
                let xi = match x {
                    Some(x) => &x[i * xs.numel()..][..xs.numel()],
                    None => &*y,
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

    /// Backward.
    fn run_backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let (xs, ys) = (b.x_shape, b.y_shape);
        let wl = self.weight_len();
        let w = Mat::new(&b.p[..wl], self.kdim(), self.cout)?;
        let (gw, gb) = b.g.split_at_mut(wl);
        // In place, dY is in `dx` (still whole here: the loop below overwrites it sample by sample).
        let dy_all: &[f32] = match (b.dy.buf(), b.dx.as_deref()) {
            (Some(dy), _) => dy,
            (None, Some(dx)) => dx,
            (None, None) => return Err(super::planner_bug(Self::KIND, "in place without dX")),
        };
        if self.bias {
            for row in dy_all.chunks_exact(self.cout) {
                for (g, d) in gb.iter_mut().zip(row) {
                    *g += d;
                }
            }
        }
        // DropIT: grad_W straight from the packed input, with no im2col.
        // Unless the planner rebuilds the input instead (then it is in `b.x` or `b.rebuild`).
        let rebuild = b.rebuild;
        let sparse = self
            .save
            .sparse()
            .filter(|_| b.x.is_none() && rebuild.is_none());
        if let Some(sp) = sparse {
            let packed = b.packed.ok_or_else(|| missing("Conv2d"))?;
            let pk = packed_input(sp, b.n, xs.numel(), packed)?;
            // Each worker a band of grad_W's rows, the same bits for any number of workers.
            let (g, rows) = (self.geom(b.n, xs), self.kdim());
            let (per, _) = split(rows, b.threads);
            each(gw.chunks_mut(per * self.cout).enumerate(), |(k, part)| {
                Ok(spmm::conv2d_grad_w_rows(&pk, &g, dy_all, part, k * per)?)
            })?;
        }
        let x = if sparse.is_none() && rebuild.is_none() {
            Some(held(b.x, Self::KIND)?)
        } else {
            None
        };
        let has_x = x.is_some() || rebuild.is_some();
        if self.pointwise() {
            let (rows, bands) = (b.n * xs.rows(), self.bands());
            let dy = not_in_place(b.dy, Self::KIND)?;
            if let Some(x) = x {
                let dym = Mat::new(dy, rows, self.cout)?;
                bands.grad_w(x, rows, dym, gw, b.scratch, b.threads)?;
            } else if let Some(rb) = rebuild {
                bands.grad_w_rebuilt(rb, rows, dy, gw, b.scratch, b.threads)?;
            }
            if let Some(dx) = b.dx.as_deref_mut() {
                bands.grad_x(dy, &b.p[..wl], b.acc, dx, b.scratch, b.threads)?;
            }
            return Ok(());
        }
        if !has_x && b.dx.is_none() {
            return Ok(());
        }
        let (per, t) = split(b.n, b.threads);
        let (xn, yn) = (xs.numel(), ys.numel());
        let unit = self.unit_words(xs, ys);
        // Scratch: per worker its unit; the partials; the flipped weights (direct input
        // gradient); per worker a sample buffer (rebuilt input).
        let d = self.direct(xs);
        let pwords = if t > 1 { t * words_for_f32(wl) } else { 0 };
        let fwords = if d.grad_x { words_for_f32(wl) } else { 0 };
        let sample = if rebuild.is_some() {
            words_for_f32(xn)
        } else {
            0
        };
        if b.scratch.len() < t * (unit + sample) + pwords + fwords {
            return Err(super::planner_bug(Self::KIND, "scratch too small"));
        }
        let (units, rest) = b.scratch.split_at_mut(t * unit);
        let (partials, rest) = rest.split_at_mut(pwords);
        let (flipped, samples) = rest.split_at_mut(fwords);
        let g1 = self.geom(1, xs);
        let wt = &mut f32s_mut(flipped)[..if d.grad_x { wl } else { 0 }];
        if d.grad_x {
            conv::flip_weights(&g1, &b.p[..wl], wt)?;
        }
        let wt: &[f32] = wt;
        let samples = if rebuild.is_some() { samples } else { &mut [] };
        let mut samples = samples
            .chunks_mut(sample.max(1))
            .map(|s| &mut f32s_mut(s)[..xn]);
        // Dense grad_W: one worker accumulates straight into it; several get private, zeroed
        // partials, summed below in worker order.
        let partials = &mut f32s_mut(partials)[..if has_x && t > 1 { t * wl } else { 0 }];
        partials.fill(0.0);
        let one = has_x && t == 1;
        let mut gw_one = Some(&mut *gw).filter(|_| one);
        let mut parts = partials.chunks_mut(wl.max(1));
        let dys = b.dy.buf();
        let xc = x.map(|x| x.chunks(per * xn));
        let dxc = b.dx.as_deref_mut().map(|d| d.chunks_mut(per * xn));
        let groups = (0..t).map(|g| {
            let part: Option<&mut [f32]> = gw_one.take().or_else(|| parts.next());
            (g, part)
        });
        let mut xc = xc.into_iter().flatten();
        let mut dxc = dxc.into_iter().flatten();
        let work = groups
            .map(|(g, part)| (g, part, (xc.next(), samples.next()), dxc.next()))
            .zip(units.chunks_mut(unit));
        let (r, kd, acc) = (ys.rows(), self.kdim(), b.acc);
        each(work, |((g, mut part, (x, mut buf), mut dx), s)| {
            let (col, pack, dbuf) = self.split_scratch(xs, ys, s);
            let count = per.min(b.n - g * per);
            for i in 0..count {
                // The sample's input: held, or rebuilt into this worker's buffer.
                let xi: Option<&[f32]> = match (x, rebuild, buf.as_deref_mut()) {
                    (Some(x), ..) => Some(&x[i * xn..][..xn]),
                    (None, Some(rb), Some(buf)) => {
                        rb.fill((g * per + i) * xn, buf)?;
                        Some(buf)
                    }
                    _ => None,
                };
                // In place, dY is in `dx`; each sample's dY is used up before its dX is written.
                if let (Some(part), Some(xi)) = (part.as_deref_mut(), xi) {
                    let dyi: &[f32] = match (dys, dx.as_deref()) {
                        (Some(dy), _) => &dy[(g * per + i) * yn..][..yn],
                        (None, Some(dx)) => &dx[i * xn..][..yn],
                        (None, None) => &[],
                    };
                    if d.grad_w {
                        conv::grad_w(&g1, xi, dyi, part, dbuf)?;
                    } else {
                        let dyi = Mat::new(dyi, r, self.cout)?;
                        self.im2col(xi, xs, ys, col);
                        gemm(
                            1.0,
                            Mat::new(col, r, kd)?.t(),
                            dyi,
                            1.0,
                            MatMut::new(part, kd, self.cout)?,
                            pack,
                        )?;
                    }
                }
                if let (Some(dx), true) = (dx.as_deref_mut(), d.grad_x) {
                    // In place (no `dys`), the kernel copies dY out of `dx` before writing it.
                    let dyi = dys.map(|dy| &dy[(g * per + i) * yn..][..yn]);
                    conv::grad_x(&g1, dyi, wt, &mut dx[i * xn..][..xn], acc, dbuf)?;
                } else if let Some(dx) = dx.as_deref_mut() {
                    let dyi: &[f32] = match dys {
                        Some(dy) => &dy[(g * per + i) * yn..][..yn],
                        None => &dx[i * xn..][..yn],
                    };
                    let dyi = Mat::new(dyi, r, self.cout)?;
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
        if has_x && t > 1 {
            for p in partials.chunks(wl.max(1)) {
                for (a, p) in gw.iter_mut().zip(p) {
                    *a += p;
                }
            }
        }
        Ok(())
    }
}

/// The output shape of a convolution window `g` over `x` (`hw`: its output height and width, or
/// why it cannot fit), with `c` channels; the error names the layer and the window.
pub(super) fn window_out(
    name: &str,
    x: Shape,
    g: &ConvGeom,
    hw: dropit_simd::Result<(usize, usize)>,
    c: usize,
) -> Result<Shape> {
    match hw {
        Ok((ho, wo)) => Ok(Shape::new(ho, wo, c)),
        Err(e) => shape_err(
            name,
            format_args!(
                "a {}×{} kernel, stride {:?}, padding {:?} that fits ({e})",
                g.kh, g.kw, g.stride, g.pad
            ),
            x,
        ),
    }
}

/// Deepest direct forward or input gradient (`kh·kw·channels`): the cnn's 3×3 layers over 32
/// channels ran faster direct (1.4× forward, 1.2× input gradient), over 64 and 128 slower than
/// im2col + GEMM (1.24× and 1.47× forward; bench group `conv`).
const DIRECT_MAX_DEPTH: usize = 288;

/// Which passes of a layer run the direct kernels.
#[derive(Debug, Clone, Copy, Default)]
struct Direct {
    forward: bool,
    grad_w: bool,
    grad_x: bool,
}

impl Op for Conv2d {
    const KIND: &'static str = "Conv2d";

    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if x.c != self.cin || self.cout == 0 {
            return shape_err(name, format_args!("input [h, w, {}]", self.cin), x);
        }
        let g = self.geom(1, x);
        window_out(name, x, &g, g.out_hw(), self.cout)
    }

    /// `weight` `[cout, cin, kh, kw]` (ours `[kh, kw, cin, cout]`), `bias` `[cout]`.
    fn params(&self) -> Params {
        let (kh, kw, cin, cout) = (self.k.0, self.k.1, self.cin, self.cout);
        let layout = Layout::Hwio { kh, kw, cin, cout };
        let w = ParamDecl::param("weight", &[cout, cin, kh, kw], layout);
        if self.bias {
            params([w, ParamDecl::param("bias", &[cout], Layout::Same)])
        } else {
            params([w])
        }
    }

    /// Saves its input for grad_W — held, or packed under DropIT; PyTorch keeps it dense.
    /// A rebuilt input is taken a sample at a time (one sample's buffer per worker), by a 1×1
    /// convolution a block of pixels at a time ([`Bands::grad_w_rebuilt`]).
    fn needs(&self, d: &Dims) -> Needs {
        let needs = Needs::none()
            .input(&self.save, d.x_elems())
            .scratch(self.scratch_words(d.n, d.x, d.y, d.threads))
            .in_place(self.in_place(d.x, d.y));
        if self.pointwise() {
            return needs.rebuild_scratch(self.bands().rebuild_words());
        }
        let t = max_groups(d.n, d.threads);
        needs.rebuild_scratch(t.saturating_mul(words_for_f32(d.x.numel())))
    }

    fn init(&self, p: &mut [f32], _state: &mut [f32], rng: &mut Xoshiro256PlusPlus) {
        self.init_weights(p, rng)
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        self.run_forward(f)
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        self.run_backward(b)
    }

    fn input_save(&self) -> Option<&InputSave> {
        Some(&self.save)
    }

    fn input_save_mut(&mut self) -> Option<&mut InputSave> {
        Some(&mut self.save)
    }
}
