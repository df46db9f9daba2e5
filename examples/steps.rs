//! Runs training steps of a reference workload on a fixed synthetic batch, one thread, and
//! nothing else — for profilers (`benches/profile.py` runs it under callgrind):
//! `cargo run --release --example steps -- cnn 0.9 lean 3 64` (model mlp | cnn | vit |
//! mobilenet, γ, `-` | `lean` | `lean16` — lean with bf16 norms, steps, batch — by default the
//! workload's).
//!
//! With `--times` it also times the steps after the first on `--threads N` workers (default 1)
//! and prints the wall time by layer kind, forward and backward, and the rest of the step
//! (loss, optimizer): `cargo run --release --example steps -- cnn 0 - 6 --times --threads 2`;
//! `--nodes` also prints each node's times.

use dropit::{DropIt, Model, Trainer, TrainerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let all: Vec<String> = std::env::args().skip(1).collect();
    let times = all.iter().any(|a| a == "--times");
    let threads: usize = match all.iter().position(|a| a == "--threads") {
        Some(i) => all.get(i + 1).ok_or("--threads needs a count")?.parse()?,
        None => 1,
    };
    let mut args = all
        .iter()
        .enumerate()
        .filter(|&(i, a)| !a.starts_with("--") && (i == 0 || all[i - 1] != "--threads"))
        .map(|(_, a)| a.clone());
    let name = args.next().unwrap_or_else(|| "cnn".into());
    let gamma: f32 = args.next().map_or(Ok(0.0), |g| g.parse())?;
    let form = args.next().unwrap_or_default();
    let steps: usize = args.next().map_or(Ok(3), |s| s.parse())?;
    let batch: Option<usize> = args.next().map(|b| b.parse()).transpose()?;
    let (model, default_batch) = match name.as_str() {
        "mlp" => (Model::mlp()?, 128),
        "cnn" => (Model::cnn()?, 64),
        "vit" => (Model::vit()?, 64),
        "mobilenet" => (Model::mobilenet()?, 64),
        other => {
            return Err(format!("unknown model {other:?} (mlp | cnn | vit | mobilenet)").into());
        }
    };
    let batch = batch.unwrap_or(default_batch);
    let mut cfg = match name.as_str() {
        "vit" => TrainerConfig::adamw_recipe(batch, 1000),
        _ => TrainerConfig::sgd_recipe(batch, 1000),
    };
    cfg.threads = threads;
    let policy = DropIt::new(gamma)
        .lean(form.starts_with("lean"))
        .int8_norms(form != "lean16");
    let mut t = Trainer::new(model.with_dropit(&policy)?, cfg)?;
    let per = t.model().input_shape().numel();
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let x: Vec<f32> = (0..batch * per)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    let y: Vec<u32> = (0..batch as u32).map(|i| i % 10).collect();
    if !times {
        for _ in 0..steps {
            t.step(&x, &y)?;
        }
        return Ok(());
    }
    t.step(&x, &y)?;
    t.time_layers(true);
    let start = std::time::Instant::now();
    for _ in 1..steps.max(2) {
        t.step(&x, &y)?;
    }
    let total = start.elapsed().as_secs_f64() * 1e3 / (steps.max(2) - 1) as f64;
    print_times(
        &t,
        total,
        steps.max(2) - 1,
        all.iter().any(|a| a == "--nodes"),
    );
    Ok(())
}

/// Milliseconds per step by layer kind (forward, backward), largest first, and the rest.
fn print_times(t: &Trainer<'_>, total: f64, steps: usize, nodes: bool) {
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e3 / steps as f64;
    let mut kinds: Vec<(&str, f64, f64)> = Vec::new();
    let times = t.layer_times().unwrap_or_default();
    if nodes {
        for (node, [f, b]) in t.model().nodes().iter().zip(times.iter()) {
            println!("{:>24} fwd {:.3} bwd {:.3}", node.name, per(*f), per(*b));
        }
    }
    for (node, [f, b]) in t.model().nodes().iter().zip(times) {
        let kind = node.layer.kind();
        match kinds.iter_mut().find(|k| k.0 == kind) {
            Some(k) => (k.1, k.2) = (k.1 + per(*f), k.2 + per(*b)),
            None => kinds.push((kind, per(*f), per(*b))),
        }
    }
    kinds.sort_by(|a, b| (b.1 + b.2).total_cmp(&(a.1 + a.2)));
    println!("step {total:.2} ms (the mean of {steps} steps)");
    let mut layers = 0.0;
    for (kind, f, b) in &kinds {
        layers += f + b;
        println!(
            "{kind:>20}: {:6.2} ms forward {f:6.2} backward {b:6.2} ({:4.1}% of the step)",
            f + b,
            100.0 * (f + b) / total
        );
    }
    println!(
        "{:>20}: {:6.2} ms ({:4.1}%: loss, gradient norm, optimizer)",
        "rest",
        total - layers,
        100.0 * (total - layers) / total
    );
}
