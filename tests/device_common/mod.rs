//! What the device tests share: a backend that runs the device kernels on the host
//! ([`emulated`]), and checks that hold on any backend ([`checks`]) — on the emulated one in
//! `tests/device.rs` and `tests/device_kernels.rs`, on a GPU in `tests/cuda.rs`.
#![allow(dead_code)]

pub mod checks;
pub mod emulated;
