//! dropit: train neural networks on small machines in a fraction of the usual memory.
//!
//! A [`Model`] is layers wired into a graph; a [`Trainer`] plans every buffer once — parameters,
//! gradients, optimizer state, what each layer saves for backward, activations, scratch — into
//! one arena, then trains with steps that allocate nothing.
//!
//! ```
//! use dropit::{Model, Trainer, TrainerConfig};
//!
//! let mut t = Trainer::new(Model::mlp()?, TrainerConfig::sgd_recipe(4, 100))?;
//! let x = vec![0.5f32; 4 * 28 * 28];
//! let labels = [0u32, 1, 2, 3];
//! let first = t.step(&x, &labels)?.loss;
//! for _ in 0..20 {
//!     t.step(&x, &labels)?;
//! }
//! assert!(t.step(&x, &labels)?.loss < first);
//! println!("{}", t.memory_report());
//! # Ok::<(), dropit::Error>(())
//! ```
#![no_std]
#![warn(missing_docs)]
// Without a heap, errors carry their text inline (fixed capacity): larger than clippy's default.
#![cfg_attr(not(feature = "alloc"), allow(clippy::result_large_err))]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod arena;
#[cfg(feature = "alloc")]
pub mod checkpoint;
pub mod collections;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "std")]
pub mod data;
#[cfg(feature = "std")]
pub mod device;
mod dropit;
mod error;
mod init;
pub mod layers;
#[cfg(feature = "std")]
pub mod memory;
pub mod model;
pub mod optim;
mod plan;
mod rebuild;
mod report;
pub mod saved;
mod shape;
mod trainer;
mod weights_file;

pub use dropit::{DropIt, LayerRef};
pub use dropit_simd as kernels;
pub use dropit_simd::format::{PosForm, ValueType};
pub use error::{Error, Result};
pub use model::{Model, ModelBuilder, TensorId, VitConfig};
pub use optim::{Decay, Optimizer, Schedule};
pub use report::{LayerMemory, MemoryReport};
pub use saved::{GradPath, InputSave, Positions, Scope, SparseSave};
pub use shape::Shape;
pub use trainer::{EvalStats, StepStats, Trainer, TrainerConfig};
#[cfg(feature = "ndarray")]
pub mod array;
