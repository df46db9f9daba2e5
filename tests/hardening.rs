//! Failure behaviour: a skipped step changes nothing.
mod common;

use common::{data, labels};
use dropit::{Model, Shape, Trainer, TrainerConfig, VitConfig};

/// A workload: name, how to build it, its recipe.
type Case = (&'static str, fn() -> Model, TrainerConfig);

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|p| p.to_bits()).collect()
}

fn batch(s: u64) -> (Vec<f32>, Vec<u32>) {
    (data(8 * 784, 300 + s), labels(8, 10, 400 + s))
}

/// Steps on batches 0..4; `poison` (if any) comes between batches 1 and 2 and must be skipped.
fn train(model: Model, cfg: TrainerConfig, poison: Option<&[f32]>) -> Trainer<'static> {
    let mut t = Trainer::new(model, cfg).unwrap();
    for s in 0..4 {
        if s == 2
            && let Some(x) = poison
        {
            let st = t.step(x, &batch(9).1).unwrap();
            assert!(st.skipped, "a poisoned batch was not skipped: {st:?}");
            assert_eq!(t.steps(), 2);
        }
        let (x, y) = batch(s);
        assert!(!t.step(&x, &y).unwrap().skipped);
    }
    t
}

/// After a poisoned batch, parameters, running statistics and evaluation are bitwise those of
/// a trainer that never saw it: a NaN input, an infinite input, and (for the cnn) a huge finite
/// one whose batch-norm variance overflows f32. (The vit's layer norms take the huge batch in
/// their stride: a finite step.)
#[test]
fn poisoned_batches_change_nothing() {
    let cnn = || Model::resnet8_widths(Shape::new(28, 28, 1), 10, [8, 16, 32]).unwrap();
    let vit = || {
        Model::vision_transformer(&VitConfig {
            dim: 32,
            depth: 2,
            heads: 2,
            mlp: 64,
            ..VitConfig::default()
        })
        .unwrap()
    };
    let mut nan = batch(9).0;
    nan[100] = f32::NAN;
    let mut inf = batch(9).0;
    inf[5] = f32::INFINITY;
    let huge: Vec<f32> = batch(9).0.iter().map(|v| v * 1e25).collect();
    let cases: [Case; 2] = [
        ("cnn", cnn, TrainerConfig::sgd_recipe(8, 100)),
        ("vit", vit, TrainerConfig::adamw_recipe(8, 100)),
    ];
    for (name, model, cfg) in cases {
        let clean = train(model(), cfg, None);
        // A huge finite batch is only poison where batch norm's variance overflows.
        let poisons = [("NaN", &nan), ("inf", &inf), ("1e25", &huge)];
        for (what, poison) in poisons
            .into_iter()
            .filter(|p| name == "cnn" || p.0 != "1e25")
        {
            let mut t = train(model(), cfg, Some(poison));
            assert_eq!(
                bits(t.params()),
                bits(clean.params()),
                "{name} {what}: params"
            );
            assert_eq!(
                bits(t.state()),
                bits(clean.state()),
                "{name} {what}: statistics"
            );
            let (x, y) = batch(20);
            let mut c = train(model(), cfg, None);
            assert_eq!(
                t.evaluate(&x, &y).unwrap(),
                c.evaluate(&x, &y).unwrap(),
                "{name} {what}: evaluation"
            );
        }
    }
}

/// Settings no training can use are refused where they are set, naming the setting.
#[test]
fn out_of_range_settings_are_errors() {
    let m = || Model::mlp().unwrap();
    let refuse = |cfg: TrainerConfig, what: &str| {
        let Err(e) = Trainer::new(m(), cfg) else {
            panic!("{what}: accepted");
        };
        assert!(e.to_string().contains(what), "{what}: {e}");
    };
    let sgd = TrainerConfig::sgd_recipe(8, 100);
    let adam = TrainerConfig::adamw_recipe(8, 100);
    for lr in [f32::NAN, -0.1, f32::INFINITY] {
        let mut c = sgd;
        c.schedule.base_lr = lr;
        refuse(c, "learning rate");
    }
    let mut c = sgd;
    c.optimizer = dropit::Optimizer::sgd(f32::NAN, 0.0);
    refuse(c, "SGD momentum");
    c.optimizer = dropit::Optimizer::sgd(0.9, -1.0);
    refuse(c, "SGD weight decay");
    let mut c = adam;
    if let dropit::Optimizer::AdamW { beta1, .. } = &mut c.optimizer {
        *beta1 = 1.0;
    }
    refuse(c, "AdamW beta1");
    let mut c = adam;
    if let dropit::Optimizer::AdamW { eps, .. } = &mut c.optimizer {
        *eps = 0.0;
    }
    refuse(c, "AdamW eps");
    // Batch norm and layer norm eps and momentum, when the layer is added.
    let mut b = dropit::ModelBuilder::new(Shape::new(4, 4, 2));
    for bn in [
        dropit::layers::BatchNorm2d {
            eps: 0.0,
            ..dropit::layers::BatchNorm2d::new(2)
        },
        dropit::layers::BatchNorm2d {
            momentum: 1.5,
            ..dropit::layers::BatchNorm2d::new(2)
        },
    ] {
        assert!(b.layer("bn", bn, b.input()).is_err());
    }
    let ln = dropit::layers::LayerNorm {
        eps: -1.0,
        ..dropit::layers::LayerNorm::new(2)
    };
    assert!(b.layer("ln", ln, b.input()).is_err());
    // A NaN normalization mean in the batcher.
    let d = dropit::data::Dataset {
        images: vec![0; 16],
        labels: vec![0],
        shape: Shape::new(4, 4, 1),
        classes: 2,
    };
    assert!(dropit::data::Batcher::new(&d, 1, &[f32::NAN], &[1.0], 0).is_err());
}

/// Zero-size shapes, foreign tensors, `add(t, t)`, a layer changed after building, and a γ that
/// keeps nothing: each an error naming the layer, never a panic in a step.
#[test]
fn bad_models_are_refused_before_training() {
    use dropit::layers::{Conv2d, Layer, Linear};
    use dropit::{DropIt, Error, ModelBuilder};
    // A 0-element input, a conv with no input channels.
    let mut b = ModelBuilder::new(Shape::new(0, 4, 1));
    assert!(matches!(
        b.flatten("f", b.input()),
        Err(Error::Shape { .. })
    ));
    let mut b = ModelBuilder::new(Shape::new(4, 4, 0));
    assert!(b.layer("c", Conv2d::new(0, 3, 3, 1, 1), b.input()).is_err());
    // A flatten whose size overflows.
    let mut b = ModelBuilder::new(Shape::new(usize::MAX / 2, 4, 1));
    assert!(b.flatten("f", b.input()).is_err());
    // A tensor of another builder.
    let mut other = ModelBuilder::new(Shape::new(4, 4, 1));
    let far = other.flatten("f", other.input()).unwrap();
    let far = other.linear("l", far, 3).unwrap();
    let b = ModelBuilder::new(Shape::new(4, 4, 1));
    assert_eq!(b.shape(far), None);
    // A tensor added to itself.
    let mut b = ModelBuilder::new(Shape::new(4, 4, 2));
    assert!(b.add("a", b.input(), b.input()).is_err());
    // A layer whose shapes change after building is caught when planned.
    let mut m = Model::mlp().unwrap();
    let fc2 = m.find("fc2").unwrap();
    *m.layer_mut(fc2).unwrap() = Layer::Linear(Linear::new(512, 64));
    let Err(e) = Trainer::new(m, TrainerConfig::sgd_recipe(8, 10)) else {
        panic!("a reshaped layer trained");
    };
    assert!(
        e.to_string().contains("fc2") || e.to_string().contains("fc3"),
        "{e}"
    );
    // γ so close to 1 that no element is kept.
    let m = Model::mlp()
        .unwrap()
        .with_dropit(&DropIt::new(0.99999))
        .unwrap();
    let Err(e) = Trainer::new(m, TrainerConfig::sgd_recipe(8, 10)) else {
        panic!("k = 0 planned");
    };
    assert!(e.to_string().contains("fc2"), "{e}");
}

/// Gradient-norm clipping: the reported norm is the gradients' L2 norm; with a bound below it,
/// SGD (no momentum, rate 1) moves the parameters by exactly the clipped gradient, of norm
/// `max`; with a bound above it, the step is bitwise the unclipped one.
#[test]
fn gradient_norm_clipping() {
    use dropit::{Optimizer, Schedule};
    let mut cfg = common::config(8);
    cfg.optimizer = Optimizer::sgd(0.0, 0.0);
    cfg.schedule = Schedule::constant(1.0);
    let (x, y) = batch(0);
    let mut probe = Trainer::new(Model::mlp().unwrap(), cfg).unwrap();
    let st = probe.loss_and_grads(&x, &y).unwrap();
    let g = probe.grads().to_vec();
    let norm = g.iter().map(|&v| v as f64 * v as f64).sum::<f64>().sqrt();
    assert!(
        (st.grad_norm as f64 - norm).abs() <= 1e-6 * norm,
        "{st:?} vs {norm}"
    );
    let moved = |clip: Option<f32>| {
        let mut t = Trainer::new(
            Model::mlp().unwrap(),
            TrainerConfig {
                clip_grad_norm: clip,
                ..cfg
            },
        )
        .unwrap();
        let before = t.params().to_vec();
        let st = t.step(&x, &y).unwrap();
        assert!(!st.skipped);
        let d: Vec<f32> = t.params().iter().zip(&before).map(|(a, b)| b - a).collect();
        d
    };
    let plain = moved(None);
    assert_eq!(bits(&plain), bits(&moved(Some(2.0 * norm as f32))));
    let max = norm as f32 / 4.0;
    let clipped = moved(Some(max));
    let dn = clipped
        .iter()
        .map(|&v| v as f64 * v as f64)
        .sum::<f64>()
        .sqrt();
    assert!((dn - max as f64).abs() < 1e-3 * max as f64, "{dn} vs {max}");
    // The direction is the gradient's.
    for (c, p) in clipped.iter().zip(&plain) {
        assert!((c * 4.0 - p).abs() <= 1e-5 * (1.0 + p.abs()), "{c} vs {p}");
    }
    for bad in [0.0, -1.0, f32::NAN, f32::INFINITY] {
        let c = TrainerConfig {
            clip_grad_norm: Some(bad),
            ..cfg
        };
        assert!(Trainer::new(Model::mlp().unwrap(), c).is_err(), "{bad}");
    }
}

/// Sizes that overflow or cannot fit are errors, never a wrapped size or an abort — on 32-bit
/// targets too, where the cnn at batch 4096 (about 3.7 GB) cannot be addressed. (On 64-bit,
/// batch 8192 plans more than 4 GB; on 32-bit a batch that large is already refused for its
/// first tensor's size, 822 MB, before any plan.)
#[test]
fn sizes_that_overflow_are_errors() {
    use dropit::layers::{Conv2d, MaxPool2d};
    use dropit::{Error, ModelBuilder};
    let cfg = |batch| TrainerConfig::sgd_recipe(batch, 10);
    let cnn = Model::cnn().unwrap();
    for batch in [usize::MAX, usize::MAX / 784, 1 << (usize::BITS - 8)] {
        assert!(
            matches!(
                Trainer::plan_bytes(&cnn, &cfg(batch)),
                Err(Error::OutOfMemory { .. })
            ),
            "batch {batch}"
        );
        assert!(matches!(
            Trainer::new(cnn.clone(), cfg(batch)),
            Err(Error::OutOfMemory { .. })
        ));
    }
    let big = if usize::BITS == 64 { 8192 } else { 4096 };
    match (usize::BITS, Trainer::plan_bytes(&cnn, &cfg(big))) {
        (64, Ok(b)) => assert!(b > 4_000_000_000, "{b}"),
        (32, Err(Error::OutOfMemory { bytes })) => assert!(bytes > 1 << 31, "{bytes}"),
        (bits, r) => panic!("{bits}-bit: {r:?}"),
    }
    // Geometry whose arithmetic would wrap.
    let mut b = ModelBuilder::new(Shape::new(8, 8, 1));
    assert!(
        b.layer("c", Conv2d::new(1, 2, 3, 1, usize::MAX / 2 + 1), b.input())
            .is_err()
    );
    assert!(
        b.layer("p", MaxPool2d::new(1 << (usize::BITS / 2), 1, 0), b.input())
            .is_err()
    );
    assert!(
        b.layer("p", MaxPool2d::new(3, 1, usize::MAX / 2 + 1), b.input())
            .is_err()
    );
    // A layer with more parameters than can be addressed.
    let x = b.flatten("f", b.input()).unwrap();
    assert!(b.linear("l", x, usize::MAX / 32).is_err());
}

/// Batchers check their dataset: fewer images than labels, labels out of range and an empty
/// set are errors; a batch larger than the set is capped to it.
#[test]
fn batcher_checks_its_dataset() {
    use dropit::data::{Batcher, Dataset};
    let good = Dataset {
        images: vec![7; 5 * 4],
        labels: vec![0, 1, 2, 1, 0],
        shape: Shape::new(2, 2, 1),
        classes: 3,
    };
    let mut b = Batcher::new(&good, usize::MAX, &[0.5], &[0.25], 0).unwrap();
    assert_eq!(b.batches_per_epoch(), 1);
    assert_eq!(b.next_batch().1.len(), 5);
    let short = Dataset {
        images: vec![7; 4 * 4],
        ..good.clone()
    };
    let wide = Dataset {
        labels: vec![0, 1, 2, 3, 0],
        ..good.clone()
    };
    let empty = Dataset {
        images: vec![],
        labels: vec![],
        ..good.clone()
    };
    let zero = Dataset {
        shape: Shape::new(0, 2, 1),
        ..good.clone()
    };
    for (what, d) in [
        ("short", short),
        ("wide", wide),
        ("empty", empty),
        ("zero", zero),
    ] {
        let e = Batcher::new(&d, 2, &[0.5], &[0.25], 0).unwrap_err();
        assert!(!e.to_string().is_empty(), "{what}");
        assert!(
            Batcher::in_order(&d, 2, &[0.5], &[0.25], |_, _| Ok(())).is_err(),
            "{what}"
        );
    }
}

/// A gzip IDX file whose header claims far more than the stream holds is refused as truncated
/// after reading what is there (its memory is bounded in `tests/alloc.rs`).
#[test]
fn idx_gzip_claiming_too_much_is_truncated() {
    use std::io::Write;
    let mut raw = vec![0, 0, 8, 1];
    raw.extend_from_slice(&(1u32 << 30).to_be_bytes());
    raw.extend(std::iter::repeat_n(0u8, 1 << 16));
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(&raw).unwrap();
    let e = dropit::data::read_idx(&z.finish().unwrap()).unwrap_err();
    assert!(e.to_string().contains("truncated"), "{e}");
}
