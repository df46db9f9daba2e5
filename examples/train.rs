//! Trains a reference workload on Fashion-MNIST, dense and with DropIT side by side, and reports
//! accuracy, measured peak memory and step time.
//!
//! `cargo run --release --example train` trains the cnn on the bundled subset with γ = 0 and 0.9.
//! `--help` lists the flags; `--save PATH` writes each run's checkpoint, `--load PATH` continues
//! one. `--device cuda` (built with `--features cuda`) trains on an NVIDIA GPU.

use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use dropit::data::{Batcher, Dataset, fashion_mnist};
use dropit::device::{AnyTrainer, Device};
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

/// Trains a reference workload on Fashion-MNIST, dense and with DropIT side by side.
#[derive(Parser, Debug)]
#[command(name = "train")]
struct Args {
    /// Reference workload, as the README describes it.
    #[arg(long, default_value = "cnn", value_parser = ["mlp", "cnn", "vit", "mobilenet"])]
    model: String,
    /// DropIT drop ratios to run one after the other (0 = dense).
    #[arg(long = "gamma", value_delimiter = ',', default_value = "0,0.9", value_parser = gamma)]
    gammas: Vec<f32>,
    /// The other saved tensors lean: batch/layer norm's x̂ as 8-bit codes (one scale per
    /// channel or row), attention's q, k, v in bf16, GELU's derivative in a byte.
    #[arg(long)]
    lean: bool,
    /// With --lean: batch and layer norms keep x̂ as bf16 instead of 8-bit codes.
    #[arg(long, requires = "lean")]
    bf16_norms: bool,
    /// Keep every input a backward reads, even one that could be rebuilt from what another
    /// layer keeps (the default rebuilds wherever the plan gets smaller).
    #[arg(long)]
    no_rebuild: bool,
    /// Passes over the training set.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    epochs: u32,
    /// Stop at this step (the schedule still spans --epochs; with --load, counted from the
    /// start of the checkpoint's run).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    steps: Option<u64>,
    /// Batch size [default: 128 for mlp, 64 for the others].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    batch: Option<u64>,
    /// Fashion-MNIST directory; without DIR, Debian's dataset-fashion-mnist; absent, the bundled
    /// subset.
    #[arg(long, value_name = "DIR", num_args = 0..=1, default_missing_value = DEBIAN_DIR)]
    data: Option<PathBuf>,
    /// Fit each run in this many bytes (picks γ and formats; --gamma is then ignored).
    #[arg(long)]
    budget: Option<usize>,
    /// Worker threads [default: all cores].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    threads: Option<u64>,
    /// Where to train: cpu, or an NVIDIA GPU, cuda or cuda:N (needs `--features cuda`; the
    /// norms' x̂ and attention's q, k, v stay f32 there, so not with --lean).
    #[arg(long, default_value = "cpu", value_parser = device)]
    device: Device,
    /// Seed of initialisation and shuffling.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// One JSON object per run on stdout.
    #[arg(long)]
    json: bool,
    /// Save the checkpoint of each run here (with several γ, `-g<γ>` before the extension).
    #[arg(long, value_name = "PATH")]
    save: Option<PathBuf>,
    /// Continue training from this checkpoint (its model, DropIT policy and configuration;
    /// --model, --gamma, --lean, --batch and --budget are then ignored).
    #[arg(long, value_name = "PATH")]
    load: Option<PathBuf>,
}

fn device(s: &str) -> Result<Device, String> {
    s.parse().map_err(|e: dropit::Error| e.to_string())
}

fn gamma(s: &str) -> Result<f32, String> {
    s.trim()
        .parse::<f32>()
        .ok()
        .filter(|g| (0.0..1.0).contains(g))
        .ok_or_else(|| format!("{s:?} is not a number in [0, 1)"))
}

impl Args {
    fn threads(&self) -> usize {
        self.threads.map_or_else(
            || std::thread::available_parallelism().map_or(1, |n| n.get()),
            |t| usize::try_from(t).unwrap_or(usize::MAX),
        )
    }

    /// Where run `gamma` of `of` runs is saved.
    fn save_path(&self, gamma: f32, of: usize) -> Option<PathBuf> {
        let p = self.save.clone()?;
        if of <= 1 {
            return Some(p);
        }
        let stem = p
            .file_stem()
            .map_or_else(String::new, |s| s.to_string_lossy().into_owned());
        let ext = p
            .extension()
            .map_or_else(String::new, |e| format!(".{}", e.to_string_lossy()));
        Some(p.with_file_name(format!("{stem}-g{gamma:.2}{ext}")))
    }
}

/// One finished run.
struct Run {
    gamma: f32,
    lean: bool,
    int8_norms: bool,
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
    /// Bytes of the GPU's one allocation (on a GPU).
    device_bytes: Option<usize>,
}

/// Step times (ms), allocations in steps and the last loss of `total` steps.
fn run_steps(
    t: &mut AnyTrainer,
    batcher: &mut Batcher<'_>,
    total: usize,
    bar: &ProgressBar,
) -> dropit::Result<(Vec<f64>, usize, f32)> {
    // Room for the first step times up front (a long run's vector grows outside the steps).
    let (mut times, mut allocs, mut last) = (Vec::with_capacity(total.min(1 << 16)), 0, f32::NAN);
    for _ in 0..total {
        let (x, y) = batcher.next_batch();
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
    Ok((times, allocs, last))
}

/// Loss and accuracy over the test set.
fn test_on(t: &mut AnyTrainer, test: &Dataset, batch: usize) -> dropit::Result<EvalStats> {
    let mut stats = EvalStats::default();
    let mut loss_sum = 0.0f64;
    Batcher::in_order(test, batch, &[MEAN], &[STD], |x, y| {
        let e = t.evaluate(x, y)?;
        loss_sum += e.loss as f64 * e.samples as f64;
        stats.correct += e.correct;
        stats.samples += e.samples;
        Ok(())
    })?;
    stats.loss = (loss_sum / stats.samples.max(1) as f64) as f32;
    Ok(stats)
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
) -> Result<(Run, Trainer<'static>), Box<dyn std::error::Error>> {
    let model = match a.model.as_str() {
        "mlp" => Model::mlp()?,
        "vit" => Model::vit()?,
        "mobilenet" => Model::mobilenet()?,
        _ => Model::cnn()?,
    };
    let before = ALLOC.current();
    ALLOC.reset_peak();
    // A loaded checkpoint brings its own model, policy, configuration and step.
    let loaded = a.load.as_ref().map(Trainer::load).transpose()?;
    let batch = match (&loaded, a.batch) {
        (Some(t), _) => t.config().batch,
        (None, Some(b)) => usize::try_from(b).map_err(|_| format!("--batch {b}: too large"))?,
        (None, None) if a.model == "mlp" => 128,
        (None, None) => 64,
    };
    let mut batcher = Batcher::new(train, batch, &[MEAN], &[STD], a.seed)?;
    // The schedule spans the epochs; --steps stops early (a later --load continues to it).
    let epochs = (a.epochs as usize)
        .checked_mul(batcher.batches_per_epoch())
        .ok_or_else(|| format!("--epochs {}: too many steps to count", a.epochs))?;
    let last = a.steps.map_or(epochs, |s| {
        usize::try_from(s).unwrap_or(usize::MAX).min(epochs)
    });
    let mut cfg = match a.model.as_str() {
        "vit" => TrainerConfig::adamw_recipe(batch, epochs as u64),
        _ => TrainerConfig::sgd_recipe(batch, epochs as u64),
    };
    cfg.threads = a.threads();
    cfg.seed = a.seed;
    cfg.rebuild_inputs = !a.no_rebuild;
    let (t, policy) = match (loaded, a.budget) {
        (Some(t), _) => {
            // Continue the data order where the checkpoint stopped.
            for _ in 0..t.steps() {
                batcher.next_batch();
            }
            let gamma = t
                .model()
                .nodes()
                .iter()
                .find_map(|n| match n.layer.input_save() {
                    Some(dropit::InputSave::Sparse(s)) => Some(1.0 - s.keep),
                    _ => None,
                });
            (t, DropIt::new(gamma.unwrap_or(0.0)))
        }
        (None, Some(b)) => {
            let p = DropIt::dense().lean(a.lean).int8_norms(!a.bf16_norms);
            Trainer::with_budget(model, cfg, &p, b)?
        }
        (None, None) => {
            let p = DropIt::new(gamma).lean(a.lean).int8_norms(!a.bf16_norms);
            (Trainer::new(model.with_dropit(&p)?, cfg)?, p)
        }
    };
    let total = last.saturating_sub(t.steps() as usize);
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
    if test.is_empty() {
        return Err("the test set has no samples".into());
    }
    // The state moves to the device (for the GPU) and back to the CPU at the end (to save).
    let mut t = AnyTrainer::from_cpu(a.device, t)?;
    // The loop runs on the CPU trainer's workers, so steps hand no jobs over (and allocate
    // nothing).
    let (mut times, allocs, last) = t.with_workers(|t| run_steps(t, &mut batcher, total, &bar))?;
    bar.finish_and_clear();
    let peak = ALLOC.peak() - before;
    let test_stats = test_on(&mut t, test, batch)?;
    let report = t.memory_report();
    let run = Run {
        gamma: policy.gamma,
        lean: policy.lean,
        int8_norms: policy.lean && policy.int8_norms,
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
        device_bytes: t.device_bytes(),
    };
    Ok((run, t.into_cpu()?))
}

fn main() {
    let a = Args::parse();
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
            a.threads()
        );
    }
    let gammas = if a.budget.is_some() || a.load.is_some() {
        vec![f32::NAN]
    } else {
        a.gammas.clone()
    };
    let mut runs = Vec::new();
    for &g in &gammas {
        let (r, t) = train_one(a, &train, &test, g)?;
        if let Some(path) = a.save_path(r.gamma, gammas.len()) {
            t.save(&path)?;
            if !a.json {
                println!("saved {} (step {})", path.display(), t.steps());
            }
        }
        if a.json {
            // serde_json writes a number that is not finite (no step ran: no loss, no time) as
            // null, so the line is always JSON.
            let round = |v: f64, places: i32| {
                let s = 10f64.powi(places);
                (v * s).round() / s
            };
            let step_ms = (r.steps > 0).then_some(round(r.step_ms, 3));
            println!(
                "{}",
                serde_json::json!({
                    "model": a.model,
                    "gamma": r.gamma,
                    "lean": r.lean,
                    "int8_norms": r.int8_norms,
                    "rebuild_inputs": !a.no_rebuild,
                    "batch": r.batch,
                    "epochs": a.epochs,
                    "steps": r.steps,
                    "test_acc": round(r.test.correct as f64 / r.test.samples as f64, 4),
                    "test_loss": round(r.test.loss as f64, 4),
                    "peak_bytes": r.peak,
                    "planned_bytes": r.planned,
                    "saved_bytes": r.saved,
                    "dense_saved_bytes": r.dense_saved,
                    "step_ms_median": step_ms,
                    "allocs_in_steps": r.allocs,
                    "device": a.device.to_string(),
                    "device_bytes": r.device_bytes,
                    "final_loss": round(r.final_loss as f64, 4),
                    "threads": a.threads(),
                    "seed": a.seed,
                    "train_images": train.len(),
                })
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
