//! The GPU kernels' logic, checked on any machine: `src/cuda/kernels.cu` compiled with the
//! host's C++ compiler against an emulation of CUDA's thread model (`tests/cuda_emu/`) and
//! launched as the GPU path launches them must give the CPU's packed bytes (bitmap or u32 ×
//! f32 or bf16), dense tensors and ReLU masks exactly — for ties, ±0, NaN, ±∞, lengths around
//! a 64-element word, and k from none to all — and the optimizers' updates bitwise the CPU's.
//! Needs no GPU and no CUDA; without a C++20 compiler it prints one SKIP line.
//! (`tests/cuda.rs` runs the same comparisons on a GPU.)
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::selection_tensors;
use dropit::optim::Optimizer;
use dropit_simd::format::{Format, Packed, PackedMut, PosForm, ValueType};
use dropit_simd::{mask, pack, select};

/// The emulated driver, built into `dir`; why not where no C++20 compiler is. A compiler that
/// takes C++20 but fails on the sources is a test failure, not a skip.
fn build(dir: &Path) -> Result<PathBuf, String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let probe = dir.join("probe.cpp");
    std::fs::write(
        &probe,
        "#include <barrier>\nint main() { std::barrier<> b(1); }\n",
    )
    .unwrap();
    let cxx20 = Command::new(&cxx)
        .args(["-std=c++20", "-pthread", "-o"])
        .arg(dir.join("probe"))
        .arg(&probe)
        .output()
        .map_err(|e| format!("no C++ compiler ({cxx}: {e})"))?;
    if !cxx20.status.success() {
        return Err(format!("{cxx} has no C++20 <barrier>"));
    }
    let out = dir.join("driver");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emu/driver.cpp");
    let built = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-w", "-ffp-contract=off"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "the emulation does not build:\n{}",
        String::from_utf8_lossy(&built.stderr)
    );
    Ok(out)
}

fn bytes_of<T: bytemuck::Pod>(v: &[T]) -> Vec<u8> {
    bytemuck::cast_slice(v).to_vec()
}

#[test]
fn kernels_under_emulation_match_the_cpu() {
    let dir = std::env::temp_dir().join(format!("dropit-cuda-emu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let driver = match build(&dir) {
        Ok(d) => d,
        Err(why) => {
            println!("SKIP emulated GPU kernels: {why}");
            return;
        }
    };
    let formats = [
        Format::new(ValueType::F32, PosForm::Bitmap),
        Format::new(ValueType::Bf16, PosForm::Bitmap),
        Format::new(ValueType::F32, PosForm::U32),
        Format::new(ValueType::Bf16, PosForm::U32),
    ];
    let file = |name: &str| dir.join(name);
    let mut cases = 0;
    for x in selection_tensors(&[1, 63, 64, 65, 1000]) {
        let n = x.len();
        std::fs::write(file("x.bin"), bytes_of(&x)).unwrap();
        let mut want_mask = vec![0u64; n.div_ceil(64)];
        mask::positive_mask(&x, &mut want_mask).unwrap();
        for k in [0, 1, n / 10, n / 2, n - 1, n] {
            let t = select::topk_threshold(&x, k).unwrap();
            for fmt in formats {
                let what = format!("n {n}, k {k}, {fmt:?}");
                let bytes = fmt.bytes(n, k);
                let mut words = vec![0u64; bytes.div_ceil(8)];
                let buf = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes];
                pack::pack(&x, &t, &mut PackedMut::from_bytes(fmt, n, k, buf).unwrap()).unwrap();
                let want = buf.to_vec();
                let mut dense = vec![7.0f32; n];
                let aligned = &bytemuck::cast_slice::<u64, u8>(&words)[..bytes];
                let packed = Packed::from_bytes(fmt, n, k, aligned).unwrap();
                pack::unpack(&packed, &mut dense).unwrap();
                let form = (fmt.values == ValueType::Bf16) as u8;
                let pos = (fmt.positions == PosForm::U32) as u8;
                let status = Command::new(&driver)
                    .arg(file("x.bin"))
                    .args([k.to_string(), form.to_string(), pos.to_string()])
                    .args([file("p.bin"), file("d.bin"), file("m.bin")])
                    .status()
                    .unwrap();
                assert!(
                    status.success(),
                    "{what}: the emulated kernels failed ({status})"
                );
                assert_eq!(
                    std::fs::read(file("p.bin")).unwrap(),
                    want,
                    "packed, {what}"
                );
                assert_eq!(
                    std::fs::read(file("d.bin")).unwrap(),
                    bytes_of(&dense),
                    "dense, {what}"
                );
                assert_eq!(
                    std::fs::read(file("m.bin")).unwrap(),
                    bytes_of(&want_mask),
                    "mask, {what}"
                );
                cases += 1;
            }
        }
    }
    println!("{cases} cases under emulation, all identical to the CPU");
    optimizers(&driver, &dir);
    let _ = std::fs::remove_dir_all(&dir);
}

/// SGD (plain, momentum, Nesterov) and AdamW, a few steps each, bitwise the CPU's.
fn optimizers(driver: &Path, dir: &Path) {
    let n = 1000;
    let mut nesterov = Optimizer::sgd(0.9, 5e-4);
    if let Optimizer::Sgd { nesterov: nv, .. } = &mut nesterov {
        *nv = true;
    }
    for opt in [
        Optimizer::sgd(0.0, 1e-4),
        Optimizer::sgd(0.9, 5e-4),
        nesterov,
        Optimizer::adamw(0.05),
    ] {
        let (mut p, mut state) = (common::data(n, 1), vec![0.0f32; 2 * n]);
        let mut gpu = (p.clone(), state.clone());
        for t in 1..=3u64 {
            let g = common::data(n, 10 + t);
            let lr = 0.01 * t as f32;
            opt.update(lr, t, &mut p, &g, &mut state[..opt.state_slots() * n]);
            let mut input = gpu.0.clone();
            input.extend(&g);
            input.extend(&gpu.1);
            std::fs::write(dir.join("o.bin"), bytes_of(&input)).unwrap();
            let b = |v: f32| v.to_bits().to_string();
            let args: Vec<String> = match opt {
                Optimizer::Sgd {
                    momentum,
                    nesterov,
                    weight_decay,
                } => [
                    "sgd".into(),
                    b(momentum),
                    b(weight_decay),
                    (nesterov as u8).to_string(),
                ]
                .into_iter()
                .chain(["0", "0", "0"].map(String::from))
                .collect(),
                Optimizer::AdamW {
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                } => {
                    let (c1, c2) = Optimizer::bias_corrections(beta1, beta2, t);
                    let v = [beta1, weight_decay, beta2, eps, c1, c2].map(b);
                    ["adamw".to_string()].into_iter().chain(v).collect()
                }
            };
            let status = Command::new(driver)
                .arg("optim")
                .arg(&args[0])
                .args([n.to_string(), b(lr)])
                .args(&args[1..])
                .arg(dir.join("o.bin"))
                .arg(dir.join("q.bin"))
                .status()
                .unwrap();
            assert!(status.success(), "{opt:?}: the emulated update failed");
            let out: Vec<f32> =
                bytemuck::cast_slice(&std::fs::read(dir.join("q.bin")).unwrap()).to_vec();
            gpu = (out[..n].to_vec(), out[n..].to_vec());
            assert_eq!(
                bytes_of(&gpu.0),
                bytes_of(&p),
                "{opt:?} step {t}: parameters"
            );
            assert_eq!(
                bytes_of(&gpu.1),
                bytes_of(&state),
                "{opt:?} step {t}: state"
            );
        }
    }
}
