//! Batch normalization per channel over N, H and W (NHWC: the channel is the contiguous axis,
//! so every statistic is a vector accumulated row by row).
//!
//! Training uses the batch's statistics and updates running ones (PyTorch's momentum and
//! unbiased running variance); evaluation uses the running ones. Saved for backward: the
//! normalized input x̂ (f32; bf16 when lean; 8-bit codes with a scale per channel when lean
//! with `int8`, see `xhat.rs`) and 1/σ per channel.

use super::contract::{
    Dims, Elem, Entry, Input, Layout, Mode, Needs, Op, ParamDecl, Params, Rebuild, Saved, params,
};
use super::par::{each, max_groups, split};
use super::xhat::Form;
use super::{Bwd, Fwd, Rb, planner_bug, rebuild_norm};
use crate::collections::msg;

use crate::arena::{f32s_mut, words_for_f32};
use crate::error::{Result, shape_err};
use crate::shape::Shape;
use dropit_simd::norm::{
    self, Affine, Back, Xhat, channel_sums, channel_sums_extremes, code_scale,
};
use rand_xoshiro::Xoshiro256PlusPlus;

/// `BatchNorm2d(c)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct BatchNorm2d {
    /// Channels.
    pub c: usize,
    /// Weight of the newest batch in the running statistics.
    pub momentum: f32,
    /// Added to the variance.
    pub eps: f32,
    /// Keep the normalized input for backward as bf16 (half the bytes; grad slightly rounded).
    pub lean: bool,
    /// With `lean`: keep it as 8-bit codes with one scale per channel instead (a quarter).
    #[serde(default)]
    pub int8: bool,
}

impl BatchNorm2d {
    /// `BatchNorm2d(c)` with PyTorch's defaults (momentum 0.1, eps 1e-5).
    pub fn new(c: usize) -> Self {
        BatchNorm2d {
            c,
            momentum: 0.1,
            eps: 1e-5,
            lean: false,
            int8: false,
        }
    }

    fn form(&self) -> Form {
        Form::of(self.lean, self.int8)
    }

    /// Per worker two f64 sums per channel, and two more for the combined statistics; 8-bit:
    /// per worker the channels' extremes too; then up to four f32 constants per channel for
    /// the kernels ([`CONSTS`] words a channel).
    fn scratch_words(&self, n: usize, threads: usize) -> usize {
        (self.stats_words(n, threads)).saturating_add(CONSTS * self.c)
    }

    fn stats_words(&self, n: usize, threads: usize) -> usize {
        let t = max_groups(n, threads);
        let extremes = if self.form() == Form::Int8 { t } else { 0 };
        (t + 1 + extremes).saturating_mul(2 * self.c)
    }
}

impl Op for BatchNorm2d {
    const KIND: &'static str = "BatchNorm2d";

    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if !(self.eps.is_finite() && self.eps > 0.0 && (0.0..=1.0).contains(&self.momentum)) {
            return crate::error::config_err(
                name,
                msg!(
                    "eps {} must be finite and > 0, momentum {} in [0, 1]",
                    self.eps,
                    self.momentum
                ),
            );
        }
        if x.c != self.c {
            return shape_err(name, format_args!("input [h, w, {}]", self.c), x);
        }
        Ok(x)
    }

    /// `weight`, `bias`; running statistics `running_mean`, `running_var`.
    fn params(&self) -> Params {
        let c = self.c;
        params([
            ParamDecl::param("weight", &[c], Layout::Same),
            ParamDecl::param("bias", &[c], Layout::Same),
            ParamDecl::state("running_mean", c),
            ParamDecl::state("running_var", c),
        ])
    }

    /// Saves 1/σ per channel and the normalized input x̂ (bf16 when lean), and stages the
    /// batch's mean and variance until the step is accepted; PyTorch keeps x̂ and its
    /// statistics as f32.
    fn needs(&self, d: &Dims) -> Needs {
        let (e, c) = (d.x_elems(), self.c);
        let needs = Needs::none()
            .save(Entry::new("1/σ f32", Elem::F32, c))
            .save(self.form().entry(e))
            .save(Entry::new("batch mean, var f32", Elem::F32, 2 * c))
            .scratch(self.scratch_words(d.n, d.threads))
            .in_place(true)
            .torch(8 * (words_for_f32(e) + words_for_f32(c)));
        match self.form() {
            Form::Int8 => needs.save(Entry::new("x̂ scale f32", Elem::F32, c)),
            _ => needs,
        }
    }

    /// γ = 1, β = 0; running mean 0, running variance 1.
    fn init(&self, p: &mut [f32], state: &mut [f32], _rng: &mut Xoshiro256PlusPlus) {
        let (g, b) = p.split_at_mut(self.c);
        g.fill(1.0);
        b.fill(0.0);
        let (m, v) = state.split_at_mut(self.c);
        m.fill(0.0);
        v.fill(1.0);
    }

    fn can_commit(&self, saved: &Saved<'_>) -> bool {
        saved.f32(2).is_ok_and(|s| s.iter().all(|v| v.is_finite()))
    }

    /// The accepted step's batch statistics into the running ones (PyTorch's momentum update).
    fn commit(&self, state: &mut [f32], saved: &Saved<'_>) -> Result<()> {
        let c = self.c;
        let (smean, svar) = saved.f32(2)?.split_at(c);
        let (rmean, rvar) = state.split_at_mut(c);
        let mo = self.momentum;
        for i in 0..c {
            rmean[i] = (1.0 - mo) * rmean[i] + mo * smean[i];
            rvar[i] = (1.0 - mo) * rvar[i] + mo * svar[i];
        }
        Ok(())
    }

    fn counters(&self) -> &'static [&'static str] {
        &["num_batches_tracked"]
    }

    fn set_lean(&mut self, lean: bool) {
        self.lean = lean;
    }

    fn set_int8(&mut self, int8: bool) {
        self.int8 = int8;
    }

    /// `γ·x̂ + β` from the kept x̂.
    fn rebuilds(&self) -> Rebuild {
        Rebuild::FromSaved
    }

    /// 8-bit scales per channel, in entry 3.
    fn rebuild(&self, r: &mut Rb<'_, '_>) -> Result<()> {
        rebuild_norm(r, self.form(), self.c, (3, false), Self::KIND)
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let c = self.c;
        let (gamma, beta) = f.p.split_at(c);
        let (per, t) = split(f.n, f.threads);
        let chunk = per * f.x_shape.numel();
        if f.mode != Mode::Train {
            let (rmean, rvar) = f.state.split_at(c);
            return each(f.y.chunks_mut(chunk).zip(f.x.chunks(chunk)), |(y, x)| {
                for (r, yr) in y.chunks_exact_mut(c).enumerate() {
                    for i in 0..c {
                        let xv = x.map_or(yr[i], |x| x[r * c + i]);
                        let inv = 1.0 / libm::sqrtf(rvar[i] + self.eps);
                        yr[i] = gamma[i] * (xv - rmean[i]) * inv + beta[i];
                    }
                }
                Ok(())
            });
        }
        // In place, the input is in `y`.
        let src: &[f32] = f.x.buf().unwrap_or(f.y);
        let m = (src.len() / c) as f64;
        let form = self.form();
        let (stats, consts) = f.scratch.split_at_mut(self.stats_words(f.n, f.threads));
        let (mean32, inv_scale) = f32s_mut(consts)[..2 * c].split_at_mut(c);
        let scratch: &mut [f64] = bytemuck::cast_slice_mut(stats);
        let (parts, rest) = scratch.split_at_mut(t * 2 * c);
        let (stats, extremes) = rest.split_at_mut(2 * c);
        let (mean, var) = stats.split_at_mut(c);
        // Mean, then variance about it: partial sums per worker, combined in worker order
        // (8-bit: each worker's smallest and largest input per channel too).
        let exts = extremes
            .chunks_mut(2 * c)
            .map(Some)
            .chain(core::iter::repeat_with(|| None));
        each(
            src.chunks(chunk).zip(parts.chunks_mut(2 * c)).zip(exts),
            |((x, s), e)| {
                match e {
                    Some(e) => {
                        let (lo, hi) = e.split_at_mut(c);
                        channel_sums_extremes(x, c, &mut s[..c], lo, hi)?;
                    }
                    None => channel_sums(x, c, None, &mut s[..c])?,
                }
                Ok(())
            },
        )?;
        combine(parts, c, 0, mean, m);
        let mean_r: &[f64] = mean;
        each(src.chunks(chunk).zip(parts.chunks_mut(2 * c)), |(x, s)| {
            Ok(channel_sums(x, c, Some(mean_r), &mut s[c..])?)
        })?;
        combine(parts, c, c, var, m);
        let inv = f.saved.f32(0)?;
        // The running statistics move only when the step is accepted (`commit`): stage the
        // batch's mean and unbiased variance.
        let (smean, svar) = f.saved.f32(2)?.split_at_mut(c);
        for i in 0..c {
            inv[i] = (1.0 / libm::sqrt(var[i] + self.eps as f64)) as f32;
            let unbiased = if m > 1.0 {
                var[i] * m / (m - 1.0)
            } else {
                var[i]
            };
            smean[i] = mean[i] as f32;
            svar[i] = unbiased as f32;
            mean32[i] = mean[i] as f32;
        }
        let (inv, mean32): (&[f32], &[f32]) = (inv, mean32);
        let aff = Affine {
            mean: mean32,
            inv,
            gamma,
            beta,
            inv_scale: None,
        };
        match form {
            Form::F32 => kernel_normalize(f.x, f.y, f.saved.f32(1)?, chunk, c, aff),
            Form::Bf16 => kernel_normalize(f.x, f.y, f.saved.bf16(1)?, chunk, c, aff),
            Form::Int8 => {
                // Per channel, the largest |x̂| lies at the input's smallest or largest value.
                let scale = f.saved.f32(3)?;
                for i in 0..c {
                    let (lo, hi) = extremes
                        .chunks(2 * c)
                        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), e| {
                            (lo.min(e[i]), hi.max(e[c + i]))
                        });
                    let max = (hi - mean[i]).max(mean[i] - lo) * inv[i] as f64;
                    scale[i] = code_scale(max as f32);
                    inv_scale[i] = (1.0 / scale[i] as f64) as f32;
                }
                let aff = Affine {
                    inv_scale: Some(inv_scale),
                    ..aff
                };
                let h: &mut [i8] = bytemuck::cast_slice_mut(f.saved.bytes(1)?);
                kernel_normalize(f.x, f.y, h, chunk, c, aff)
            }
        }
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let inv = b.saved.f32(0)?;
        match self.form() {
            Form::F32 => self.backward_with(b, b.saved.f32(1)?, inv, &[]),
            Form::Bf16 => self.backward_with(b, b.saved.bf16(1)?, inv, &[]),
            Form::Int8 => {
                let q: &[i8] = bytemuck::cast_slice(b.saved.bytes(1)?);
                self.backward_with(b, q, inv, b.saved.f32(3)?)
            }
        }
    }
}

/// Words of scratch per channel for the f32 constants of the kernels (four f32 a channel).
const CONSTS: usize = 2;

impl BatchNorm2d {
    /// Backward from x̂ kept as `xhat`, each channel's codes times its `scale` (none: 1).
    fn backward_with<V: Xhat>(
        &self,
        b: &mut Bwd<'_>,
        xhat: &[V],
        inv: &[f32],
        scale: &[f32],
    ) -> Result<()> {
        let c = self.c;
        let m = (xhat.len() / c) as f32;
        let (per, t) = split(b.n, b.threads);
        let chunk = per * b.x_shape.numel();
        let (stats, consts) = b.scratch.split_at_mut(self.stats_words(b.n, b.threads));
        let scratch: &mut [f64] = bytemuck::cast_slice_mut(&mut stats[..(t + 1) * 2 * c]);
        let (parts, sums) = scratch.split_at_mut(t * 2 * c);
        // In place, dY is in `dx`.
        let dy_all: &[f32] = match (b.dy.buf(), b.dx.as_deref()) {
            (Some(dy), _) => dy,
            (None, Some(dx)) => dx,
            (None, None) => return Err(planner_bug(Self::KIND, "in place without dX")),
        };
        each(
            dy_all
                .chunks(chunk)
                .zip(xhat.chunks(chunk))
                .zip(parts.chunks_mut(2 * c)),
            |((dy, h), s)| {
                let (db, dg) = s.split_at_mut(c);
                Ok(norm::grad_sums(dy, h, c, db, dg)?)
            },
        )?;
        let (dbeta, dgamma) = sums.split_at_mut(c);
        combine(parts, c, 0, dbeta, 1.0);
        combine(parts, c, c, dgamma, 1.0);
        // Σ dy·x̂ = scale · Σ dy·code, and x̂·dγ = code · (scale·dγ) below.
        for (g, s) in dgamma.iter_mut().zip(scale) {
            *g *= *s as f64;
        }
        let (gg, gb) = b.g.split_at_mut(c);
        for i in 0..c {
            gg[i] += dgamma[i] as f32;
            gb[i] += dbeta[i] as f32;
        }
        for (g, s) in dgamma.iter_mut().zip(scale) {
            *g *= *s as f64;
        }
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        // Per channel: k = γ·inv/m, and the sums as f32.
        let gamma = &b.p[..c];
        let consts = &mut f32s_mut(consts)[..3 * c];
        let (k, rest) = consts.split_at_mut(c);
        let (db32, dg32) = rest.split_at_mut(c);
        for i in 0..c {
            k[i] = gamma[i] * inv[i] / m;
            db32[i] = dbeta[i] as f32;
            dg32[i] = dgamma[i] as f32;
        }
        let back = Back {
            k,
            dbeta: db32,
            dgamma: dg32,
            m,
        };
        let acc = b.acc;
        each(
            dx.chunks_mut(chunk)
                .zip(b.dy.chunks(chunk))
                .zip(xhat.chunks(chunk)),
            |((dx, dy), h)| Ok(norm::grad_x(dy, dx, h, c, back, acc)?),
        )
    }
}

/// [`norm::normalize`] by worker groups (in place, the input is in `y`).
fn kernel_normalize<H: Xhat>(
    x: Input<'_>,
    y: &mut [f32],
    h: &mut [H],
    chunk: usize,
    c: usize,
    aff: Affine<'_>,
) -> Result<()> {
    let groups = y
        .chunks_mut(chunk)
        .zip(x.chunks(chunk))
        .zip(h.chunks_mut(chunk));
    each(groups, |((y, x), h)| Ok(norm::normalize(x, y, h, c, aff)?))
}

/// `out[i] = Σ_workers parts[w][at + i] / div`, in worker order.
fn combine(parts: &[f64], c: usize, at: usize, out: &mut [f64], div: f64) {
    out.fill(0.0);
    for p in parts.chunks_exact(2 * c) {
        for (o, v) in out.iter_mut().zip(&p[at..at + c]) {
            *o += v;
        }
    }
    out.iter_mut().for_each(|o| *o /= div);
}
