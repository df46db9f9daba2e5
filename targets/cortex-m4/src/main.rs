//! Firmware for qemu's mps2-an386 (Cortex-M4F): fine-tunes the last block and head of a small
//! pre-trained CNN on bundled samples in a static arena, with no allocator, and reports over
//! semihosting: accuracy before and after, the arena plan, static RAM, the stack's high-water
//! mark and instructions per training step. Exits 0 when accuracy improved.
#![cfg_attr(target_os = "none", no_std, no_main)]

#[cfg(target_os = "none")]
mod firmware;

/// On the desktop the fine-tuning runs through `cargo test` (`tests/host.rs`).
#[cfg(not(target_os = "none"))]
fn main() {
    println!("build for thumbv7em-none-eabihf (the default here) and run under qemu-system-arm");
}
