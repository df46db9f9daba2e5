//! ReLU's 1-bit masks on the GPU (the twins of `dropit_simd::mask`).

use std::format;

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{Gpu, launched, per_item};
use crate::error::{Error, Result};

impl Gpu {
    /// Sets bit `i` of `bits` when `x[i] > 0` (NaN and ±0 give 0); bits past the end are 0.
    pub fn positive_mask(&self, x: &CudaSlice<f32>, bits: &mut CudaSlice<u64>) -> Result<()> {
        let (n, words) = (x.len(), x.len().div_ceil(64));
        if bits.len() < words {
            return Err(Error::Gpu(format!(
                "mask: {words} words for {n} elements, {} given",
                bits.len()
            )));
        }
        let f = self.kernel("positive_mask")?;
        let (n64, w64) = (n as u64, words as u64);
        let mut b = self.stream.launch_builder(&f);
        b.arg(x).arg(&n64).arg(bits).arg(&w64);
        // SAFETY: x has n floats and bits at least ⌈n/64⌉ words (checked above); each thread
        // reads its word's elements and writes that word.
        launched(
            "positive_mask",
            unsafe { b.launch(per_item(words)) }.map(|_| ()),
        )
    }

    /// `dx[i] = dy[i]` where bit `i` is set, else 0 (ReLU backward).
    pub fn apply_mask(
        &self,
        dy: &CudaSlice<f32>,
        bits: &CudaSlice<u64>,
        dx: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = dy.len();
        if bits.len() < n.div_ceil(64) || dx.len() != n {
            return Err(Error::Gpu(format!(
                "apply mask: {n} gradients, {} mask words, {} outputs",
                bits.len(),
                dx.len()
            )));
        }
        let f = self.kernel("apply_mask")?;
        let n64 = n as u64;
        let mut b = self.stream.launch_builder(&f);
        b.arg(dy).arg(bits).arg(dx).arg(&n64).arg(&0i32);
        // SAFETY: dy and dx have n floats and bits ⌈n/64⌉ words (checked above); thread e
        // touches element e only.
        launched("apply_mask", unsafe { b.launch(per_item(n)) }.map(|_| ()))
    }
}
