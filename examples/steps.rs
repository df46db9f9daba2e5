//! Runs training steps of a reference workload on a fixed synthetic batch, one thread, and
//! nothing else — for profilers (`benches/profile.py` runs it under callgrind):
//! `cargo run --release --example steps -- cnn 0.9 lean 3 64` (model mlp | cnn | vit |
//! mobilenet, γ, `-` | `lean` | `lean8`, steps, batch — by default the workload's).

use dropit::{DropIt, Model, Trainer, TrainerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
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
    let cfg = match name.as_str() {
        "vit" => TrainerConfig::adamw_recipe(batch, 1000),
        _ => TrainerConfig::sgd_recipe(batch, 1000),
    };
    let policy = DropIt::new(gamma)
        .lean(form.starts_with("lean"))
        .int8_norms(form == "lean8");
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
    for _ in 0..steps {
        t.step(&x, &y)?;
    }
    Ok(())
}
