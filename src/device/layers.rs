//! Each layer's forward and backward on a [`Backend`], side by side: the launches of the
//! kernels of `src/cuda/kernels/` and the dense products, over the buffers the plan gave the
//! node ([`Call`]). What each layer keeps is what it declares for the CPU (the same entries of
//! its saved context), so the plan's sizes hold.

use crate::error::{Result, config_err};
use crate::layers::{
    Attention, BatchNorm2d, Conv2d, DepthwiseConv2d, Layer, LayerNorm, Linear, PosEmbed,
};
use crate::shape::Shape;

use super::ops::{self, PackedAt, Work, ptr, run};
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

fn u(v: usize) -> Arg {
    Arg::U64(v as u64)
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
            let (chunk, per) = conv_chunk(conv, n, ys);
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
        Layer::Linear(l) => linear_forward(b, l, c, work),
        Layer::LayerNorm(l) => layernorm_forward(b, l, c),
        Layer::Attention(a) => attention_forward(b, a, c),
        Layer::PosEmbed(pe) => pos_embed_forward(b, pe, c),
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
        Layer::Conv2d(conv) => conv_forward(b, conv, c, work),
        Layer::DepthwiseConv2d(dw) => depthwise_forward(b, dw, c, work),
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
        Layer::BatchNorm2d(bn) => batchnorm_forward(b, bn, c),
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
        Layer::Linear(l) => linear_backward(b, l, c, work),
        Layer::LayerNorm(l) => layernorm_backward(b, l, c),
        Layer::Attention(a) => attention_backward(b, a, c),
        Layer::PosEmbed(pe) => pos_embed_backward(b, pe, c),
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
        Layer::Conv2d(conv) => conv_backward(b, conv, c, work),
        Layer::DepthwiseConv2d(dw) => depthwise_backward(b, dw, c, work),
        Layer::BatchNorm2d(bn) => batchnorm_backward(b, bn, c),
        Layer::GlobalAvgPool(_) => avgpool(b, c, true),
        _ => config_err(layer.kind(), "not run on the device"),
    }
}

/// `y = x·W + bias`; under DropIT, the input's largest elements packed for grad_W.
fn linear_forward<B: Backend>(b: &mut B, l: &Linear, c: &Call, work: &Work) -> Result<()> {
    let rows = c.n * c.xs.rows();
    let (i, o) = (l.inp, l.out);
    let beta = match l.bias {
        true => {
            let args = [ptr(b, c.p + 4 * i * o), ptr(b, c.y), u(rows), u(o)];
            run(b, "bias_rows", Grid::Items(rows * o), &args)?;
            1.0
        }
        false => 0.0,
    };
    gemm1(b, (rows, o, i), mat(c.x, i), mat(c.p, o), (c.y, o, beta))?;
    if let (true, Some((p, true))) = (c.saves, c.packed) {
        let t = ops::threshold(b, c.x, p.n, p.k, work)?;
        ops::pack(b, (c.x, p.n), &t, p.format, p.at, work)?;
    }
    Ok(())
}

/// grad_b, grad_W (from the held input, or the packed one: straight, or unpacked into the
/// scratch and multiplied), and dX = dY·Wᵀ.
fn linear_backward<B: Backend>(b: &mut B, l: &Linear, c: &Call, work: &Work) -> Result<()> {
    let rows = c.n * c.xs.rows();
    let (i, o) = (l.inp, l.out);
    if l.bias {
        let args = [ptr(b, c.dy), u(rows), u(o), ptr(b, c.g + 4 * i * o)];
        run(b, "column_sums", Grid::Items(o), &args)?;
    }
    let dy = mat(c.dy, o);
    match (l.save.sparse(), c.packed) {
        (Some(sp), Some((p, _))) if sp.direct(false) => {
            ops::linear_grad_w(b, &p, (i, o), c.dy, c.g, work)?;
        }
        (Some(_), Some((p, _))) => {
            ops::unpack(b, &p, c.scratch, work)?;
            gemm1(b, (i, o, rows), tr(c.scratch, i), dy, (c.g, o, 1.0))?;
        }
        _ => gemm1(b, (i, o, rows), tr(c.x, i), dy, (c.g, o, 1.0))?,
    }
    match c.dx {
        Some(dx) => gemm1(b, (rows, i, o), dy, tr(c.p, o), (dx, i, beta(c.acc[0]))),
        None => Ok(()),
    }
}

/// Rows normalized, x̂ and 1/σ kept (entries 1 and 0).
fn layernorm_forward<B: Backend>(b: &mut B, l: &LayerNorm, c: &Call) -> Result<()> {
    let rows = c.n * c.xs.rows();
    let keep = |b: &B, e: usize| match c.saves {
        true => ptr(b, c.saved[e]),
        false => Arg::Ptr(0),
    };
    let args = [
        ptr(b, c.x),
        ptr(b, c.y),
        u(rows),
        u(l.c),
        Arg::F32(l.eps),
        ptr(b, c.p),
        ptr(b, c.p + 4 * l.c),
        keep(b, 0),
        keep(b, 1),
    ];
    run(b, "ln_forward", Grid::Items(rows), &args)
}

fn layernorm_backward<B: Backend>(b: &mut B, l: &LayerNorm, c: &Call) -> Result<()> {
    let rows = c.n * c.xs.rows();
    let (inv, xhat) = (c.saved[0], c.saved[1]);
    let args = [
        ptr(b, c.dy),
        ptr(b, xhat),
        u(rows),
        u(l.c),
        ptr(b, c.g),
        ptr(b, c.g + 4 * l.c),
    ];
    run(b, "ln_backward_params", Grid::Items(l.c), &args)?;
    let Some(dx) = c.dx else { return Ok(()) };
    let args = [
        ptr(b, c.dy),
        ptr(b, xhat),
        ptr(b, c.p),
        ptr(b, inv),
        u(rows),
        u(l.c),
        ptr(b, dx),
        flag(c.acc[0] && dx != c.dy),
    ];
    run(b, "ln_backward_rows", Grid::Items(rows), &args)
}

/// The attention's geometry: tokens, width, heads, head width, and per sample the floats of
/// q|k|v, of the output and of one head's scores.
fn dims(a: &Attention, xs: Shape) -> (usize, usize, usize, usize, [usize; 3]) {
    let (t, d, h) = (xs.rows(), a.dim, a.heads);
    (t, d, h, d / h, [t * 3 * d, t * d, t * t])
}

/// Per head, over every sample at once: S = Q·Kᵀ/√hd into the scratch.
fn scores<B: Backend>(b: &mut B, a: &Attention, c: &Call, head: usize, x: usize) -> Result<()> {
    let (t, d, _, hd, [qkv, _, tt]) = dims(a, c.xs);
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let (q, k) = (x + 4 * head * hd, x + 4 * (d + head * hd));
    let strides = [qkv, qkv, tt];
    let (q, k) = (mat(q, 3 * d), tr(k, 3 * d));
    gemm(
        b,
        (t, t, hd),
        scale,
        q,
        k,
        (c.scratch, t, 0.0),
        (c.n, strides),
    )
}

/// Softmax(Q·Kᵀ/√hd)·V per head, the rows' log-sum-exp kept (entry 0); q|k|v is held.
fn attention_forward<B: Backend>(b: &mut B, a: &Attention, c: &Call) -> Result<()> {
    let (t, d, h, hd, [qkv, out, tt]) = dims(a, c.xs);
    for head in 0..h {
        scores(b, a, c, head, c.x)?;
        let lse = match c.saves {
            true => ptr(b, c.saved[0]),
            false => Arg::Ptr(0),
        };
        let rows = c.n * t;
        let args = [ptr(b, c.scratch), u(rows), u(t), lse, u(h), u(head)];
        run(b, "softmax_rows", Grid::Items(rows), &args)?;
        let v = mat(c.x + 4 * (2 * d + head * hd), 3 * d);
        let y = (c.y + 4 * head * hd, d, 0.0);
        gemm(
            b,
            (t, hd, t),
            1.0,
            mat(c.scratch, t),
            v,
            y,
            (c.n, [tt, qkv, out]),
        )?;
    }
    Ok(())
}

/// The probabilities again from the scores and the kept log-sum-exp, then dV = Pᵀ·dO,
/// dS = P∘(dP − rowdot), dQ = dS·K/√hd, dK = dSᵀ·Q/√hd.
fn attention_backward<B: Backend>(b: &mut B, a: &Attention, c: &Call) -> Result<()> {
    let Some(dx) = c.dx else { return Ok(()) };
    let (t, d, h, hd, [qkv, out, tt]) = dims(a, c.xs);
    let scale = 1.0 / libm::sqrtf(hd as f32);
    let (p, dp) = (c.scratch, c.scratch + 4 * c.n * tt);
    let bt = beta(c.acc[0]);
    let rows = c.n * t;
    for head in 0..h {
        let part = |x: usize, j: usize| x + 4 * (j * d + head * hd);
        scores(b, a, c, head, c.x)?;
        let args = [ptr(b, p), u(rows), u(t), ptr(b, c.saved[0]), u(h), u(head)];
        run(b, "exp_rows", Grid::Items(rows * t), &args)?;
        let dout = mat(c.dy + 4 * head * hd, d);
        let v = part(c.x, 2);
        let n = c.n;
        gemm(
            b,
            (t, t, hd),
            1.0,
            dout,
            tr(v, 3 * d),
            (dp, t, 0.0),
            (n, [out, qkv, tt]),
        )?;
        let dv = (part(dx, 2), 3 * d, bt);
        gemm(b, (t, hd, t), 1.0, tr(p, t), dout, dv, (n, [tt, out, qkv]))?;
        let args = [ptr(b, dp), ptr(b, p), u(rows), u(t)];
        run(b, "softmax_backward_rows", Grid::Items(rows), &args)?;
        let (k, q) = (mat(part(c.x, 1), 3 * d), mat(part(c.x, 0), 3 * d));
        let dq = (part(dx, 0), 3 * d, bt);
        gemm(b, (t, hd, t), scale, mat(dp, t), k, dq, (n, [tt, qkv, qkv]))?;
        let dk = (part(dx, 1), 3 * d, bt);
        gemm(b, (t, hd, t), scale, tr(dp, t), q, dk, (n, [tt, qkv, qkv]))?;
    }
    Ok(())
}

/// Patches → tokens: the cls token first, positions added.
fn pos_embed_forward<B: Backend>(b: &mut B, pe: &PosEmbed, c: &Call) -> Result<()> {
    let (d, cls) = (pe.dim, pe.cls as usize);
    let tokens = pe.patches + cls;
    let pos = c.p + 4 * cls * d;
    let args = [
        ptr(b, c.x),
        ptr(b, c.p),
        ptr(b, pos),
        ptr(b, c.y),
        u(c.n),
        u(tokens),
        u(d),
        u(cls),
    ];
    run(b, "pos_embed_forward", Grid::Items(c.y_len()), &args)
}

fn pos_embed_backward<B: Backend>(b: &mut B, pe: &PosEmbed, c: &Call) -> Result<()> {
    let (d, cls) = (pe.dim, pe.cls as usize);
    let tokens = pe.patches + cls;
    let per = tokens * d;
    // The cls token's gradient (its first d floats), then the positions' (every token).
    for (len, g) in [(cls * d, c.g), (per, c.g + 4 * cls * d)] {
        if len > 0 {
            let args = [ptr(b, c.dy), u(c.n), u(per), u(len), ptr(b, g)];
            run(b, "sample_sums", Grid::Items(len), &args)?;
        }
    }
    let Some(dx) = c.dx else { return Ok(()) };
    let width = pe.patches * d;
    let args = [
        ptr(b, c.dy),
        u(per),
        u(cls * d),
        ptr(b, dx),
        u(width),
        u(0),
        u(width),
        u(c.n),
        flag(c.acc[0]),
    ];
    run(b, "copy_blocks", Grid::Items(c.x_len()), &args)
}

/// Floats of columns (im2col) a convolution's chunk of samples may take at most (one sample's
/// columns when those are more).
const COLS_MAX: usize = 1 << 22;

/// Samples per chunk of a convolution's columns, and the floats of one sample's.
fn conv_chunk(conv: &Conv2d, n: usize, ys: Shape) -> (usize, usize) {
    let per = ys.rows() * conv.k.0 * conv.k.1 * conv.cin;
    ((COLS_MAX / per.max(1)).clamp(1, n.max(1)), per)
}

/// A convolution's geometry as the kernels take it (11 counts), for the convolutions.
pub(super) fn geometry(layer: &Layer, xs: Shape, ys: Shape) -> Option<[u64; 11]> {
    let (k, stride, pad) = match layer {
        Layer::Conv2d(c) => (c.k, c.stride, c.pad),
        Layer::DepthwiseConv2d(d) => (d.k, d.stride, d.pad),
        _ => return None,
    };
    let g = [
        xs.h, xs.w, xs.c, ys.h, ys.w, k.0, k.1, stride.0, stride.1, pad.0, pad.1,
    ];
    Some(g.map(|v| v as u64))
}

/// A depthwise convolution, one thread per output; under DropIT the input packed first.
fn depthwise_forward<B: Backend>(
    b: &mut B,
    dw: &DepthwiseConv2d,
    c: &Call,
    work: &Work,
) -> Result<()> {
    if let (true, Some((p, true))) = (c.saves, c.packed) {
        let t = ops::threshold(b, c.x, p.n, p.k, work)?;
        ops::pack(b, (c.x, p.n), &t, p.format, p.at, work)?;
    }
    let bias = match dw.bias {
        true => ptr(b, c.p + 4 * dw.k.0 * dw.k.1 * dw.c),
        false => Arg::Ptr(0),
    };
    let args = [
        ptr(b, c.x),
        ptr(b, c.p),
        bias,
        ptr(b, c.y),
        u(c.n),
        ptr(b, c.geom),
    ];
    run(b, "dw_forward", Grid::Items(c.y_len()), &args)
}

/// grad_b; grad_W from the held input (one thread per weight) or the packed one (every kept
/// element's taps); dX gathered per input element.
fn depthwise_backward<B: Backend>(
    b: &mut B,
    dw: &DepthwiseConv2d,
    c: &Call,
    work: &Work,
) -> Result<()> {
    let wl = dw.k.0 * dw.k.1 * dw.c;
    if dw.bias {
        let args = [
            ptr(b, c.dy),
            u(c.y_len() / dw.c),
            u(dw.c),
            ptr(b, c.g + 4 * wl),
        ];
        run(b, "column_sums", Grid::Items(dw.c), &args)?;
    }
    match c.packed {
        Some((p, _)) => ops::conv_grad_w(b, &p, (c.dy, 1, true), c.geom, c.g, work)?,
        None => {
            let args = [
                ptr(b, c.x),
                ptr(b, c.dy),
                u(c.n),
                ptr(b, c.geom),
                ptr(b, c.g),
            ];
            run(b, "dw_grad_w", Grid::Items(wl), &args)?;
        }
    }
    let Some(dx) = c.dx else { return Ok(()) };
    let args = [
        ptr(b, c.dy),
        ptr(b, c.p),
        ptr(b, dx),
        u(c.n),
        ptr(b, c.geom),
        flag(c.acc[0]),
    ];
    run(b, "dw_backward_input", Grid::Items(c.x_len()), &args)
}

/// Forward as products over chunks of samples: the chunk's columns (im2col) × W, onto the
/// bias. Under DropIT the input's largest elements are packed first: the output may be written
/// over the input (in place, sample by sample: each chunk's columns are taken before its rows
/// are written).
fn conv_forward<B: Backend>(b: &mut B, conv: &Conv2d, c: &Call, work: &Work) -> Result<()> {
    if let (true, Some((p, true))) = (c.saves, c.packed) {
        let t = ops::threshold(b, c.x, p.n, p.k, work)?;
        ops::pack(b, (c.x, p.n), &t, p.format, p.at, work)?;
    }
    let (chunk, per) = conv_chunk(conv, c.n, c.ys);
    let (o, rows1) = (conv.cout, c.ys.rows());
    let kk = per / rows1.max(1);
    for s0 in (0..c.n).step_by(chunk) {
        let ns = chunk.min(c.n - s0);
        let args = [ptr(b, c.x), ptr(b, c.scratch), u(s0), u(ns), ptr(b, c.geom)];
        run(b, "im2col", Grid::Items(ns * per), &args)?;
        let (y, rows) = (c.y + 4 * s0 * rows1 * o, ns * rows1);
        if conv.bias {
            let args = [ptr(b, c.p + 4 * kk * o), ptr(b, y), u(rows), u(o)];
            run(b, "bias_rows", Grid::Items(rows * o), &args)?;
        }
        let beta = if conv.bias { 1.0 } else { 0.0 };
        gemm1(
            b,
            (rows, o, kk),
            mat(c.scratch, kk),
            mat(c.p, o),
            (y, o, beta),
        )?;
    }
    Ok(())
}

/// grad_b; grad_W from the held input (chunk by chunk: columnsᵀ × dY) or straight from the
/// packed one (every kept element's taps); dX by chunks (dY × Wᵀ into the columns, gathered
/// back by col2im).
fn conv_backward<B: Backend>(b: &mut B, conv: &Conv2d, c: &Call, work: &Work) -> Result<()> {
    let (chunk, per) = conv_chunk(conv, c.n, c.ys);
    let (o, rows1) = (conv.cout, c.ys.rows());
    let kk = per / rows1.max(1);
    if conv.bias {
        let rows = c.n * rows1;
        let args = [ptr(b, c.dy), u(rows), u(o), ptr(b, c.g + 4 * kk * o)];
        run(b, "column_sums", Grid::Items(o), &args)?;
    }
    if let Some((p, _)) = c.packed {
        ops::conv_grad_w(b, &p, (c.dy, o, false), c.geom, c.g, work)?;
    }
    for s0 in (0..c.n).step_by(chunk) {
        let ns = chunk.min(c.n - s0);
        let dy = mat(c.dy + 4 * s0 * rows1 * o, o);
        if c.packed.is_none() {
            let args = [ptr(b, c.x), ptr(b, c.scratch), u(s0), u(ns), ptr(b, c.geom)];
            run(b, "im2col", Grid::Items(ns * per), &args)?;
            gemm1(b, (kk, o, ns * rows1), tr(c.scratch, kk), dy, (c.g, o, 1.0))?;
        }
        if let Some(dx) = c.dx {
            gemm1(b, (ns * rows1, kk, o), dy, tr(c.p, o), (c.scratch, kk, 0.0))?;
            let len = ns * c.xs.numel();
            let args = [
                ptr(b, c.scratch),
                ptr(b, dx),
                u(s0),
                u(ns),
                ptr(b, c.geom),
                flag(c.acc[0]),
            ];
            run(b, "col2im", Grid::Items(len), &args)?;
        }
    }
    Ok(())
}

/// Batch norm in training: the batch's statistics (1/σ in entry 0, the staged mean and
/// unbiased variance in entry 2), x̂ kept (entry 1); otherwise the running statistics.
fn batchnorm_forward<B: Backend>(b: &mut B, bn: &BatchNorm2d, c: &Call) -> Result<()> {
    let (ch, n) = (bn.c, c.y_len());
    let (gamma, beta) = (ptr(b, c.p), ptr(b, c.p + 4 * ch));
    if !c.saves {
        let args = [
            ptr(b, c.x),
            ptr(b, c.y),
            u(n),
            u(ch),
            ptr(b, c.state),
            ptr(b, c.state + 4 * ch),
            Arg::F32(bn.eps),
            gamma,
            beta,
        ];
        return run(b, "bn_eval", Grid::Items(n), &args);
    }
    let [inv, xhat, staged, _] = c.saved;
    let args = [
        ptr(b, c.x),
        u(n / ch),
        u(ch),
        Arg::F32(bn.eps),
        ptr(b, inv),
        ptr(b, staged),
    ];
    run(b, "bn_stats", Grid::Items(ch), &args)?;
    let args = [
        ptr(b, c.x),
        ptr(b, c.y),
        u(n),
        u(ch),
        ptr(b, staged),
        ptr(b, inv),
        gamma,
        beta,
        ptr(b, xhat),
    ];
    run(b, "bn_normalize", Grid::Items(n), &args)
}

fn batchnorm_backward<B: Backend>(b: &mut B, bn: &BatchNorm2d, c: &Call) -> Result<()> {
    let (ch, n) = (bn.c, c.y_len());
    let [inv, xhat, _, _] = c.saved;
    let args = [
        ptr(b, c.dy),
        ptr(b, xhat),
        u(n / ch),
        u(ch),
        ptr(b, c.p),
        ptr(b, inv),
        ptr(b, c.g),
        ptr(b, c.scratch),
    ];
    run(b, "bn_backward_params", Grid::Items(ch), &args)?;
    let Some(dx) = c.dx else { return Ok(()) };
    let args = [
        ptr(b, c.dy),
        ptr(b, dx),
        ptr(b, xhat),
        u(n),
        u(ch),
        ptr(b, c.scratch),
        Arg::F32((n / ch) as f32),
        flag(c.acc[0] && dx != c.dy),
    ];
    run(b, "bn_grad_x", Grid::Items(n), &args)
}

/// The running statistics moved towards a training step's staged ones.
pub(super) fn batchnorm_commit<B: Backend>(b: &mut B, bn: &BatchNorm2d, c: &Call) -> Result<()> {
    let args = [
        ptr(b, c.state),
        ptr(b, c.saved[2]),
        u(bn.c),
        Arg::F32(bn.momentum),
    ];
    run(b, "bn_commit", Grid::Items(2 * bn.c), &args)
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
