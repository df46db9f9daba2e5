//! Exact top-k by magnitude on the GPU: a radix select over the 31 key bits, 8 bits a pass.

use std::format;

use cudarc::driver::{CudaSlice, LaunchConfig, PushKernelArg};

use super::{Gpu, gpu_err, launched};
use crate::error::{Error, Result};

/// Which elements a selection keeps: keys above [`GpuThreshold::key`], and of the keys equal
/// to it the first [`GpuThreshold::ties`] in index order — the same elements as the CPU's
/// `dropit_simd::select::Threshold` for the same tensor and k (its key may name a lower bin
/// edge where the whole tie class is kept; the kept elements are the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuThreshold {
    key: i32,
    above: usize,
    ties: usize,
}

impl GpuThreshold {
    /// The threshold key (−1 when every element is kept, `i32::MAX` with no ties when none is).
    pub fn key(&self) -> i32 {
        self.key
    }

    /// How many keys lie above [`GpuThreshold::key`].
    pub fn above(&self) -> usize {
        self.above
    }

    /// How many keys equal to [`GpuThreshold::key`] are kept, first in index order.
    pub fn ties(&self) -> usize {
        self.ties
    }

    /// How many elements are kept.
    pub fn kept(&self) -> usize {
        self.above + self.ties
    }
}

impl Gpu {
    /// The threshold that keeps the `k` largest-magnitude elements of `x` (`k ≤ x.len()`):
    /// four histogram passes over the elements still in the running (the first over all),
    /// each fixing 8 more bits of the k-th largest key.
    pub fn topk_threshold(&self, x: &CudaSlice<f32>, k: usize) -> Result<GpuThreshold> {
        let n = x.len();
        if k > n {
            return Err(Error::Gpu(format!(
                "top-k: k = {k} of a tensor of {n} elements"
            )));
        }
        if k == 0 {
            return Ok(GpuThreshold {
                key: i32::MAX,
                above: 0,
                ties: 0,
            });
        }
        if k == n {
            return Ok(GpuThreshold {
                key: -1,
                above: n,
                ties: 0,
            });
        }
        let f = self.kernel("radix_hist")?;
        let mut hist = self.zeros::<u32>(256)?;
        let cfg = LaunchConfig {
            grid_dim: (
                n.div_ceil(super::BLOCK as usize).clamp(1, 1024) as u32,
                1,
                1,
            ),
            block_dim: (super::BLOCK, 1, 1),
            shared_mem_bytes: 0,
        };
        let (mut prefix, mut above, mut need) = (0i32, 0usize, k);
        let n64 = n as u64;
        for shift in [24i32, 16, 8, 0] {
            self.stream
                .memset_zeros(&mut hist)
                .map_err(gpu_err("clearing the histogram"))?;
            let mut b = self.stream.launch_builder(&f);
            b.arg(x).arg(&n64).arg(&shift).arg(&prefix).arg(&mut hist);
            // SAFETY: the arguments match `radix_hist`'s parameters (x: n floats, hist: 256
            // counts); it reads x[..n] and adds into hist[..256] only.
            launched("radix_hist", unsafe { b.launch(cfg) }.map(|_| ()))?;
            let h = self.download(&hist)?;
            // The digit of the k-th largest key: counts from the top down.
            let mut d = 255usize;
            while (h[d] as usize) < need {
                need -= h[d] as usize;
                above += h[d] as usize;
                if d == 0 {
                    return Err(Error::Gpu("top-k: histogram counts short of k".into()));
                }
                d -= 1;
            }
            prefix = (prefix << 8) | d as i32;
        }
        Ok(GpuThreshold {
            key: prefix,
            above,
            ties: need,
        })
    }
}
