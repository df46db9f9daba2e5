//! Training-step time of the DESIGN's workloads (mlp at batch 128, cnn at batch 64), one and two
//! worker threads, on fixed synthetic batches (time does not depend on the values).

use std::hint::black_box;
use std::time::Duration;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use dropit::{Model, Trainer, TrainerConfig};

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
    ] {
        let (x, y) = batch(n);
        for threads in [1, 2] {
            let mut cfg = TrainerConfig::sgd_recipe(n, 1_000_000);
            cfg.threads = threads;
            let mut t = Trainer::new(model.clone(), cfg).unwrap();
            g.bench_function(
                BenchmarkId::new(name, format!("dense/threads{threads}")),
                |b| b.iter(|| black_box(t.step(&x, &y).unwrap())),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
