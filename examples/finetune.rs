//! Fine-tuning on the device, end to end: pre-train the cnn on Fashion-MNIST classes 0–4 (or
//! load a checkpoint, or PyTorch weights with our names), then fine-tune it on classes 5–9 with
//! the stem and the first stage frozen and DropIT γ = 0.9 (lean) on the rest, saving a
//! checkpoint every N steps. Kill it at any point and run it again with `--resume`: it
//! continues from the last checkpoint, exactly as if it had not stopped.
//!
//! `cargo run --release --example finetune` (`--help` lists the flags).

use std::path::{Path, PathBuf};

use clap::Parser;
use dropit::data::{Batcher, Dataset, fashion_mnist};
use dropit::{DropIt, Model, Trainer, TrainerConfig};

const MEAN: f32 = 0.2860;
const STD: f32 = 0.3530;
const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

/// Pre-train on classes 0–4, fine-tune on classes 5–9 with a frozen stem, DropIT and
/// checkpoints.
#[derive(Parser, Debug)]
#[command(name = "finetune")]
struct Args {
    /// Fashion-MNIST directory; without DIR, Debian's dataset-fashion-mnist; absent, the bundled
    /// subset.
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = DEBIAN_DIR)]
    data: Option<PathBuf>,
    /// Pre-training steps on classes 0–4 (batch 64).
    #[arg(long, default_value_t = 300)]
    pretrain_steps: u64,
    /// Start from this checkpoint (a cnn trained elsewhere) instead of pre-training.
    #[arg(long, value_name = "PATH", conflicts_with = "torch")]
    load: Option<PathBuf>,
    /// Start from these weights (a PyTorch `state_dict` with our names, safetensors).
    #[arg(long, value_name = "PATH")]
    torch: Option<PathBuf>,
    /// Fine-tuning steps on classes 5–9 (batch 32).
    #[arg(long, default_value_t = 300)]
    steps: u64,
    /// Save a checkpoint every this many fine-tuning steps.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u64).range(1..))]
    every: u64,
    /// The fine-tuning checkpoint.
    #[arg(long, value_name = "PATH", default_value = "finetune.safetensors")]
    ckpt: PathBuf,
    /// Continue from `--ckpt` (after an interruption).
    #[arg(long)]
    resume: bool,
    /// DropIT γ on the trained layers.
    #[arg(long, default_value_t = 0.9)]
    gamma: f32,
    /// Worker threads [default: all cores].
    #[arg(long)]
    threads: Option<usize>,
}

/// The samples whose labels lie in `classes`.
fn only(d: &Dataset, classes: std::ops::Range<u32>) -> Dataset {
    let per = d.shape.numel();
    let keep: Vec<usize> = (0..d.len())
        .filter(|&i| classes.contains(&d.labels[i]))
        .collect();
    Dataset {
        images: keep
            .iter()
            .flat_map(|&i| d.images[i * per..(i + 1) * per].iter().copied())
            .collect(),
        labels: keep.iter().map(|&i| d.labels[i]).collect(),
        ..d.clone()
    }
}

fn accuracy(t: &mut Trainer<'_>, test: &Dataset) -> dropit::Result<f64> {
    let mut correct = 0;
    let batch = t.config().batch;
    Batcher::in_order(test, batch, &[MEAN], &[STD], |x, y| {
        correct += t.evaluate(x, y)?.correct;
        Ok(())
    })?;
    Ok(100.0 * correct as f64 / test.len().max(1) as f64)
}

/// The pre-trained cnn: loaded, or trained here on classes 0–4.
fn pretrained(
    a: &Args,
    data: &Dataset,
    threads: usize,
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    if let Some(p) = &a.load {
        println!("pre-trained: checkpoint {}", p.display());
        return Ok(Trainer::load(p)?.weights()?);
    }
    let mut cfg = TrainerConfig::sgd_recipe(64, a.pretrain_steps);
    cfg.threads = threads;
    let mut t = Trainer::new(Model::cnn()?, cfg)?;
    if let Some(p) = &a.torch {
        println!("pre-trained: PyTorch weights {}", p.display());
        t.load_weights_file(p)?;
        return Ok(t.weights()?);
    }
    let mut b = Batcher::new(data, 64, &[MEAN], &[STD], 1)?;
    for _ in 0..a.pretrain_steps {
        let (x, y) = b.next_batch();
        t.step(x, y)?;
    }
    println!("pre-trained on classes 0–4 for {} steps", a.pretrain_steps);
    Ok(t.weights()?)
}

/// The fine-tuning trainer: stem and first stage frozen, DropIT on the rest.
fn fine_tuner(a: &Args, threads: usize) -> dropit::Result<Trainer<'static>> {
    let model = Model::cnn()?
        .freeze_until("layer1")?
        .with_dropit(&DropIt::new(a.gamma).lean(true))?;
    let mut cfg = TrainerConfig::sgd_recipe(32, a.steps);
    cfg.schedule.base_lr = 0.02;
    cfg.threads = threads;
    Trainer::new(model, cfg)
}

fn main() {
    if let Err(e) = run(&Args::parse()) {
        eprintln!("finetune: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let bundled = Path::new(env!("CARGO_MANIFEST_DIR")).join("data/fashion-mnist-subset");
    let (train, test) = fashion_mnist(a.data.as_deref().unwrap_or(&bundled))?;
    let (old, new) = (only(&train, 0..5), only(&train, 5..10));
    let (old_test, new_test) = (only(&test, 0..5), only(&test, 5..10));

    let mut t = if a.resume && a.ckpt.exists() {
        let t = Trainer::load(&a.ckpt)?;
        println!(
            "resumed {} at fine-tuning step {}",
            a.ckpt.display(),
            t.steps()
        );
        t
    } else {
        let weights = pretrained(a, &old, threads)?;
        let mut t = fine_tuner(a, threads)?;
        t.load_weights(&weights)?;
        println!(
            "before fine-tuning: classes 0–4 {:.2}%, classes 5–9 {:.2}%",
            accuracy(&mut t, &old_test)?,
            accuracy(&mut t, &new_test)?
        );
        t
    };
    println!("{}", t.memory_report());

    let mut b = Batcher::new(&new, t.config().batch, &[MEAN], &[STD], 2)?;
    // The data order continues where the checkpoint stopped.
    for _ in 0..t.steps() {
        b.next_batch();
    }
    while t.steps() < a.steps {
        let (x, y) = b.next_batch();
        let s = t.step(x, y)?;
        if t.steps() % a.every == 0 || t.steps() == a.steps {
            t.save(&a.ckpt)?;
            println!(
                "step {:>4}  loss {:.4}  saved {}",
                t.steps(),
                s.loss,
                a.ckpt.display()
            );
        }
    }
    println!(
        "after fine-tuning: classes 5–9 {:.2}%, classes 0–4 {:.2}% (frozen stem and layer1, DropIT γ = {} lean)",
        accuracy(&mut t, &new_test)?,
        accuracy(&mut t, &old_test)?,
        a.gamma
    );
    Ok(())
}
