//! The desktop side of the firmware: pre-trains the CNN on the bundled Fashion-MNIST images
//! and writes, into OUT_DIR, its weights (a weights-only safetensors checkpoint) and the
//! fine-tuning and held-out samples that go into flash. Also puts
//! `memory.x` where the linker finds it.

#[path = "src/tiny.rs"]
#[allow(dead_code)]
mod tiny;

use std::path::{Path, PathBuf};

use dropit::data::{Batcher, Dataset, fashion_mnist};
use dropit::{Trainer, TrainerConfig};
use tiny::{MEAN, PIXELS, PRETRAIN, STD, TEST, TUNE};

fn write(out: &Path, name: &str, bytes: &[u8]) {
    std::fs::write(out.join(name), bytes).unwrap();
}

fn samples(out: &Path, name: &str, d: &Dataset, from: usize, n: usize) {
    write(
        out,
        &format!("{name}-images.bin"),
        &d.images[from * PIXELS..(from + n) * PIXELS],
    );
    let labels: Vec<u8> = d.labels[from..from + n].iter().map(|&l| l as u8).collect();
    write(out, &format!("{name}-labels.bin"), &labels);
}

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::copy(here.join("memory.x"), out.join("memory.x")).unwrap();
    println!("cargo:rustc-link-search={}", out.display());
    println!("cargo:rerun-if-changed=memory.x");
    println!("cargo:rerun-if-changed=src/tiny.rs");

    let (train, test) = fashion_mnist(&here.join("../../data/fashion-mnist-subset")).unwrap();
    let (n, batch) = PRETRAIN;
    let pre = train.clone().take(n);
    let steps = n / batch;
    let mut t = Trainer::new(
        tiny::tiny().unwrap(),
        TrainerConfig::sgd_recipe(batch, steps as u64),
    )
    .unwrap();
    let mut b = Batcher::new(&pre, batch, &[MEAN], &[STD], 1).unwrap();
    for _ in 0..steps {
        let (x, y) = b.next_batch();
        t.step(x, y).unwrap();
    }
    // A weights-only checkpoint (safetensors, PyTorch's names and layouts).
    write(&out, "weights.safetensors", &t.weights().unwrap());
    samples(&out, "tune", &train, n, TUNE);
    samples(&out, "test", &test, 0, TEST);
}
