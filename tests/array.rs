//! ndarray at the boundary: the array methods train, evaluate and predict exactly as the slice
//! API, refuse wrong shapes with named errors, allocate nothing on a contiguous NHWC batch, and
//! `named_parameters` shows our storage in PyTorch's shapes and index order without copying.
mod common;

use std::alloc::{GlobalAlloc, Layout as AllocLayout, System};
use std::cell::Cell;

use common::{config, data, labels};
use dropit::array::ImageLayout;
use dropit::layers::Layout;
use dropit::{Error, Model, ModelBuilder, Shape, Trainer};
use ndarray::{Array1, Array4, ArrayView1, ArrayView4, IxDyn, s};

thread_local! {
    /// Allocation calls made by this thread (tests run on threads of their own).
    static ALLOCS: Cell<usize> = const { Cell::new(0) };
}

/// The system allocator, counting each thread's allocation calls.
struct ThreadCounting;

// SAFETY: every call is forwarded unchanged to the system allocator; the counter is a
// const-initialised thread-local `Cell` (no allocation, no destructor).
unsafe impl GlobalAlloc for ThreadCounting {
    unsafe fn alloc(&self, layout: AllocLayout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as given.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: AllocLayout) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as given.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: AllocLayout) {
        // SAFETY: `ptr` came from System with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: AllocLayout, new_size: usize) -> *mut u8 {
        let _ = ALLOCS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: ThreadCounting = ThreadCounting;

fn allocations() -> usize {
    ALLOCS.with(Cell::get)
}

/// A small model whose input has several channels and h ≠ w (so a wrong permutation shows):
/// conv 3×3 → BN → ReLU → flatten → Linear → 4 classes.
fn small() -> Model {
    let mut b = ModelBuilder::new(Shape::new(6, 5, 3));
    let x = b.conv2d("conv1", b.input(), 4, 3, 1, 1).unwrap();
    let x = b.batchnorm2d("bn1", x).unwrap();
    let x = b.relu("relu", x).unwrap();
    let x = b.flatten("flatten", x).unwrap();
    let x = b.linear("fc", x, 4).unwrap();
    b.build(x).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn arrays_train_evaluate_and_predict_as_slices_do() {
    let n = 6;
    let (x, y) = (data(n * 90, 1), labels(n, 4, 2));
    let nhwc = Array4::from_shape_vec((n, 6, 5, 3), x.clone()).unwrap();
    let nchw = nhwc
        .view()
        .permuted_axes([0, 3, 1, 2])
        .as_standard_layout()
        .into_owned();
    assert!(nchw.is_standard_layout() && nchw.shape() == [n, 3, 6, 5]);
    // NHWC, but not contiguous: the data in the first 3 of 5 channels; labels at every other
    // place.
    let mut wide = Array4::from_elem((n, 6, 5, 5), f32::NAN);
    wide.slice_mut(s![.., .., .., ..3]).assign(&nhwc);
    let strided = wide.slice(s![.., .., .., ..3]);
    assert!(strided.as_slice().is_none());
    let y2 = Array1::from_iter(y.iter().flat_map(|&l| [l, 99]));
    let y_strided = y2.slice(s![..;2]);
    assert!(y_strided.as_slice().is_none());
    let y = Array1::from(y);
    let ys = y.as_slice().unwrap();

    let new = || Trainer::new(small(), config(n)).unwrap();
    let mut reference = new();
    type Input<'a> = (ArrayView4<'a, f32>, ImageLayout, ArrayView1<'a, u32>);
    let inputs: [(&str, Input<'_>); 3] = [
        ("NHWC", (nhwc.view(), ImageLayout::Nhwc, y.view())),
        ("NCHW", (nchw.view(), ImageLayout::Nchw, y.view())),
        ("strided NHWC", (strided, ImageLayout::Nhwc, y_strided)),
    ];
    let mut trainers: Vec<Trainer<'_>> = inputs.iter().map(|_| new()).collect();
    for _ in 0..3 {
        let want = reference.step(&x, ys).unwrap();
        for ((what, (xa, l, ya)), t) in inputs.iter().zip(&mut trainers) {
            let got = t.step_array(xa.view(), *l, ya.view()).unwrap();
            assert_eq!(got.loss.to_bits(), want.loss.to_bits(), "{what}");
            assert_eq!((got.correct, got.skipped), (want.correct, want.skipped));
            assert_eq!(bits(t.params()), bits(reference.params()), "{what}");
            assert_eq!(bits(t.state()), bits(reference.state()), "{what}");
        }
    }
    let want = reference.evaluate(&x, ys).unwrap();
    let mut logits = vec![0.0; n * 4];
    reference.predict(&x, &mut logits).unwrap();
    for ((what, (xa, l, ya)), t) in inputs.iter().zip(&mut trainers) {
        let got = t.evaluate_array(xa.view(), *l, ya.view()).unwrap();
        assert_eq!(got.loss.to_bits(), want.loss.to_bits(), "{what}");
        assert_eq!((got.correct, got.samples), (want.correct, want.samples));
        let p = t.predict_array(xa.view(), *l).unwrap();
        assert_eq!(p.shape(), [n, 4], "{what}");
        assert_eq!(bits(p.as_slice().unwrap()), bits(&logits), "{what}");
    }
}

fn shape_error(e: Error) -> (String, String, String) {
    match e {
        Error::Shape {
            layer,
            expected,
            given,
        } => (layer, expected, given),
        e => panic!("not a shape error: {e}"),
    }
}

#[test]
fn wrong_shapes_are_named_errors() {
    let mut t = Trainer::new(Model::mlp().unwrap(), config(4)).unwrap();
    let before = t.params().to_vec();
    let y = Array1::from(vec![0u32, 1, 2, 3]);
    // PyTorch's order passed as ours.
    let chw = Array4::<f32>::zeros((4, 1, 28, 28));
    let e = t.step_array(chw.view(), ImageLayout::Nhwc, y.view());
    assert_eq!(
        shape_error(e.unwrap_err()),
        (
            "step_array: input".into(),
            "[n, 28, 28, 1] (NHWC)".into(),
            "[4, 1, 28, 28]".into()
        )
    );
    // Ours passed as PyTorch's.
    let hwc = Array4::<f32>::zeros((4, 28, 28, 1));
    let e = t.evaluate_array(hwc.view(), ImageLayout::Nchw, y.view());
    assert_eq!(
        shape_error(e.unwrap_err()),
        (
            "evaluate_array: input".into(),
            "[n, 1, 28, 28] (NCHW)".into(),
            "[4, 28, 28, 1]".into()
        )
    );
    let e = t.predict_array(Array4::zeros((2, 28, 27, 1)).view(), ImageLayout::Nhwc);
    assert_eq!(shape_error(e.unwrap_err()).0, "predict_array: input");
    // Labels that do not match the images.
    let e = t.step_array(hwc.view(), ImageLayout::Nhwc, y.slice(s![..3]));
    let (layer, expected, given) = shape_error(e.unwrap_err());
    assert_eq!(layer, "step_array: labels");
    assert_eq!(
        (expected.as_str(), given.as_str()),
        ("4 labels (one per image)", "3")
    );
    // A batch larger than planned, and an empty one: the trainer's own errors.
    let big = Array4::<f32>::zeros((5, 28, 28, 1));
    let e = t.step_array(big.view(), ImageLayout::Nhwc, Array1::zeros(5).view());
    assert!(matches!(
        e,
        Err(Error::Batch {
            given: 5,
            planned: 4
        })
    ));
    let none = Array4::<f32>::zeros((0, 28, 28, 1));
    assert!(t.predict_array(none.view(), ImageLayout::Nhwc).is_err());
    assert!(
        t.step_array(none.view(), ImageLayout::Nhwc, Array1::zeros(0).view())
            .is_err()
    );
    // Nothing was trained.
    assert_eq!(t.steps(), 0);
    assert_eq!(bits(t.params()), bits(&before));
    // The right shape works.
    t.step_array(hwc.view(), ImageLayout::Nhwc, y.view())
        .unwrap();
}

#[test]
fn a_contiguous_nhwc_batch_allocates_nothing() {
    let n = 8;
    let x = Array4::from_shape_vec((n, 6, 5, 3), data(n * 90, 3)).unwrap();
    let y = Array1::from(labels(n, 4, 4));
    let mut t = Trainer::new(small(), config(n)).unwrap();
    let nchw = x
        .view()
        .permuted_axes([0, 3, 1, 2])
        .as_standard_layout()
        .into_owned();
    let before = allocations();
    for _ in 0..3 {
        t.step_array(x.view(), ImageLayout::Nhwc, y.view()).unwrap();
    }
    t.evaluate_array(x.view(), ImageLayout::Nhwc, y.view())
        .unwrap();
    // A permuted view of NHWC memory, passed as NCHW, is NHWC again: no copy either.
    let permuted = x.view().permuted_axes([0, 3, 1, 2]);
    t.step_array(permuted, ImageLayout::Nchw, y.view()).unwrap();
    assert_eq!(
        allocations() - before,
        0,
        "contiguous NHWC batches allocated"
    );
    // An NCHW array in its own standard layout is copied (and the counter sees it).
    let before = allocations();
    t.step_array(nchw.view(), ImageLayout::Nchw, y.view())
        .unwrap();
    assert!(allocations() > before, "the NCHW copy was not counted");
}

/// `j` as an index into a row-major tensor of `shape`.
fn unravel(mut j: usize, shape: &[usize]) -> Vec<usize> {
    let mut idx = vec![0; shape.len()];
    for k in (0..shape.len()).rev() {
        idx[k] = j % shape[k];
        j /= shape[k];
    }
    idx
}

/// Every named view agrees with the contract's mapping (`Layout::torch_index`) and lies in
/// the trainer's own storage.
/// Returns the trainer and which layout kinds (Same, Transposed, Hwio, Hwc) the model has.
fn check_views(model: Model) -> (Trainer<'static>, [bool; 4]) {
    let mut t = Trainer::new(model, config(1)).unwrap();
    // Distinct values everywhere, so a wrong element cannot match by chance.
    for (i, p) in t.params_mut().iter_mut().enumerate() {
        *p = i as f32;
    }
    for (i, s) in t.state_mut().iter_mut().enumerate() {
        *s = -(i as f32) - 1.0;
    }
    let named = t.named_parameters().unwrap();
    let mut k = 0;
    let mut kinds = [false; 4];
    for (node_i, node) in t.model().nodes().iter().enumerate() {
        let (mut p, mut s) = (t.param_range(node_i).start, t.state_range(node_i).start);
        for decl in node.layer.params() {
            let (name, view) = &named[k];
            k += 1;
            assert_eq!(*name, format!("{}.{}", node.name, decl.name));
            assert_eq!(view.shape(), decl.torch_shape.as_slice(), "{name}");
            let storage = if decl.trained { t.params() } else { t.state() };
            let at = if decl.trained { &mut p } else { &mut s };
            let ours = &storage[*at..*at + decl.len()];
            *at += decl.len();
            let range = storage.as_ptr_range();
            for (i, &o) in ours.iter().enumerate() {
                let idx = unravel(decl.layout.torch_index(i), view.shape());
                let e = &view[IxDyn(&idx)];
                assert_eq!(e.to_bits(), o.to_bits(), "{name}[{idx:?}] (ours {i})");
                assert!(range.contains(&(e as *const f32)), "{name}: a copy");
            }
            kinds[match decl.layout {
                Layout::Same => 0,
                Layout::Transposed { .. } => 1,
                Layout::Hwio { .. } => 2,
                Layout::Hwc { .. } => 3,
            }] = true;
        }
    }
    assert_eq!(k, named.len());
    drop(named);
    (t, kinds)
}

#[test]
fn named_parameters_are_pytorch_views_of_our_storage() {
    // The cnn: Same (BN), Transposed (fc), Hwio (convs); the mobilenet: Hwc (depthwise); the
    // vit: LayerNorm, attention, tokens.
    let (t, cnn) = check_views(Model::cnn().unwrap());
    assert_eq!(cnn, [true, true, true, false]);
    let named = t.named_parameters().unwrap();
    let shape_of = |n: &str| {
        named
            .iter()
            .find(|(name, _)| name == n)
            .map(|(_, v)| v.shape().to_vec())
    };
    assert_eq!(shape_of("conv1.weight"), Some(vec![32, 1, 3, 3]));
    assert_eq!(shape_of("bn1.weight"), Some(vec![32]));
    assert_eq!(shape_of("bn1.running_mean"), Some(vec![32]));
    assert_eq!(shape_of("bn1.running_var"), Some(vec![32]));
    assert_eq!(shape_of("layer2.0.conv1.weight"), Some(vec![64, 32, 3, 3]));
    assert_eq!(shape_of("fc.weight"), Some(vec![10, 128]));
    assert_eq!(shape_of("fc.bias"), Some(vec![10]));
    assert_eq!(named[0].0, "conv1.weight");
    // fc.weight[o][i] is our [in = 128, out = 10] element (i, o).
    let fc = t.model().find("fc").unwrap();
    let start = t.param_range(fc).start;
    let (_, w) = named.iter().find(|(n, _)| n == "fc.weight").unwrap();
    let w = w.view().into_dimensionality::<ndarray::Ix2>().unwrap();
    for o in 0..10 {
        for i in 0..128 {
            assert_eq!(w[[o, i]], t.params()[start + i * 10 + o]);
        }
    }
    drop(named);

    let (t, mobilenet) = check_views(Model::mobilenet().unwrap());
    assert!(mobilenet[3], "the mobilenet has depthwise (Hwc) weights");
    let named = t.named_parameters().unwrap();
    let dw = named
        .iter()
        .find(|(n, _)| n == "features.1.conv.1.0.weight")
        .unwrap();
    assert_eq!(dw.1.shape(), [64, 1, 3, 3]);
    drop(named);
    check_views(Model::vit().unwrap());
}
