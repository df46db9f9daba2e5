//! Linear, Conv2d and depthwise Conv2d: dense products (a convolution's over im2col columns)
//! or direct kernels, DropIT's packed input and its sparse weight gradients.

use crate::error::Result;
use crate::layers::{Conv2d, DepthwiseConv2d, Layer, Linear};
use crate::shape::Shape;

use super::{Call, beta, flag, gemm1, mat, tr};
use crate::device::ops::{self, Work, ptr, run, u};
use crate::device::{Arg, Backend, Grid};

/// DropIT: the input's largest elements packed for grad_W, by the node that packs them, in
/// training (before anything can overwrite the input).
fn pack_input<B: Backend>(b: &mut B, c: &Call, work: &Work) -> Result<()> {
    if let (true, Some((p, true))) = (c.saves, c.packed) {
        let t = ops::threshold(b, c.x, p.n, p.k, work)?;
        ops::pack(b, (c.x, p.n), &t, p.format, p.at, work)?;
    }
    Ok(())
}

/// `y = x·W + bias`; under DropIT, the input's largest elements packed for grad_W.
pub(super) fn linear_forward<B: Backend>(
    b: &mut B,
    l: &Linear,
    c: &Call,
    work: &Work,
) -> Result<()> {
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
    pack_input(b, c, work)
}

/// grad_b, grad_W (from the held input, or the packed one: straight, or unpacked into the
/// scratch and multiplied), and dX = dY·Wᵀ.
pub(super) fn linear_backward<B: Backend>(
    b: &mut B,
    l: &Linear,
    c: &Call,
    work: &Work,
) -> Result<()> {
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

/// Floats of columns (im2col) a convolution's chunk of samples may take at most (one sample's
/// columns when those are more).
const COLS_MAX: usize = 1 << 22;

/// Samples per chunk of a convolution's columns, and the floats of one sample's.
pub(super) fn conv_chunk(conv: &Conv2d, n: usize, ys: Shape) -> (usize, usize) {
    let per = ys.rows() * conv.k.0 * conv.k.1 * conv.cin;
    ((COLS_MAX / per.max(1)).clamp(1, n.max(1)), per)
}

/// A convolution's geometry as the kernels take it (11 counts), for the convolutions.
pub(in crate::device) fn geometry(layer: &Layer, xs: Shape, ys: Shape) -> Option<[u64; 11]> {
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
pub(super) fn depthwise_forward<B: Backend>(
    b: &mut B,
    dw: &DepthwiseConv2d,
    c: &Call,
    work: &Work,
) -> Result<()> {
    pack_input(b, c, work)?;
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
pub(super) fn depthwise_backward<B: Backend>(
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
pub(super) fn conv_forward<B: Backend>(
    b: &mut B,
    conv: &Conv2d,
    c: &Call,
    work: &Work,
) -> Result<()> {
    pack_input(b, c, work)?;
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
pub(super) fn conv_backward<B: Backend>(
    b: &mut B,
    conv: &Conv2d,
    c: &Call,
    work: &Work,
) -> Result<()> {
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
