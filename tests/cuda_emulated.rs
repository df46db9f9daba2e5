//! The GPU kernels' logic, checked on any machine: `src/cuda/kernels.cu` compiled with the
//! host's C++ compiler against an emulation of CUDA's thread model (`tests/cuda_emu/`) and
//! launched as the GPU path launches them must give the CPU's packed bytes (bitmap or u32 ×
//! f32 or bf16), dense tensors and ReLU masks exactly — for ties, ±0, NaN, ±∞, lengths around
//! a 64-element word, and k from none to all. Needs no GPU and no CUDA; without a C++20
//! compiler it prints one SKIP line. (`tests/cuda.rs` runs the same comparisons on a GPU.)
mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::selection_tensors;
use dropit_simd::format::{Format, Packed, PackedMut, PosForm, ValueType};
use dropit_simd::{mask, pack, select};

/// The emulated driver, built into `dir`; why not where no compiler builds it.
fn build(dir: &Path) -> Result<PathBuf, String> {
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
    let out = dir.join("driver");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/cuda_emu/driver.cpp");
    let status = Command::new(&cxx)
        .args(["-std=c++20", "-O1", "-pthread", "-w"])
        .arg(&src)
        .arg("-o")
        .arg(&out)
        .status()
        .map_err(|e| format!("no C++ compiler ({cxx}: {e})"))?;
    match status.success() {
        true => Ok(out),
        false => Err(format!(
            "{cxx} could not build the emulation (C++20 needed)"
        )),
    }
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
    let _ = std::fs::remove_dir_all(&dir);
}
