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
    let mut b = ModelBuilder::new(Shape::new(1 << 32, 1 << 32, 1));
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
