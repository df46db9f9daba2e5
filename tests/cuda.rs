//! On a GPU (feature `cuda`): every device kernel against its CPU twin (the checks
//! `tests/device_kernels.rs` runs under emulation, here on the real thing), and the device
//! trainer against the CPU trainer — 30 fixed-seed steps of the four workloads, dense and
//! DropIT, to the final loss's 3 significant digits. Without a usable GPU each test prints one
//! line saying what is missing and checks nothing else; the last checks that a missing GPU is an
//! error that says so, never a panic.
#![cfg(feature = "cuda")]
mod common;
mod device_common;

use device_common::checks;
use dropit::cuda::{Gpu, available};
use dropit::{DropIt, Model, Optimizer, Schedule, TrainerConfig};

/// The GPU, or `None` having said what is missing.
fn gpu() -> Option<Gpu> {
    match available() {
        Ok(()) => Some(Gpu::new(0).unwrap()),
        Err(why) => {
            println!("SKIP GPU tests: {why}");
            None
        }
    }
}

#[test]
fn gpu_kernels_match_the_cpu() {
    let Some(mut g) = gpu() else { return };
    println!("GPU: {}", g.name().unwrap());
    let cases = checks::kernels(&mut g, &[1, 63, 64, 65, 1000, 100_003]);
    println!("{cases} packing cases, all identical to the CPU");
    checks::wrong_sizes(&mut g);
}

fn config(optimizer: Optimizer, lr: f32, batch: usize) -> TrainerConfig {
    TrainerConfig {
        optimizer,
        schedule: Schedule::cosine(lr, 30),
        label_smoothing: 0.1,
        clip_grad_norm: Some(5.0),
        // The device keeps every input a backward reads; so does the CPU here.
        rebuild_inputs: false,
        // The CPU's results do not depend on its workers: four keep the test short.
        threads: 4,
        ..common::config(batch)
    }
}

#[test]
fn gpu_trainer_matches_the_cpu() {
    if gpu().is_none() {
        return;
    }
    let make = || Gpu::new(0).unwrap();
    let sgd = config(Optimizer::sgd(0.9, 5e-4), 0.05, 128);
    let adamw = config(Optimizer::adamw(0.05), 1e-3, 64);
    for gamma in [0.0, 0.9] {
        let p = DropIt::new(gamma);
        let mlp = Model::mlp().unwrap().with_dropit(&p).unwrap();
        checks::compare(make, mlp, sgd, &format!("mlp γ {gamma}"));
        let vit = Model::vit().unwrap().with_dropit(&p).unwrap();
        checks::compare(make, vit, adamw, &format!("vit γ {gamma}"));
        let cnn_cfg = config(Optimizer::sgd(0.9, 5e-4), 0.05, 64);
        let cnn = Model::cnn().unwrap().with_dropit(&p).unwrap();
        checks::compare(make, cnn, cnn_cfg, &format!("cnn γ {gamma}"));
        let mobile = Model::mobilenet().unwrap().with_dropit(&p).unwrap();
        checks::compare(make, mobile, cnn_cfg, &format!("mobilenet γ {gamma}"));
    }
    let lean = Model::mlp()
        .unwrap()
        .with_dropit(&DropIt::new(0.9).lean(true))
        .unwrap();
    checks::compare(make, lean, sgd, "mlp γ 0.9 lean");
}

#[test]
fn a_missing_gpu_is_an_error_that_says_what_is_missing() {
    match available() {
        Ok(()) => assert!(Gpu::new(0).is_ok(), "available, but the GPU did not open"),
        Err(why) => {
            assert!(!why.is_empty());
            let e = Gpu::new(0).unwrap_err().to_string();
            assert!(e.contains(&why), "{e}");
        }
    }
}
