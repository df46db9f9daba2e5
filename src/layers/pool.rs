//! Pooling, NHWC. Max-pooling saves one byte per output (which window element won).

use super::contract::{Dims, Elem, Entry, Mode, Needs, Op};
use super::par::{each, split};
use super::{Bwd, Fwd, not_in_place, put};
use crate::error::{Result, shape_err};
use crate::shape::Shape;

/// `MaxPool2d(k, stride, padding)`; padding counts as −∞.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MaxPool2d {
    /// Window side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
    /// Padding each side.
    pub pad: usize,
}

/// `AvgPool2d(k, stride)` without padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AvgPool2d {
    /// Window side.
    pub k: usize,
    /// Stride.
    pub stride: usize,
}

/// Mean over H and W: `[h, w, c]` → `[1, 1, c]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct GlobalAvgPool;

fn pooled(name: &str, x: Shape, k: usize, s: usize, p: usize) -> Result<Shape> {
    // Padded sides, checked: a side or padding near usize::MAX must not wrap.
    let padded = |n: usize| p.checked_mul(2).and_then(|pp| n.checked_add(pp));
    match (padded(x.h), padded(x.w)) {
        (Some(ph), Some(pw)) if k > 0 && s > 0 && p <= k / 2 && ph >= k && pw >= k => {
            Ok(Shape::new((ph - k) / s + 1, (pw - k) / s + 1, x.c))
        }
        _ => shape_err(
            name,
            format_args!("a {k}×{k} window (stride {s}, padding {p}) that fits"),
            x,
        ),
    }
}

/// Calls `f(ih, iw, a, b)` for the in-bounds window taps of output `(oh, ow)`.
#[inline(always)]
fn window(
    x: Shape,
    k: usize,
    s: usize,
    p: usize,
    oh: usize,
    ow: usize,
    mut f: impl FnMut(usize, usize, usize),
) {
    for a in 0..k {
        let ih = (oh * s + a) as isize - p as isize;
        if ih < 0 || ih >= x.h as isize {
            continue;
        }
        for b in 0..k {
            let iw = (ow * s + b) as isize - p as isize;
            if iw < 0 || iw >= x.w as isize {
                continue;
            }
            f(ih as usize * x.w + iw as usize, a, b);
        }
    }
}

impl MaxPool2d {
    /// `MaxPool2d(k, stride, padding)`.
    pub fn new(k: usize, stride: usize, pad: usize) -> Self {
        MaxPool2d { k, stride, pad }
    }
}

impl Op for MaxPool2d {
    const KIND: &'static str = "MaxPool2d";

    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        if self.k.checked_mul(self.k).is_none_or(|w| w > 256) {
            return shape_err(
                name,
                "a window of at most 256 elements",
                format_args!("{}×{}", self.k, self.k),
            );
        }
        pooled(name, x, self.k, self.stride, self.pad)
    }

    /// A byte per output: which window element won; PyTorch keeps the input and int64 indices,
    /// counted here as the f32 output.
    fn needs(&self, d: &Dims) -> Needs {
        Needs::none()
            .save(Entry::new("argmax u8", Elem::Byte, d.y_elems()))
            .torch(4 * d.y_elems())
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let (xs, ys, c) = (f.x_shape, f.y_shape, f.x_shape.c);
        // A frozen layer keeps no codes.
        let codes: &mut [u8] = match f.mode {
            Mode::Frozen => &mut [],
            _ => f.saved.bytes(0)?,
        };
        let (per, _) = split(f.n, f.threads);
        let (xn, yn) = (per * xs.numel(), per * ys.numel());
        let codes = codes
            .chunks_mut(yn)
            .map(Some)
            .chain(core::iter::repeat_with(|| None));
        let x = not_in_place(f.x, Self::KIND)?;
        let groups = x.chunks(xn).zip(f.y.chunks_mut(yn)).zip(codes);
        each(groups, |((x, y), code)| {
            let samples = x
                .chunks_exact(xs.numel())
                .zip(y.chunks_exact_mut(ys.numel()));
            match code {
                Some(code) => {
                    for ((x, y), code) in samples.zip(code.chunks_exact_mut(ys.numel())) {
                        self.forward_sample(x, y, |o, ch, c| code[o + ch] = c, xs, ys, c);
                    }
                }
                None => {
                    samples.for_each(|(x, y)| self.forward_sample(x, y, |_, _, _| {}, xs, ys, c))
                }
            }
            Ok(())
        })
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        self.run_backward(b)
    }
}

impl MaxPool2d {
    /// Max-pools one sample; `code(o, ch, k)` records which window element `k` won.
    fn forward_sample(
        &self,
        x: &[f32],
        y: &mut [f32],
        mut code: impl FnMut(usize, usize, u8),
        xs: Shape,
        ys: Shape,
        c: usize,
    ) {
        for oh in 0..ys.h {
            for ow in 0..ys.w {
                let o = (oh * ys.w + ow) * c;
                // The first in-bounds tap wins unless a later one is greater (as PyTorch):
                // a window of −∞ routes its gradient to a real pixel, never to the padding.
                let mut first = true;
                window(xs, self.k, self.stride, self.pad, oh, ow, |pix, a, b| {
                    let src = &x[pix * c..][..c];
                    for ch in 0..c {
                        // Greater, or NaN (as PyTorch): a NaN input is passed on, and no later
                        // value replaces it.
                        if first || src[ch] > y[o + ch] || src[ch].is_nan() {
                            y[o + ch] = src[ch];
                            code(o, ch, (a * self.k + b) as u8);
                        }
                    }
                    first = false;
                });
            }
        }
    }

    fn run_backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let (xs, ys, c) = (b.x_shape, b.y_shape, b.x_shape.c);
        let codes = b.saved.bytes(0)?;
        let (per, _) = split(b.n, b.threads);
        let (xn, yn, acc) = (per * xs.numel(), per * ys.numel(), b.acc);
        let dy = not_in_place(b.dy, Self::KIND)?;
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        let groups = dx.chunks_mut(xn).zip(dy.chunks(yn)).zip(codes.chunks(yn));
        each(groups, |((dx, dy), code)| {
            if !acc {
                dx.fill(0.0);
            }
            let samples = dx
                .chunks_exact_mut(xs.numel())
                .zip(dy.chunks_exact(ys.numel()));
            for ((dx, dy), code) in samples.zip(code.chunks_exact(ys.numel())) {
                for oh in 0..ys.h {
                    for ow in 0..ys.w {
                        let o = (oh * ys.w + ow) * c;
                        for ch in 0..c {
                            let (a, bb) = (
                                code[o + ch] as usize / self.k,
                                code[o + ch] as usize % self.k,
                            );
                            // Codes name in-bounds taps (forward starts every window at its
                            // first one); a corrupt code is skipped, not followed off the image.
                            let (Some(ih), Some(iw)) = (
                                (oh * self.stride + a).checked_sub(self.pad),
                                (ow * self.stride + bb).checked_sub(self.pad),
                            ) else {
                                continue;
                            };
                            if ih < xs.h && iw < xs.w {
                                dx[(ih * xs.w + iw) * c + ch] += dy[o + ch];
                            }
                        }
                    }
                }
            }
            Ok(())
        })
    }
}

impl AvgPool2d {
    /// `AvgPool2d(k, stride)`.
    pub fn new(k: usize, stride: usize) -> Self {
        AvgPool2d { k, stride }
    }
}

impl Op for AvgPool2d {
    const KIND: &'static str = "AvgPool2d";

    fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        pooled(name, x, self.k, self.stride, 0)
    }

    fn needs(&self, _d: &Dims) -> Needs {
        Needs::none()
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let (xs, ys, c) = (f.x_shape, f.y_shape, f.x_shape.c);
        let scale = 1.0 / (self.k * self.k) as f32;
        let (per, _) = split(f.n, f.threads);
        each(
            not_in_place(f.x, Self::KIND)?
                .chunks(per * xs.numel())
                .zip(f.y.chunks_mut(per * ys.numel())),
            |(x, y)| {
                for (x, y) in x
                    .chunks_exact(xs.numel())
                    .zip(y.chunks_exact_mut(ys.numel()))
                {
                    for oh in 0..ys.h {
                        for ow in 0..ys.w {
                            let out = &mut y[(oh * ys.w + ow) * c..][..c];
                            out.fill(0.0);
                            window(xs, self.k, self.stride, 0, oh, ow, |pix, _, _| {
                                for (o, v) in out.iter_mut().zip(&x[pix * c..][..c]) {
                                    *o += v;
                                }
                            });
                            out.iter_mut().for_each(|o| *o *= scale);
                        }
                    }
                }
                Ok(())
            },
        )
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let (xs, ys, c) = (b.x_shape, b.y_shape, b.x_shape.c);
        let scale = 1.0 / (self.k * self.k) as f32;
        let (per, _) = split(b.n, b.threads);
        let (acc, dy) = (b.acc, not_in_place(b.dy, Self::KIND)?);
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        each(
            dx.chunks_mut(per * xs.numel())
                .zip(dy.chunks(per * ys.numel())),
            |(dx, dy)| {
                if !acc {
                    dx.fill(0.0);
                }
                for (dx, dy) in dx
                    .chunks_exact_mut(xs.numel())
                    .zip(dy.chunks_exact(ys.numel()))
                {
                    for oh in 0..ys.h {
                        for ow in 0..ys.w {
                            let g = &dy[(oh * ys.w + ow) * c..][..c];
                            window(xs, self.k, self.stride, 0, oh, ow, |pix, _, _| {
                                for (d, v) in dx[pix * c..][..c].iter_mut().zip(g) {
                                    *d += v * scale;
                                }
                            });
                        }
                    }
                }
                Ok(())
            },
        )
    }
}

impl Op for GlobalAvgPool {
    const KIND: &'static str = "AdaptiveAvgPool2d(1)";

    fn out_shape(&self, _name: &str, x: Shape) -> Result<Shape> {
        Ok(Shape::flat(x.c))
    }

    fn needs(&self, _d: &Dims) -> Needs {
        Needs::none()
    }

    fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        let (xs, c) = (f.x_shape, f.x_shape.c);
        let scale = 1.0 / xs.rows() as f32;
        let x = not_in_place(f.x, Self::KIND)?;
        for (x, y) in x.chunks_exact(xs.numel()).zip(f.y.chunks_exact_mut(c)) {
            y.fill(0.0);
            for row in x.chunks_exact(c) {
                for (o, v) in y.iter_mut().zip(row) {
                    *o += v;
                }
            }
            y.iter_mut().for_each(|o| *o *= scale);
        }
        Ok(())
    }

    fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        let (xs, c) = (b.x_shape, b.x_shape.c);
        let scale = 1.0 / xs.rows() as f32;
        let (acc, dy) = (b.acc, not_in_place(b.dy, Self::KIND)?);
        let Some(dx) = b.dx.as_deref_mut() else {
            return Ok(());
        };
        for (dx, dy) in dx.chunks_exact_mut(xs.numel()).zip(dy.chunks_exact(c)) {
            for row in dx.chunks_exact_mut(c) {
                for (d, g) in row.iter_mut().zip(dy) {
                    put(d, g * scale, acc);
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    /// Max-pool forward and backward of one sample (`dy` all ones): `(y, dx)`.
    fn run(p: &MaxPool2d, x: &[f32], xs: Shape) -> (Vec<f32>, Vec<f32>) {
        let ys = p.out_shape("pool", xs).unwrap();
        let dy = alloc::vec![1.0f32; ys.numel()];
        crate::layers::testing::run(p, (1, xs, ys, 1), x, &dy, false, None)
    }

    /// A padded window whose in-bounds values are all −∞ routes its gradient to its first
    /// in-bounds pixel, as PyTorch does — not to a padding tap (which wrapped an index before).
    #[test]
    fn padded_windows_of_minus_infinity_route_to_the_first_pixel() {
        let xs = Shape::new(4, 4, 1);
        let mut x = alloc::vec![1.0f32; 16];
        for i in [0, 1, 4, 5] {
            x[i] = f32::NEG_INFINITY;
        }
        let (y, dx) = run(&MaxPool2d::new(3, 2, 1), &x, xs);
        // Output (0, 0) sees pixels (0..2, 0..2): all −∞, the first is pixel 0.
        assert_eq!(y[0], f32::NEG_INFINITY);
        assert_eq!(dx[0], 1.0, "{dx:?}");
        assert_eq!(dx.iter().sum::<f32>(), 4.0);
        // A NaN wins its window and is passed on.
        x[10] = f32::NAN;
        let (y, _) = run(&MaxPool2d::new(3, 2, 1), &x, xs);
        assert!(y[3].is_nan());
    }
}
