//! Writes the seed corpus of the `checkpoint` fuzz target into `corpus/checkpoint/`:
//! checkpoints and weights of the three small models of `dropit_fuzz` after two steps, a
//! PyTorch-style weights file (no dropit metadata, no checksum) and a two-slot flash buffer.
//!
//! `cargo run --manifest-path fuzz/Cargo.toml --example seeds`

use std::path::Path;

use dropit::Trainer;
use dropit_fuzz::trainers;

/// `n` samples of `t`'s input and labels.
fn batch(t: &Trainer<'_>, n: usize, seed: usize) -> (Vec<f32>, Vec<u32>) {
    let numel = t.model().input_shape().numel();
    let x = (0..n * numel)
        .map(|i| ((i * 31 + seed * 17) % 23) as f32 / 11.0 - 1.0)
        .collect();
    let y = (0..n)
        .map(|i| ((i + seed) % t.model().classes()) as u32)
        .collect();
    (x, y)
}

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus/checkpoint");
    std::fs::create_dir_all(&dir).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
        println!("seed-{name}: {} bytes", bytes.len());
    };
    for (name, mut t) in trainers() {
        for s in 0..2 {
            let (x, y) = batch(&t, t.config().batch, s);
            t.step(&x, &y).unwrap();
        }
        write(
            &format!("{name}.ckpt.safetensors"),
            &t.checkpoint().unwrap(),
        );
        write(
            &format!("{name}.weights.safetensors"),
            &t.weights().unwrap(),
        );
        if name == "mlp" {
            // PyTorch's `save_file`: only `format` in the metadata.
            let w = t.weights().unwrap();
            let st = safetensors::SafeTensors::deserialize(&w).unwrap();
            let meta = [("format".to_string(), "pt".to_string())];
            let torch =
                safetensors::serialize(st.tensors(), Some(meta.into_iter().collect())).unwrap();
            write("mlp.torch.safetensors", &torch);
            let size = t.checkpoint().unwrap().len();
            let mut flash = vec![0xFF; 2 * (size + dropit::checkpoint::SLOT_HEADER) + 8];
            t.save_to(&mut flash).unwrap();
            let (x, y) = batch(&t, 4, 7);
            t.step(&x, &y).unwrap();
            t.save_to(&mut flash).unwrap();
            write("mlp.flash", &flash);
        }
    }
}
