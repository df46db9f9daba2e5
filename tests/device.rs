//! The device trainer on the emulated backend (tests/device_common: the CUDA kernels compiled
//! for the host, products as loops): 30 fixed-seed steps of the mlp and of a small vit, dense
//! and DropIT, SGD and AdamW, must match the CPU trainer — every first-step gradient within f32
//! rounding, the final loss to 3 significant digits; its state must cross to the CPU and back
//! through a checkpoint; bad input and layers it does not run are errors. Needs no GPU; without
//! a C++20 compiler it prints one SKIP line. (`tests/cuda.rs` runs the same on a GPU.)
mod common;
mod device_common;

use device_common::{checks, emulated};
use dropit::device::{AnyTrainer, Device, DeviceTrainer};
use dropit::{DropIt, Error, Model, Optimizer, Schedule, Trainer, TrainerConfig};

const BATCH: usize = 32;

/// The mlp's and vit's recipes, with label smoothing and clipping on.
pub fn config(optimizer: Optimizer, lr: f32) -> TrainerConfig {
    TrainerConfig {
        optimizer,
        schedule: Schedule::cosine(lr, 30),
        label_smoothing: 0.1,
        clip_grad_norm: Some(5.0),
        ..common::config(BATCH)
    }
}

fn compare(model: Model, cfg: TrainerConfig, what: &str) {
    if emulated::backend().is_some() {
        checks::compare(|| emulated::backend().unwrap(), model, cfg, what);
    }
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
fn cnn_dense_and_dropit_match_the_cpu() {
    // ResNet-8's layers at a test's size: 8×8 images, widths 4, 8, 8, 4 classes.
    let cnn = || Model::resnet8_widths(dropit::Shape::new(8, 8, 1), 4, [4, 8, 8]).unwrap();
    let cfg = TrainerConfig {
        rebuild_inputs: false,
        ..config(Optimizer::sgd(0.9, 5e-4), 0.05)
    };
    compare(cnn(), cfg, "cnn dense SGD");
    compare(
        cnn().with_dropit(&DropIt::new(0.9)).unwrap(),
        cfg,
        "cnn γ 0.9 SGD",
    );
    let bf16 = DropIt {
        values: dropit::ValueType::Bf16,
        ..DropIt::new(0.5)
    };
    compare(cnn().with_dropit(&bf16).unwrap(), cfg, "cnn γ 0.5 bf16 SGD");
    // Fine-tuning: the stem and the first block frozen (their batch norms on running
    // statistics, nothing kept for them).
    let tuned = cnn().freeze_until("layer1").unwrap();
    compare(
        tuned.with_dropit(&DropIt::new(0.9)).unwrap(),
        cfg,
        "cnn fine-tuning γ 0.9",
    );
}

#[test]
fn mobilenet_dense_and_dropit_match_the_cpu() {
    // MobileNetV2's pieces at a test's size: stem, two inverted residuals (expansion 2, one
    // strided), 8×8 images, 4 classes.
    let net = || {
        let mut b = dropit::ModelBuilder::new(dropit::Shape::new(8, 8, 1));
        let x = b.conv2d("features.0.0", b.input(), 8, 3, 2, 1).unwrap();
        let x = b.batchnorm2d("features.0.1", x).unwrap();
        let x = b.relu6("features.0.2", x).unwrap();
        let x = b.inverted_residual("features.1", x, 8, 1, 2).unwrap();
        let x = b.inverted_residual("features.2", x, 12, 2, 2).unwrap();
        let x = b.global_avgpool("avgpool", x).unwrap();
        let x = b.linear("classifier", x, 4).unwrap();
        b.build(x).unwrap()
    };
    let cfg = TrainerConfig {
        rebuild_inputs: false,
        ..config(Optimizer::sgd(0.9, 5e-4), 0.05)
    };
    compare(net(), cfg, "mobilenet dense SGD");
    compare(
        net().with_dropit(&DropIt::new(0.9)).unwrap(),
        cfg,
        "mobilenet γ 0.9 SGD",
    );
}

/// An mlp batch.
fn batch(s: usize) -> (Vec<f32>, Vec<u32>) {
    let seed = (s % 4) as u64;
    (
        common::data(BATCH * 784, 100 + seed),
        common::labels(BATCH, 10, 200 + seed),
    )
}

#[test]
fn state_crosses_to_the_cpu_and_back_through_a_checkpoint() {
    let Some(b) = emulated::backend() else { return };
    let m = Model::mlp()
        .unwrap()
        .with_dropit(&DropIt::new(0.9))
        .unwrap();
    let cfg = config(Optimizer::adamw(0.05), 1e-3);
    let mut dev = DeviceTrainer::new(b, m.clone(), cfg).unwrap();
    for s in 0..3 {
        let (x, y) = batch(s);
        dev.step(&x, &y).unwrap();
    }
    // Device → CPU checkpoint → a CPU trainer, and → a second device trainer.
    let bytes = dev.to_cpu().unwrap().checkpoint().unwrap();
    let mut cpu = Trainer::from_checkpoint(&bytes).unwrap();
    assert_eq!(cpu.steps(), 3);
    assert_eq!(cpu.params(), &dev.params().unwrap()[..]);
    let mut dev2 = DeviceTrainer::new(emulated::backend().unwrap(), m, cfg).unwrap();
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
    let Some(b) = emulated::backend() else { return };
    let cfg = config(Optimizer::sgd(0.9, 0.0), 0.05);
    let mut pool = dropit::ModelBuilder::new(dropit::Shape::new(8, 8, 2));
    let x = pool.maxpool2d("pool", pool.input(), 2, 2, 0).unwrap();
    let x = pool.global_avgpool("avg", x).unwrap();
    let x = pool.linear("fc", x, 4).unwrap();
    let err = DeviceTrainer::new(b, pool.build(x).unwrap(), cfg).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("pool") && text.contains("MaxPool2d"),
        "{text}"
    );
    // Selection per sample is not on the device.
    let per_sample = DropIt {
        scope: dropit::saved::Scope::PerSample,
        ..DropIt::new(0.9)
    };
    let m = Model::mlp().unwrap().with_dropit(&per_sample).unwrap();
    let text = DeviceTrainer::new(emulated::backend().unwrap(), m, cfg)
        .unwrap_err()
        .to_string();
    assert!(
        text.contains("fc2") && text.contains("Scope::Tensor"),
        "{text}"
    );
    let lean = Model::vision_transformer(&common::small_vit())
        .unwrap()
        .with_dropit(&DropIt::new(0.9).lean(true))
        .unwrap();
    let text = DeviceTrainer::new(emulated::backend().unwrap(), lean, cfg)
        .unwrap_err()
        .to_string();
    assert!(text.contains("lean"), "{text}");
    let mut dev =
        DeviceTrainer::new(emulated::backend().unwrap(), Model::mlp().unwrap(), cfg).unwrap();
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
    let other = Model::mlp()
        .unwrap()
        .with_dropit(&DropIt::new(0.5))
        .unwrap();
    assert!(dev.load_cpu(&Trainer::new(other, cfg).unwrap()).is_err());
}

#[test]
fn the_device_option_on_the_cpu_is_the_cpu_trainer() {
    let mut cfg = config(Optimizer::sgd(0.9, 5e-4), 0.05);
    cfg.threads = 2;
    let m = Model::mlp()
        .unwrap()
        .with_dropit(&DropIt::new(0.9))
        .unwrap();
    let mut any = AnyTrainer::new(Device::Cpu, m.clone(), cfg).unwrap();
    let mut cpu = Trainer::new(m, cfg).unwrap();
    for s in 0..3 {
        let (x, y) = batch(s);
        let a = any.with_workers(|t| t.step(&x, &y)).unwrap();
        assert_eq!(a, cpu.step(&x, &y).unwrap(), "step {s}");
    }
    assert_eq!(any.steps(), 3);
    assert_eq!(any.device_bytes(), None);
    let back = Trainer::from_checkpoint(&any.checkpoint().unwrap()).unwrap();
    assert_eq!((back.steps(), back.params()), (3, cpu.params()));
    assert_eq!(any.into_cpu().unwrap().params(), cpu.params());
    // Where: parsed and printed back.
    for (s, d) in [
        ("cpu", Device::Cpu),
        ("cuda", Device::Cuda(0)),
        ("cuda:3", Device::Cuda(3)),
    ] {
        assert_eq!(s.parse::<Device>().unwrap(), d);
        assert_eq!(d.to_string().parse::<Device>().unwrap(), d);
    }
    for bad in ["gpu", "cuda:", "cuda:x", ""] {
        assert!(bad.parse::<Device>().is_err(), "{bad:?}");
    }
    // A GPU this build or machine cannot drive is an error that says why.
    let gpu = AnyTrainer::new(Device::Cuda(0), Model::mlp().unwrap(), cfg);
    #[cfg(feature = "cuda")]
    let usable = dropit::cuda::available().is_ok();
    #[cfg(not(feature = "cuda"))]
    let usable = false;
    match gpu {
        Ok(_) => assert!(usable, "a GPU trainer without a usable GPU"),
        Err(e) => assert!(!usable && matches!(e, Error::Gpu(_)), "{e}"),
    }
}
