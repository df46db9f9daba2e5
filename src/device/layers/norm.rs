//! Layer norm and batch norm.

use crate::error::Result;
use crate::layers::{BatchNorm2d, LayerNorm};

use super::{Call, flag};
use crate::device::ops::{ptr, run, u};
use crate::device::{Arg, Backend, Grid};

/// Rows normalized, x̂ and 1/σ kept (entries 1 and 0).
pub(super) fn layernorm_forward<B: Backend>(b: &mut B, l: &LayerNorm, c: &Call) -> Result<()> {
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

pub(super) fn layernorm_backward<B: Backend>(b: &mut B, l: &LayerNorm, c: &Call) -> Result<()> {
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

/// Batch norm in training: the batch's statistics (1/σ in entry 0, the staged mean and
/// unbiased variance in entry 2), x̂ kept (entry 1); otherwise the running statistics.
pub(super) fn batchnorm_forward<B: Backend>(b: &mut B, bn: &BatchNorm2d, c: &Call) -> Result<()> {
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

pub(super) fn batchnorm_backward<B: Backend>(b: &mut B, bn: &BatchNorm2d, c: &Call) -> Result<()> {
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
pub(in crate::device) fn batchnorm_commit<B: Backend>(
    b: &mut B,
    bn: &BatchNorm2d,
    c: &Call,
) -> Result<()> {
    let args = [
        ptr(b, c.state),
        ptr(b, c.saved[2]),
        u(bn.c),
        Arg::F32(bn.momentum),
    ];
    run(b, "bn_commit", Grid::Items(2 * bn.c), &args)
}
