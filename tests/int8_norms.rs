//! The 8-bit lean level of batch and layer norm: x̂ kept as one signed byte per element with one
//! f32 scale per channel (batch norm) or row (layer norm); gradients stay close to the bf16
//! level's, and the memory is what the format says.
mod common;

use common::{config, data, labels, small_vit};
use dropit::{DropIt, Model, ModelBuilder, Shape, Trainer};

fn small_cnn() -> Model {
    Model::resnet8_widths(Shape::new(8, 8, 1), 4, [4, 8, 8]).unwrap()
}

fn grads(model: &Model, policy: &DropIt, n: usize, seed: u64) -> Vec<f32> {
    let m = model.clone().with_dropit(policy).unwrap();
    let x = data(n * m.input_shape().numel(), seed);
    let y = labels(n, m.classes(), seed + 1);
    let mut t = Trainer::new(m, config(n)).unwrap();
    t.loss_and_grads(&x, &y).unwrap();
    t.grads().to_vec()
}

/// Relative L2 distance of `a` from `b`.
fn rel(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (d / n).sqrt()
}

#[test]
fn eight_bit_gradients_stay_close_to_exact() {
    for (name, model) in [
        ("cnn", small_cnn()),
        ("vit", Model::vision_transformer(&small_vit()).unwrap()),
    ] {
        let dense = DropIt::dense();
        let exact = grads(&model, &dense, 8, 11);
        let bf16 = grads(&model, &dense.clone().lean(true).int8_norms(false), 8, 11);
        let int8 = grads(&model, &dense.clone().lean(true), 8, 11);
        let (eb, e8) = (rel(&bf16, &exact), rel(&int8, &exact));
        println!("{name}: relative gradient error bf16 {eb:.2e}, 8-bit {e8:.2e}");
        assert!(e8 > 0.0 && e8 < 0.05, "{name}: 8-bit error {e8}");
        // Lean means 8-bit norms; without lean the flag changes nothing.
        assert_eq!(
            int8,
            grads(&model, &dense.clone().lean(true).int8_norms(true), 8, 11),
            "{name}"
        );
        let off = grads(&model, &dense.clone().int8_norms(true), 8, 11);
        assert_eq!(off, exact, "{name}");
    }
}

#[test]
fn eight_bit_norms_keep_a_byte_per_element_and_a_scale_per_group() {
    let n = 16;
    let mut b = ModelBuilder::new(Shape::new(6, 6, 1));
    let x = b.conv2d("conv", b.input(), 8, 3, 1, 1).unwrap();
    let x = b.batchnorm2d("bn", x).unwrap();
    let x = b.relu("relu", x).unwrap();
    let x = b.layernorm("ln", x).unwrap();
    let x = b.global_avgpool("pool", x).unwrap();
    let x = b.linear("fc", x, 3).unwrap();
    let model = b.build(x).unwrap();
    let lean8 = DropIt::dense().lean(true).int8_norms(true);
    let t = Trainer::new(model.with_dropit(&lean8).unwrap(), config(n)).unwrap();
    let r = t.memory_report();
    let line = |name: &str| r.layers.iter().find(|l| l.name == name).unwrap().clone();
    let words = |bytes: usize| bytes.div_ceil(8) * 8;
    let (elems, c, rows) = (n * 36 * 8, 8, n * 36);
    // 1/σ, codes, staged mean and variance, scales.
    let bn = line("bn");
    assert!(bn.saved.contains("normalized int8"), "{}", bn.saved);
    assert_eq!(
        bn.saved_bytes,
        words(4 * c) + words(elems) + words(8 * c) + words(4 * c)
    );
    let ln = line("ln");
    assert!(ln.saved.contains("normalized int8"), "{}", ln.saved);
    assert_eq!(
        ln.saved_bytes,
        words(4 * rows) + words(elems) + words(4 * rows)
    );
}

#[test]
fn eight_bit_norms_learn() {
    let model = Model::vision_transformer(&small_vit())
        .unwrap()
        .with_dropit(&DropIt::new(0.9).lean(true).int8_norms(true))
        .unwrap();
    let n = 8;
    let x = data(n * model.input_shape().numel(), 21);
    let y = labels(n, model.classes(), 22);
    let mut t = Trainer::new(model, config(n)).unwrap();
    let first = t.evaluate(&x, &y).unwrap().loss;
    for _ in 0..40 {
        assert!(!t.step(&x, &y).unwrap().skipped);
    }
    let last = t.evaluate(&x, &y).unwrap().loss;
    assert!(last < 0.8 * first, "{first} → {last}");
}
