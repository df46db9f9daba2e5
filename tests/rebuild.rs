//! Keep only what cannot be rebuilt: inputs rebuilt in backward from a norm's x̂ or GELU's kept
//! input give bitwise the training without rebuilding, in a smaller plan; a DropIT layer whose
//! input is rebuilt gets the exact weight gradient.
mod common;

use common::{config, data, labels, small_vit};
use dropit::{DropIt, MemoryReport, Model, Trainer, TrainerConfig};

fn models() -> [(&'static str, Model); 4] {
    [
        ("cnn", Model::cnn().unwrap()),
        ("vit", Model::vision_transformer(&small_vit()).unwrap()),
        ("mobilenet", Model::mobilenet().unwrap()),
        // Dropout between GELU and fc2: the chain is GELU → dropout.
        (
            "vit+dropout",
            Model::vision_transformer(&dropit::VitConfig {
                dropout: 0.1,
                ..small_vit()
            })
            .unwrap(),
        ),
    ]
}

fn cfg(batch: usize, threads: usize, rebuild: bool) -> TrainerConfig {
    TrainerConfig {
        threads,
        rebuild_inputs: rebuild,
        ..config(batch)
    }
}

fn rebuilt(r: &MemoryReport) -> Vec<String> {
    r.layers
        .iter()
        .filter(|l| l.saved.contains("rebuilt"))
        .map(|l| l.name.to_string())
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

#[test]
fn rebuilt_inputs_train_bitwise_as_kept_ones_in_a_smaller_plan() {
    let n = 6;
    for (name, model) in models() {
        let shape = model.input_shape();
        let x = data(n * shape.numel(), 3);
        let y = labels(n, model.classes(), 4);
        for threads in [1, 2] {
            let run = |rebuild: bool| {
                let mut t = Trainer::new(model.clone(), cfg(n, threads, rebuild)).unwrap();
                for _ in 0..3 {
                    assert!(!t.step(&x, &y).unwrap().skipped);
                }
                let r = t.memory_report();
                (bits(t.params()), bits(t.state()), r)
            };
            let (p1, s1, r1) = run(true);
            let (p0, s0, r0) = run(false);
            assert!(rebuilt(&r0).is_empty());
            assert!(!rebuilt(&r1).is_empty(), "{name}: nothing rebuilt");
            assert!(
                r1.total < r0.total && r1.saved < r0.saved,
                "{name}: {} vs {} bytes",
                r1.total,
                r0.total
            );
            assert!(
                p1 == p0 && s1 == s0,
                "{name}, {threads} threads: rebuilding changed training"
            );
        }
    }
}

#[test]
fn a_dropit_layer_whose_input_is_rebuilt_has_the_exact_weight_gradient() {
    let n = 6;
    for (name, model) in models() {
        let shape = model.input_shape();
        let x = data(n * shape.numel(), 5);
        let y = labels(n, model.classes(), 6);
        let grads = |m: Model| {
            let mut t = Trainer::new(m, cfg(n, 2, true)).unwrap();
            t.loss_and_grads(&x, &y).unwrap();
            let ranges: Vec<_> = (0..t.model().nodes().len())
                .map(|i| t.param_range(i))
                .collect();
            (t.grads().to_vec(), ranges, t.memory_report())
        };
        let (dense, ranges, _) = grads(model.clone());
        let sparse = model.with_dropit(&DropIt::new(0.9)).unwrap();
        let (g, _, report) = grads(sparse.clone());
        // dY is exact under DropIT, so a rebuilt input gives the dense run's grad_W bitwise;
        // a layer that keeps a sparse copy does not.
        let (mut exact, mut dropped) = (0, 0);
        for (i, l) in report.layers.iter().enumerate() {
            let (a, b) = (&g[ranges[i].clone()], &dense[ranges[i].clone()]);
            if l.saved.contains("rebuilt") && sparse.nodes()[i].layer.input_save().is_some() {
                assert_eq!(bits(a), bits(b), "{name}: {}", l.name);
                exact += 1;
            } else if l.saved.contains("γ0.90") {
                assert_ne!(bits(a), bits(b), "{name}: {}", l.name);
                dropped += 1;
            }
        }
        assert!(
            exact > 0 && dropped > 0,
            "{name}: {exact} exact, {dropped} dropped"
        );
    }
}

#[test]
fn without_rebuilding_dropit_keeps_its_copies() {
    let m = Model::cnn()
        .unwrap()
        .with_dropit(&DropIt::new(0.9))
        .unwrap();
    let t = Trainer::new(m, cfg(8, 1, false)).unwrap();
    let r = t.memory_report();
    let packed = r
        .layers
        .iter()
        .filter(|l| l.saved.contains("γ0.90"))
        .count();
    assert_eq!(packed, 6, "{r}");
}

#[test]
fn lean_rebuilds_from_bf16_and_8_bit_and_trains_as_without() {
    let n = 8;
    for int8 in [false, true] {
        let model = Model::vision_transformer(&small_vit())
            .unwrap()
            .with_dropit(&DropIt::new(0.9).lean(true).int8_norms(int8))
            .unwrap();
        let x = data(n * model.input_shape().numel(), 7);
        let y = labels(n, model.classes(), 8);
        let run = |rebuild: bool| {
            let mut t = Trainer::new(model.clone(), cfg(n, 1, rebuild)).unwrap();
            assert_eq!(rebuilt(&t.memory_report()).is_empty(), !rebuild);
            let first = t.evaluate(&x, &y).unwrap().loss;
            for _ in 0..40 {
                t.step(&x, &y).unwrap();
            }
            (first, t.evaluate(&x, &y).unwrap().loss)
        };
        let ((first, on), (_, off)) = (run(true), run(false));
        assert!(on < 0.8 * first, "8-bit {int8}: {first} → {on}");
        // From bf16 x̂ the rebuilt inputs are close to the kept ones; from 8-bit x̂ they are
        // further off, but still nearer than the sparse copies kept without rebuilding.
        let worse = if int8 { on - off } else { (on - off).abs() };
        assert!(
            worse < 0.05 * off,
            "8-bit {int8}: {on} vs {off} without rebuilding"
        );
    }
}

#[test]
fn every_layer_rebuilds_piece_by_piece_so_only_unrebuildable_inputs_keep_copies() {
    // Linear, 3×3, 1×1 and depthwise convolutions all take a rebuilt input a part at a time,
    // so rebuilding never needs a whole buffer and the planner rebuilds every input it can:
    // on the mobilenet only the 1×1 convolution that reads the residual sum keeps a copy. (In
    // lean form the last block's bf16 copies are a little smaller than a rebuilt part; it
    // rebuilds all the same, since that grows the plan by less than the copies.)
    for (lean, threads) in [(false, 1), (false, 2), (true, 1), (true, 2)] {
        let m = Model::mobilenet()
            .unwrap()
            .with_dropit(&DropIt::new(0.9).lean(lean))
            .unwrap();
        let r = Trainer::new(m, cfg(64, threads, true))
            .unwrap()
            .memory_report();
        let kept: Vec<String> = r
            .layers
            .iter()
            .filter(|l| l.saved.contains("γ0.90"))
            .map(|l| l.name.to_string())
            .collect();
        assert_eq!(kept, ["features.2.conv.0.0"], "{r}");
        // The other eleven of its twelve inner convolutions rebuild.
        assert_eq!(rebuilt(&r).len(), 11, "{r}");
    }
}
