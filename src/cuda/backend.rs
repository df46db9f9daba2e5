//! The GPU as a [`Backend`] of the device trainer: one device allocation, the kernels of
//! `kernels/` launched by name, products through cuBLAS.

use std::format;
use std::vec::Vec;

use cudarc::cublas::sys::cublasOperation_t;
use cudarc::driver::{DevicePtr, LaunchConfig, PushKernelArg};

use super::{BLOCK, Gpu, gpu_err, launched, per_item};
use crate::device::{Arg, Backend, Gemm, Grid};
use crate::error::{Error, Result};

impl Gpu {
    /// The allocation's bytes `at..at + len`, or an error saying they are outside it.
    fn span(&self, at: usize, len: usize) -> Result<core::ops::Range<usize>> {
        let size = Backend::len(self);
        match at.checked_add(len) {
            Some(end) if end <= size => Ok(at..end),
            _ => Err(Error::Gpu(format!(
                "{len} bytes at {at} of a device allocation of {size}"
            ))),
        }
    }

    fn block_mut(&mut self) -> Result<&mut cudarc::driver::CudaSlice<u8>> {
        self.block
            .as_mut()
            .ok_or_else(|| Error::Gpu("no device allocation yet".into()))
    }
}

/// A value argument as the kernel takes it.
enum Value {
    U64(u64),
    I32(i32),
    F32(f32),
}

impl Backend for Gpu {
    fn allocate(&mut self, bytes: usize) -> Result<()> {
        self.block = None;
        self.block = Some(
            self.stream
                .alloc_zeros::<u8>(bytes.max(8))
                .map_err(|e| Error::Gpu(format!("allocating {bytes} bytes on the device: {e}")))?,
        );
        Ok(())
    }

    fn base(&self) -> u64 {
        self.block
            .as_ref()
            .map_or(0, |b| b.device_ptr(&self.stream).0)
    }

    fn len(&self) -> usize {
        self.block.as_ref().map_or(0, |b| b.len())
    }

    fn write(&mut self, at: usize, bytes: &[u8]) -> Result<()> {
        let r = self.span(at, bytes.len())?;
        let stream = self.stream.clone();
        let mut dst = self.block_mut()?.slice_mut(r);
        stream
            .memcpy_htod(bytes, &mut dst)
            .map_err(gpu_err("copying to the device"))
    }

    fn read(&self, at: usize, out: &mut [u8]) -> Result<()> {
        let r = self.span(at, out.len())?;
        let block = self
            .block
            .as_ref()
            .ok_or_else(|| Error::Gpu("no device allocation yet".into()))?;
        self.stream
            .memcpy_dtoh(&block.slice(r), out)
            .map_err(gpu_err("copying from the device"))?;
        self.synchronize()
    }

    fn zero(&mut self, at: usize, len: usize) -> Result<()> {
        let r = self.span(at, len)?;
        let stream = self.stream.clone();
        let mut dst = self.block_mut()?.slice_mut(r);
        stream
            .memset_zeros(&mut dst)
            .map_err(gpu_err("clearing device memory"))
    }

    unsafe fn launch(&mut self, name: &str, grid: Grid, args: &[Arg]) -> Result<()> {
        let cfg = match grid {
            Grid::Items(n) => per_item(n),
            Grid::Strided(n) => LaunchConfig {
                grid_dim: (n.div_ceil(BLOCK as usize).clamp(1, 1024) as u32, 1, 1),
                block_dim: (BLOCK, 1, 1),
                shared_mem_bytes: 0,
            },
            Grid::OneBlock => LaunchConfig {
                grid_dim: (1, 1, 1),
                block_dim: (1024, 1, 1),
                shared_mem_bytes: 0,
            },
        };
        let f = self.kernel(name)?;
        let values: Vec<Value> = args
            .iter()
            .map(|a| match *a {
                Arg::Ptr(p) | Arg::U64(p) => Value::U64(p),
                Arg::I32(v) => Value::I32(v),
                Arg::F32(v) => Value::F32(v),
            })
            .collect();
        let mut b = self.stream.launch_builder(&f);
        for v in &values {
            match v {
                Value::U64(v) => b.arg(v),
                Value::I32(v) => b.arg(v),
                Value::F32(v) => b.arg(v),
            };
        }
        // SAFETY: the caller's contract: the arguments are the kernel's parameters in order
        // (an address is passed as the 64-bit value a pointer parameter takes), and every
        // address lies in the allocation with room for what the kernel touches.
        launched(name, unsafe { b.launch(cfg) }.map(|_| ()))
    }

    unsafe fn gemm(&mut self, g: &Gemm) -> Result<()> {
        let blas = self
            .blas
            .as_ref()
            .ok_or_else(|| Error::Gpu("no cuBLAS library (libcublas) on this machine".into()))?;
        let int = |v: usize| {
            i32::try_from(v).map_err(|_| Error::Gpu(format!("gemm: {v} is past cuBLAS's int")))
        };
        let op = |t: bool| match t {
            true => cublasOperation_t::CUBLAS_OP_T,
            false => cublasOperation_t::CUBLAS_OP_N,
        };
        let (alpha, beta) = (g.alpha, g.beta);
        let stride = |v: usize| {
            i64::try_from(v).map_err(|_| Error::Gpu(format!("gemm: stride {v} is too large")))
        };
        let [sa, sb, sc] = g.strides;
        // SAFETY: the caller's contract (every matrix of every product inside the allocation
        // under its leading dimension and strides); the handle is this stream's.
        unsafe {
            cudarc::cublas::result::sgemm_strided_batched(
                *blas.handle(),
                op(g.trans_a),
                op(g.trans_b),
                int(g.m)?,
                int(g.n)?,
                int(g.k)?,
                &alpha,
                g.a.0 as *const f32,
                int(g.a.1.max(1))?,
                stride(sa)?,
                g.b.0 as *const f32,
                int(g.b.1.max(1))?,
                stride(sb)?,
                &beta,
                g.c.0 as *mut f32,
                int(g.c.1.max(1))?,
                stride(sc)?,
                int(g.batch)?,
            )
        }
        .map_err(|e| Error::Gpu(format!("cuBLAS sgemm: {e}")))
    }

    fn synchronize(&self) -> Result<()> {
        Gpu::synchronize(self)
    }
}
