use crate::collections::{Message, msg};

/// Everything the trainer can refuse, each naming what was wrong.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// A tensor or buffer of the wrong shape or length.
    #[error("{layer}: expected {expected}, given {given}")]
    Shape {
        /// The layer (or entry point) that refused it.
        layer: Message,
        /// What it expected.
        expected: Message,
        /// What it was given.
        given: Message,
    },
    /// A configuration that cannot work.
    #[error("{what}: {detail}")]
    Config {
        /// The setting.
        what: Message,
        /// Why it cannot work.
        detail: Message,
    },
    /// A label outside `0..classes`.
    #[error("label {label} of sample {index} is not below the {classes} classes")]
    Label {
        /// Sample index in the batch.
        index: usize,
        /// The label given.
        label: u32,
        /// Classes of the model.
        classes: usize,
    },
    /// A batch of the wrong size.
    #[error("batch of {given} samples: must be between 1 and the planned {planned}")]
    Batch {
        /// Samples given.
        given: usize,
        /// Batch size the trainer was planned for.
        planned: usize,
    },
    /// A caller-provided arena too small for the plan.
    #[error("arena: the plan needs {needed} bytes, {given} given")]
    ArenaTooSmall {
        /// Bytes the plan needs (after aligning the start to 8 bytes).
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// No plan on the DropIT grid fits the RAM budget.
    #[error("RAM budget: the smallest plan needs {needed} bytes")]
    BudgetTooSmall {
        /// Bytes of the smallest plan (arena plus bookkeeping).
        needed: usize,
    },
    /// A dataset file that cannot be read as what it claims to be.
    #[error("{file}: {detail}")]
    Data {
        /// The file.
        file: Message,
        /// What was wrong.
        detail: Message,
    },
    /// A checkpoint that cannot be loaded (or saved) as it is: names the tensor or field.
    #[error("checkpoint {what}: {detail}")]
    Checkpoint {
        /// The tensor, metadata field or part of the file.
        what: Message,
        /// What was wrong.
        detail: Message,
    },
    /// An allocation the operating system refused (or a size that does not fit in memory at
    /// all: `bytes` is then `usize::MAX`). Nothing was changed.
    #[error("out of memory: {bytes} bytes could not be allocated")]
    OutOfMemory {
        /// Bytes asked for.
        bytes: usize,
    },
    /// A fixed-capacity collection of a build without `alloc` is full (see
    /// [`crate::collections`]).
    #[error("{what}: more than the {capacity} a build without alloc holds")]
    Capacity {
        /// What is counted.
        what: &'static str,
        /// The capacity.
        capacity: usize,
    },
    /// A kernel refused its arguments (a bug in the planner if it happens inside a step).
    #[error("kernel: {0}")]
    Kernel(#[from] dropit_simd::Error),
    /// The device path cannot run, or a device call failed: what, and the device's reason.
    #[cfg(feature = "std")]
    #[error("GPU: {0}")]
    Gpu(std::string::String),
}

/// Result of a trainer call.
pub type Result<T> = core::result::Result<T, Error>;

/// `Err(Error::Shape)` for `layer`.
pub(crate) fn shape_err<T>(
    layer: &str,
    expected: impl core::fmt::Display,
    given: impl core::fmt::Display,
) -> Result<T> {
    Err(Error::Shape {
        layer: msg!("{layer}"),
        expected: msg!("{expected}"),
        given: msg!("{given}"),
    })
}

/// `Err(Error::Config)`.
pub(crate) fn config_err<T>(what: &str, detail: impl core::fmt::Display) -> Result<T> {
    Err(Error::Config {
        what: msg!("{what}"),
        detail: msg!("{detail}"),
    })
}

/// `Err(Error::Checkpoint)`.
#[cfg(feature = "alloc")]
pub(crate) fn ckpt_err<T>(what: &str, detail: impl core::fmt::Display) -> Result<T> {
    Err(Error::Checkpoint {
        what: msg!("{what}"),
        detail: msg!("{detail}"),
    })
}

#[cfg(feature = "alloc")]
/// `Err(Error::OutOfMemory)` for `count` elements of `T` (`usize::MAX` bytes when the size
/// itself overflows).
pub(crate) fn oom<T, R>(count: usize) -> Result<R> {
    Err(Error::OutOfMemory {
        bytes: count.saturating_mul(core::mem::size_of::<T>()),
    })
}

#[cfg(feature = "alloc")]
/// A vector of `len` copies of `v`, or `Err(OutOfMemory)` instead of aborting.
pub(crate) fn try_vec<T: Clone>(len: usize, v: T) -> Result<alloc::vec::Vec<T>> {
    let mut out = alloc::vec::Vec::new();
    if out.try_reserve_exact(len).is_err() {
        return oom::<T, _>(len);
    }
    out.resize(len, v);
    Ok(out)
}

#[cfg(feature = "alloc")]
/// Room for `extra` more elements in `v`, or `Err(OutOfMemory)` instead of aborting.
pub(crate) fn try_reserve<T>(v: &mut alloc::vec::Vec<T>, extra: usize) -> Result<()> {
    v.try_reserve_exact(extra).or_else(|_| oom::<T, _>(extra))
}
