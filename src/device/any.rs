//! The device option: [`Device`] says where to train, [`AnyTrainer`] trains there.

use std::vec::Vec;

#[cfg(feature = "cuda")]
use super::DeviceTrainer;
use crate::error::{Error, Result, config_err};
use crate::model::Model;
use crate::report::MemoryReport;
use crate::trainer::{EvalStats, StepStats, Trainer, TrainerConfig};

/// Where a model trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Device {
    /// This machine's CPU (the [`Trainer`]).
    #[default]
    Cpu,
    /// The NVIDIA GPU of this ordinal ([`DeviceTrainer`](super::DeviceTrainer) on
    /// `dropit::cuda::Gpu`; needs the `cuda` feature).
    Cuda(usize),
}

impl core::fmt::Display for Device {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(i) => write!(f, "cuda:{i}"),
        }
    }
}

impl core::str::FromStr for Device {
    type Err = Error;

    /// `cpu`, `cuda` (GPU 0) or `cuda:N`.
    fn from_str(s: &str) -> Result<Device> {
        match s {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => match s.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(i) => Ok(Device::Cuda(i)),
                None => config_err("device", format_args!("{s:?} is not cpu, cuda or cuda:N")),
            },
        }
    }
}

/// A trainer on a [`Device`]: the CPU's [`Trainer`] or the GPU's
/// [`DeviceTrainer`](super::DeviceTrainer), behind one set of calls. Without the `cuda`
/// feature, or without a usable GPU, [`Device::Cuda`] is an [`Error::Gpu`] that says why.
///
/// ```
/// use dropit::device::{AnyTrainer, Device};
/// use dropit::{Model, TrainerConfig};
///
/// let mut t = AnyTrainer::new(Device::Cpu, Model::mlp()?, TrainerConfig::sgd_recipe(4, 10))?;
/// let (x, y) = (vec![0.1f32; 4 * 784], [1u32, 2, 3, 4]);
/// let loss = t.step(&x, &y)?.loss;
/// assert!(loss.is_finite());
/// # Ok::<(), dropit::Error>(())
/// ```
// One per training run: the variants' sizes (a few hundred bytes of plan tables) do not matter.
#[allow(clippy::large_enum_variant)]
pub enum AnyTrainer {
    /// On the CPU.
    Cpu(Trainer<'static>),
    /// On an NVIDIA GPU.
    #[cfg(feature = "cuda")]
    Cuda(DeviceTrainer<crate::cuda::Gpu>),
}

impl core::fmt::Debug for AnyTrainer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            AnyTrainer::Cpu(_) => f.write_str("AnyTrainer::Cpu"),
            #[cfg(feature = "cuda")]
            AnyTrainer::Cuda(d) => write!(f, "AnyTrainer::Cuda({d:?})"),
        }
    }
}

/// The error for a GPU this build cannot drive.
#[cfg(not(feature = "cuda"))]
fn no_cuda<T>() -> Result<T> {
    Err(Error::Gpu(
        "this build has no GPU path: build dropit with the `cuda` feature".into(),
    ))
}

impl AnyTrainer {
    /// `model` planned for `cfg` on `device`, as [`Trainer::new`] or
    /// [`DeviceTrainer::new`](super::DeviceTrainer::new).
    pub fn new(device: Device, model: Model, cfg: TrainerConfig) -> Result<Self> {
        match device {
            Device::Cpu => Ok(AnyTrainer::Cpu(Trainer::new(model, cfg)?)),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => {
                let gpu = crate::cuda::Gpu::new(i)?;
                Ok(AnyTrainer::Cuda(DeviceTrainer::new(gpu, model, cfg)?))
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => no_cuda(),
        }
    }

    /// A CPU trainer's whole state (a loaded checkpoint, a trainer [`Trainer::with_budget`]
    /// chose) moved to `device`.
    pub fn from_cpu(device: Device, cpu: Trainer<'static>) -> Result<Self> {
        match device {
            Device::Cpu => Ok(AnyTrainer::Cpu(cpu)),
            #[cfg(feature = "cuda")]
            Device::Cuda(i) => {
                let gpu = crate::cuda::Gpu::new(i)?;
                let mut d = DeviceTrainer::new(gpu, cpu.model().clone(), *cpu.config())?;
                d.load_cpu(&cpu)?;
                Ok(AnyTrainer::Cuda(d))
            }
            #[cfg(not(feature = "cuda"))]
            Device::Cuda(_) => no_cuda(),
        }
    }

    /// The whole state as a CPU trainer (to save a checkpoint, or go on on the CPU).
    pub fn into_cpu(self) -> Result<Trainer<'static>> {
        match self {
            AnyTrainer::Cpu(t) => Ok(t),
            #[cfg(feature = "cuda")]
            AnyTrainer::Cuda(d) => d.to_cpu(),
        }
    }

    /// The whole training state as a checkpoint's bytes ([`Trainer::checkpoint`]).
    pub fn checkpoint(&self) -> Result<Vec<u8>> {
        match self {
            AnyTrainer::Cpu(t) => t.checkpoint(),
            #[cfg(feature = "cuda")]
            AnyTrainer::Cuda(d) => d.to_cpu()?.checkpoint(),
        }
    }

    /// One training step ([`Trainer::step`]).
    pub fn step(&mut self, x: &[f32], labels: &[u32]) -> Result<StepStats> {
        match self {
            AnyTrainer::Cpu(t) => t.step(x, labels),
            #[cfg(feature = "cuda")]
            AnyTrainer::Cuda(d) => d.step(x, labels),
        }
    }

    /// Loss and accuracy on a batch ([`Trainer::evaluate`]).
    pub fn evaluate(&mut self, x: &[f32], labels: &[u32]) -> Result<EvalStats> {
        match self {
            AnyTrainer::Cpu(t) => t.evaluate(x, labels),
            #[cfg(feature = "cuda")]
            AnyTrainer::Cuda(d) => d.evaluate(x, labels),
        }
    }

    /// The logits of a batch ([`Trainer::predict`]).
    pub fn predict(&mut self, x: &[f32], out: &mut [f32]) -> Result<()> {
        match self {
            AnyTrainer::Cpu(t) => t.predict(x, out),
            #[cfg(feature = "cuda")]
            AnyTrainer::Cuda(d) => d.predict(x, out),
        }
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        match self {
            AnyTrainer::Cpu(t) => t.steps(),
            #[cfg(feature = "cuda")]
            AnyTrainer::Cuda(d) => d.steps(),
        }
    }

    /// The model.
    pub fn model(&self) -> &Model {
        match self {
            AnyTrainer::Cpu(t) => t.model(),
            #[cfg(feature = "cuda")]
            AnyTrainer::Cuda(d) => d.model(),
        }
    }

    /// Every buffer of the plan ([`Trainer::memory_report`]).
    pub fn memory_report(&self) -> MemoryReport {
        match self {
            AnyTrainer::Cpu(t) => t.memory_report(),
            #[cfg(feature = "cuda")]
            AnyTrainer::Cuda(d) => d.memory_report(),
        }
    }

    /// Bytes of the device allocation, on a GPU
    /// ([`DeviceTrainer::device_bytes`](super::DeviceTrainer::device_bytes)).
    pub fn device_bytes(&self) -> Option<usize> {
        match self {
            AnyTrainer::Cpu(_) => None,
            #[cfg(feature = "cuda")]
            AnyTrainer::Cuda(d) => Some(d.device_bytes()),
        }
    }

    /// Runs `f` on the CPU trainer's workers, as [`Trainer::with_workers`]; on a GPU, right
    /// here.
    pub fn with_workers<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        Trainer::workers_for(
            self,
            |a| match a {
                AnyTrainer::Cpu(t) => Some(t),
                #[cfg(feature = "cuda")]
                AnyTrainer::Cuda(_) => None,
            },
            f,
        )
    }
}
