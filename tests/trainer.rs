//! The trainer end to end: learning, determinism, arenas, and bad input.
mod common;

use common::{config, data, labels};
use dropit::{Error, Model, ModelBuilder, Shape, Trainer, TrainerConfig};

/// A learnable synthetic task: the class is which quarter of the image is brightest.
fn quadrant_task(n: usize, side: usize, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let noise = data(n * side * side, seed);
    let y = labels(n, 4, seed + 1);
    let mut x = vec![0.0; n * side * side];
    for i in 0..n {
        for r in 0..side {
            for c in 0..side {
                let q = (r >= side / 2) as u32 * 2 + (c >= side / 2) as u32;
                let v = noise[(i * side + r) * side + c] * 0.3 + if q == y[i] { 1.0 } else { 0.0 };
                x[(i * side + r) * side + c] = v;
            }
        }
    }
    (x, y)
}

fn learns(model: Model, side: usize, batch: usize, steps: usize) {
    learns_with(model, side, config(batch), steps)
}

fn learns_with(model: Model, side: usize, cfg: TrainerConfig, steps: usize) {
    let batch = cfg.batch;
    let (x, y) = quadrant_task(batch, side, 3);
    let mut t = Trainer::new(model, cfg).unwrap();
    let first = t.evaluate(&x, &y).unwrap();
    for _ in 0..steps {
        let s = t.step(&x, &y).unwrap();
        assert!(!s.skipped && s.loss.is_finite());
    }
    let last = t.evaluate(&x, &y).unwrap();
    assert!(
        last.loss < 0.5 * first.loss,
        "loss {} → {}",
        first.loss,
        last.loss
    );
    assert!(
        last.correct > first.correct.max(batch / 2),
        "accuracy {} → {} of {batch}",
        first.correct,
        last.correct
    );
}

#[test]
fn mlp_and_cnn_learn() {
    let mut b = ModelBuilder::new(Shape::new(8, 8, 1));
    let x = b.flatten("flatten", b.input()).unwrap();
    let x = b.linear("fc1", x, 32).unwrap();
    let x = b.relu("relu", x).unwrap();
    let x = b.linear("fc2", x, 4).unwrap();
    learns(b.build(x).unwrap(), 8, 32, 60);
    learns(Model::resnet8(Shape::new(8, 8, 1), 4).unwrap(), 8, 16, 30);
}

#[test]
fn same_seed_same_run_bitwise() {
    let run = || {
        let mut t =
            Trainer::new(Model::resnet8(Shape::new(8, 8, 1), 4).unwrap(), config(6)).unwrap();
        let (x, y) = quadrant_task(6, 8, 5);
        let losses: Vec<u32> = (0..5)
            .map(|_| t.step(&x, &y).unwrap().loss.to_bits())
            .collect();
        (
            losses,
            t.params().iter().map(|p| p.to_bits()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(run(), run());
    let other = {
        let mut cfg = config(6);
        cfg.seed = 8;
        Trainer::new(Model::resnet8(Shape::new(8, 8, 1), 4).unwrap(), cfg)
            .unwrap()
            .params()
            .to_vec()
    };
    let mine = Trainer::new(Model::resnet8(Shape::new(8, 8, 1), 4).unwrap(), config(6))
        .unwrap()
        .params()
        .to_vec();
    assert_ne!(mine, other, "another seed gives other weights");
}

#[test]
fn borrowed_arena_trains_like_an_owned_one() {
    let model = Model::resnet8(Shape::new(8, 8, 1), 4).unwrap();
    let cfg = config(4);
    let bytes = Trainer::plan_bytes(&model, &cfg).unwrap();
    let (x, y) = quadrant_task(4, 8, 9);
    let mut owned = Trainer::new(model.clone(), cfg).unwrap();
    let mut buf = vec![0u8; bytes + 8];
    let mut borrowed = Trainer::with_arena(model.clone(), cfg, &mut buf).unwrap();
    for _ in 0..3 {
        assert_eq!(owned.step(&x, &y).unwrap(), borrowed.step(&x, &y).unwrap());
    }
    assert_eq!(owned.params(), borrowed.params());
    let mut small = vec![0u8; bytes / 2];
    assert!(matches!(
        Trainer::with_arena(model, cfg, &mut small),
        Err(Error::ArenaTooSmall { .. })
    ));
}

#[test]
fn non_finite_loss_skips_the_update() {
    let mut t = Trainer::new(Model::mlp().unwrap(), config(2)).unwrap();
    let mut x = data(2 * 784, 1);
    x[5] = f32::NAN;
    let before = t.params().to_vec();
    let s = t.step(&x, &[1, 2]).unwrap();
    assert!(s.skipped && !s.loss.is_finite());
    assert_eq!(t.params(), &before[..]);
    assert_eq!(t.steps(), 0);
}

#[test]
fn bad_input_names_what_was_wrong() {
    let mut t = Trainer::new(Model::mlp().unwrap(), config(4)).unwrap();
    let x = data(4 * 784, 1);
    let e = t.step(&x[..100], &[0, 1, 2, 3]).unwrap_err();
    assert!(
        matches!(e, Error::Shape { .. }) && e.to_string().contains("[28, 28, 1]"),
        "{e}"
    );
    let e = t.step(&x, &[0, 1, 10, 3]).unwrap_err();
    assert_eq!(
        e,
        Error::Label {
            index: 2,
            label: 10,
            classes: 10
        }
    );
    assert_eq!(
        t.step(&[], &[]).unwrap_err(),
        Error::Batch {
            given: 0,
            planned: 4
        }
    );
    let five = data(5 * 784, 1);
    assert_eq!(
        t.evaluate(&five, &[0; 5]).unwrap_err(),
        Error::Batch {
            given: 5,
            planned: 4
        }
    );
    // Smaller batches than planned are fine.
    assert!(t.step(&x[..2 * 784], &[0, 1]).is_ok());

    let mut b = ModelBuilder::new(Shape::new(4, 4, 3));
    let x = b.input();
    let e = b
        .layer(
            "fc",
            dropit::layers::Layer::Linear(dropit::layers::Linear::new(5, 2)),
            x,
        )
        .unwrap_err();
    assert!(
        e.to_string().contains("fc") && e.to_string().contains("[4, 4, 3]"),
        "{e}"
    );
    let e = b.conv2d("conv", x, 8, 7, 1, 0).unwrap_err();
    assert!(e.to_string().starts_with("conv:"), "{e}");
    let y = b.conv2d("c1", x, 4, 3, 2, 1).unwrap();
    assert!(matches!(b.add("join", x, y), Err(Error::Shape { .. })));
    assert!(b.relu("c1", y).is_err(), "duplicate names are refused");
    let unused = b.clone().build(y);
    assert!(unused.is_err(), "a [2, 2, 4] output is not logits");
    let mut cfg: TrainerConfig = config(0);
    assert!(Trainer::new(Model::mlp().unwrap(), cfg).is_err());
    cfg = config(2);
    cfg.threads = 0;
    assert!(Trainer::new(Model::mlp().unwrap(), cfg).is_err());
}

#[test]
fn two_workers_reproducible_and_close_to_one() {
    let run = |threads| {
        let mut cfg = config(6);
        cfg.threads = threads;
        let mut t = Trainer::new(Model::resnet8(Shape::new(8, 8, 1), 4).unwrap(), cfg).unwrap();
        let (x, y) = quadrant_task(6, 8, 5);
        (0..4)
            .map(|_| t.step(&x, &y).unwrap().loss)
            .collect::<Vec<_>>()
    };
    let (a, b, one) = (run(2), run(2), run(1));
    assert_eq!(a, b, "same thread count, same run");
    for (p, q) in a.iter().zip(&one) {
        assert!((p - q).abs() < 1e-4 * (1.0 + q.abs()), "{p} vs {q}");
    }
}

#[test]
fn frozen_prefix_trains_only_the_rest_and_saves_nothing() {
    let model = Model::resnet8(Shape::new(8, 8, 1), 4).unwrap();
    let k = model.find("layer2.0.conv1").unwrap();
    let frozen = model.clone().freeze(k).unwrap();
    let (x, y) = quadrant_task(8, 8, 3);
    let mut t = Trainer::new(frozen.clone(), config(8)).unwrap();
    let before = t.params().to_vec();
    for _ in 0..3 {
        t.step(&x, &y).unwrap();
    }
    let ts = t.param_range(k).start;
    assert_eq!(&t.params()[..ts], &before[..ts], "frozen parameters stay");
    assert_ne!(&t.params()[ts..], &before[ts..], "the rest trains");
    let report = t.memory_report();
    assert!(
        report.layers[..k].iter().all(|l| l.saved_bytes == 0),
        "frozen layers keep nothing"
    );
    let full = Trainer::new(model, config(8)).unwrap().memory_report();
    assert!(report.grads < full.grads && report.saved < full.saved && report.total < full.total);
    assert!(Model::mlp().unwrap().freeze(6).is_err());
    // The trained part's gradients are right (batch norm of the frozen part on running stats).
    common::gradcheck(
        Model::resnet8(Shape::new(12, 12, 1), 10)
            .unwrap()
            .freeze(k)
            .unwrap(),
        3,
        0.0,
        3,
        11,
    );
}

#[test]
fn weights_copy_between_arenas_and_batch_sizes() {
    let (x, y) = quadrant_task(4, 8, 5);
    let mut a = Trainer::new(Model::resnet8(Shape::new(8, 8, 1), 4).unwrap(), config(4)).unwrap();
    for _ in 0..3 {
        a.step(&x, &y).unwrap();
    }
    let mut cfg = config(2);
    cfg.seed = 99;
    let model = Model::resnet8(Shape::new(8, 8, 1), 4)
        .unwrap()
        .freeze(3)
        .unwrap();
    let mut buf = vec![0u8; Trainer::plan_bytes(&model, &cfg).unwrap() + 8];
    let mut b = Trainer::with_arena(model, cfg, &mut buf).unwrap();
    b.copy_weights_from(&a).unwrap();
    assert_eq!(a.params(), b.params());
    // Same weights and running statistics: the same evaluation.
    assert_eq!(
        a.evaluate(&x[..128], &y[..2]).unwrap(),
        b.evaluate(&x[..128], &y[..2]).unwrap()
    );
    let mut other =
        Trainer::new(Model::resnet8(Shape::new(8, 8, 1), 5).unwrap(), config(2)).unwrap();
    assert!(matches!(
        other.copy_weights_from(&a),
        Err(dropit::Error::Shape { .. })
    ));
}

#[test]
fn gelu_matches_pytorch_values() {
    // torch.nn.functional.gelu at a few points (exact and tanh forms).
    let mut b = ModelBuilder::new(Shape::new(1, 1, 4));
    let x = b.gelu("g", b.input()).unwrap();
    let x = b.linear("head", x, 2).unwrap();
    let m = b.build(x).unwrap();
    let mut t = Trainer::new(m, config(1)).unwrap();
    // Identity-like head: read the GELU outputs through the logits' difference.
    let r = t.param_range(1);
    let p = t.params_mut();
    p[r.clone()].fill(0.0);
    p[r.start] = 1.0; // w[0][0]: logit 0 = gelu(x0)
    let e = t.evaluate(&[1.0, 0.0, 0.0, 0.0], &[0]).unwrap();
    // loss = −log softmax([gelu(1), 0])[0]; gelu(1) = 0.8413447
    let want = -(0.841_344_7f32.exp() / (0.841_344_7f32.exp() + 1.0)).ln();
    assert!((e.loss - want).abs() < 1e-5, "{} vs {want}", e.loss);
}

#[test]
fn vit_learns() {
    let cfg = common::small_vit();
    // The transformer recipe (AdamW), at a rate for a short run.
    let mut adamw = TrainerConfig::adamw_recipe(32, 60);
    adamw.schedule = dropit::Schedule::constant(3e-3);
    learns_with(Model::vision_transformer(&cfg).unwrap(), 8, adamw, 60);
    // And under DropIT, lean.
    let m = Model::vision_transformer(&cfg)
        .unwrap()
        .with_dropit(&dropit::DropIt::new(0.5).lean(true))
        .unwrap();
    learns_with(m, 8, adamw, 60);
}

#[test]
fn dropout_masks_a_fraction_per_step_and_is_identity_in_evaluation() {
    let (f, p) = (2000, 0.3);
    let build = |drop: bool| {
        let mut b = ModelBuilder::new(Shape::flat(f));
        let x = if drop {
            b.dropout("drop", b.input(), p).unwrap()
        } else {
            b.input()
        };
        let x = b.linear("head", x, 3).unwrap();
        Trainer::new(b.build(x).unwrap(), config(1)).unwrap()
    };
    let (x, y) = (data(f, 1), [1u32]);
    let mut t = build(true);
    // With one sample, row i of grad_W is zero exactly where input i was dropped.
    let dropped = |t: &mut Trainer| {
        t.loss_and_grads(&x, &y).unwrap();
        let g = t.grads();
        (0..f)
            .map(|i| g[i * 3..i * 3 + 3].iter().all(|v| *v == 0.0))
            .collect::<Vec<bool>>()
    };
    let first = dropped(&mut t);
    assert_eq!(
        first,
        dropped(&mut t),
        "a repeated step draws the same mask"
    );
    let frac = first.iter().filter(|d| **d).count() as f32 / f as f32;
    assert!((frac - p).abs() < 0.05, "dropped {frac}, p = {p}");
    t.step(&x, &y).unwrap();
    assert_ne!(first, dropped(&mut t), "the next step draws another mask");
    // Evaluation is the identity: the same loss as the model without dropout, same weights.
    let mut plain = build(false);
    plain.params_mut().copy_from_slice(t.params());
    assert_eq!(
        t.evaluate(&x, &y).unwrap().loss,
        plain.evaluate(&x, &y).unwrap().loss
    );
    // A probability outside [0, 1) is refused, naming the layer.
    let mut b = ModelBuilder::new(Shape::flat(4));
    let err = b.dropout("blocks.0.drop", b.input(), 1.0).unwrap_err();
    assert!(format!("{err}").contains("blocks.0.drop"), "{err}");
}

#[test]
fn transformer_builders_refuse_bad_sizes_and_leave_the_builder_as_it_was() {
    let mut b = ModelBuilder::new(Shape::new(1, 4, 6));
    let x = b.input();
    let e = b.attention("blocks.0.attn", x, 4).unwrap_err();
    assert!(format!("{e}").contains("blocks.0.attn"), "{e}");
    let e = b.transformer_block("blocks.0", x, 5, 8, 0.0).unwrap_err();
    assert!(format!("{e}").contains("blocks.0"), "{e}");
    let e = b.transformer_block("blocks.0", x, 2, 0, 0.0).unwrap_err();
    assert!(format!("{e}").contains("MLP width"), "{e}");
    let e = b.transformer_block("blocks.0", x, 2, 8, 1.5).unwrap_err();
    assert!(format!("{e}").contains("dropout"), "{e}");
    // Nothing was added: the same names still build.
    let x = b.transformer_block("blocks.0", x, 2, 8, 0.0).unwrap();
    let x = b.select_token("cls", x, 0).unwrap();
    let x = b.linear("head", x, 3).unwrap();
    let m = b.build(x).unwrap();
    assert!(m.find("blocks.0.attn.sdpa").is_some());
    // Images whose sides are not multiples of the patch are refused.
    let cfg = dropit::VitConfig {
        patch: 5,
        ..Default::default()
    };
    let e = Model::vision_transformer(&cfg).unwrap_err();
    assert!(format!("{e}").contains("patch"), "{e}");
}

/// Layer timing is off until asked for; on, it has one forward and one backward time per node,
/// grows with each step (a frozen prefix has no backward), and turning it on again starts
/// from zero. Timing changes nothing of the results.
#[test]
fn layer_times_cover_every_node_and_change_nothing() {
    let model = Model::resnet8(Shape::new(8, 8, 1), 4).unwrap();
    let nodes = model.nodes().len();
    let (x, y) = quadrant_task(6, 8, 5);
    let mut timed = Trainer::new(model.clone(), config(6)).unwrap();
    let mut plain = Trainer::new(model, config(6)).unwrap();
    assert!(timed.layer_times().is_none());
    timed.time_layers(true);
    let total = |t: &Trainer<'_>| -> [std::time::Duration; 2] {
        let times = t.layer_times().unwrap();
        assert_eq!(times.len(), nodes);
        [0, 1].map(|k| times.iter().map(|d| d[k]).sum())
    };
    assert_eq!(total(&timed), [std::time::Duration::ZERO; 2]);
    let a = timed.step(&x, &y).unwrap();
    let once = total(&timed);
    assert!(once[0] > std::time::Duration::ZERO && once[1] > std::time::Duration::ZERO);
    timed.step(&x, &y).unwrap();
    let twice = total(&timed);
    assert!(twice[0] > once[0] && twice[1] > once[1]);
    timed.time_layers(true);
    assert_eq!(total(&timed), [std::time::Duration::ZERO; 2]);
    timed.time_layers(false);
    assert!(timed.layer_times().is_none());
    let b = plain.step(&x, &y).unwrap();
    plain.step(&x, &y).unwrap();
    assert_eq!(a.loss.to_bits(), b.loss.to_bits());
    let bits = |t: &Trainer<'_>| t.params().iter().map(|p| p.to_bits()).collect::<Vec<_>>();
    assert!(
        bits(&timed) == bits(&plain),
        "timing changed the parameters"
    );
}

/// A gradient is computed only where it can reach a parameter: nothing trained lies before the
/// mlp's first Linear, so the flatten in front of it runs no backward (and the Linear computes
/// no input gradient; `tests/pinned.rs` shows the results unchanged).
#[test]
fn no_backward_runs_where_no_parameter_is_upstream() {
    let model = Model::mlp().unwrap();
    let n = 4;
    let x: Vec<f32> = (0..n * 784).map(|i| (i % 13) as f32 / 13.0).collect();
    let y = [1u32, 2, 3, 4];
    let mut t = Trainer::new(model, config(n)).unwrap();
    t.time_layers(true);
    for _ in 0..3 {
        assert!(!t.step(&x, &y).unwrap().skipped);
    }
    let names: Vec<&str> = t.model().nodes().iter().map(|n| n.name.as_str()).collect();
    let times = t.layer_times().unwrap();
    for (name, [f, b]) in names.iter().zip(times) {
        assert!(*f > std::time::Duration::ZERO, "{name}: no forward");
        assert_eq!(
            *b == std::time::Duration::ZERO,
            *name == "flatten",
            "{name}: backward {b:?}"
        );
    }
}
