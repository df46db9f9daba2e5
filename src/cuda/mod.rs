//! The GPU path (feature `cuda`): [`Gpu`] is a [`Backend`](crate::device::Backend) of the
//! device trainer ([`DeviceTrainer`](crate::device::DeviceTrainer)) and of DropIT's device
//! kernels ([`crate::device::ops`]) — one allocation, the kernels launched by name, dense
//! products through cuBLAS.
//!
//! The kernels are CUDA C in this crate (`src/cuda/kernels/`), compiled once per process with
//! NVRTC when the first [`Gpu`] is made, without contracting a multiply and an add and with
//! IEEE division and square root (so the optimizers' updates are bitwise the CPU's). CUDA's
//! libraries are loaded at run time, so the feature builds without a CUDA toolkit or driver;
//! [`available`] says whether this machine can run it, without touching anything that would
//! fail (loading a missing library aborts).
//!
//! ```no_run
//! use dropit::device::DeviceTrainer;
//! use dropit::{Model, TrainerConfig};
//!
//! let gpu = dropit::cuda::Gpu::new(0)?;
//! let mut t = DeviceTrainer::new(gpu, Model::mlp()?, TrainerConfig::sgd_recipe(128, 1000))?;
//! let (x, y) = (vec![0.1f32; 128 * 784], vec![3u32; 128]);
//! let stats = t.step(&x, &y)?;
//! println!("loss {}", stats.loss);
//! # Ok::<(), dropit::Error>(())
//! ```

mod backend;

use std::format;
use std::string::{String, ToString};
use std::sync::{Arc, OnceLock};

use cudarc::driver::LaunchConfig;
use cudarc::driver::{CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream};
use cudarc::nvrtc::Ptx;

use crate::error::{Error, Result};

/// The kernels' source: what they share, then each file.
const SOURCE: &str = concat!(
    include_str!("kernels/common.cuh"),
    include_str!("kernels/dropit.cu"),
    include_str!("kernels/step.cu"),
    include_str!("kernels/norm.cu"),
    include_str!("kernels/conv.cu"),
    include_str!("kernels/layers.cu"),
);

/// Threads per block of the kernels that take one thread per word or element.
const BLOCK: u32 = 256;

/// Whether this machine can run the GPU path: `Ok`, or what is missing (the CUDA driver
/// library, NVRTC, a device). Never panics, and loads nothing that could abort the process.
pub fn available() -> core::result::Result<(), String> {
    // SAFETY: only tries to open the shared libraries (dlopen), which has no precondition.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        return Err("no CUDA driver library (libcuda) on this machine".into());
    }
    // SAFETY: as above.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        return Err("no NVRTC library (libnvrtc), needed to compile the kernels".into());
    }
    match CudaContext::device_count() {
        Ok(n) if n > 0 => Ok(()),
        Ok(_) => Err("the CUDA driver reports no device".into()),
        Err(e) => Err(format!("the CUDA driver did not start: {e}")),
    }
}

/// An error from CUDA as [`Error::Gpu`].
fn gpu_err(what: &str) -> impl Fn(cudarc::driver::DriverError) -> Error + '_ {
    move |e| Error::Gpu(format!("{what}: {e}"))
}

/// The kernels compiled to PTX, once per process (NVRTC's message if that failed).
fn ptx() -> Result<Ptx> {
    static PTX: OnceLock<core::result::Result<Ptx, String>> = OnceLock::new();
    // No contraction of a multiply and an add, IEEE division and square root, no flushing of
    // subnormals: each operation rounds as on the CPU (the optimizers are bitwise its).
    let opts = || cudarc::nvrtc::CompileOptions {
        fmad: Some(false),
        prec_div: Some(true),
        prec_sqrt: Some(true),
        ftz: Some(false),
        ..Default::default()
    };
    PTX.get_or_init(|| {
        cudarc::nvrtc::compile_ptx_with_opts(SOURCE, opts()).map_err(|e| e.to_string())
    })
    .clone()
    .map_err(|e| Error::Gpu(format!("compiling the kernels with NVRTC: {e}")))
}

/// One GPU: its context, a stream, the compiled kernels and cuBLAS (where its library is).
pub struct Gpu {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    module: Arc<CudaModule>,
    blas: Option<cudarc::cublas::CudaBlas>,
    /// The device trainer's one allocation (as a [`crate::device::Backend`]).
    block: Option<CudaSlice<u8>>,
}

impl core::fmt::Debug for Gpu {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Gpu")
            .field("ordinal", &self.ctx.ordinal())
            .finish()
    }
}

impl Gpu {
    /// The GPU of this ordinal, with the kernels loaded; [`Error::Gpu`] saying what is missing
    /// where [`available`] is not `Ok`.
    pub fn new(ordinal: usize) -> Result<Gpu> {
        available().map_err(Error::Gpu)?;
        let ctx = CudaContext::new(ordinal).map_err(gpu_err("opening the device"))?;
        let stream = ctx.default_stream();
        let module = ctx
            .load_module(ptx()?)
            .map_err(gpu_err("loading the kernels"))?;
        // SAFETY: only tries to open the shared library.
        let blas = match unsafe { cudarc::cublas::sys::is_culib_present() } {
            true => Some(
                cudarc::cublas::CudaBlas::new(stream.clone())
                    .map_err(|e| Error::Gpu(format!("starting cuBLAS: {e}")))?,
            ),
            false => None,
        };
        Ok(Gpu {
            ctx,
            stream,
            module,
            blas,
            block: None,
        })
    }

    /// The device's name, as the driver gives it.
    pub fn name(&self) -> Result<String> {
        self.ctx.name().map_err(gpu_err("the device's name"))
    }

    /// The stream every call runs on (in order).
    pub fn stream(&self) -> &Arc<CudaStream> {
        &self.stream
    }

    /// Waits until everything queued has run.
    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(gpu_err("synchronizing"))
    }

    /// A kernel of `kernels/`.
    fn kernel(&self, name: &str) -> Result<CudaFunction> {
        self.module
            .load_function(name)
            .map_err(|e| Error::Gpu(format!("kernel {name}: {e}")))
    }
}

/// One thread per item of `n`, [`BLOCK`] a block.
fn per_item(n: usize) -> LaunchConfig {
    LaunchConfig {
        grid_dim: ((n.div_ceil(BLOCK as usize)).max(1) as u32, 1, 1),
        block_dim: (BLOCK, 1, 1),
        shared_mem_bytes: 0,
    }
}

/// A launch's error as [`Error::Gpu`].
fn launched(name: &str, r: core::result::Result<(), cudarc::driver::DriverError>) -> Result<()> {
    r.map_err(|e| Error::Gpu(format!("launching {name}: {e}")))
}
