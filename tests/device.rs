//! The device trainer on the emulated backend (tests/emulated: the CUDA kernels compiled for the
//! host, products as loops): 30 fixed-seed steps of the mlp, dense and DropIT, SGD and AdamW,
//! must end at the CPU trainer's loss to 3 significant digits; its state must cross to the CPU
//! and back through a checkpoint; bad input and layers it does not run are errors. Needs no GPU;
//! without a C++20 compiler it prints one SKIP line. (`tests/cuda.rs` runs on a GPU.)
mod common;
mod emulated;

use std::sync::OnceLock;

use dropit::device::DeviceTrainer;
use dropit::{DropIt, Error, Model, Optimizer, Schedule, Trainer, TrainerConfig};
use emulated::Emulated;

/// The emulated kernels' library, built once for this test binary (`None`: no compiler).
fn library() -> Option<&'static std::path::Path> {
    static LIB: OnceLock<Option<std::path::PathBuf>> = OnceLock::new();
    LIB.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("dropit-device-emu-{}", std::process::id()));
        match emulated::build(&dir) {
            Ok(lib) => Some(lib),
            Err(why) => {
                println!("SKIP device trainer under emulation: {why}");
                None
            }
        }
    })
    .as_deref()
}

const BATCH: usize = 32;
const STEPS: usize = 30;

/// Batch `s` of a fixed set of four for `model` (the loss falls as they are learnt).
fn batch_for(model: &Model, s: usize) -> (Vec<f32>, Vec<u32>) {
    let seed = (s % 4) as u64;
    let per = model.input_shape().numel();
    (
        common::data(BATCH * per, 100 + seed),
        common::labels(BATCH, model.classes(), 200 + seed),
    )
}

/// An mlp batch.
fn batch(s: usize) -> (Vec<f32>, Vec<u32>) {
    batch_for(&Model::mlp().unwrap(), s)
}

fn config(optimizer: Optimizer, lr: f32) -> TrainerConfig {
    TrainerConfig {
        optimizer,
        schedule: Schedule::cosine(lr, STEPS as u64),
        label_smoothing: 0.1,
        clip_grad_norm: Some(5.0),
        ..common::config(BATCH)
    }
}

/// Whether `a` and `b` agree to 3 significant digits (within half a unit of the fourth).
fn same_3_digits(a: f32, b: f32) -> bool {
    (a - b).abs() <= 5e-4 * a.abs().max(b.abs())
}

/// 30 steps on the CPU and on the emulated device from the same seed: the losses step by step
/// and the final one to 3 significant digits.
fn compare(model: Model, cfg: TrainerConfig, what: &str) -> Option<()> {
    let lib = library()?;
    let mut cpu = Trainer::new(model.clone(), cfg).unwrap();
    let mut dev = DeviceTrainer::new(Emulated::new(lib), model, cfg).unwrap();
    assert_eq!(
        dev.params().unwrap(),
        cpu.params(),
        "{what}: initial parameters"
    );
    let m = cpu.model().clone();
    let batch = |s| batch_for(&m, s);
    // Every gradient of the first batch, node by node, within f32 rounding of the CPU's.
    let (x, y) = batch(0);
    cpu.loss_and_grads(&x, &y).unwrap();
    dev.loss_and_grads(&x, &y).unwrap();
    let (gc, gd) = (cpu.grads().to_vec(), dev.grads().unwrap());
    for (i, node) in m.nodes().iter().enumerate() {
        let r = cpu.param_range(i);
        let (c, d) = (&gc[r.clone()], &gd[r]);
        let scale = c.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = c.iter().zip(d).fold(0f32, |a, (c, d)| a.max((c - d).abs()));
        assert!(
            worst <= 1e-3 * scale + 1e-7,
            "{what}: {} gradient apart by {worst} (largest {scale})",
            node.name
        );
    }
    let (mut a, mut b) = (0.0, 0.0);
    for s in 0..STEPS {
        let (x, y) = batch(s);
        let c = cpu.step(&x, &y).unwrap();
        let d = dev.step(&x, &y).unwrap();
        assert!(!c.skipped && !d.skipped, "{what} step {s}");
        assert_eq!(c.lr, d.lr, "{what} step {s}: learning rate");
        assert!(
            (c.loss - d.loss).abs() <= 1e-3 * c.loss.abs(),
            "{what} step {s}: loss {} on the CPU, {} on the device",
            c.loss,
            d.loss
        );
        (a, b) = (c.loss, d.loss);
    }
    let first = cpu.evaluate(&batch(0).0, &batch(0).1).unwrap();
    println!(
        "{what}: final loss CPU {a:.6}, device {b:.6} (eval {:.4})",
        first.loss
    );
    assert!(
        same_3_digits(a, b),
        "{what}: final loss {a} on the CPU, {b} on the device"
    );
    assert!(a < 2.0, "{what}: the loss fell ({a})");
    let (pc, pd) = (cpu.params(), dev.params().unwrap());
    let worst = pc
        .iter()
        .zip(&pd)
        .map(|(c, d)| (c - d).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "{what}: parameters apart by {worst}");
    let e = dev.evaluate(&batch(0).0, &batch(0).1).unwrap();
    assert!(
        (e.loss - first.loss).abs() <= 1e-3 * first.loss,
        "{what}: evaluation {} vs {}",
        e.loss,
        first.loss
    );
    Some(())
}

#[test]
fn mlp_dense_sgd_matches_the_cpu() {
    compare(
        Model::mlp().unwrap(),
        config(Optimizer::sgd(0.9, 5e-4), 0.05),
        "dense SGD",
    );
}

#[test]
fn mlp_dropit_matches_the_cpu() {
    let m = Model::mlp()
        .unwrap()
        .with_dropit(&DropIt::new(0.9))
        .unwrap();
    compare(m, config(Optimizer::sgd(0.9, 5e-4), 0.05), "γ 0.9 SGD");
}

#[test]
fn mlp_dropit_bf16_scatter_and_adamw_match_the_cpu() {
    // γ 0.5 takes the scatter path (unpack, then a dense product), bf16 kept values.
    let m = Model::mlp()
        .unwrap()
        .with_dropit(&DropIt::new(0.5).lean(true))
        .unwrap();
    compare(m, config(Optimizer::adamw(0.05), 1e-3), "γ 0.5 lean AdamW");
    let m = Model::mlp()
        .unwrap()
        .with_dropit(&DropIt::new(0.9).lean(true))
        .unwrap();
    compare(m, config(Optimizer::adamw(0.05), 1e-3), "γ 0.9 lean AdamW");
}

#[test]
fn vit_dense_and_dropit_match_the_cpu() {
    let vit = Model::vision_transformer(&common::small_vit()).unwrap();
    // The CPU keeps every input too (it would rebuild those after a norm, and compute their
    // weight gradients exactly).
    let cfg = TrainerConfig {
        rebuild_inputs: false,
        ..config(Optimizer::adamw(0.05), 1e-3)
    };
    compare(vit.clone(), cfg, "vit dense AdamW");
    let sparse = vit.with_dropit(&DropIt::new(0.9)).unwrap();
    compare(sparse, cfg, "vit γ 0.9 AdamW");
    let heads4 = Model::vision_transformer(&dropit::VitConfig {
        heads: 4,
        ..common::small_vit()
    })
    .unwrap();
    compare(
        heads4,
        config(Optimizer::sgd(0.9, 5e-4), 0.02),
        "vit 4 heads SGD",
    );
}

#[test]
fn state_crosses_to_the_cpu_and_back_through_a_checkpoint() {
    let Some(lib) = library() else { return };
    let m = Model::mlp()
        .unwrap()
        .with_dropit(&DropIt::new(0.9))
        .unwrap();
    let cfg = config(Optimizer::adamw(0.05), 1e-3);
    let mut dev = DeviceTrainer::new(Emulated::new(lib), m.clone(), cfg).unwrap();
    for s in 0..3 {
        let (x, y) = batch(s);
        dev.step(&x, &y).unwrap();
    }
    // Device → CPU checkpoint → a CPU trainer, and → a second device trainer.
    let bytes = dev.to_cpu().unwrap().checkpoint().unwrap();
    let mut cpu = Trainer::from_checkpoint(&bytes).unwrap();
    assert_eq!(cpu.steps(), 3);
    assert_eq!(cpu.params(), &dev.params().unwrap()[..]);
    let mut dev2 = DeviceTrainer::new(Emulated::new(lib), m, cfg).unwrap();
    dev2.load_cpu(&cpu).unwrap();
    assert_eq!(dev2.steps(), 3);
    assert_eq!(dev2.params().unwrap(), dev.params().unwrap());
    // The optimizer state came along: the next step is the same on both devices, bitwise.
    let (x, y) = batch(3);
    let (a, b) = (dev.step(&x, &y).unwrap(), dev2.step(&x, &y).unwrap());
    assert_eq!(a, b);
    assert_eq!(dev.params().unwrap(), dev2.params().unwrap());
    // And the CPU goes on from the same state to nearly the same loss.
    let c = cpu.step(&x, &y).unwrap();
    assert!(
        (c.loss - a.loss).abs() <= 1e-3 * c.loss,
        "{} vs {}",
        c.loss,
        a.loss
    );
}

#[test]
fn bad_input_and_layers_it_does_not_run_are_errors() {
    let Some(lib) = library() else { return };
    let cfg = config(Optimizer::sgd(0.9, 0.0), 0.05);
    let err = DeviceTrainer::new(Emulated::new(lib), Model::cnn().unwrap(), cfg).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("conv1") && text.contains("Conv2d"), "{text}");
    let mut dev = DeviceTrainer::new(Emulated::new(lib), Model::mlp().unwrap(), cfg).unwrap();
    let (x, y) = batch(0);
    assert!(matches!(
        dev.step(&x[..784], &y[..2]),
        Err(Error::Shape { .. })
    ));
    let mut bad = y.clone();
    bad[3] = 10;
    assert!(matches!(
        dev.step(&x, &bad),
        Err(Error::Label { index: 3, .. })
    ));
    let big = common::data((BATCH + 1) * 784, 1);
    assert!(matches!(
        dev.step(&big, &[0; BATCH + 1]),
        Err(Error::Batch { .. })
    ));
    // A non-finite input skips the step and changes nothing.
    let before = dev.params().unwrap();
    let mut nan = x.clone();
    nan[5] = f32::NAN;
    assert!(dev.step(&nan, &y).unwrap().skipped);
    assert_eq!(dev.params().unwrap(), before);
    assert_eq!(dev.steps(), 0);
    // A CPU trainer of another model is refused.
    let other = Trainer::new(
        Model::mlp()
            .unwrap()
            .with_dropit(&DropIt::new(0.5))
            .unwrap(),
        cfg,
    )
    .unwrap();
    assert!(dev.load_cpu(&other).is_err());
}
