//! Token bookkeeping of a vision transformer: [`PosEmbed`] turns a grid of patch embeddings into
//! a token sequence (a learned cls token in front, learned positions added), and [`TokenSelect`]
//! picks one token (the cls token, for the head). Neither saves anything for backward.

use rand_xoshiro::Xoshiro256PlusPlus;

use super::contract::{Dims, Layout, Needs, Op, ParamDecl, Params, params};
use super::par::{each, split};
use super::{Bwd, Fwd, not_in_place, put};
use crate::error::{Result, shape_err};
use crate::init::normal;
use crate::shape::Shape;

/// `[h, w, D]` patches → `[1, h·w (+1), D]` tokens: an optional learned cls token first, then
/// the patches in row-major order, each plus its learned position. Parameters: the cls token
/// (`D`, when present), then the positions (`tokens × D`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PosEmbed {
    /// Channels D.
    pub dim: usize,
    /// Patches (tokens without the cls token).
    pub patches: usize,
    /// Prepend a learned cls token.
    pub cls: bool,
}

impl PosEmbed {
    /// Positions for `patches` patches of width `dim`, with a cls token.
    pub fn new(dim: usize, patches: usize) -> Self {
        PosEmbed {
            dim,
            patches,
            cls: true,
        }
    }

    fn tokens(&self) -> usize {
        self.patches + usize::from(self.cls)
    }

    fn cls_len(&self) -> usize {
        if self.cls { self.dim } else { 0 }
    }
}

impl Op for PosEmbed {
    const KIND: &'static str = "PosEmbed";

    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if x.c != self.dim || x.rows() != self.patches || self.dim == 0 || self.patches == 0 {
            return shape_err(
                name,
                format_args!("{} patches of {} channels", self.patches, self.dim),
                x,
            );
        }
        Ok(Shape::new(1, self.tokens(), self.dim))
    }

    /// timm's `cls_token` `[1, 1, D]` (when present), then `pos_embed` `[1, tokens, D]`.
    fn params(&self) -> Params {
        let (d, t) = (self.dim, self.tokens());
        let pos = ParamDecl::param("pos_embed", &[1, t, d], Layout::Same);
        if self.cls {
            params([ParamDecl::param("cls_token", &[1, 1, d], Layout::Same), pos])
        } else {
            params([pos])
        }
    }

    fn needs(&self, _d: &Dims) -> Needs {
        Needs::none()
    }

    /// Normal with σ = 0.02, as ViT implementations do (timm truncates it at 2σ; so do we).
    fn init(&self, p: &mut [f32], _state: &mut [f32], rng: &mut Xoshiro256PlusPlus) {
        for v in p {
            *v = loop {
                let z = normal(rng);
                if z.abs() <= 2.0 {
                    break 0.02 * z;
                }
            };
        }
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let (d, tk) = (self.dim, self.tokens());
        let (cls, pos) = f.p.split_at(self.cls_len());
        let (per, _) = split(f.n, f.threads);
        let x = not_in_place(f.x, Self::KIND)?;
        let work =
            f.y.chunks_mut(per * tk * d)
                .zip(x.chunks(per * self.patches * d));
        each(work, |(y, x)| {
            for (ys, xs) in y
                .chunks_exact_mut(tk * d)
                .zip(x.chunks_exact(self.patches * d))
            {
                let (yc, yp) = ys.split_at_mut(cls.len());
                yc.iter_mut().zip(cls).for_each(|(y, c)| *y = *c);
                yp.iter_mut().zip(xs).for_each(|(y, x)| *y = *x);
                ys.iter_mut().zip(pos).for_each(|(y, p)| *y += p);
            }
            Ok(())
        })
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let (d, tk) = (self.dim, self.tokens());
        let (gc, gp) = b.g.split_at_mut(self.cls_len());
        let dy = not_in_place(b.dy, Self::KIND)?;
        for ys in dy.chunks_exact(tk * d) {
            gc.iter_mut().zip(ys).for_each(|(g, dy)| *g += dy);
            gp.iter_mut().zip(ys).for_each(|(g, dy)| *g += dy);
        }
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        let (per, _) = split(b.n, b.threads);
        let acc = b.acc;
        let skip = self.cls_len();
        let work = dx
            .chunks_mut(per * self.patches * d)
            .zip(dy.chunks(per * tk * d));
        each(work, |(dx, dy)| {
            for (xs, ys) in dx
                .chunks_exact_mut(self.patches * d)
                .zip(dy.chunks_exact(tk * d))
            {
                xs.iter_mut()
                    .zip(&ys[skip..])
                    .for_each(|(x, &g)| put(x, g, acc));
            }
            Ok(())
        })
    }
}

/// `x[:, index]`: one token of `[1, T, D]` (any `[h, w, D]`; tokens count row-major) as
/// `[1, 1, D]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct TokenSelect {
    /// The token kept (0: the cls token).
    pub index: usize,
}

impl Op for TokenSelect {
    const KIND: &'static str = "TokenSelect";

    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if self.index >= x.rows() {
            return shape_err(name, format_args!("more than {} tokens", self.index), x);
        }
        Ok(Shape::flat(x.c))
    }

    fn needs(&self, _d: &Dims) -> Needs {
        Needs::none()
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let (d, row) = (f.y_shape.c, f.x_shape.numel());
        let x = not_in_place(f.x, Self::KIND)?;
        for (y, x) in f.y.chunks_exact_mut(d).zip(x.chunks_exact(row)) {
            y.copy_from_slice(&x[self.index * d..][..d]);
        }
        Ok(())
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let (d, row) = (b.y_shape.c, b.x_shape.numel());
        let (acc, dy) = (b.acc, not_in_place(b.dy, Self::KIND)?);
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        for (dx, dy) in dx.chunks_exact_mut(row).zip(dy.chunks_exact(d)) {
            if !acc {
                dx.fill(0.0);
            }
            let at = &mut dx[self.index * d..][..d];
            at.iter_mut().zip(dy).for_each(|(x, &g)| *x += g);
        }
        Ok(())
    }
}
