//! Depthwise Conv2d in the trainer: finite differences, worker counts, DropIT.
mod common;

use common::{config, data, gradcheck, labels};
use dropit::layers::DepthwiseConv2d;
use dropit::{DropIt, Model, ModelBuilder, Shape, Trainer};
use proptest::prelude::*;

/// `input → conv 3×3 (→ c) → depthwise → flatten → Linear(4)`.
fn model(input: Shape, c: usize, dw: DepthwiseConv2d) -> Model {
    let mut b = ModelBuilder::new(input);
    let x = b.conv2d("pre", b.input(), c, 3, 1, 1).unwrap();
    let x = b.layer("dw", dw, x).unwrap();
    let x = b.flatten("flat", x).unwrap();
    let x = b.linear("head", x, 4).unwrap();
    b.build(x).unwrap()
}

#[test]
fn depthwise_against_finite_differences() {
    let dw = DepthwiseConv2d::new(3, 3, 1, 1).with_bias();
    gradcheck(model(Shape::new(5, 5, 2), 3, dw), 3, 0.0, 20, 1);
    let strided = DepthwiseConv2d::new(4, 3, 2, 1);
    gradcheck(model(Shape::new(6, 7, 1), 4, strided), 2, 0.0, 20, 2);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(12))]
    #[test]
    fn depthwise_geometry(h in 2usize..7, w in 2usize..7, c in 1usize..4, k in 1usize..4,
                          s in 1usize..3, p in 0usize..2) {
        prop_assume!(h + 2 * p >= k && w + 2 * p >= k);
        let dw = DepthwiseConv2d::new(c, k, s, p);
        gradcheck(model(Shape::new(h, w, 1), c, dw), 2, 0.0, 6, 3);
    }
}

fn grads(m: Model, threads: usize) -> Vec<f32> {
    let per = m.input_shape().numel();
    let mut cfg = config(6);
    cfg.threads = threads;
    let mut t = Trainer::new(m, cfg).unwrap();
    let (x, y) = (data(6 * per, 4), labels(6, 4, 5));
    t.loss_and_grads(&x, &y).unwrap();
    t.grads().to_vec()
}

#[test]
fn workers_agree_and_dropit_applies() {
    let m = || model(Shape::new(8, 8, 1), 5, DepthwiseConv2d::new(5, 3, 1, 1));
    let (one, two) = (grads(m(), 1), grads(m(), 2));
    for (a, b) in one.iter().zip(&two) {
        assert!((a - b).abs() <= 1e-5 * (1.0 + a.abs()), "{a} vs {b}");
    }
    // γ = 0 is the dense path, bitwise; DropIT's policy reaches the depthwise layer (here the
    // middle of three weighted layers) and keeps it packed.
    let dense = grads(m().with_dropit(&DropIt::new(0.0)).unwrap(), 1);
    assert_eq!(dense, one);
    let sparse_model = m().with_dropit(&DropIt::new(0.5)).unwrap();
    let t = Trainer::new(sparse_model.clone(), config(6)).unwrap();
    let line = t.memory_report().layers[1].clone();
    assert!(line.saved.starts_with("γ0.50"), "{}", line.saved);
    assert!(line.saved_bytes < line.dense_bytes);
    // Half the input dropped: grad_W of the depthwise layer changes, the others' are close.
    let sparse = grads(sparse_model, 1);
    let dw = t.param_range(1);
    let ts = t.param_range(0).start;
    let (a, b) = (
        &dense[dw.start - ts..dw.end - ts],
        &sparse[dw.start - ts..dw.end - ts],
    );
    let dot: f32 = a.iter().zip(b).map(|(a, b)| a * b).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    let cos = dot / (norm(a) * norm(b));
    assert!(a != b && cos > 0.8, "cosine {cos}");
}

#[test]
fn bad_depthwise_is_an_error() {
    let mut b = ModelBuilder::new(Shape::new(4, 4, 3));
    let e = b.layer("dw", DepthwiseConv2d::new(2, 3, 1, 1), b.input());
    assert!(matches!(e, Err(dropit::Error::Shape { .. })), "{e:?}");
    let e = b.layer("dw", DepthwiseConv2d::new(3, 7, 1, 0), b.input());
    assert!(matches!(e, Err(dropit::Error::Shape { .. })), "{e:?}");
    let e = b.layer("dw", DepthwiseConv2d::new(3, 3, 0, 1), b.input());
    assert!(e.is_err(), "{e:?}");
}
