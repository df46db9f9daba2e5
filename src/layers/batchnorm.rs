//! Batch normalization per channel over N, H and W (NHWC: the channel is the contiguous axis,
//! so every statistic is a vector accumulated row by row).
//!
//! Training uses the batch's statistics and updates running ones (PyTorch's momentum and
//! unbiased running variance); evaluation uses the running ones. Saved for backward: the
//! normalized input x̂ and 1/σ per channel.

use super::{Bwd, Fwd, put};
use crate::arena::{f32s, f32s_mut};
use crate::error::{Result, shape_err};
use crate::shape::Shape;

/// `BatchNorm2d(c)`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchNorm2d {
    /// Channels.
    pub c: usize,
    /// Weight of the newest batch in the running statistics.
    pub momentum: f32,
    /// Added to the variance.
    pub eps: f32,
}

impl BatchNorm2d {
    /// `BatchNorm2d(c)` with PyTorch's defaults (momentum 0.1, eps 1e-5).
    pub fn new(c: usize) -> Self {
        BatchNorm2d {
            c,
            momentum: 0.1,
            eps: 1e-5,
        }
    }

    pub(crate) fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if x.c != self.c {
            return shape_err(name, format_args!("input [h, w, {}]", self.c), x);
        }
        Ok(x)
    }

    pub(crate) fn param_count(&self) -> usize {
        2 * self.c
    }

    /// Two f64 sums per channel.
    pub(crate) fn scratch_words(&self, _threads: usize) -> usize {
        2 * self.c
    }

    /// γ = 1, β = 0; running mean 0, running variance 1.
    pub(crate) fn init(&self, p: &mut [f32], state: &mut [f32]) {
        let (g, b) = p.split_at_mut(self.c);
        g.fill(1.0);
        b.fill(0.0);
        let (m, v) = state.split_at_mut(self.c);
        m.fill(0.0);
        v.fill(1.0);
    }

    /// Per-channel sums of `f(row)` over all rows, in f64.
    fn sums(
        &self,
        rows: core::slice::ChunksExact<'_, f32>,
        acc: &mut [f64],
        f: impl Fn(usize, f32) -> f64,
    ) {
        acc.fill(0.0);
        for row in rows {
            for (i, (a, &v)) in acc.iter_mut().zip(row).enumerate() {
                *a += f(i, v);
            }
        }
    }

    pub(crate) fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let c = self.c;
        let (gamma, beta) = f.p.split_at(c);
        let (rmean, rvar) = f.state.split_at_mut(c);
        if !f.train {
            for (yr, xr) in f.y.chunks_exact_mut(c).zip(f.x.chunks_exact(c)) {
                for i in 0..c {
                    let inv = 1.0 / libm::sqrtf(rvar[i] + self.eps);
                    yr[i] = gamma[i] * (xr[i] - rmean[i]) * inv + beta[i];
                }
            }
            return Ok(());
        }
        let m = f.x.len() / c;
        let acc: &mut [f64] = bytemuck::cast_slice_mut(&mut f.scratch[..2 * c]);
        let (mean, var) = acc.split_at_mut(c);
        self.sums(f.x.chunks_exact(c), mean, |_, v| v as f64);
        mean.iter_mut().for_each(|s| *s /= m as f64);
        self.sums(f.x.chunks_exact(c), var, |i, v| {
            let d = v as f64 - mean[i];
            d * d
        });
        var.iter_mut().for_each(|s| *s /= m as f64);
        let saved = f32s_mut(f.saved);
        let (xhat, rest) = saved.split_at_mut(f.x.len());
        let inv = &mut rest[..c];
        for i in 0..c {
            inv[i] = (1.0 / libm::sqrt(var[i] + self.eps as f64)) as f32;
            let unbiased = if m > 1 {
                var[i] * m as f64 / (m - 1) as f64
            } else {
                var[i]
            };
            rmean[i] = (1.0 - self.momentum) * rmean[i] + self.momentum * mean[i] as f32;
            rvar[i] = (1.0 - self.momentum) * rvar[i] + self.momentum * unbiased as f32;
        }
        for ((yr, xr), hr) in
            f.y.chunks_exact_mut(c)
                .zip(f.x.chunks_exact(c))
                .zip(xhat.chunks_exact_mut(c))
        {
            for i in 0..c {
                let h = (xr[i] - mean[i] as f32) * inv[i];
                hr[i] = h;
                yr[i] = gamma[i] * h + beta[i];
            }
        }
        Ok(())
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let c = self.c;
        let len = b.dy.len();
        let m = (len / c) as f32;
        let saved = f32s(b.saved);
        let (xhat, inv) = (&saved[..len], &saved[len..len + c]);
        let acc: &mut [f64] = bytemuck::cast_slice_mut(&mut b.scratch[..2 * c]);
        let (dbeta, dgamma) = acc.split_at_mut(c);
        dbeta.fill(0.0);
        dgamma.fill(0.0);
        for (dr, hr) in b.dy.chunks_exact(c).zip(xhat.chunks_exact(c)) {
            for i in 0..c {
                dbeta[i] += dr[i] as f64;
                dgamma[i] += (dr[i] * hr[i]) as f64;
            }
        }
        let (gg, gb) = b.g.split_at_mut(c);
        for i in 0..c {
            gg[i] += dgamma[i] as f32;
            gb[i] += dbeta[i] as f32;
        }
        if b.dx.is_empty() {
            return Ok(());
        }
        let gamma = &b.p[..c];
        for ((xr, dr), hr) in
            b.dx.chunks_exact_mut(c)
                .zip(b.dy.chunks_exact(c))
                .zip(xhat.chunks_exact(c))
        {
            for i in 0..c {
                let k = gamma[i] * inv[i] / m;
                let v = k * (m * dr[i] - dbeta[i] as f32 - hr[i] * dgamma[i] as f32);
                put(&mut xr[i], v, b.acc);
            }
        }
        Ok(())
    }
}
