//! Training-step time of the reference workloads (README) (mlp at batch 128, cnn, vit and mobilenet at batch 64), dense and
//! DropIT γ=0.9 (plain, lean, and lean with bf16 norms), one and two worker threads, on fixed synthetic batches (time
//! hardly depends on the values), side by side in one run so they compare as ratios.

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dropit::{DropIt, Model, Trainer, TrainerConfig};

fn batch(n: usize) -> (Vec<f32>, Vec<u32>) {
    let mut s = 0x2545_F491_4F6C_DD1Du64;
    let x = (0..n * 784)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32
        })
        .collect();
    (x, (0..n as u32).map(|i| i % 10).collect())
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_step");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(4))
        .warm_up_time(Duration::from_secs(1));
    for (name, model, n) in [
        ("mlp", Model::mlp().unwrap(), 128),
        ("cnn", Model::cnn().unwrap(), 64),
        ("vit", Model::vit().unwrap(), 64),
        ("mobilenet", Model::mobilenet().unwrap(), 64),
    ] {
        let (x, y) = batch(n);
        for threads in [1, 2] {
            for (variant, policy) in [
                ("dense", DropIt::dense()),
                ("gamma0.9", DropIt::new(0.9)),
                ("gamma0.9_lean", DropIt::new(0.9).lean(true)),
                (
                    "gamma0.9_lean16",
                    DropIt::new(0.9).lean(true).int8_norms(false),
                ),
            ] {
                if name == "mlp" && variant == "gamma0.9_lean16" {
                    continue; // no norm: the same as lean
                }
                let mut cfg = match name {
                    "vit" => TrainerConfig::adamw_recipe(n, 1_000_000),
                    _ => TrainerConfig::sgd_recipe(n, 1_000_000),
                };
                cfg.threads = threads;
                let m = model.clone().with_dropit(&policy).unwrap();
                let mut t = Trainer::new(m, cfg).unwrap();
                g.bench_function(
                    BenchmarkId::new(name, format!("{variant}/threads{threads}")),
                    |b| b.iter(|| black_box(t.step(&x, &y).unwrap())),
                );
            }
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
