//! The kernels under `dropit`: `no_std`, allocation-free, every buffer supplied by the caller.
//!
//! - [`select`]: exact top-k by magnitude (a streaming radix select over the bit patterns of |x|).
//! - [`format`]: the sparse storage formats and their byte sizes, known before any data exists.
//! - [`pack`]: keep/drop compaction into a format, and scatter back to dense.
//! - [`spmm`]: weight gradients of Linear, NHWC Conv2d and depthwise Conv2d straight from the
//!   packed input.
//! - [`depthwise`]: NHWC depthwise Conv2d (groups = channels): forward, input and weight gradients.
//! - [`mask`]: 1-bit masks (ReLU forward/backward).
//! - [`act`]: exp, GELU and its derivative, eight lanes at a time.
//! - [`reduce`]: the sum of squares of a buffer (the gradient norm), 32 lanes in f64.
//! - [`gemm`]: dense blocked GEMM with layouts as strides; packs into caller scratch (allocates
//!   nothing), with AVX2 and AVX-512 micro-kernels chosen at run time.
//! - [`reference`](mod@reference): a plain scalar twin of every kernel; the tests compare against it.
//!
//! ```
//! use dropit_simd::{format::{Format, PackedMut, ValueType}, pack, select};
//!
//! let x = [0.5f32, -3.0, 0.0, 2.0, -0.25, 1.0];
//! let k = 2;
//! let t = select::topk_threshold(&x, k).unwrap();
//! let fmt = Format::smallest(x.len(), k, ValueType::F32);
//! let mut buf = vec![0u64; fmt.bytes(x.len(), k).div_ceil(8)];
//! let mut packed = PackedMut::from_bytes(fmt, x.len(), k, bytemuck::cast_slice_mut(&mut buf)).unwrap();
//! pack::pack(&x, &t, &mut packed).unwrap();
//! let mut dense = [9.0f32; 6];
//! pack::unpack(&packed.as_packed(), &mut dense).unwrap();
//! assert_eq!(dense, [0.0, -3.0, 0.0, 2.0, 0.0, 0.0]);
//! ```
#![no_std]
#![warn(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod act;
pub mod conv;
pub mod depthwise;
mod error;
pub mod format;
pub mod gemm;
mod isa;
pub mod mask;
pub mod norm;
pub mod pack;
pub mod reduce;
pub mod reference;
pub mod select;
pub mod spmm;

pub use error::Error;

/// Result of a kernel call.
pub type Result<T> = core::result::Result<T, Error>;

/// Returns `Err(Error::Length)` unless `given` is the product of `dims` (an overflowing product
/// is `expected: usize::MAX`, never a wrapped size).
#[inline]
pub(crate) fn check_dims(what: &'static str, dims: &[usize], given: usize) -> Result<()> {
    let product = match dims.contains(&0) {
        true => Some(0),
        false => dims.iter().try_fold(1usize, |a, &d| a.checked_mul(d)),
    };
    match product {
        Some(expected) => check_len(what, expected, given),
        None => Err(Error::Length {
            what,
            expected: usize::MAX,
            given,
        }),
    }
}

/// Returns `Err(Error::Length)` unless `given == expected`.
#[inline]
pub(crate) fn check_len(what: &'static str, expected: usize, given: usize) -> Result<()> {
    if expected == given {
        Ok(())
    } else {
        Err(Error::Length {
            what,
            expected,
            given,
        })
    }
}
