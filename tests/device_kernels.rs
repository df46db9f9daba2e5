//! The device kernels' logic, checked on any machine: `src/cuda/kernels/` compiled with the
//! host's C++ compiler against an emulation of CUDA's thread model (tests/device_common),
//! launched by the same sequences as on a GPU (`dropit::device::ops`), must give the CPU's
//! thresholds, packed bytes (bitmap or u32 × f32 or bf16), dense tensors and ReLU masks exactly
//! — for ties, ±0, NaN, ±∞, lengths around a 64-element word, and k from none to all — and the
//! optimizers' updates bitwise the CPU's. Needs no GPU and no CUDA; without a C++20 compiler it
//! prints one SKIP line. (`tests/cuda.rs` runs the same checks on a GPU.)
mod common;
mod device_common;

use device_common::{checks, emulated};

#[test]
fn kernels_under_emulation_match_the_cpu() {
    let Some(mut b) = emulated::backend() else {
        return;
    };
    let cases = checks::kernels(&mut b, &[1, 63, 64, 65, 1000]);
    println!("{cases} packing cases under emulation, all identical to the CPU");
    checks::wrong_sizes(&mut b);
}
