//! Trains a reference workload on Fashion-MNIST, dense and with DropIT side by side, and reports
//! accuracy, measured peak memory and step time.
//!
//! `cargo run --release --example train` trains the cnn on the bundled subset with γ = 0 and 0.9.
//! `--help` lists the flags.

use std::path::PathBuf;
use std::time::Instant;

use dropit::data::{Batcher, Dataset, fashion_mnist};
use dropit::memory::PeakAlloc;
use dropit::{DropIt, EvalStats, Model, Trainer, TrainerConfig};
use indicatif::{ProgressBar, ProgressStyle};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc::new();

/// Fashion-MNIST normalization (README, *Reference workloads*).
const MEAN: f32 = 0.2860;
const STD: f32 = 0.3530;
/// Where Debian's `dataset-fashion-mnist` puts the full set (`--data` without a directory).
const DEBIAN_DIR: &str = "/usr/share/datasets/fashion-mnist";

const USAGE: &str =
    "usage: train [--model mlp|cnn|vit|mobilenet] [--gamma G[,G...]] [--lean] [--epochs N] [--steps N]
             [--batch N] [--data [DIR]] [--budget BYTES] [--threads N] [--seed N] [--json]

  --model    reference workload, as the README describes it (default cnn)
  --gamma    DropIT drop ratios to run one after the other (default 0,0.9; 0 = dense)
  --lean     the other saved tensors in bf16 (batch/layer norm, GELU, attention's q, k, v)
  --epochs   passes over the training set (default 1)
  --steps    stop after this many steps (default: no cap)
  --batch    batch size (default 128 for mlp, 64 for the others)
  --data     Fashion-MNIST directory; without DIR, the Debian package's; absent, the bundled subset
  --budget   fit each run in this many bytes (picks γ and formats; --gamma is then ignored)
  --threads  worker threads (default: all cores)
  --seed     seed of initialisation and shuffling (default 0)
  --json     one JSON object per run on stdout";

struct Args {
    model: String,
    gammas: Vec<f32>,
    lean: bool,
    epochs: usize,
    steps: Option<usize>,
    batch: Option<usize>,
    data: Option<PathBuf>,
    budget: Option<usize>,
    threads: usize,
    seed: u64,
    json: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        model: "cnn".into(),
        gammas: vec![0.0, 0.9],
        lean: false,
        epochs: 1,
        steps: None,
        batch: None,
        data: None,
        budget: None,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
        seed: 0,
        json: false,
    };
    let mut it = std::env::args().skip(1).peekable();
    fn num<T: std::str::FromStr>(flag: &str, v: Option<String>) -> Result<T, String> {
        let v = v.ok_or_else(|| format!("{flag} needs a value"))?;
        v.parse()
            .map_err(|_| format!("{flag}: {v:?} is not a valid number"))
    }
    while let Some(flag) = it.next() {
        match flag.as_str() {
            "--model" => a.model = it.next().ok_or("--model needs a value")?,
            "--gamma" => {
                let v = it.next().ok_or("--gamma needs a value")?;
                a.gammas = v
                    .split(',')
                    .map(|g| {
                        g.trim()
                            .parse::<f32>()
                            .ok()
                            .filter(|g| (0.0..1.0).contains(g))
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| format!("--gamma: {v:?} is not a list of numbers in [0, 1)"))?;
            }
            "--lean" => a.lean = true,
            "--epochs" => a.epochs = num("--epochs", it.next())?,
            "--steps" => a.steps = Some(num("--steps", it.next())?),
            "--batch" => a.batch = Some(num("--batch", it.next())?),
            "--data" => {
                a.data = Some(match it.peek() {
                    Some(d) if !d.starts_with("--") => PathBuf::from(it.next().unwrap_or_default()),
                    _ => PathBuf::from(DEBIAN_DIR),
                })
            }
            "--budget" => a.budget = Some(num("--budget", it.next())?),
            "--threads" => a.threads = num("--threads", it.next())?,
            "--seed" => a.seed = num("--seed", it.next())?,
            "--json" => a.json = true,
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown flag {other:?}")),
        }
    }
    match a.model.as_str() {
        "mlp" | "cnn" | "vit" | "mobilenet" => {}
        m => {
            return Err(format!(
                "--model {m:?}: expected mlp, cnn, vit or mobilenet"
            ));
        }
    }
    if a.epochs == 0 || a.batch == Some(0) || a.threads == 0 || a.steps == Some(0) {
        return Err("--epochs, --steps, --batch and --threads must be at least 1".into());
    }
    Ok(a)
}

/// One finished run.
struct Run {
    gamma: f32,
    lean: bool,
    batch: usize,
    steps: usize,
    test: EvalStats,
    peak: usize,
    planned: usize,
    saved: usize,
    dense_saved: usize,
    step_ms: f64,
    allocs: usize,
    final_loss: f32,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { 0.0 } else { v[v.len() / 2] }
}

fn train_one(
    a: &Args,
    train: &Dataset,
    test: &Dataset,
    gamma: f32,
) -> Result<Run, Box<dyn std::error::Error>> {
    let model = match a.model.as_str() {
        "mlp" => Model::mlp()?,
        "vit" => Model::vit()?,
        "mobilenet" => Model::mobilenet()?,
        _ => Model::cnn()?,
    };
    let batch = a.batch.unwrap_or(if a.model == "mlp" { 128 } else { 64 });
    let mut batcher = Batcher::new(train, batch, &[MEAN], &[STD], a.seed)?;
    let total = a.steps.map_or(a.epochs * batcher.batches_per_epoch(), |s| {
        s.min(a.epochs * batcher.batches_per_epoch())
    });
    let mut cfg = match a.model.as_str() {
        "vit" => TrainerConfig::adamw_recipe(batch, total as u64),
        _ => TrainerConfig::sgd_recipe(batch, total as u64),
    };
    cfg.threads = a.threads;
    cfg.seed = a.seed;
    let before = ALLOC.current();
    ALLOC.reset_peak();
    let (mut t, policy) = match a.budget {
        Some(b) => Trainer::with_budget(model, cfg, &DropIt::dense().lean(a.lean), b)?,
        None => {
            let p = DropIt::new(gamma).lean(a.lean);
            (Trainer::new(model.with_dropit(&p)?, cfg)?, p)
        }
    };
    let bar = ProgressBar::new(total as u64).with_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg}")?
            .progress_chars("=> "),
    );
    bar.set_prefix(format!(
        "{} γ={:.2}{}",
        a.model,
        policy.gamma,
        if policy.lean { " lean" } else { "" }
    ));
    let (mut times, mut allocs, mut last) = (Vec::with_capacity(total), 0, f32::NAN);
    // The loop runs on the trainer's workers, so steps hand no jobs over (and allocate nothing).
    t.with_workers(|t| -> dropit::Result<()> {
        for _ in 0..total {
            let (x, y) = batcher.next_batch(train);
            let (n0, t0) = (ALLOC.allocations(), Instant::now());
            let s = t.step(x, y)?;
            let dt = t0.elapsed().as_secs_f64();
            allocs += ALLOC.allocations() - n0;
            times.push(dt * 1e3);
            last = s.loss;
            bar.set_message(format!(
                "loss {:.3}  {:.0} img/s",
                s.loss,
                y.len() as f64 / dt
            ));
            bar.inc(1);
        }
        Ok(())
    })?;
    bar.finish_and_clear();
    let peak = ALLOC.peak() - before;
    let mut test_stats = EvalStats::default();
    let mut loss_sum = 0.0f64;
    Batcher::in_order(test, batch, &[MEAN], &[STD], |x, y| {
        let e = t.evaluate(x, y)?;
        loss_sum += e.loss as f64 * e.samples as f64;
        test_stats.correct += e.correct;
        test_stats.samples += e.samples;
        Ok(())
    })?;
    test_stats.loss = (loss_sum / test_stats.samples.max(1) as f64) as f32;
    let report = t.memory_report();
    Ok(Run {
        gamma: policy.gamma,
        lean: policy.lean,
        batch,
        steps: total,
        test: test_stats,
        peak,
        planned: report.total,
        saved: report.saved,
        dense_saved: report.saved_dense,
        step_ms: median(&mut times),
        allocs,
        final_loss: last,
    })
}

fn main() {
    let a = match parse() {
        Ok(a) => a,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("train: {e}\n");
            }
            eprintln!("{USAGE}");
            std::process::exit(if e.is_empty() { 0 } else { 2 });
        }
    };
    if let Err(e) = run(&a) {
        eprintln!("train: {e}");
        std::process::exit(1);
    }
}

fn run(a: &Args) -> Result<(), Box<dyn std::error::Error>> {
    let bundled = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/fashion-mnist-subset"
    ));
    let dir = a.data.clone().unwrap_or(bundled);
    let (train, test) = fashion_mnist(&dir)?;
    if !a.json {
        println!(
            "{} on {} ({} train / {} test images), {} threads",
            a.model,
            dir.display(),
            train.len(),
            test.len(),
            a.threads
        );
    }
    let gammas = if a.budget.is_some() {
        vec![f32::NAN]
    } else {
        a.gammas.clone()
    };
    let mut runs = Vec::new();
    for g in gammas {
        let r = train_one(a, &train, &test, g)?;
        if a.json {
            println!(
                "{{\"model\":\"{}\",\"gamma\":{},\"lean\":{},\"batch\":{},\"epochs\":{},\"steps\":{},\"test_acc\":{:.4},\"test_loss\":{:.4},\"peak_bytes\":{},\"planned_bytes\":{},\"saved_bytes\":{},\"dense_saved_bytes\":{},\"step_ms_median\":{:.3},\"allocs_in_steps\":{},\"final_loss\":{:.4},\"threads\":{},\"seed\":{},\"train_images\":{}}}",
                a.model,
                r.gamma,
                r.lean,
                r.batch,
                a.epochs,
                r.steps,
                r.test.correct as f64 / r.test.samples.max(1) as f64,
                r.test.loss,
                r.peak,
                r.planned,
                r.saved,
                r.dense_saved,
                r.step_ms,
                r.allocs,
                r.final_loss,
                a.threads,
                a.seed,
                train.len()
            );
        }
        runs.push(r);
    }
    if !a.json {
        println!(
            "\n| model | γ | lean | test acc | peak MB | planned MB | saved MB (dense) | step ms (median) | allocs in steps |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for r in &runs {
            println!(
                "| {} | {:.2} | {} | {:.2}% | {:.1} | {:.1} | {:.1} ({:.1}) | {:.1} | {} |",
                a.model,
                r.gamma,
                r.lean,
                100.0 * r.test.correct as f64 / r.test.samples.max(1) as f64,
                r.peak as f64 / 1e6,
                r.planned as f64 / 1e6,
                r.saved as f64 / 1e6,
                r.dense_saved as f64 / 1e6,
                r.step_ms,
                r.allocs
            );
        }
    }
    Ok(())
}
