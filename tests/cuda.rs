//! The GPU kernels against their CPU twins (feature `cuda`): the same elements selected, the
//! same packed bytes both ways, the same masks and optimizer updates, and grad_W within f32
//! rounding. Without a
//! usable GPU the kernel test prints one line saying what is missing and checks nothing else;
//! the other test checks that a missing GPU is an error that says so, never a panic.
#![cfg(feature = "cuda")]
mod common;

use common::{data, selection_tensors};
use dropit::cuda::{Gpu, GpuPacked, available};
use dropit::optim::Optimizer;
use dropit_simd::format::{Format, Packed, PackedMut, PosForm, ValueType};
use dropit_simd::{mask, pack, select, spmm};

#[test]
fn a_missing_gpu_is_an_error_that_says_what_is_missing() {
    match available() {
        Ok(()) => assert!(Gpu::new(0).is_ok(), "available, but the GPU did not open"),
        Err(why) => {
            assert!(!why.is_empty());
            let e = Gpu::new(0).unwrap_err().to_string();
            assert!(e.contains(&why), "{e}");
        }
    }
}

/// The CPU's packed bytes of `x` keeping `k`, in a zeroed, 8-byte-aligned buffer.
fn cpu_pack(x: &[f32], k: usize, fmt: Format) -> Vec<u8> {
    let t = select::topk_threshold(x, k).unwrap();
    let bytes = fmt.bytes(x.len(), k);
    let mut words = vec![0u64; bytes.div_ceil(8)];
    let buf = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes];
    pack::pack(
        x,
        &t,
        &mut PackedMut::from_bytes(fmt, x.len(), k, buf).unwrap(),
    )
    .unwrap();
    buf.to_vec()
}

fn aligned(bytes: &[u8]) -> Vec<u64> {
    let mut w = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut w)[..bytes.len()].copy_from_slice(bytes);
    w
}

#[test]
fn gpu_kernels_match_the_cpu() {
    if let Err(why) = available() {
        println!("SKIP GPU kernel tests: {why}");
        return;
    }
    let gpu = Gpu::new(0).unwrap();
    println!("GPU: {}", gpu.name().unwrap());
    let formats = [
        Format::new(ValueType::Bf16, PosForm::Bitmap),
        Format::new(ValueType::F32, PosForm::Bitmap),
        Format::new(ValueType::F32, PosForm::U32),
        Format::new(ValueType::Bf16, PosForm::U32),
    ];
    for x in selection_tensors(&[1, 63, 64, 65, 1000, 100_003]) {
        let n = x.len();
        let dx = gpu.upload(&x).unwrap();
        for k in [0, 1, n / 10, n / 2, n - 1, n] {
            let t = gpu.topk_threshold(&dx, k).unwrap();
            assert_eq!(t.kept(), k, "n {n}, k {k}");
            for fmt in formats {
                let what = format!("n {n}, k {k}, {fmt:?}");
                let want = cpu_pack(&x, k, fmt);
                let p = gpu.pack(&dx, &t, fmt).unwrap();
                assert_eq!(p.to_host(&gpu).unwrap(), want, "packed bytes, {what}");
                // Dense again, from the GPU's bytes and from the CPU's.
                let words = aligned(&want);
                let bytes = &bytemuck::cast_slice::<u64, u8>(&words)[..want.len()];
                let mut cpu = vec![7.0f32; n];
                pack::unpack(&Packed::from_bytes(fmt, n, k, bytes).unwrap(), &mut cpu).unwrap();
                let mut out = gpu.zeros::<f32>(n).unwrap();
                gpu.unpack(&p, &mut out).unwrap();
                let same =
                    |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(a, b)| a.to_bits() == b.to_bits());
                assert!(same(&gpu.download(&out).unwrap(), &cpu), "unpack, {what}");
                let from_cpu = GpuPacked::from_host(&gpu, fmt, n, k, bytes).unwrap();
                gpu.unpack(&from_cpu, &mut out).unwrap();
                assert!(
                    same(&gpu.download(&out).unwrap(), &cpu),
                    "CPU bytes, {what}"
                );
            }
        }
        // ReLU's masks.
        let mut bits = gpu.zeros::<u64>(n.div_ceil(64)).unwrap();
        gpu.positive_mask(&dx, &mut bits).unwrap();
        let mut want = vec![0u64; n.div_ceil(64)];
        mask::positive_mask(&x, &mut want).unwrap();
        assert_eq!(gpu.download(&bits).unwrap(), want, "mask, n {n}");
        let dy = data(n, 99);
        let mut dxm = gpu.zeros::<f32>(n).unwrap();
        gpu.apply_mask(&gpu.upload(&dy).unwrap(), &bits, &mut dxm)
            .unwrap();
        let mut cpu = vec![0.0f32; n];
        mask::apply_mask(&dy, &want, &mut cpu).unwrap();
        assert_eq!(gpu.download(&dxm).unwrap(), cpu, "apply mask, n {n}");
    }
    // Linear grad_W from a packed input, against the CPU within f32 rounding.
    let (rows, inp, out) = (64, 96, 40);
    let x = data(rows * inp, 3);
    let dy = data(rows * out, 4);
    let k = rows * inp / 10;
    for fmt in formats {
        let bytes = cpu_pack(&x, k, fmt);
        let words = aligned(&bytes);
        let bytes = &bytemuck::cast_slice::<u64, u8>(&words)[..bytes.len()];
        let mut want = vec![0.25f32; inp * out];
        let p = Packed::from_bytes(fmt, rows * inp, k, bytes).unwrap();
        spmm::linear_grad_w(&p, rows, inp, &dy, out, &mut want).unwrap();
        let gp = GpuPacked::from_host(&gpu, fmt, rows * inp, k, bytes).unwrap();
        let mut got = gpu.upload(&vec![0.25f32; inp * out]).unwrap();
        gpu.linear_grad_w(&gp, (rows, inp, out), &gpu.upload(&dy).unwrap(), &mut got)
            .unwrap();
        for (g, w) in gpu.download(&got).unwrap().iter().zip(&want) {
            assert!(
                (g - w).abs() <= 1e-5 * (1.0 + w.abs()),
                "{fmt:?}: {g} vs {w}"
            );
        }
    }
    // The dense product through cuBLAS, against f64 sums.
    let mut got = gpu.upload(&vec![0.25f32; inp * out]).unwrap();
    let (dxd, dyd) = (gpu.upload(&x).unwrap(), gpu.upload(&dy).unwrap());
    gpu.linear_grad_w_dense(&dxd, (rows, inp, out), &dyd, &mut got)
        .unwrap();
    let got = gpu.download(&got).unwrap();
    for i in 0..inp {
        for o in 0..out {
            let w: f64 = 0.25
                + (0..rows)
                    .map(|r| x[r * inp + i] as f64 * dy[r * out + o] as f64)
                    .sum::<f64>();
            let g = got[i * out + o] as f64;
            assert!((g - w).abs() <= 1e-4 * (1.0 + w.abs()), "dense: {g} vs {w}");
        }
    }
    // The optimizers, three steps each, bitwise the CPU's.
    for opt in [Optimizer::sgd(0.9, 5e-4), Optimizer::adamw(0.05)] {
        let n = 1000;
        let (mut p, mut state) = (data(n, 1), vec![0.0f32; 2 * n]);
        let (mut gp, mut gs) = (gpu.upload(&p).unwrap(), gpu.upload(&state).unwrap());
        for t in 1..=3u64 {
            let g = data(n, 10 + t);
            opt.update(0.01, t, &mut p, &g, &mut state[..opt.state_slots() * n]);
            let dg = gpu.upload(&g).unwrap();
            gpu.optimizer_update(&opt, (0.01, t), &mut gp, &dg, &mut gs)
                .unwrap();
        }
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&gpu.download(&gp).unwrap()), bits(&p), "{opt:?}");
        assert_eq!(bits(&gpu.download(&gs).unwrap()), bits(&state), "{opt:?}");
    }
}

#[test]
fn wrong_sizes_are_errors() {
    if available().is_err() {
        return; // the first test says why
    }
    let gpu = Gpu::new(0).unwrap();
    let x = gpu.upload(&data(100, 1)).unwrap();
    assert!(gpu.topk_threshold(&x, 101).is_err());
    let mut bits = gpu.zeros::<u64>(1).unwrap();
    assert!(gpu.positive_mask(&x, &mut bits).is_err());
    let fmt = Format::new(ValueType::F16, PosForm::Bitmap);
    let t = gpu.topk_threshold(&x, 10).unwrap();
    assert!(gpu.pack(&x, &t, fmt).is_err());
    // A threshold of another tensor is refused, not written past the buffer.
    let y = gpu.upload(&vec![0.0f32; 100]).unwrap();
    let fmt = Format::new(ValueType::F32, PosForm::U32);
    assert!(gpu.pack(&y, &t, fmt).is_err());
    // Bytes that do not parse as the format.
    assert!(GpuPacked::from_host(&gpu, fmt, 100, 10, &[0u8; 3]).is_err());
}
