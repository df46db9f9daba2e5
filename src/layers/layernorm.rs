//! Layer normalization over the channel (last) dimension: every row of `c` values — a pixel, a
//! token — is normalized by its own mean and variance, then scaled and shifted per channel.
//! Saved for backward: the normalized input x̂ (bf16 when lean; 8-bit codes with a scale per row
//! when lean with `int8`, see `xhat.rs`) and 1/σ per row.

use crate::collections::msg;

use super::contract::{
    Dims, Elem, Entry, Layout, Mode, Needs, Op, ParamDecl, Params, Rebuild, params,
};
use super::par::{each, max_groups, split};
use super::xhat::Form;
use super::{Bwd, Fwd, Rb, not_in_place, rebuild_norm};
use crate::arena::words_for_f32;
use crate::error::{Result, shape_err};
use crate::shape::Shape;
use dropit_simd::norm::{self, Xhat, code_scale, row_stats};
use half::bf16;
use rand_xoshiro::Xoshiro256PlusPlus;

/// `LayerNorm(c)`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LayerNorm {
    /// Channels (the normalized dimension).
    pub c: usize,
    /// Added to the variance.
    pub eps: f32,
    /// Keep x̂ for backward as bf16.
    pub lean: bool,
    /// With `lean`: keep it as 8-bit codes with one scale per row instead.
    #[serde(default)]
    pub int8: bool,
}

impl LayerNorm {
    /// `LayerNorm(c)` with PyTorch's eps (1e-5).
    pub fn new(c: usize) -> Self {
        LayerNorm {
            c,
            eps: 1e-5,
            lean: false,
            int8: false,
        }
    }

    fn form(&self) -> Form {
        Form::of(self.lean, self.int8)
    }

    /// Per worker, f64 sums for dγ and dβ.
    fn scratch_words(&self, rows: usize, threads: usize) -> usize {
        max_groups(rows, threads).saturating_mul(2 * self.c)
    }
}

impl Op for LayerNorm {
    const KIND: &'static str = "LayerNorm";

    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return crate::error::config_err(name, msg!("eps {} must be finite and > 0", self.eps));
        }
        if x.c != self.c || self.c == 0 {
            return shape_err(name, format_args!("input [h, w, {}]", self.c), x);
        }
        Ok(x)
    }

    /// `weight`, `bias`.
    fn params(&self) -> Params {
        params([
            ParamDecl::param("weight", &[self.c], Layout::Same),
            ParamDecl::param("bias", &[self.c], Layout::Same),
        ])
    }

    /// Saves 1/σ per row and the normalized input x̂ (bf16 when lean); PyTorch keeps both as
    /// f32.
    fn needs(&self, d: &Dims) -> Needs {
        let (e, rows) = (d.x_elems(), d.n * d.x.rows());
        let needs = Needs::none()
            .save(Entry::new("1/σ f32", Elem::F32, rows))
            .save(self.form().entry(e))
            .scratch(self.scratch_words(rows, d.threads))
            .torch(8 * (words_for_f32(e) + words_for_f32(rows)));
        match self.form() {
            Form::Int8 => needs.save(Entry::new("x̂ scale f32", Elem::F32, rows)),
            _ => needs,
        }
    }

    /// γ = 1, β = 0.
    fn init(&self, p: &mut [f32], _state: &mut [f32], _rng: &mut Xoshiro256PlusPlus) {
        let (g, b) = p.split_at_mut(self.c);
        g.fill(1.0);
        b.fill(0.0);
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

    /// 8-bit scales per row, in entry 2.
    fn rebuild(&self, r: &mut Rb<'_, '_>) -> Result<()> {
        rebuild_norm(r, self.form(), self.c, (2, true), Self::KIND)
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let (c, eps) = (self.c, self.eps);
        let rows = f.y.len() / c;
        let (gamma, beta) = f.p.split_at(c);
        let (per, _) = split(rows, f.threads);
        let xs = f.x.chunks(per * c);
        if f.mode == Mode::Frozen {
            // A frozen layer: nothing to keep.
            return each(f.y.chunks_mut(per * c).zip(xs), |(y, x)| {
                for (r, yr) in y.chunks_exact_mut(c).enumerate() {
                    let xr: &[f32] = x.map_or(yr, |x| &x[r * c..][..c]);
                    let (mut mean, mut inv) = ([0.0f32], [0.0f32]);
                    row_stats(xr, c, eps, &mut mean, &mut inv)?;
                    let (mean, inv) = (mean[0], inv[0]);
                    for i in 0..c {
                        let v = x.map_or(yr[i], |x| x[r * c + i]);
                        yr[i] = gamma[i] * (v - mean) * inv + beta[i];
                    }
                }
                Ok(())
            });
        }
        let inv = f.saved.f32(0)?;
        let form = self.form();
        let scale: &mut [f32] = match form {
            Form::Int8 => f.saved.f32(2)?,
            _ => &mut [],
        };
        let scales = scale
            .chunks_mut(per)
            .map(Some)
            .chain(core::iter::repeat_with(|| None));
        let groups =
            f.y.chunks_mut(per * c)
                .zip(xs)
                .zip(inv.chunks_mut(per))
                .zip(scales);
        let (ps, gb) = ((c, eps), (gamma, beta));
        match form {
            Form::F32 => {
                let h = f.saved.f32(1)?;
                each(
                    groups.zip(h.chunks_mut(per * c)),
                    |((((y, x), inv), s), h)| normalize(y, x, inv, h, s, ps, gb),
                )
            }
            Form::Bf16 => {
                let h = f.saved.bf16(1)?;
                each(
                    groups.zip(h.chunks_mut(per * c)),
                    |((((y, x), inv), s), h)| normalize(y, x, inv, h, s, ps, gb),
                )
            }
            Form::Int8 => {
                let h: &mut [i8] = bytemuck::cast_slice_mut(f.saved.bytes(1)?);
                each(
                    groups.zip(h.chunks_mut(per * c)),
                    |((((y, x), inv), s), h)| normalize(y, x, inv, h, s, ps, gb),
                )
            }
        }
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let inv = b.saved.f32(0)?;
        match self.form() {
            Form::F32 => self.backward_with(b, b.saved.f32(1)?, inv, &[]),
            Form::Bf16 => self.backward_with::<bf16>(b, b.saved.bf16(1)?, inv, &[]),
            Form::Int8 => {
                let q: &[i8] = bytemuck::cast_slice(b.saved.bytes(1)?);
                self.backward_with(b, q, inv, b.saved.f32(2)?)
            }
        }
    }
}

impl LayerNorm {
    /// Backward from x̂ kept as `xhat`, each row's codes times its `scale` (none: 1).
    fn backward_with<V: Xhat>(
        &self,
        b: &mut Bwd<'_>,
        xhat: &[V],
        inv: &[f32],
        scale: &[f32],
    ) -> Result<()> {
        let c = self.c;
        let rows = inv.len();
        let (per, t) = split(rows, b.threads);
        let gamma = &b.p[..c];
        let sums: &mut [f64] = bytemuck::cast_slice_mut(&mut b.scratch[..t * 2 * c]);
        let (dy_all, acc) = (not_in_place(b.dy, <Self as Op>::KIND)?, b.acc);
        let dxs =
            b.dx.iter_mut()
                .flat_map(|d| d.chunks_mut(per * c))
                .map(Some)
                .chain(core::iter::repeat_with(|| None));
        let scales = scale.chunks(per).map(Some).chain(core::iter::repeat(None));
        let groups = dy_all
            .chunks(per * c)
            .zip(xhat.chunks(per * c))
            .zip(inv.chunks(per).zip(scales))
            .zip(sums.chunks_mut(2 * c));
        each(groups.zip(dxs), |((((dy, h), (inv, sc)), s), dx)| {
            let (dg, db) = s.split_at_mut(c);
            dg.fill(0.0);
            db.fill(0.0);
            Ok(norm::ln_backward(dy, h, gamma, (inv, sc), dg, db, dx, acc)?)
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

/// Normalizes rows of `x` (or of `y`, in place, when `x` is `None`) into `y`, keeping x̂ and
/// 1/σ — and, for 8-bit codes, each row's scale into `scale`.
fn normalize<V: Xhat>(
    y: &mut [f32],
    x: Option<&[f32]>,
    inv: &mut [f32],
    h: &mut [V],
    mut scale: Option<&mut [f32]>,
    (c, eps): (usize, f32),
    (gamma, beta): (&[f32], &[f32]),
) -> Result<()> {
    let rows = inv.len();
    for b0 in (0..rows).step_by(8) {
        let b1 = (b0 + 8).min(rows);
        // Statistics of eight rows at a time (the same bits as `stats` row by row).
        let (mut means, mut invs) = ([0.0f32; 8], [0.0f32; 8]);
        let src = x.map_or(&y[b0 * c..b1 * c], |x| &x[b0 * c..b1 * c]);
        row_stats(src, c, eps, &mut means[..b1 - b0], &mut invs[..b1 - b0])?;
        for r in b0..b1 {
            let (mean, iv) = (means[r - b0], invs[r - b0]);
            let (yr, hr) = (&mut y[r * c..][..c], &mut h[r * c..][..c]);
            let xr: &[f32] = x.map_or(&*yr, |x| &x[r * c..][..c]);
            inv[r] = iv;
            let inv_scale = match scale.as_deref_mut() {
                Some(s) => {
                    s[r] = code_scale(norm::abs_max(xr, mean, iv));
                    1.0 / s[r]
                }
                None => 1.0,
            };
            let xr = x.map(|x| &x[r * c..][..c]);
            norm::normalize_row(xr, yr, hr, (mean, iv, inv_scale), gamma, beta)?;
        }
    }
    Ok(())
}
