//! Writes the seed corpora: for `checkpoint` (`corpus/checkpoint/`), checkpoints and weights of
//! the three small models of `dropit_fuzz` after two steps, a PyTorch-style weights file (no
//! dropit metadata, no checksum) and a two-slot flash buffer; for `idx`, `cifar` and `packed`,
//! small valid files and packed buffers of every format.
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

/// Writes `bytes` as `corpus/<target>/seed-<name>`.
fn seed(target: &str, name: &str, bytes: &[u8]) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(format!("seed-{name}")), bytes).unwrap();
    println!("{target}/seed-{name}: {} bytes", bytes.len());
}

/// IDX files (mode byte 0: raw, 1: gzip-wrapped by the target), a CIFAR-10 record, and packed
/// buffers of every format with the target's 10-byte header.
fn parser_seeds() {
    use dropit::kernels::format::{Format, PackedMut};
    use dropit::kernels::{pack::select_and_pack, select::kept_in_blocks};
    use dropit::{PosForm, ValueType};
    let mut idx = vec![0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 3, 0, 0, 0, 2];
    idx.extend(0..12u8);
    for mode in [0u8, 1] {
        seed(
            "idx",
            &format!("images-{mode}"),
            &[&[mode][..], &idx].concat(),
        );
        let labels = [mode, 0, 0, 8, 1, 0, 0, 0, 4, 1, 9, 0, 3];
        seed("idx", &format!("labels-{mode}"), &labels);
    }
    let record: Vec<u8> = std::iter::once(7)
        .chain((0..3072).map(|i| (i % 251) as u8))
        .collect();
    seed("cifar", "one-record", &record);
    let n = 96usize;
    let x: Vec<f32> = (0..n).map(|i| ((i * 37) % 19) as f32 - 9.0).collect();
    for (vi, values) in [ValueType::F32, ValueType::Bf16, ValueType::F16]
        .into_iter()
        .enumerate()
    {
        for (pi, positions) in [PosForm::Bitmap, PosForm::Block16, PosForm::U32]
            .into_iter()
            .enumerate()
        {
            let fmt = Format::new(values, positions);
            let k = kept_in_blocks(n, n, 0.25).unwrap();
            let mut words = vec![0u64; fmt.bytes(n, k).div_ceil(8)];
            let buf = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..fmt.bytes(n, k)];
            let mut out = PackedMut::from_bytes(fmt, n, k, buf).unwrap();
            select_and_pack(&x, n, 0.25, &mut out).unwrap();
            // Format, n = 96, k, inp = 4 (byte 7 = 3), c = 2 and h = 4 (bytes 8, 9): a linear
            // of 24 × 4 and a 3×3 conv over [3, 4, 4, 2].
            let head = [
                (vi + 3 * pi) as u8,
                n as u8,
                0,
                0,
                k as u8,
                0,
                0,
                3,
                1 + 3,
                3,
            ];
            let bytes = bytemuck::cast_slice::<u64, u8>(&words)[..fmt.bytes(n, k)].to_vec();
            seed(
                "packed",
                &format!("{values:?}-{positions:?}"),
                &[&head[..], &bytes].concat(),
            );
        }
    }
}

fn main() {
    parser_seeds();
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
