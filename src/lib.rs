//! dropit: memory-efficient neural-network training for small machines.
//!
//! The kernels live in [`kernels`] (the `dropit-simd` crate); the trainer builds on them.
#![no_std]
#![warn(missing_docs)]

pub use dropit_simd as kernels;
