//! ndarray at the boundary (feature `ndarray`, on with `std`): batches as [`ArrayView4`] in
//! NHWC or NCHW order, logits as an [`Array2`], and every parameter and running statistic as a
//! strided view in PyTorch's shape and index order.
//!
//! Layers never see ndarray; these methods check shapes, hand the trainer plain slices and wrap
//! its storage in views. Nothing here is needed to train: the slice API
//! ([`Trainer::step`], [`Trainer::evaluate`], [`Trainer::predict`]) is the same trainer.
//!
//! What allocates: [`Trainer::step_array`] and [`Trainer::evaluate_array`] pass `x` and the
//! labels straight through when their NHWC view is in standard (row-major, contiguous) layout
//! and the labels are contiguous — then nothing is allocated; otherwise (an NCHW batch in its
//! own standard layout, a sliced or strided view) they copy into a `Vec` first.
//! [`Trainer::predict_array`] allocates the logits it returns (and a copy of `x` under the same
//! rule). [`Trainer::named_parameters`] allocates the names and the list, never the tensors.

use alloc::borrow::Cow;
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use ndarray::{Array2, ArrayView1, ArrayView4, ArrayViewD, IxDyn, ShapeBuilder};

use crate::error::{Error, Result, shape_err};
use crate::layers::{Layout, ParamDecl};
use crate::trainer::{EvalStats, StepStats, Trainer};

/// The axis order of a batch of images.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ImageLayout {
    /// `[n, h, w, c]`: channels last, the trainer's own order (no copy when contiguous).
    Nhwc,
    /// `[n, c, h, w]`: channels first, PyTorch's order (copied into NHWC unless the array is a
    /// permuted view of a contiguous NHWC buffer).
    Nchw,
}

impl ImageLayout {
    fn name(self) -> &'static str {
        match self {
            ImageLayout::Nhwc => "NHWC",
            ImageLayout::Nchw => "NCHW",
        }
    }
}

/// A batch as the slice API takes it: NHWC floats and labels, borrowed or copied.
type Batch<'x> = (Cow<'x, [f32]>, Cow<'x, [u32]>);

impl Trainer<'_> {
    /// [`Trainer::step`] on a batch given as an array: `x` holds `n` images in `layout`
    /// (`[n, h, w, c]` or `[n, c, h, w]`, the model's input shape), `labels` their `n` class
    /// indices.
    ///
    /// Allocates nothing when `x` is NHWC in standard layout and `labels` is contiguous: both are
    /// passed through as slices. Otherwise (NCHW, or a sliced or strided view) they are copied
    /// into a `Vec` first, which allocates. A shape that does not fit the model is an
    /// [`Error::Shape`] naming `step_array: input` (or `step_array: labels`), never a panic.
    ///
    /// ```
    /// use dropit::array::ImageLayout;
    /// use dropit::{Model, Trainer, TrainerConfig};
    /// use ndarray::{Array1, Array4};
    ///
    /// let mut t = Trainer::new(Model::mlp()?, TrainerConfig::sgd_recipe(4, 100))?;
    /// let x = Array4::<f32>::from_elem((4, 28, 28, 1), 0.5);
    /// let labels = Array1::from(vec![0u32, 1, 2, 3]);
    /// let stats = t.step_array(x.view(), ImageLayout::Nhwc, labels.view())?;
    /// assert!(stats.loss.is_finite());
    /// // PyTorch's order works too (copied into NHWC first).
    /// let nchw = x.view().permuted_axes([0, 3, 1, 2]);
    /// t.step_array(nchw, ImageLayout::Nchw, labels.view())?;
    /// # Ok::<(), dropit::Error>(())
    /// ```
    pub fn step_array(
        &mut self,
        x: ArrayView4<'_, f32>,
        layout: ImageLayout,
        labels: ArrayView1<'_, u32>,
    ) -> Result<StepStats> {
        let (x, labels) = self.batch_of("step_array", x, layout, labels)?;
        self.step(&x, &labels)
    }

    /// [`Trainer::evaluate`] on a batch given as an array (as [`Trainer::step_array`]: no
    /// allocation for a standard-layout NHWC `x` and contiguous `labels`, a copy otherwise).
    pub fn evaluate_array(
        &mut self,
        x: ArrayView4<'_, f32>,
        layout: ImageLayout,
        labels: ArrayView1<'_, u32>,
    ) -> Result<EvalStats> {
        let (x, labels) = self.batch_of("evaluate_array", x, layout, labels)?;
        self.evaluate(&x, &labels)
    }

    /// [`Trainer::predict`] on a batch given as an array: the logits, `[n, classes]`.
    ///
    /// Allocates the returned array; `x` is passed through as a slice when it is NHWC in
    /// standard layout and copied into a `Vec` otherwise.
    pub fn predict_array(
        &mut self,
        x: ArrayView4<'_, f32>,
        layout: ImageLayout,
    ) -> Result<Array2<f32>> {
        let x = self.input_of("predict_array", x, layout)?;
        let per = self.model().input_shape().numel().max(1);
        let (n, classes) = (x.len() / per, self.model().classes());
        let mut out = alloc::vec![0.0f32; n * classes];
        self.predict(&x, &mut out)?;
        Array2::from_shape_vec((n, classes), out)
            .or_else(|e| shape_err("predict_array: logits", format_args!("[{n}, {classes}]"), e))
    }

    /// Every parameter and running statistic, node by node in the order the model runs them,
    /// as PyTorch's `state_dict` names it (`"{node}.{param}"`, e.g. `conv1.weight`,
    /// `bn1.running_mean`) with a view in PyTorch's shape and index order.
    ///
    /// The views are strided windows on [`Trainer::params`] and [`Trainer::state`] — no copy:
    /// a Linear weight kept `[in, out]` is seen `[out, in]`, a convolution kept
    /// `[kh, kw, cin, cout]` is seen `[cout, cin, kh, kw]` (see [`torch_view`]). Only the names
    /// and the list are allocated. An error means a layer declared a shape its storage does not
    /// have (a bug of that layer).
    pub fn named_parameters(&self) -> Result<Vec<(String, ArrayViewD<'_, f32>)>> {
        let (params, state) = (self.params(), self.state());
        let mut out = Vec::new();
        for (i, node) in self.model().nodes().iter().enumerate() {
            let (mut p, mut s) = (self.param_range(i).start, self.state_range(i).start);
            for decl in node.layer.params() {
                let (storage, at) = if decl.trained {
                    (params, &mut p)
                } else {
                    (state, &mut s)
                };
                let name = format!("{}.{}", node.name, decl.name);
                let len = decl.len();
                let Some(ours) = storage.get(*at..*at + len) else {
                    return shape_err(
                        &format!("named_parameters: {name}"),
                        format_args!("{len} floats from {}", *at),
                        format_args!("{} in storage", storage.len()),
                    );
                };
                *at += len;
                let view = torch_view(&decl, ours).map_err(|e| match e {
                    Error::Shape {
                        expected, given, ..
                    } => Error::Shape {
                        layer: format!("named_parameters: {name}"),
                        expected,
                        given,
                    },
                    e => e,
                })?;
                out.push((name, view));
            }
        }
        Ok(out)
    }

    /// `x` as NHWC floats and `labels` as a slice, borrowed when possible; checked against the
    /// model's input shape and each other.
    fn batch_of<'x>(
        &self,
        what: &str,
        x: ArrayView4<'x, f32>,
        layout: ImageLayout,
        labels: ArrayView1<'x, u32>,
    ) -> Result<Batch<'x>> {
        let n = x.shape()[0];
        let x = self.input_of(what, x, layout)?;
        if labels.len() != n {
            return shape_err(
                &format!("{what}: labels"),
                format_args!("{n} labels (one per image)"),
                labels.len(),
            );
        }
        let labels = match labels.to_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(labels.iter().copied().collect()),
        };
        Ok((x, labels))
    }

    /// `x` as NHWC floats, borrowed when its NHWC view is in standard layout.
    fn input_of<'x>(
        &self,
        what: &str,
        x: ArrayView4<'x, f32>,
        layout: ImageLayout,
    ) -> Result<Cow<'x, [f32]>> {
        let s = self.model().input_shape();
        let (n, h, w, c) = x.dim();
        let (want, nhwc) = match layout {
            ImageLayout::Nhwc => ([s.h, s.w, s.c], x),
            ImageLayout::Nchw => ([s.c, s.h, s.w], x.permuted_axes([0, 2, 3, 1])),
        };
        if [h, w, c] != want {
            return shape_err(
                &format!("{what}: input"),
                format_args!(
                    "[n, {}, {}, {}] ({})",
                    want[0],
                    want[1],
                    want[2],
                    layout.name()
                ),
                format_args!("[{n}, {h}, {w}, {c}]"),
            );
        }
        Ok(match nhwc.to_slice() {
            Some(s) => Cow::Borrowed(s),
            None => Cow::Owned(nhwc.iter().copied().collect()),
        })
    }
}

/// A parameter or running statistic kept in `ours` (our storage order, `decl.len()` floats)
/// seen in PyTorch's shape and index order, as a strided view of the same memory:
///
/// | [`Layout`] | ours | PyTorch's shape | strides |
/// |---|---|---|---|
/// | `Same` | as PyTorch | `torch_shape` | row-major |
/// | `Transposed { rows, cols }` | `[rows, cols]` | `[cols, rows]` | `[1, cols]` |
/// | `Hwio { kh, kw, cin, cout }` | `[kh, kw, cin, cout]` | `[cout, cin, kh, kw]` | `[1, cout, kw·cin·cout, cin·cout]` |
/// | `Hwc { kh, kw, c }` | `[kh, kw, c]` | `[c, 1, kh, kw]` | `[1, kh·kw·c, kw·c, c]` |
///
/// So `view[torch index] == ours[i]` where the torch index is [`Layout::torch_index`]`(i)`
/// unravelled in PyTorch's shape. An [`Error::Shape`] when `decl`'s shape does not match its
/// layout or `ours` has the wrong length.
pub fn torch_view<'a>(decl: &ParamDecl, ours: &'a [f32]) -> Result<ArrayViewD<'a, f32>> {
    let shape = decl.torch_shape.as_slice();
    let layout_err = |want: &[usize]| {
        shape_err(
            "torch_view: shape",
            format_args!("{want:?} for {:?}", decl.layout),
            format_args!("{shape:?}"),
        )
    };
    if ours.len() != decl.len() {
        return shape_err(
            "torch_view: storage",
            format_args!("{} floats for {shape:?}", decl.len()),
            ours.len(),
        );
    }
    let strides: Vec<usize> = match decl.layout {
        Layout::Same => {
            // Row-major: each axis steps over the product of the later ones.
            let mut st = alloc::vec![1; shape.len()];
            for k in (0..shape.len().saturating_sub(1)).rev() {
                st[k] = st[k + 1] * shape[k + 1];
            }
            st
        }
        Layout::Transposed { rows, cols } => {
            if shape != [cols, rows] {
                return layout_err(&[cols, rows]);
            }
            alloc::vec![1, cols]
        }
        Layout::Hwio { kh, kw, cin, cout } => {
            if shape != [cout, cin, kh, kw] {
                return layout_err(&[cout, cin, kh, kw]);
            }
            alloc::vec![1, cout, kw * cin * cout, cin * cout]
        }
        Layout::Hwc { kh, kw, c } => {
            if shape != [c, 1, kh, kw] {
                return layout_err(&[c, 1, kh, kw]);
            }
            alloc::vec![1, kh * kw * c, kw * c, c]
        }
    };
    ArrayViewD::from_shape(IxDyn(shape).strides(IxDyn(&strides)), ours).or_else(|e| {
        shape_err(
            "torch_view: strides",
            format_args!(
                "{shape:?} with strides {strides:?} within {} floats",
                ours.len()
            ),
            e,
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `j` as an index into a row-major tensor of `shape`.
    fn unravel(mut j: usize, shape: &[usize]) -> Vec<usize> {
        let mut idx = alloc::vec![0; shape.len()];
        for k in (0..shape.len()).rev() {
            idx[k] = j % shape[k];
            j /= shape[k];
        }
        idx
    }

    #[test]
    fn views_agree_with_the_contracts_mapping() {
        let decls = [
            ParamDecl::param("same", &[3, 4, 5], Layout::Same),
            ParamDecl::state("running_mean", 7),
            ParamDecl::param("lin", &[5, 3], Layout::Transposed { rows: 3, cols: 5 }),
            ParamDecl::param(
                "conv",
                &[5, 4, 2, 3],
                Layout::Hwio {
                    kh: 2,
                    kw: 3,
                    cin: 4,
                    cout: 5,
                },
            ),
            ParamDecl::param("dw", &[4, 1, 3, 2], Layout::Hwc { kh: 3, kw: 2, c: 4 }),
        ];
        for d in &decls {
            let ours: Vec<f32> = (0..d.len()).map(|i| i as f32).collect();
            let v = torch_view(d, &ours).unwrap();
            assert_eq!(v.shape(), d.torch_shape.as_slice(), "{}", d.name);
            let range = ours.as_ptr_range();
            for (i, &o) in ours.iter().enumerate() {
                let idx = unravel(d.layout.torch_index(i), v.shape());
                let e = &v[IxDyn(&idx)];
                assert_eq!(*e, o, "{} element {i} at {idx:?}", d.name);
                assert!(range.contains(&(e as *const f32)), "{}: not shared", d.name);
            }
        }
    }

    #[test]
    fn bad_declarations_are_errors() {
        let d = ParamDecl::param("lin", &[3, 5], Layout::Transposed { rows: 3, cols: 5 });
        assert!(matches!(
            torch_view(&d, &[0.0; 15]),
            Err(Error::Shape { .. })
        ));
        let d = ParamDecl::param("lin", &[5, 3], Layout::Transposed { rows: 3, cols: 5 });
        assert!(matches!(
            torch_view(&d, &[0.0; 14]),
            Err(Error::Shape { .. })
        ));
        assert!(torch_view(&d, &[0.0; 15]).is_ok());
    }
}
