//! Multi-head attention (per head, strided batched products over the samples) and the cls
//! token and positions.

use crate::error::Result;
use crate::layers::{Attention, PosEmbed};
use crate::shape::Shape;

use super::{Call, beta, flag, gemm, mat, tr};
use crate::device::ops::{ptr, run, u};
use crate::device::{Arg, Backend, Grid};

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
pub(super) fn attention_forward<B: Backend>(b: &mut B, a: &Attention, c: &Call) -> Result<()> {
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
pub(super) fn attention_backward<B: Backend>(b: &mut B, a: &Attention, c: &Call) -> Result<()> {
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
pub(super) fn pos_embed_forward<B: Backend>(b: &mut B, pe: &PosEmbed, c: &Call) -> Result<()> {
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

pub(super) fn pos_embed_backward<B: Backend>(b: &mut B, pe: &PosEmbed, c: &Call) -> Result<()> {
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
