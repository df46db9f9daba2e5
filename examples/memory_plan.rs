//! Prints the memory plan of a reference workload:
//! `cargo run --release --example memory_plan -- cnn 64 0.9 lean` (model mlp | cnn | vit | mobilenet, batch,
//! γ, `lean` or `lean16` — lean with bf16 norms).

use dropit::{DropIt, Model, Trainer, TrainerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "cnn".into());
    let batch: usize = args.next().map_or(Ok(64), |b| b.parse())?;
    let gamma: f32 = args.next().map_or(Ok(0.0), |g| g.parse())?;
    let form = args.next().unwrap_or_default();
    let (lean, int8) = (form.starts_with("lean"), form != "lean16");
    let model = match name.as_str() {
        "mlp" => Model::mlp()?,
        "cnn" => Model::cnn()?,
        "vit" => Model::vit()?,
        "mobilenet" => Model::mobilenet()?,
        other => {
            return Err(format!("unknown model {other:?} (mlp | cnn | vit | mobilenet)").into());
        }
    };
    let cfg = match name.as_str() {
        "vit" => TrainerConfig::adamw_recipe(batch, 1),
        _ => TrainerConfig::sgd_recipe(batch, 1),
    };
    let model = model.with_dropit(&DropIt::new(gamma).lean(lean).int8_norms(int8))?;
    let t = Trainer::new(model, cfg)?;
    println!("{}", t.memory_report());
    Ok(())
}
