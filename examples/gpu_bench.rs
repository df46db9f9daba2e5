//! Times the GPU kernels (feature `cuda`) and prints one Markdown table row per figure:
//! `cargo run --release --features cuda --example gpu_bench`. Run by `targets/gpu-check.sh`,
//! which adds PyTorch's `torch.topk` where PyTorch with CUDA is installed.
//!
//! Figures are medians of 20 runs after 3 warm-up runs, each timed from the host around a
//! synchronized stream. Without a usable GPU it prints one line saying what is missing and
//! exits 0.

use std::time::Instant;

use dropit::cuda::{Gpu, available};
use dropit_simd::format::{Format, PosForm, ValueType};

/// Median milliseconds of `f` (3 warm-up runs, 20 timed), the stream synchronized around each.
fn median_ms(gpu: &Gpu, mut f: impl FnMut()) -> Result<f64, Box<dyn std::error::Error>> {
    for _ in 0..3 {
        f();
    }
    gpu.synchronize()?;
    let mut t = Vec::with_capacity(20);
    for _ in 0..20 {
        let s = Instant::now();
        f();
        gpu.synchronize()?;
        t.push(s.elapsed().as_secs_f64() * 1e3);
    }
    t.sort_by(f64::total_cmp);
    Ok(t[t.len() / 2])
}

/// Deterministic roughly uniform values in [−1.5, 1.5).
fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 3.0 - 1.5
        })
        .collect()
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Err(why) = available() {
        println!("SKIP GPU bench: {why}");
        return Ok(());
    }
    let gpu = Gpu::new(0)?;
    println!("GPU: {}", gpu.name()?);
    println!("| figure | ours | baseline | ratio |");
    println!("|---|---|---|---|");
    for n in [1usize << 20, 1 << 22] {
        let x = data(n, n as u64);
        let dx = gpu.upload(&x)?;
        let k = n / 10;
        let mut err = None;
        let ours = median_ms(&gpu, || {
            if let Err(e) = gpu.topk_threshold(&dx, k) {
                err = Some(e);
            }
        })?;
        if let Some(e) = err {
            return Err(e.into());
        }
        let cpu = {
            let s = Instant::now();
            for _ in 0..5 {
                dropit_simd::select::topk_threshold(&x, k)?;
            }
            s.elapsed().as_secs_f64() * 1e3 / 5.0
        };
        println!(
            "| top-k threshold, n = 2^{}, keep 10% | GPU {ours:.3} ms | our CPU radix select {cpu:.3} ms | {:.1}× |",
            n.trailing_zeros(),
            cpu / ours
        );
        let t = gpu.topk_threshold(&dx, k)?;
        let fmt = Format::new(ValueType::Bf16, PosForm::Bitmap);
        let pack = median_ms(&gpu, || {
            gpu.pack(&dx, &t, fmt).expect("pack");
        })?;
        println!(
            "| pack, bitmap + bf16, n = 2^{} | GPU {pack:.3} ms | – | – |",
            n.trailing_zeros()
        );
    }
    for (rows, inp, out) in [(128usize, 512usize, 512usize), (4096, 1024, 1024)] {
        let x = data(rows * inp, 1);
        let dy = gpu.upload(&data(rows * out, 2))?;
        let dx = gpu.upload(&x)?;
        let k = rows * inp / 10;
        let t = gpu.topk_threshold(&dx, k)?;
        let p = gpu.pack(&dx, &t, Format::new(ValueType::Bf16, PosForm::Bitmap))?;
        let mut gw = gpu.zeros::<f32>(inp * out)?;
        let sparse = median_ms(&gpu, || {
            gpu.linear_grad_w(&p, (rows, inp, out), &dy, &mut gw)
                .expect("sparse grad_W");
        })?;
        let dense = median_ms(&gpu, || {
            gpu.linear_grad_w_dense(&dx, (rows, inp, out), &dy, &mut gw)
                .expect("dense grad_W");
        })?;
        println!(
            "| Linear grad_W {rows}×{inp}→{out}, 10% kept (bitmap + bf16) | sparse {sparse:.3} ms | cuBLAS dense {dense:.3} ms | {:.2}× |",
            dense / sparse
        );
    }
    println!(
        "| mlp and vit steps, device memory | – | – | not measured: the GPU trainer is not built yet |"
    );
    Ok(())
}
