//! Prints the memory plan of a reference workload:
//! `cargo run --release --example memory_plan -- cnn 64 0.9 lean` (model, batch, γ, lean).

use dropit::{DropIt, Model, Trainer, TrainerConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let name = args.next().unwrap_or_else(|| "cnn".into());
    let batch: usize = args.next().map_or(Ok(64), |b| b.parse())?;
    let gamma: f32 = args.next().map_or(Ok(0.0), |g| g.parse())?;
    let lean = args.next().is_some_and(|a| a == "lean");
    let model = match name.as_str() {
        "mlp" => Model::mlp()?,
        "cnn" => Model::cnn()?,
        other => return Err(format!("unknown model {other:?} (mlp | cnn)").into()),
    };
    let model = model.with_dropit(&DropIt::new(gamma).lean(lean))?;
    let t = Trainer::new(model, TrainerConfig::sgd_recipe(batch, 1))?;
    println!("{}", t.memory_report());
    Ok(())
}
