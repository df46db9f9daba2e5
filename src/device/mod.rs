//! Training on an accelerator: [`DeviceTrainer`] runs a step as launches of the kernels in
//! `src/cuda/kernels/` and dense products, on any [`Backend`] — a CUDA GPU
//! (`dropit::cuda::Gpu`, feature `cuda`), or anything else that runs those kernels.
//!
//! The trainer plans the step as the CPU [`Trainer`](crate::Trainer) does (the same planner and
//! the same declarations) and asks the backend for one allocation of the plan's size plus the
//! few buffers only the device needs (histograms and per-word counts of the top-k select); every
//! tensor, saved context and packed copy is an offset into it.

mod any;
mod layers;
pub mod ops;
mod trainer;

pub use any::{AnyTrainer, Device};
pub use trainer::DeviceTrainer;

use crate::error::Result;

/// A kernel argument: an address in device memory (from [`Backend::base`]), or a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    /// A device address.
    Ptr(u64),
    /// An unsigned 64-bit count or length.
    U64(u64),
    /// A 32-bit int (a flag, a key, a shift).
    I32(i32),
    /// A float.
    F32(f32),
}

/// How a kernel spreads over threads; the backend chooses the block and grid sizes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Grid {
    /// At least one thread per item of this many (threads past the end return at once).
    Items(usize),
    /// At most 1024 blocks of at most 1024 threads, each thread striding over this many
    /// items; the kernel synchronizes its block's threads (`__syncthreads`).
    Strided(usize),
    /// One block of up to 1024 threads, which it synchronizes.
    OneBlock,
}

/// A dense product `C = α·op(A)·op(B) + β·C` with matrices in column-major order, as cuBLAS's
/// `sgemm` takes them, addresses in device memory; or `batch` such products, matrix `i` of each
/// operand `i` strides (in floats) after the first (`sgemmStridedBatched`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gemm {
    /// `op(A) = Aᵀ`.
    pub trans_a: bool,
    /// `op(B) = Bᵀ`.
    pub trans_b: bool,
    /// Rows of C and of op(A).
    pub m: usize,
    /// Columns of C and of op(B).
    pub n: usize,
    /// Columns of op(A), rows of op(B).
    pub k: usize,
    /// α.
    pub alpha: f32,
    /// A and its leading dimension.
    pub a: (u64, usize),
    /// B and its leading dimension.
    pub b: (u64, usize),
    /// β.
    pub beta: f32,
    /// C and its leading dimension.
    pub c: (u64, usize),
    /// Products (1: one).
    pub batch: usize,
    /// Floats from one product's A, B and C to the next's.
    pub strides: [usize; 3],
}

/// What [`DeviceTrainer`] needs of a device: one block of memory, copies in and out of it,
/// launches of the kernels of `src/cuda/kernels/` by name, and dense products.
pub trait Backend {
    /// Makes the one block of `bytes` bytes (zeroed, 8-byte aligned) that everything lives in,
    /// replacing any earlier one; an error (not an abort) where the device has no room.
    fn allocate(&mut self, bytes: usize) -> Result<()>;

    /// The device address of the block's first byte.
    fn base(&self) -> u64;

    /// Bytes of the block (0 before [`Backend::allocate`]).
    fn len(&self) -> usize;

    /// Whether there is no block yet, or an empty one.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Copies `bytes` into the block at byte offset `at`.
    fn write(&mut self, at: usize, bytes: &[u8]) -> Result<()>;

    /// Copies `out.len()` bytes of the block from byte offset `at` (after everything queued).
    fn read(&self, at: usize, out: &mut [u8]) -> Result<()>;

    /// Zeroes `len` bytes of the block from byte offset `at`.
    fn zero(&mut self, at: usize, len: usize) -> Result<()>;

    /// Runs kernel `name` of `kernels/` over `grid` with these arguments.
    ///
    /// # Safety
    /// The arguments must be the kernel's parameters, in order and of their types, and every
    /// address must lie in the block with room for all the kernel reads and writes there.
    unsafe fn launch(&mut self, name: &str, grid: Grid, args: &[Arg]) -> Result<()>;

    /// A dense product.
    ///
    /// # Safety
    /// Every matrix, under its leading dimension, must lie inside the block.
    unsafe fn gemm(&mut self, g: &Gemm) -> Result<()>;

    /// Waits until everything queued has run.
    fn synchronize(&self) -> Result<()>;
}
