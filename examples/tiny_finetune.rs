//! Fine-tunes the last layers of a small CNN with DropIT inside a fixed 256 KB arena — the
//! memory of a microcontroller — and reports accuracy before and after on held-out images.
//!
//! `cargo run --release --example tiny_finetune` (runs the same under qemu-aarch64).
//!
//! 1. Pre-train the whole CNN on 6 000 bundled Fashion-MNIST images (an ordinary arena).
//! 2. Fine-tune on 4 000 other images at batch 8 inside `[u8; 256 KiB]` on the stack: the stem
//!    and the first block are frozen (forward only: nothing saved, no gradients), the last conv
//!    keeps a DropIT γ = 0.9 copy of its input, batch norm keeps x̂ in bf16.
//! 3. Evaluate on the 2 000 bundled test images before and after.

use std::path::PathBuf;

use dropit::data::{Batcher, Dataset, fashion_mnist};
use dropit::{DropIt, Model, ModelBuilder, Shape, Trainer, TrainerConfig};

const ARENA: usize = 256 * 1024;
const MEAN: f32 = 0.2860;
const STD: f32 = 0.3530;

fn tiny() -> dropit::Result<Model> {
    let mut b = ModelBuilder::new(Shape::new(28, 28, 1));
    let x = b.conv2d("stem", b.input(), 8, 3, 2, 1)?; // 14×14×8
    let x = b.batchnorm2d("stem.bn", x)?;
    let x = b.relu("stem.relu", x)?;
    let x = b.conv2d("block1.conv", x, 16, 3, 2, 1)?; // 7×7×16
    let x = b.batchnorm2d("block1.bn", x)?;
    let x = b.relu("block1.relu", x)?;
    let x = b.conv2d("block2.conv", x, 24, 3, 1, 1)?; // 7×7×24: fine-tuned
    let x = b.batchnorm2d("block2.bn", x)?;
    let x = b.relu("block2.relu", x)?;
    let x = b.global_avgpool("pool", x)?;
    let x = b.linear("head", x, 10)?;
    b.build(x)
}

fn accuracy(t: &mut Trainer<'_>, test: &Dataset, batch: usize) -> dropit::Result<f64> {
    let mut correct = 0;
    Batcher::in_order(test, batch, &[MEAN], &[STD], |x, y| {
        correct += t.evaluate(x, y)?.correct;
        Ok(())
    })?;
    Ok(100.0 * correct as f64 / test.len() as f64)
}

fn split(d: &Dataset, from: usize, to: usize) -> Dataset {
    let per = d.shape.numel();
    Dataset {
        images: d.images[from * per..to * per].to_vec(),
        labels: d.labels[from..to].to_vec(),
        ..d.clone()
    }
}

fn train(
    t: &mut Trainer<'_>,
    data: &Dataset,
    batch: usize,
    steps: usize,
    seed: u64,
) -> dropit::Result<f32> {
    let mut b = Batcher::new(data, batch, &[MEAN], &[STD], seed)?;
    let mut last = 0.0;
    for _ in 0..steps {
        let (x, y) = b.next_batch();
        last = t.step(x, y)?.loss;
    }
    Ok(last)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/fashion-mnist-subset"
    ));
    let (all, test) = fashion_mnist(&dir)?;
    let (pre, tune) = (split(&all, 0, 6000), split(&all, 6000, 10_000));

    // 1. Pre-train everything.
    let (pre_batch, pre_steps) = (32, 6000 / 32);
    let mut base = Trainer::new(
        tiny()?,
        TrainerConfig::sgd_recipe(pre_batch, pre_steps as u64),
    )?;
    train(&mut base, &pre, pre_batch, pre_steps, 1)?;
    let before = accuracy(&mut base, &test, pre_batch)?;

    // 2. Fine-tune the last block and the head inside 256 KB.
    let model = tiny()?;
    let frozen = model.find("block2.conv").ok_or("no block2.conv")?;
    let model = model
        .freeze(frozen)?
        .with_dropit(&DropIt::new(0.9).lean(true))?;
    let (batch, steps) = (8, 4000 / 8);
    let mut cfg = TrainerConfig::sgd_recipe(batch, steps as u64);
    cfg.schedule.base_lr = 0.02;
    let needed = Trainer::plan_bytes(&model, &cfg)?;
    println!("fine-tuning plan: {needed} bytes of a {ARENA}-byte arena");
    let mut arena = [0u8; ARENA];
    let mut t = Trainer::with_arena(model, cfg, &mut arena)?;
    t.copy_weights_from(&base)?;
    println!("{}", t.memory_report());
    let loss = train(&mut t, &tune, batch, steps, 2)?;
    let after = accuracy(&mut t, &test, batch)?;
    println!(
        "held-out accuracy: {before:.2}% after pre-training on 6 000 images, {after:.2}% after fine-tuning in 256 KB on 4 000 more (final loss {loss:.4})"
    );
    Ok(())
}
