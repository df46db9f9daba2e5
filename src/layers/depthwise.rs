//! Depthwise 2-D convolution (groups = channels, one filter per channel), NHWC, weights
//! `[kh, kw, c]` — PyTorch's `Conv2d(c, c, k, groups=c)`, whose weight is `[c, 1, kh, kw]`.
//!
//! Direct kernels (`dropit_simd::depthwise`), no im2col: each output pixel is a few taps of
//! channel-contiguous multiply-adds. Work is split over sample groups; with several workers each
//! accumulates a private weight gradient, summed in worker order (reproducible per thread count).
//! Under DropIT the weight gradient comes straight from the packed input
//! (`spmm::depthwise_grad_w`).

use dropit_simd::depthwise;
use dropit_simd::spmm::{self, ConvGeom};
use rand_xoshiro::Xoshiro256PlusPlus;

use super::contract::{Dims, Layout, Mode, Needs, Op, ParamDecl, Params, params};
use super::conv2d::window_out;
use super::par::{each, max_groups, split};
use super::{Bwd, Fwd, Rebuilder, missing, not_in_place, pack_input, packed_input, planner_bug};
use crate::arena::{f32s_mut, words_for_f32};
use crate::error::{Result, shape_err};
use crate::init::{normal, uniform};
use crate::saved::InputSave;
use crate::shape::Shape;

/// `Conv2d(c, c, k, stride, padding, groups=c)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct DepthwiseConv2d {
    /// Channels (in and out).
    pub c: usize,
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

impl DepthwiseConv2d {
    /// A square `k×k` depthwise convolution over `c` channels, without bias (as in MobileNets).
    pub fn new(c: usize, k: usize, stride: usize, pad: usize) -> Self {
        DepthwiseConv2d {
            c,
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

    fn geom(&self, n: usize, x: Shape) -> ConvGeom {
        ConvGeom {
            n,
            h: x.h,
            w: x.w,
            cin: self.c,
            cout: self.c,
            kh: self.k.0,
            kw: self.k.1,
            stride: self.stride,
            pad: self.pad,
        }
    }

    fn weight_len(&self) -> usize {
        self.k.0 * self.k.1 * self.c
    }
}

/// Where the dense weight gradient reads the input: held whole, or rebuilt on demand.
struct Source<'a> {
    held: Option<&'a [f32]>,
    rebuild: Option<&'a Rebuilder<'a>>,
    /// Samples.
    n: usize,
    /// Input and output shapes of one sample.
    shapes: (Shape, Shape),
}

impl DepthwiseConv2d {
    /// The dense weight gradient added onto `gw`, each worker over its group of samples: from
    /// the held input, or from the input rebuilt a sample at a time into the worker's buffer
    /// (the kernel adds sample after sample onto the gradient, so both give the same bits).
    /// One worker sums straight into `gw`; several into private partials at the head of
    /// `scratch`, added onto `gw` in worker order.
    fn grad_w_dense(
        &self,
        x: Source<'_>,
        dy: &[f32],
        gw: &mut [f32],
        scratch: &mut [u64],
        threads: usize,
    ) -> Result<()> {
        let (wl, (xs, ys)) = (self.weight_len(), x.shapes);
        let (xn, yn) = (xs.numel(), ys.numel());
        let (per, t) = split(x.n, threads);
        let pw = if t > 1 { words_for_f32(wl) } else { 0 };
        let sw = if x.rebuild.is_some() {
            words_for_f32(xn)
        } else {
            0
        };
        if scratch.len() < t.saturating_mul(pw + sw) {
            return Err(planner_bug(Self::KIND, "scratch too small"));
        }
        let (parts, samples) = scratch.split_at_mut(t * pw);
        let run = |g: usize, part: &mut [f32], buf: &mut [u64]| -> Result<()> {
            let (s0, count) = (g * per, per.min(x.n - g * per));
            let dy = &dy[s0 * yn..][..count * yn];
            if let Some(held) = x.held {
                let xg = &held[s0 * xn..][..count * xn];
                return Ok(depthwise::grad_weight(xg, &self.geom(count, xs), dy, part)?);
            }
            let rb = x.rebuild.ok_or_else(|| missing(Self::KIND))?;
            let buf = &mut f32s_mut(buf)[..xn];
            for (i, dyi) in dy.chunks_exact(yn).enumerate() {
                rb.fill((s0 + i) * xn, buf)?;
                depthwise::grad_weight(buf, &self.geom(1, xs), dyi, part)?;
            }
            Ok(())
        };
        let mut bufs = samples.chunks_mut(sw.max(1));
        if t == 1 {
            return run(0, gw, bufs.next().unwrap_or(&mut []));
        }
        let parts = f32s_mut(parts);
        let work = parts.chunks_mut(2 * pw).enumerate().map(|(g, part)| {
            let buf = bufs.next().unwrap_or(&mut []);
            (g, &mut part[..wl], buf)
        });
        each(work, |(g, part, buf)| {
            part.fill(0.0);
            run(g, part, buf)
        })?;
        for part in parts.chunks(2 * pw) {
            gw.iter_mut().zip(&part[..wl]).for_each(|(g, p)| *g += p);
        }
        Ok(())
    }
}

impl Op for DepthwiseConv2d {
    const KIND: &'static str = "Conv2d(depthwise)";

    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if x.c != self.c || self.c == 0 {
            return shape_err(name, format_args!("input [h, w, {}]", self.c), x);
        }
        let g = self.geom(1, x);
        window_out(name, x, &g, depthwise::out_hw(&g), self.c)
    }

    /// `weight` `[c, 1, kh, kw]` (ours `[kh, kw, c]`), `bias` `[c]`.
    fn params(&self) -> Params {
        let (kh, kw, c) = (self.k.0, self.k.1, self.c);
        let w = ParamDecl::param("weight", &[c, 1, kh, kw], Layout::Hwc { kh, kw, c });
        if self.bias {
            params([w, ParamDecl::param("bias", &[c], Layout::Same)])
        } else {
            params([w])
        }
    }

    /// Saves its input for grad_W — held, or packed under DropIT; PyTorch keeps it dense. With
    /// several workers, each gets a private weight gradient in scratch; a rebuilt input is
    /// taken a sample at a time (one sample's buffer per worker).
    fn needs(&self, d: &Dims) -> Needs {
        let t = max_groups(d.n, d.threads);
        let partials = if t > 1 {
            t * words_for_f32(self.weight_len())
        } else {
            0
        };
        Needs::none()
            .input(&self.save, d.x_elems())
            .scratch(partials)
            .rebuild_scratch(t.saturating_mul(words_for_f32(d.x.numel())))
    }

    /// He initialisation (normal, fan-out = c·kh·kw, as torchvision's MobileNetV2); bias as
    /// PyTorch's default (fan-in kh·kw).
    fn init(&self, p: &mut [f32], _state: &mut [f32], rng: &mut Xoshiro256PlusPlus) {
        let std = libm::sqrtf(2.0 / (self.c * self.k.0 * self.k.1) as f32);
        let (w, b) = p.split_at_mut(self.weight_len());
        w.iter_mut().for_each(|v| *v = std * normal(rng));
        let bound = 1.0 / libm::sqrtf((self.k.0 * self.k.1) as f32);
        b.iter_mut().for_each(|v| *v = uniform(rng, -bound, bound));
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let (xs, ys) = (f.x_shape, f.y_shape);
        let x = not_in_place(f.x, Self::KIND)?;
        match (self.save.sparse(), f.packed.take()) {
            (Some(sp), Some(p)) if f.mode == Mode::Train && p.packs => {
                pack_input(sp, x, f.n, xs.numel(), p, f.threads)?
            }
            _ => {}
        }
        let (w, b) = f.p.split_at(self.weight_len());
        let bias = self.bias.then_some(b);
        let (per, _) = split(f.n, f.threads);
        let groups =
            f.y.chunks_mut(per * ys.numel())
                .zip(x.chunks(per * xs.numel()));
        each(groups, |(y, x)| {
            let g = self.geom(x.len() / xs.numel(), xs);
            Ok(depthwise::forward(x, &g, w, bias, y)?)
        })
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let (xs, ys) = (b.x_shape, b.y_shape);
        let wl = self.weight_len();
        let dy = not_in_place(b.dy, Self::KIND)?;
        let (gw, gb) = b.g.split_at_mut(wl);
        if self.bias {
            for row in dy.chunks_exact(self.c) {
                gb.iter_mut().zip(row).for_each(|(g, d)| *g += d);
            }
        }
        // DropIT, unless the planner rebuilds the input instead (then it is in `b.x` or
        // `b.rebuild`).
        let rebuild = b.rebuild;
        match self
            .save
            .sparse()
            .filter(|_| b.x.is_none() && rebuild.is_none())
        {
            Some(sp) => {
                let packed = b.packed.ok_or_else(|| missing(Self::KIND))?;
                let pk = packed_input(sp, b.n, xs.numel(), packed)?;
                spmm::depthwise_grad_w(&pk, &self.geom(b.n, xs), dy, gw)?;
            }
            None => {
                let x = Source {
                    held: b.x,
                    rebuild,
                    n: b.n,
                    shapes: (xs, ys),
                };
                self.grad_w_dense(x, dy, gw, b.scratch, b.threads)?;
            }
        }
        let (per, _) = split(b.n, b.threads);
        let (acc, w) = (b.acc, &b.p[..wl]);
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        let groups = dx
            .chunks_mut(per * xs.numel())
            .zip(dy.chunks(per * ys.numel()));
        each(groups, |(dx, dy)| {
            let g = self.geom(dx.len() / xs.numel(), xs);
            Ok(depthwise::backward_input(dy, &g, w, dx, acc)?)
        })
    }

    fn input_save(&self) -> Option<&InputSave> {
        Some(&self.save)
    }

    fn input_save_mut(&mut self) -> Option<&mut InputSave> {
        Some(&mut self.save)
    }
}
