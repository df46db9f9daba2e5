//! Multi-head self-attention over tokens, after a fused qkv projection: the input is `[1, T, 3D]`
//! with every token's row laid out `q | k | v` and each of those split into `heads` heads of
//! `D / heads` channels (PyTorch's `qkv.reshape(B, T, 3, H, D/H)`); the output is `[1, T, D]`,
//! the heads' contexts side by side, ready for the output projection.
//!
//! Saved for backward: q, k and v — the input itself, held, or a bf16 copy when lean — and one
//! log-sum-exp per row of every head's scores. The softmax probabilities are not kept: backward
//! recomputes them from q, k and the log-sum-exp, exactly as forward made them (one T×T product
//! per head, a few percent of the block's work, against T² floats per head held all step).

use dropit_simd::act;
use dropit_simd::gemm::{Mat, MatMut};
use half::bf16;

use super::contract::{Dims, Elem, Entry, Mode, Needs, Op};
use super::par::{each, max_groups, split};
use super::{Bwd, Fwd, gemm, gemm_words, held, not_in_place};
use crate::arena::{f32s_mut, words_for_f32};
use crate::error::{Result, shape_err};
use crate::shape::Shape;

/// `MultiheadAttention(dim, heads)` on a fused qkv input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Attention {
    /// Model width D (the output channels; the input has 3·D).
    pub dim: usize,
    /// Heads; D must be a multiple.
    pub heads: usize,
    /// Keep q, k, v for backward as bf16 instead of holding the f32 input.
    pub lean: bool,
}

impl Attention {
    /// Self-attention of width `dim` with `heads` heads.
    pub fn new(dim: usize, heads: usize) -> Self {
        Attention {
            dim,
            heads,
            lean: false,
        }
    }

    fn head_dim(&self) -> usize {
        self.dim / self.heads
    }

    /// Log-sum-exp rows for `n` samples of `t` tokens.
    fn lse_rows(&self, n: usize, t: usize) -> usize {
        n * self.heads * t
    }

    /// Per worker: a T×T score block, its gradient, a f32 copy of one sample's q|k|v (lean) and
    /// the GEMM packing space.
    fn scratch_words(&self, n: usize, x: Shape, threads: usize) -> usize {
        let (t, hd) = (x.rows(), self.head_dim());
        // Saturating: an absurd size becomes a plan too large to allocate, never a wrapped one.
        let qkv = if self.lean { 3 * t * self.dim } else { 0 };
        let pack = gemm_words(t, hd, t).max(gemm_words(t, t, hd));
        let scores = t.saturating_mul(2 * t).saturating_add(qkv);
        max_groups(n, threads).saturating_mul(words_for_f32(scores).saturating_add(pack))
    }
}

impl Op for Attention {
    const KIND: &'static str = "MultiheadAttention";

    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        let (d, h) = (self.dim, self.heads);
        if h == 0 || d == 0 || !d.is_multiple_of(h) {
            return shape_err(
                name,
                format_args!("dim a positive multiple of heads ({h})"),
                format_args!("dim {d}"),
            );
        }
        if x.c != 3 * d || x.rows() == 0 {
            return shape_err(name, format_args!("input [h, w, {}] (q|k|v)", 3 * d), x);
        }
        Ok(Shape::new(x.h, x.w, d))
    }

    /// One f32 log-sum-exp per score row, and q, k, v: the input itself, held, or a bf16 copy
    /// when lean. PyTorch keeps q, k, v (the input) and every head's probabilities.
    fn needs(&self, d: &Dims) -> Needs {
        let (t, e) = (d.x.rows(), d.x_elems());
        let rows = self.lse_rows(d.n, t);
        let mut needs = Needs::none().save(Entry::new("log-sum-exp f32", Elem::F32, rows));
        if self.lean {
            needs = needs.save(Entry::new("qkv bf16", Elem::Bf16, e));
        }
        needs.holds_input = !self.lean;
        needs
            .scratch(self.scratch_words(d.n, d.x, d.threads))
            .torch(rows.saturating_mul(t).saturating_add(e).saturating_mul(4))
    }

    fn set_lean(&mut self, lean: bool) {
        self.lean = lean;
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let (t, d, h) = (f.x_shape.rows(), self.dim, self.heads);
        let (per, _) = split(f.n, f.threads);
        let unit = f.scratch.len() / max_groups(f.n, f.threads);
        // Nothing is kept in evaluation, nor by a frozen layer.
        let keep = f.mode == Mode::Train;
        let lse: &mut [f32] = if keep { f.saved.f32(0)? } else { &mut [] };
        let copy: &mut [bf16] = match keep && self.lean {
            true => f.saved.bf16(1)?,
            false => &mut [],
        };
        let x = not_in_place(f.x, Self::KIND)?;
        let work = x
            .chunks(per * t * 3 * d)
            .zip(f.y.chunks_mut(per * t * d))
            .zip(f.scratch.chunks_mut(unit))
            .zip(some_chunks(lse, per * h * t))
            .zip(some_chunks(copy, per * t * 3 * d));
        each(work, |((((x, y), s), mut lse), copy)| {
            if let Some(c) = copy {
                c.iter_mut()
                    .zip(x)
                    .for_each(|(c, &v)| *c = bf16::from_f32(v));
            }
            for (i, (xs, ys)) in x
                .chunks_exact(t * 3 * d)
                .zip(y.chunks_mut(t * d))
                .enumerate()
            {
                for head in 0..h {
                    let l = lse
                        .as_deref_mut()
                        .map(|l| &mut l[(i * h + head) * t..][..t]);
                    self.head_forward(xs, ys, head, t, l, s)?;
                }
            }
            Ok(())
        })
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        self.run_backward(b)
    }
}

impl Attention {
    /// One head of one sample: `y_h = softmax(scale · q kᵀ) v`, keeping each row's log-sum-exp.
    fn head_forward(
        &self,
        x: &[f32],
        y: &mut [f32],
        head: usize,
        t: usize,
        mut lse: Option<&mut [f32]>,
        scratch: &mut [u64],
    ) -> Result<()> {
        let (d, hd) = (self.dim, self.head_dim());
        let (p, pack) = scratch.split_at_mut(words_for_f32(2 * t * t));
        let p = &mut f32s_mut(p)[..t * t];
        self.scores(x, head, t, p, pack)?;
        for (r, row) in p.chunks_exact_mut(t).enumerate() {
            // Stable: the row's max is taken out before exp.
            let m = row.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let sum = act::exp_shifted(row, m);
            let inv = 1.0 / sum;
            row.iter_mut().for_each(|p| *p *= inv);
            if let Some(lse) = lse.as_deref_mut() {
                lse[r] = m + libm::logf(sum);
            }
        }
        let v = Mat::strided(&x[2 * d + head * hd..], t, hd, 3 * d, 1)?;
        let out = MatMut::strided(&mut y[head * hd..], t, hd, d, 1)?;
        gemm(1.0, Mat::new(p, t, t)?, v, 0.0, out, pack)
    }

    /// `p = scale · q_h k_hᵀ` for one head of one sample whose q|k|v rows are `x`.
    fn scores(
        &self,
        x: &[f32],
        head: usize,
        t: usize,
        p: &mut [f32],
        pack: &mut [u64],
    ) -> Result<()> {
        let (d, hd) = (self.dim, self.head_dim());
        let scale = 1.0 / libm::sqrtf(hd as f32);
        let q = Mat::strided(&x[head * hd..], t, hd, 3 * d, 1)?;
        let k = Mat::strided(&x[d + head * hd..], t, hd, 3 * d, 1)?.t();
        gemm(scale, q, k, 0.0, MatMut::new(p, t, t)?, pack)
    }

    fn run_backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let (t, d, h) = (b.x_shape.rows(), self.dim, self.heads);
        let (per, _) = split(b.n, b.threads);
        let unit = b.scratch.len() / max_groups(b.n, b.threads);
        let lse = b.saved.f32(0)?;
        let acc = b.acc;
        let qkv_len = t * 3 * d;
        let (xs, copy): (&[f32], &[bf16]) = match self.lean {
            true => (&[], b.saved.bf16(1)?),
            false => (held(b.x, <Self as Op>::KIND)?, &[]),
        };
        let dy = not_in_place(b.dy, <Self as Op>::KIND)?;
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        let work = dx
            .chunks_mut(per * qkv_len)
            .zip(dy.chunks(per * t * d))
            .zip(lse.chunks(per * h * t))
            .zip(b.scratch.chunks_mut(unit))
            .enumerate();
        each(work, |(g, (((dx, dy), lse), s))| {
            let samples = dy.len() / (t * d);
            for i in 0..samples {
                let at = (g * per + i) * qkv_len;
                let (qkv, rest) = if self.lean {
                    let (c, rest) = s.split_at_mut(words_for_f32(qkv_len));
                    let c = &mut f32s_mut(c)[..qkv_len];
                    c.iter_mut()
                        .zip(&copy[at..at + qkv_len])
                        .for_each(|(c, v)| *c = v.to_f32());
                    (&*c, rest)
                } else {
                    (&xs[at..at + qkv_len], &mut *s)
                };
                let dx = &mut dx[i * qkv_len..][..qkv_len];
                let dy = &dy[i * t * d..][..t * d];
                for head in 0..h {
                    let l = &lse[(i * h + head) * t..][..t];
                    self.head_backward(qkv, dy, dx, head, t, l, acc, rest)?;
                }
            }
            Ok(())
        })
    }

    /// One head of one sample: with P recomputed, dV = Pᵀ dO, dP = dO Vᵀ,
    /// dS = P ⊙ (dP − rowsum(dP ⊙ P)), dQ = scale · dS K, dK = scale · dSᵀ Q.
    #[allow(clippy::too_many_arguments)]
    fn head_backward(
        &self,
        x: &[f32],
        dy: &[f32],
        dx: &mut [f32],
        head: usize,
        t: usize,
        lse: &[f32],
        acc: bool,
        scratch: &mut [u64],
    ) -> Result<()> {
        let (d, hd) = (self.dim, self.head_dim());
        let scale = 1.0 / libm::sqrtf(hd as f32);
        let beta = if acc { 1.0 } else { 0.0 };
        let (pp, pack) = scratch.split_at_mut(words_for_f32(2 * t * t));
        let (p, dp) = f32s_mut(pp)[..2 * t * t].split_at_mut(t * t);
        self.scores(x, head, t, p, pack)?;
        for (row, &l) in p.chunks_exact_mut(t).zip(lse) {
            act::exp_shifted(row, l);
        }
        let dout = Mat::strided(&dy[head * hd..], t, hd, d, 1)?;
        let at = |part: usize| part * d + head * hd;
        let v = Mat::strided(&x[at(2)..], t, hd, 3 * d, 1)?;
        gemm(1.0, dout, v.t(), 0.0, MatMut::new(dp, t, t)?, pack)?;
        let dv = MatMut::strided(&mut dx[at(2)..], t, hd, 3 * d, 1)?;
        gemm(1.0, Mat::new(p, t, t)?.t(), dout, beta, dv, pack)?;
        for (dr, pr) in dp.chunks_exact_mut(t).zip(p.chunks_exact(t)) {
            let dot: f32 = dr.iter().zip(pr).map(|(a, b)| a * b).sum();
            dr.iter_mut()
                .zip(pr)
                .for_each(|(g, &pv)| *g = pv * (*g - dot));
        }
        let ds = Mat::new(dp, t, t)?;
        let k = Mat::strided(&x[at(1)..], t, hd, 3 * d, 1)?;
        let q = Mat::strided(&x[at(0)..], t, hd, 3 * d, 1)?;
        let dq = MatMut::strided(&mut dx[at(0)..], t, hd, 3 * d, 1)?;
        gemm(scale, ds, k, beta, dq, pack)?;
        let dk = MatMut::strided(&mut dx[at(1)..], t, hd, 3 * d, 1)?;
        gemm(scale, ds.t(), q, beta, dk, pack)
    }
}

/// `len`-long chunks of `s` as `Some`, then `None` forever (an empty `s` gives only `None`).
fn some_chunks<V>(s: &mut [V], len: usize) -> impl Iterator<Item = Option<&mut [V]>> {
    s.chunks_mut(len.max(1))
        .map(Some)
        .chain(core::iter::repeat_with(|| None))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Deterministic values in about ±2.
    fn vals(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect()
    }

    /// Attention the plainest way, in f64: per sample and head, softmax(q kᵀ/√hd) v, and the
    /// gradient of Σ y·w with respect to the q|k|v input.
    fn naive(a: &Attention, x: &[f32], w: &[f32], n: usize, t: usize) -> (Vec<f64>, Vec<f64>) {
        let (d, h) = (a.dim, a.heads);
        let hd = d / h;
        let scale = 1.0 / (hd as f64).sqrt();
        let mut y = vec![0.0; n * t * d];
        let mut dx = vec![0.0; n * t * 3 * d];
        let at = |s: usize, tok: usize, part: usize, hh: usize, j: usize| {
            ((s * t + tok) * 3 + part) * d + hh * hd + j
        };
        for s in 0..n {
            for hh in 0..h {
                let mut p = vec![vec![0.0f64; t]; t];
                for i in 0..t {
                    for k in 0..t {
                        p[i][k] = (0..hd)
                            .map(|j| x[at(s, i, 0, hh, j)] as f64 * x[at(s, k, 1, hh, j)] as f64)
                            .sum::<f64>()
                            * scale;
                    }
                    let m = p[i].iter().cloned().fold(f64::MIN, f64::max);
                    let z: f64 = p[i].iter().map(|v| (v - m).exp()).sum();
                    p[i].iter_mut().for_each(|v| *v = (*v - m).exp() / z);
                }
                let dy = |i: usize, j: usize| w[(s * t + i) * d + hh * hd + j] as f64;
                for i in 0..t {
                    for j in 0..hd {
                        y[(s * t + i) * d + hh * hd + j] =
                            (0..t).map(|k| p[i][k] * x[at(s, k, 2, hh, j)] as f64).sum();
                    }
                }
                // dP = dO vᵀ, dS = P ⊙ (dP − rowsum(dP ⊙ P)).
                let mut ds = vec![vec![0.0f64; t]; t];
                for i in 0..t {
                    let dp: Vec<f64> = (0..t)
                        .map(|k| {
                            (0..hd)
                                .map(|j| dy(i, j) * x[at(s, k, 2, hh, j)] as f64)
                                .sum()
                        })
                        .collect();
                    let dot: f64 = (0..t).map(|k| dp[k] * p[i][k]).sum();
                    for k in 0..t {
                        ds[i][k] = p[i][k] * (dp[k] - dot) * scale;
                    }
                }
                for k in 0..t {
                    for j in 0..hd {
                        dx[at(s, k, 2, hh, j)] = (0..t).map(|i| p[i][k] * dy(i, j)).sum();
                        dx[at(s, k, 0, hh, j)] = (0..t)
                            .map(|m| ds[k][m] * x[at(s, m, 1, hh, j)] as f64)
                            .sum();
                        dx[at(s, k, 1, hh, j)] = (0..t)
                            .map(|i| ds[i][k] * x[at(s, i, 0, hh, j)] as f64)
                            .sum();
                    }
                }
            }
        }
        (y, dx)
    }

    /// Runs forward and backward of `a` on `n` samples of `t` tokens with `threads` workers,
    /// with `dy = w`; returns (y, dx) with dx accumulated onto `start`.
    fn run(
        a: &Attention,
        x: &[f32],
        w: &[f32],
        n: usize,
        t: usize,
        threads: usize,
        start: Option<&[f32]>,
    ) -> (Vec<f32>, Vec<f32>) {
        let (xs, ys) = (Shape::new(1, t, 3 * a.dim), Shape::new(1, t, a.dim));
        crate::layers::testing::run(a, (n, xs, ys, threads), x, w, !a.lean, start)
    }

    fn close(got: &[f32], want: &[f64], tol: f64, what: &str) {
        for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g as f64 - w).abs() <= tol * (1.0 + w.abs()),
                "{what}[{i}]: {g} vs reference {w}"
            );
        }
    }

    #[test]
    fn matches_the_naive_reference() {
        for (n, t, d, h, threads) in [(3, 5, 6, 2, 1), (4, 7, 12, 3, 2), (1, 1, 4, 4, 1)] {
            let a = Attention::new(d, h);
            let x = vals(n * t * 3 * d, (n * t * d) as u64);
            let w = vals(n * t * d, 99);
            let (y_ref, dx_ref) = naive(&a, &x, &w, n, t);
            let (y, dx) = run(&a, &x, &w, n, t, threads, None);
            close(&y, &y_ref, 1e-5, "y");
            close(&dx, &dx_ref, 1e-4, "dx");
            // Accumulating onto an earlier gradient adds.
            let ones = vec![1.0f32; dx.len()];
            let (_, acc) = run(&a, &x, &w, n, t, threads, Some(&ones));
            let shifted: Vec<f64> = dx_ref.iter().map(|v| v + 1.0).collect();
            close(&acc, &shifted, 1e-4, "accumulated dx");
            // Lean: the same forward; backward from bf16 q, k, v, within bf16's precision.
            let lean = Attention { lean: true, ..a };
            let (yl, dxl) = run(&lean, &x, &w, n, t, threads, None);
            assert_eq!(y, yl, "lean forward is exact");
            close(&dxl, &dx_ref, 3e-2, "lean dx");
        }
    }

    #[test]
    fn large_scores_stay_finite() {
        // Scores of ±1e4 would overflow a plain exp: the log-sum-exp keeps them finite.
        let (n, t, d, h) = (2, 4, 4, 1);
        let a = Attention::new(d, h);
        let x: Vec<f32> = vals(n * t * 3 * d, 5).iter().map(|v| v * 100.0).collect();
        let w = vals(n * t * d, 6);
        let (y, dx) = run(&a, &x, &w, n, t, 1, None);
        assert!(y.iter().chain(&dx).all(|v| v.is_finite()));
        let (y_ref, _) = naive(&a, &x, &w, n, t);
        close(&y, &y_ref, 1e-3, "y");
    }

    #[test]
    fn rejects_bad_shapes() {
        let a = Attention::new(6, 4);
        assert!(a.out_shape("attn", Shape::new(1, 3, 18)).is_err());
        let a = Attention::new(6, 3);
        let err = a
            .out_shape("blocks.0.attn", Shape::new(1, 3, 12))
            .unwrap_err();
        let msg = crate::collections::msg!("{err}");
        assert!(msg.contains("blocks.0.attn") && msg.contains("18"), "{msg}");
        assert_eq!(
            a.out_shape("a", Shape::new(1, 3, 18)).unwrap(),
            Shape::new(1, 3, 6)
        );
    }
}
