//! MobileNet pieces: ReLU6 against finite differences, a tiny depthwise/ReLU6 network against
//! PyTorch's autograd (fixture written by `tests/fixtures/torch_reference.py`).
mod common;

#[path = "../simd/tests/common/fixture.rs"]
mod fixture;

use common::{config, gradcheck};
use dropit::layers::{DepthwiseConv2d, Relu6};
use dropit::{Model, ModelBuilder, Shape, Trainer};

#[test]
fn relu6_against_finite_differences() {
    let mut b = ModelBuilder::new(Shape::new(4, 4, 2));
    let x = b.conv2d("pre", b.input(), 3, 3, 1, 1).unwrap();
    let x = b.layer("act", Relu6, x).unwrap();
    let x = b.flatten("flat", x).unwrap();
    let x = b.linear("head", x, 4).unwrap();
    gradcheck(b.build(x).unwrap(), 3, 0.0, 20, 7);
}

/// x → stem conv 3×3 (1→8) → ReLU6 → depthwise 3×3/2 → ReLU6 → pointwise 1×1 (→6) → global
/// pool → Linear(6, 3), as the fixture's PyTorch module.
fn tiny() -> Model {
    let mut b = ModelBuilder::new(Shape::new(8, 8, 1));
    let x = b.conv2d("stem", b.input(), 8, 3, 1, 1).unwrap();
    let x = b.layer("act1", Relu6, x).unwrap();
    let x = b.layer("dw", DepthwiseConv2d::new(8, 3, 2, 1), x).unwrap();
    let x = b.layer("act2", Relu6, x).unwrap();
    let x = b.conv2d("pw", x, 6, 1, 1, 0).unwrap();
    let x = b.global_avgpool("pool", x).unwrap();
    let x = b.linear("fc", x, 3).unwrap();
    b.build(x).unwrap()
}

fn close(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * w.abs().max(1.0);
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs PyTorch {w}");
    }
}

#[test]
fn depthwise_and_relu6_match_pytorch() {
    let text = include_str!("fixtures/mobile_tiny.txt");
    let f = fixture::Fixture::parse(text).unwrap();
    let names = [
        "stem.weight",
        "dw.weight",
        "pw.weight",
        "fc.weight",
        "fc.bias",
    ];
    for threads in [1, 2] {
        let mut cfg = config(4);
        cfg.threads = threads;
        let mut t = Trainer::new(tiny(), cfg).unwrap();
        let params: Vec<f32> = names
            .iter()
            .flat_map(|n| f.get(n).data.iter().copied())
            .collect();
        t.params_mut().copy_from_slice(&params);
        let x = &f.get("x").data;
        let y: Vec<u32> = f.get("labels").ints().iter().map(|&l| l as u32).collect();
        let stats = t.loss_and_grads(x, &y).unwrap();
        close("loss", &[stats.loss], &f.get("loss").data);
        let mut at = 0;
        for n in names {
            let want = &f.get(&format!("{n}.grad")).data;
            close(n, &t.grads()[at..at + want.len()], want);
            at += want.len();
        }
        // Evaluation gives the same loss (no batch norm here).
        close(
            "eval loss",
            &[t.evaluate(x, &y).unwrap().loss],
            &f.get("loss").data,
        );
    }
}

#[test]
fn mobilenet_is_built_as_described_and_learns() {
    let m = Model::mobilenet().unwrap();
    let kinds: Vec<&str> = m.nodes().iter().map(|n| n.layer.kind()).collect();
    let count = |k: &str| kinds.iter().filter(|&&x| x == k).count();
    // Stem + 4 × (expand, project) convs, 4 depthwise, 1 residual (the first block: 16 → 16).
    assert_eq!(count("Conv2d"), 9);
    assert_eq!(count("Conv2d(depthwise)"), 4);
    assert_eq!(count("Add"), 1);
    assert_eq!(count("ReLU6"), 9);
    let dw = m.find("features.2.conv.1.0").unwrap();
    assert_eq!(m.shapes_of(dw).1, Shape::new(7, 7, 64));
    assert_eq!(m.output_shape(m.nodes().len() - 2), Shape::flat(48));
    // DropIT on every conv but the stem, and not on the head.
    let d = m.clone().with_dropit(&dropit::DropIt::new(0.9)).unwrap();
    let sparse: Vec<&str> = d
        .nodes()
        .iter()
        .filter(|n| matches!(n.layer.input_save(), Some(dropit::InputSave::Sparse(_))))
        .map(|n| n.name.as_str())
        .collect();
    assert_eq!(sparse.len(), 12, "{sparse:?}");
    assert!(!sparse.contains(&"features.0.0") && !sparse.contains(&"classifier"));
    // A fixed batch is learned.
    let (x, y) = (common::data(16 * 784, 3), common::labels(16, 10, 4));
    let mut t = Trainer::new(d, config(16)).unwrap();
    let first = t.step(&x, &y).unwrap().loss;
    for _ in 0..40 {
        t.step(&x, &y).unwrap();
    }
    let last = t.step(&x, &y).unwrap().loss;
    assert!(last < 0.5 * first, "loss {first} → {last}");
}
