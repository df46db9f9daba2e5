//! Layer normalization over the channel (last) dimension: every row of `c` values — a pixel, a
//! token — is normalized by its own mean and variance, then scaled and shifted per channel.
//! Saved for backward: the normalized input x̂ (bf16 when lean) and 1/σ per row.

use dropit_simd::format::Value;
use half::bf16;

use super::par::{each, max_groups, split};
use super::{Bwd, Fwd, put};
use crate::arena::{f32s, f32s_mut, words_for_f32};
use crate::error::{Result, shape_err};
use crate::shape::Shape;

/// `LayerNorm(c)`.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerNorm {
    /// Channels (the normalized dimension).
    pub c: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Keep x̂ for backward as bf16.
    pub lean: bool,
}

impl LayerNorm {
    /// `LayerNorm(c)` with PyTorch's eps (1e-5).
    pub fn new(c: usize) -> Self {
        LayerNorm {
            c,
            eps: 1e-5,
            lean: false,
        }
    }

    pub(crate) fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if x.c != self.c || self.c == 0 {
            return shape_err(name, format_args!("input [h, w, {}]", self.c), x);
        }
        Ok(x)
    }

    pub(crate) fn param_count(&self) -> usize {
        2 * self.c
    }

    /// Per worker, f64 sums for dγ and dβ.
    pub(crate) fn scratch_words(&self, rows: usize, threads: usize) -> usize {
        max_groups(rows, threads) * 2 * self.c
    }

    /// γ = 1, β = 0.
    pub(crate) fn init(&self, p: &mut [f32]) {
        let (g, b) = p.split_at_mut(self.c);
        g.fill(1.0);
        b.fill(0.0);
    }

    pub(crate) fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let (c, eps) = (self.c, self.eps);
        let rows = f.y.len() / c;
        let (gamma, beta) = f.p.split_at(c);
        let (per, _) = split(rows, f.threads);
        let xs = f.x.chunks(per * c).chain(core::iter::repeat(&[][..]));
        if f.saved.is_empty() {
            // Evaluation or a frozen layer: nothing to keep.
            return each(f.y.chunks_mut(per * c).zip(xs), |(y, x)| {
                for (r, yr) in y.chunks_exact_mut(c).enumerate() {
                    let xr: &[f32] = if x.is_empty() { yr } else { &x[r * c..][..c] };
                    let (mean, inv) = stats(xr, eps);
                    for i in 0..c {
                        let v = if x.is_empty() { yr[i] } else { x[r * c + i] };
                        yr[i] = gamma[i] * (v - mean) * inv + beta[i];
                    }
                }
                Ok(())
            });
        }
        let (inv, xhat) = f.saved.split_at_mut(words_for_f32(rows));
        let inv = &mut f32s_mut(inv)[..rows];
        let len = rows * c;
        let groups = f.y.chunks_mut(per * c).zip(xs).zip(inv.chunks_mut(per));
        if self.lean {
            let h: &mut [bf16] = &mut bytemuck::cast_slice_mut(xhat)[..len];
            each(groups.zip(h.chunks_mut(per * c)), |(((y, x), inv), h)| {
                normalize(y, x, inv, h, c, eps, gamma, beta)
            })
        } else {
            let h = &mut f32s_mut(xhat)[..len];
            each(groups.zip(h.chunks_mut(per * c)), |(((y, x), inv), h)| {
                normalize(y, x, inv, h, c, eps, gamma, beta)
            })
        }
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let c = self.c;
        let rows = b.n * b.y_shape.rows();
        let (inv, xhat) = b.saved.split_at(words_for_f32(rows));
        let inv = &f32s(inv)[..rows];
        if self.lean {
            let h: &[bf16] = &bytemuck::cast_slice(xhat)[..rows * c];
            self.backward_with(b, h, inv)
        } else {
            self.backward_with(b, &f32s(xhat)[..rows * c], inv)
        }
    }

    fn backward_with<V: Value + Sync>(
        &self,
        b: &mut Bwd<'_>,
        xhat: &[V],
        inv: &[f32],
    ) -> Result<()> {
        let c = self.c;
        let rows = inv.len();
        let (per, t) = split(rows, b.threads);
        let gamma = &b.p[..c];
        let sums: &mut [f64] = bytemuck::cast_slice_mut(&mut b.scratch[..t * 2 * c]);
        let (dy_all, acc) = (b.dy, b.acc);
        let dxs =
            b.dx.chunks_mut(per * c)
                .map(Some)
                .chain(core::iter::repeat_with(|| None));
        let groups = dy_all
            .chunks(per * c)
            .zip(xhat.chunks(per * c))
            .zip(inv.chunks(per))
            .zip(sums.chunks_mut(2 * c));
        each(groups.zip(dxs), |((((dy, h), inv), s), dx)| {
            let (dg, db) = s.split_at_mut(c);
            dg.fill(0.0);
            db.fill(0.0);
            let mut dx = dx;
            for (r, (dr, hr)) in dy.chunks_exact(c).zip(h.chunks_exact(c)).enumerate() {
                // dx = inv/C · (C·ĝ − Σĝ − x̂·Σ(ĝ·x̂)), ĝ = dy·γ.
                let (mut sg, mut sgx) = (0.0f64, 0.0f64);
                for i in 0..c {
                    let hv = hr[i].to_f32();
                    dg[i] += (dr[i] * hv) as f64;
                    db[i] += dr[i] as f64;
                    let g = dr[i] * gamma[i];
                    sg += g as f64;
                    sgx += (g * hv) as f64;
                }
                if let Some(dx) = dx.as_deref_mut() {
                    let k = inv[r] / c as f32;
                    for i in 0..c {
                        let g = dr[i] * gamma[i];
                        let v = k * (c as f32 * g - sg as f32 - hr[i].to_f32() * sgx as f32);
                        put(&mut dx[r * c + i], v, acc);
                    }
                }
            }
            Ok(())
        })?;
        let (gg, gb) = b.g.split_at_mut(c);
        for s in sums.chunks_exact(2 * c).take(t) {
            for i in 0..c {
                gg[i] += s[i] as f32;
                gb[i] += s[c + i] as f32;
            }
        }
        Ok(())
    }
}

/// Mean and 1/σ of one row.
fn stats(x: &[f32], eps: f32) -> (f32, f32) {
    let n = x.len() as f64;
    let mean = x.iter().map(|&v| v as f64).sum::<f64>() / n;
    let var = x
        .iter()
        .map(|&v| (v as f64 - mean) * (v as f64 - mean))
        .sum::<f64>()
        / n;
    (mean as f32, (1.0 / libm::sqrt(var + eps as f64)) as f32)
}

/// Normalizes rows of `x` (or of `y`, in place, when `x` is empty) into `y`, keeping x̂ and 1/σ.
#[allow(clippy::too_many_arguments)]
fn normalize<V: Value>(
    y: &mut [f32],
    x: &[f32],
    inv: &mut [f32],
    h: &mut [V],
    c: usize,
    eps: f32,
    gamma: &[f32],
    beta: &[f32],
) -> Result<()> {
    for (r, (yr, hr)) in y.chunks_exact_mut(c).zip(h.chunks_exact_mut(c)).enumerate() {
        let xr: &[f32] = if x.is_empty() { yr } else { &x[r * c..][..c] };
        let (mean, iv) = stats(xr, eps);
        inv[r] = iv;
        for i in 0..c {
            let v = if x.is_empty() { yr[i] } else { x[r * c + i] };
            let hv = (v - mean) * iv;
            hr[i] = V::from_f32(hv);
            yr[i] = gamma[i] * hv + beta[i];
        }
    }
    Ok(())
}
