//! Times the GPU path (feature `cuda`) and prints one Markdown table row per figure:
//! `cargo run --release --features cuda --example gpu_bench`. Run by `targets/gpu-check.sh`,
//! which adds PyTorch's `torch.topk` where PyTorch with CUDA is installed.
//!
//! Kernel figures are medians of 20 runs after 3 warm-up runs, each timed from the host around
//! a synchronized stream; step figures are medians of 20 steps after 3. Without a usable GPU it
//! prints one line saying what is missing and exits 0.

use std::time::Instant;

use dropit::cuda::{Gpu, available};
use dropit::device::ops::{self, Work};
use dropit::device::{Backend, DeviceTrainer, Gemm};
use dropit::{DropIt, Model, TrainerConfig};
use dropit_simd::format::{Format, PosForm, ValueType};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

/// Median milliseconds of `f` (3 warm-up runs, 20 timed), synchronizing `gpu` after each.
fn median_ms<B: Backend>(gpu: &mut B, mut f: impl FnMut(&mut B) -> dropit::Result<()>) -> Res<f64> {
    for _ in 0..3 {
        f(gpu)?;
    }
    gpu.synchronize()?;
    let mut t = Vec::with_capacity(20);
    for _ in 0..20 {
        let s = Instant::now();
        f(gpu)?;
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

fn write(gpu: &mut Gpu, at: usize, v: &[f32]) -> dropit::Result<()> {
    gpu.write(at, bytemuck::cast_slice(v))
}

/// Top-k against our CPU select, and packing.
fn selection(gpu: &mut Gpu) -> Res<()> {
    for n in [1usize << 20, 1 << 22] {
        let x = data(n, n as u64);
        let work = Work::at(12 * n, n.div_ceil(64));
        gpu.allocate(12 * n + Work::bytes(n.div_ceil(64)) + 8)?;
        write(gpu, 0, &x)?;
        let k = n / 10;
        let ours = median_ms(gpu, |g| ops::threshold(g, 0, n, k, &work).map(drop))?;
        let s = Instant::now();
        for _ in 0..5 {
            dropit_simd::select::topk_threshold(&x, k)?;
        }
        let cpu = s.elapsed().as_secs_f64() * 1e3 / 5.0;
        let e = n.trailing_zeros();
        println!(
            "| top-k threshold, n = 2^{e}, keep 10% | GPU {ours:.3} ms | our CPU radix select {cpu:.3} ms | {:.1}× |",
            cpu / ours
        );
        let t = ops::threshold(gpu, 0, n, k, &work)?;
        let fmt = Format::new(ValueType::Bf16, PosForm::Bitmap);
        let pack = median_ms(gpu, |g| {
            ops::pack(g, (0, n), &t, fmt, 4 * n, &work).map(drop)
        })?;
        println!("| pack, bitmap + bf16, n = 2^{e} | GPU {pack:.3} ms | – | – |");
    }
    Ok(())
}

/// The sparse Linear grad_W against cuBLAS's dense product.
fn grad_w(gpu: &mut Gpu) -> Res<()> {
    for (rows, inp, out) in [(128usize, 512usize, 512usize), (4096, 1024, 1024)] {
        let n = rows * inp;
        // x | packed x | dY | grad_Wᵀ | work
        let (px, dy, gw) = (4 * n, 12 * n, 12 * n + 4 * rows * out);
        let at = gw + 4 * inp * out;
        gpu.allocate(at + Work::bytes(n.div_ceil(64)) + 8)?;
        let work = Work::at(at, n.div_ceil(64));
        write(gpu, 0, &data(n, 1))?;
        write(gpu, dy, &data(rows * out, 2))?;
        let t = ops::threshold(gpu, 0, n, n / 10, &work)?;
        let fmt = Format::new(ValueType::Bf16, PosForm::Bitmap);
        let p = ops::pack(gpu, (0, n), &t, fmt, px, &work)?;
        let sparse = median_ms(gpu, |g| {
            ops::linear_grad_w(g, &p, (inp, out), dy, gw, &work)
        })?;
        let base = gpu.base();
        // grad_Wᵀ (out × inp, column-major) += dYᶜ · xᶜᵀ.
        let g = Gemm {
            trans_a: false,
            trans_b: true,
            m: out,
            n: inp,
            k: rows,
            alpha: 1.0,
            a: (base + dy as u64, out),
            b: (base, inp),
            beta: 1.0,
            c: (base + gw as u64, out),
            batch: 1,
            strides: [0; 3],
        };
        // SAFETY: x (rows × inp), dY (rows × out) and grad_Wᵀ (inp × out) lie in the block as
        // laid out above.
        let dense = median_ms(gpu, |b| unsafe { b.gemm(&g) })?;
        println!(
            "| Linear grad_W {rows}×{inp}→{out}, 10% kept (bitmap + bf16) | sparse {sparse:.3} ms | cuBLAS dense {dense:.3} ms | {:.2}× |",
            dense / sparse
        );
    }
    Ok(())
}

/// A training step of each workload — the mlp (batch 128, SGD), the vit (batch 64, AdamW), the
/// cnn and the mobilenet (batch 64, SGD) — dense and at γ = 0.9: median time and the device
/// allocation.
fn steps() -> Res<()> {
    for (name, batch) in [
        ("mlp", 128usize),
        ("vit", 64),
        ("cnn", 64),
        ("mobilenet", 64),
    ] {
        let mut dense = None;
        for gamma in [0.0f32, 0.9] {
            let model = match name {
                "mlp" => Model::mlp()?,
                "cnn" => Model::cnn()?,
                "mobilenet" => Model::mobilenet()?,
                _ => Model::vit()?,
            }
            .with_dropit(&DropIt::new(gamma))?;
            let cfg = match name {
                "vit" => TrainerConfig::adamw_recipe(batch, 1000),
                _ => TrainerConfig::sgd_recipe(batch, 1000),
            };
            let per = model.input_shape().numel();
            let mut t = DeviceTrainer::new(Gpu::new(0)?, model, cfg)?;
            let (x, y) = (data(batch * per, 3), vec![1u32; batch]);
            let mut times = Vec::new();
            for i in 0..23 {
                let s = Instant::now();
                t.step(&x, &y)?;
                t.backend().synchronize()?;
                if i >= 3 {
                    times.push(s.elapsed().as_secs_f64() * 1e3);
                }
            }
            times.sort_by(f64::total_cmp);
            let (ms, mb) = (times[times.len() / 2], t.device_bytes() as f64 / 1e6);
            let (base_ms, base_mb) = *dense.get_or_insert((ms, mb));
            println!(
                "| {name} step, batch {batch}, γ = {gamma} | {ms:.3} ms, {mb:.2} MB on the device | dense {base_ms:.3} ms, {base_mb:.2} MB | time {:.2}×, memory {:.2}× |",
                ms / base_ms,
                mb / base_mb
            );
        }
    }
    Ok(())
}

fn main() -> Res<()> {
    if let Err(why) = available() {
        println!("SKIP GPU bench: {why}");
        return Ok(());
    }
    let mut gpu = Gpu::new(0)?;
    println!("GPU: {}", gpu.name()?);
    println!("| figure | ours | baseline | ratio |");
    println!("|---|---|---|---|");
    selection(&mut gpu)?;
    grad_w(&mut gpu)?;
    steps()
}
