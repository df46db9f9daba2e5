//! Each layer's forward and backward on a [`Backend`], side by side: the launches of the
//! kernels of `src/cuda/kernels/` and the dense products, over the buffers the plan gave the
//! node ([`Call`]). What each layer keeps is what it declares for the CPU (the same entries of
//! its saved context), so the plan's sizes hold.

mod attention;
mod dense;
mod norm;

pub(super) use dense::geometry;
pub(super) use norm::batchnorm_commit;

use crate::error::{Result, config_err};
use crate::layers::Layer;
use crate::shape::Shape;

use super::ops::{self, PackedAt, Work, ptr, run, u};
use super::{Arg, Backend, Gemm, Grid};

/// A node's buffers for one call (byte offsets into the block), forward or backward.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Call {
    /// Samples.
    pub n: usize,
    pub xs: Shape,
    pub ys: Shape,
    /// Forward: the input (the output itself when in place) and the second input.
    pub x: usize,
    pub x2: usize,
    pub y: usize,
    /// Parameters and their gradients.
    pub p: usize,
    pub g: usize,
    /// The saved context's entries.
    pub saved: [usize; 4],
    /// Forward keeps what backward needs (training, not frozen).
    pub saves: bool,
    /// The packed input (DropIT), and whether this node packs it.
    pub packed: Option<(PackedAt, bool)>,
    /// Backward: dY (dX itself when in place), dX and the second input's gradient where they
    /// are of use, and whether each is added to.
    pub dy: usize,
    pub dx: Option<usize>,
    pub dx2: Option<usize>,
    pub acc: [bool; 2],
    /// The device's own scratch (see [`scratch_floats`]).
    pub scratch: usize,
    /// Running statistics (batch norm).
    pub state: usize,
    /// A convolution's geometry ([`geometry`], 11 u64).
    pub geom: usize,
}

impl Call {
    fn x_len(&self) -> usize {
        self.n * self.xs.numel()
    }

    fn y_len(&self) -> usize {
        self.n * self.ys.numel()
    }
}

/// A row-major matrix in the block: its first float, row stride, and whether it is used
/// transposed.
#[derive(Debug, Clone, Copy)]
struct Mat {
    at: usize,
    ld: usize,
    t: bool,
}

fn mat(at: usize, ld: usize) -> Mat {
    Mat { at, ld, t: false }
}

fn tr(at: usize, ld: usize) -> Mat {
    Mat { at, ld, t: true }
}

/// `batch` products `C (m × n) = α·op(A)·op(B) + β·C` of row-major matrices, product `i` of
/// each operand `i·strides` floats after the first: cuBLAS's column-major product of the
/// transposes.
#[allow(clippy::too_many_arguments)]
fn gemm<B: Backend>(
    b: &mut B,
    (m, n, k): (usize, usize, usize),
    alpha: f32,
    a: Mat,
    bm: Mat,
    (c, ldc, beta): (usize, usize, f32),
    (batch, [sa, sb, sc]): (usize, [usize; 3]),
) -> Result<()> {
    let base = b.base();
    let g = Gemm {
        trans_a: bm.t,
        trans_b: a.t,
        m: n,
        n: m,
        k,
        alpha,
        a: (base + bm.at as u64, bm.ld),
        b: (base + a.at as u64, a.ld),
        beta,
        c: (base + c as u64, ldc),
        batch,
        strides: [sb, sa, sc],
    };
    // SAFETY: every caller passes planned buffers of the shapes it names (each operand of
    // each product inside its tensor), so every matrix lies inside the block.
    unsafe { b.gemm(&g) }
}

/// One product of contiguous row-major matrices.
fn gemm1<B: Backend>(
    b: &mut B,
    mnk: (usize, usize, usize),
    a: Mat,
    bm: Mat,
    c: (usize, usize, f32),
) -> Result<()> {
    gemm(b, mnk, 1.0, a, bm, c, (1, [0; 3]))
}

fn beta(acc: bool) -> f32 {
    if acc { 1.0 } else { 0.0 }
}

fn flag(v: bool) -> Arg {
    Arg::I32(v as i32)
}

/// `y = x` or `y += x` over `n` floats.
fn copy<B: Backend>(b: &mut B, x: usize, y: usize, n: usize, acc: bool) -> Result<()> {
    let args = [ptr(b, x), ptr(b, y), u(n), flag(acc)];
    run(b, "copy_acc", Grid::Items(n), &args)
}

/// Whether the device runs `layer` as configured: `Err` naming the layer and why not.
pub(super) fn check(name: &str, layer: &Layer) -> Result<()> {
    let lean = match layer {
        Layer::LayerNorm(l) => l.lean,
        Layer::Gelu(g) => g.lean,
        Layer::Attention(a) => a.lean,
        Layer::BatchNorm2d(bn) => bn.lean,
        Layer::Flatten(_)
        | Layer::Conv2d(_)
        | Layer::DepthwiseConv2d(_)
        | Layer::Relu6(_)
        | Layer::GlobalAvgPool(_)
        | Layer::Relu(_)
        | Layer::Linear(_)
        | Layer::Add(_)
        | Layer::PosEmbed(_)
        | Layer::TokenSelect(_) => false,
        other => {
            return config_err(
                name,
                format_args!(
                    "{} layers do not run on the device yet (it runs {})",
                    other.kind(),
                    super::trainer::SUPPORTED
                ),
            );
        }
    };
    if lean {
        return config_err(
            name,
            "the lean forms of norms, GELU and attention do not run on the device (DropIT's \
             bf16 values do)",
        );
    }
    Ok(())
}

/// Floats of the device's own scratch a layer uses for the planned batch: a Linear's unpacked
/// input (DropIT through a dense product), attention's probabilities and their gradient for
/// one head, a convolution's columns for a chunk of samples, batch norm's backward constants.
pub(super) fn scratch_floats(layer: &Layer, n: usize, (xs, ys): (Shape, Shape)) -> usize {
    match layer {
        Layer::Linear(l) if l.save.sparse().is_some_and(|s| !s.direct(false)) => n * xs.numel(),
        Layer::Attention(_) => 2 * n * xs.rows() * xs.rows(),
        Layer::Conv2d(conv) => {
            let (chunk, per) = dense::conv_chunk(conv, n, ys);
            chunk * per
        }
        Layer::BatchNorm2d(bn) => 3 * bn.c,
        _ => 0,
    }
}

/// The layer's forward.
pub(super) fn forward<B: Backend>(b: &mut B, layer: &Layer, c: &Call, work: &Work) -> Result<()> {
    match layer {
        Layer::Flatten(_) => match c.x == c.y {
            true => Ok(()),
            false => copy(b, c.x, c.y, c.x_len(), false),
        },
        Layer::Relu(_) => match c.saves {
            true => ops::relu_forward(b, (c.x, c.y, c.y_len()), c.saved[0]),
            false => {
                let n = c.y_len();
                let args = [
                    ptr(b, c.x),
                    ptr(b, c.y),
                    u(n),
                    Arg::Ptr(0),
                    u(n.div_ceil(64)),
                ];
                run(b, "relu_forward", Grid::Items(n.div_ceil(64)), &args)
            }
        },
        Layer::Gelu(g) => {
            let keep = match c.saves {
                true => ptr(b, c.saved[0]),
                false => Arg::Ptr(0),
            };
            let n = c.y_len();
            let args = [ptr(b, c.x), ptr(b, c.y), u(n), flag(g.tanh), keep];
            run(b, "gelu_forward", Grid::Items(n), &args)
        }
        Layer::Add(_) => {
            let n = c.y_len();
            let args = [ptr(b, c.x), ptr(b, c.x2), ptr(b, c.y), u(n)];
            run(b, "add", Grid::Items(n), &args)
        }
        Layer::Linear(l) => dense::linear_forward(b, l, c, work),
        Layer::LayerNorm(l) => norm::layernorm_forward(b, l, c),
        Layer::Attention(a) => attention::attention_forward(b, a, c),
        Layer::PosEmbed(pe) => attention::pos_embed_forward(b, pe, c),
        Layer::TokenSelect(t) => {
            let (tokens, d) = (c.xs.rows(), c.ys.c);
            let args = [
                ptr(b, c.x),
                u(tokens * d),
                u(t.index * d),
                ptr(b, c.y),
                u(d),
                u(0),
                u(d),
                u(c.n),
                flag(false),
            ];
            run(b, "copy_blocks", Grid::Items(c.n * d), &args)
        }
        Layer::Conv2d(conv) => dense::conv_forward(b, conv, c, work),
        Layer::DepthwiseConv2d(dw) => dense::depthwise_forward(b, dw, c, work),
        Layer::Relu6(_) => {
            let (n, words) = (c.y_len(), c.y_len().div_ceil(64));
            let bits = match c.saves {
                true => ptr(b, c.saved[0]),
                false => Arg::Ptr(0),
            };
            let args = [ptr(b, c.x), ptr(b, c.y), u(n), bits, u(words)];
            // x and y: n floats; the mask (its planned context) a word per 64.
            run(b, "relu6_forward", Grid::Items(words), &args)
        }
        Layer::BatchNorm2d(bn) => norm::batchnorm_forward(b, bn, c),
        Layer::GlobalAvgPool(_) => avgpool(b, c, false),
        _ => config_err(layer.kind(), "not run on the device"),
    }
}

/// The layer's backward.
pub(super) fn backward<B: Backend>(b: &mut B, layer: &Layer, c: &Call, work: &Work) -> Result<()> {
    let [acc, acc2] = c.acc;
    match layer {
        Layer::Flatten(_) => match c.dx.filter(|&dx| dx != c.dy) {
            Some(dx) => copy(b, c.dy, dx, c.x_len(), acc),
            None => Ok(()),
        },
        Layer::Relu(_) | Layer::Relu6(_) => match c.dx {
            Some(dx) => ops::apply_mask(b, (c.dy, dx, c.y_len()), c.saved[0], acc),
            None => Ok(()),
        },
        Layer::Gelu(g) => match c.dx {
            Some(dx) => {
                let n = c.y_len();
                let args = [
                    ptr(b, c.dy),
                    ptr(b, c.saved[0]),
                    ptr(b, dx),
                    u(n),
                    flag(g.tanh),
                    flag(acc && dx != c.dy),
                ];
                run(b, "gelu_backward", Grid::Items(n), &args)
            }
            None => Ok(()),
        },
        Layer::Add(_) => {
            let n = c.y_len();
            if let Some(dx) = c.dx.filter(|&dx| dx != c.dy) {
                copy(b, c.dy, dx, n, acc)?;
            }
            match c.dx2 {
                Some(dx2) => copy(b, c.dy, dx2, n, acc2),
                None => Ok(()),
            }
        }
        Layer::Linear(l) => dense::linear_backward(b, l, c, work),
        Layer::LayerNorm(l) => norm::layernorm_backward(b, l, c),
        Layer::Attention(a) => attention::attention_backward(b, a, c),
        Layer::PosEmbed(pe) => attention::pos_embed_backward(b, pe, c),
        Layer::TokenSelect(t) => match c.dx {
            Some(dx) => {
                let (tokens, d) = (c.xs.rows(), c.ys.c);
                let args = [
                    ptr(b, c.dy),
                    ptr(b, dx),
                    u(c.n),
                    u(tokens),
                    u(d),
                    u(t.index),
                    flag(acc),
                ];
                run(b, "token_select_backward", Grid::Items(c.x_len()), &args)
            }
            None => Ok(()),
        },
        Layer::Conv2d(conv) => dense::conv_backward(b, conv, c, work),
        Layer::DepthwiseConv2d(dw) => dense::depthwise_backward(b, dw, c, work),
        Layer::BatchNorm2d(bn) => norm::batchnorm_backward(b, bn, c),
        Layer::GlobalAvgPool(_) => avgpool(b, c, true),
        _ => config_err(layer.kind(), "not run on the device"),
    }
}

fn avgpool<B: Backend>(b: &mut B, c: &Call, back: bool) -> Result<()> {
    let (rows, ch) = (c.xs.rows(), c.xs.c);
    let scale = Arg::F32(1.0 / rows as f32);
    match (back, c.dx) {
        (false, _) => {
            let args = [ptr(b, c.x), ptr(b, c.y), u(c.n), u(rows), u(ch), scale];
            run(b, "avgpool", Grid::Items(c.n * ch), &args)
        }
        (true, Some(dx)) => {
            let args = [
                ptr(b, c.dy),
                ptr(b, dx),
                u(c.n),
                u(rows),
                u(ch),
                scale,
                flag(c.acc[0]),
            ];
            run(b, "avgpool_backward", Grid::Items(c.x_len()), &args)
        }
        (true, None) => Ok(()),
    }
}
