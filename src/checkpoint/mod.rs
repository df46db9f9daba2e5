//! Checkpoints in the safetensors format, with PyTorch's `state_dict` names and layouts.
//!
//! A checkpoint holds the whole training state: every parameter and running statistic (named
//! `{layer}.{param}`, converted from our layouts at the boundary: Linear `[out, in]`, conv
//! `[cout, cin, kh, kw]`), PyTorch's int64 `num_batches_tracked` counters, the optimizer's
//! state (`optim.{layer}.{param}.momentum_buffer`, or `exp_avg` / `exp_avg_sq`), and in its
//! metadata the architecture with every layer's settings (DropIT's and lean's included), the
//! trainer's configuration (optimizer, schedule, seed, label smoothing, threads), the step —
//! which is the whole randomness state too, since dropout masks are a hash of (seed, step,
//! node) — and a CRC-32 of everything else. [`Trainer::from_checkpoint`] needs no code that
//! rebuilt the model; [`Trainer::load_weights`] loads a weights-only file (PyTorch's, say)
//! into a model the caller built.
//!
//! Loading checks everything before it copies anything: the header and offsets (the
//! `safetensors` parser: no overlaps, no gaps, sizes against the buffer), the checksum, the
//! architecture (rebuilt layer by layer), and every tensor's name, dtype and shape. The first
//! problem is an [`Error::Checkpoint`] naming the tensor or field.

#[cfg(feature = "std")]
mod file;
mod slots;
mod spec;
mod tensors;

pub use slots::SLOT_HEADER;

use alloc::string::{String, ToString};
use alloc::vec::Vec;

use safetensors::{Dtype, SafeTensors};

use crate::error::{Error, Result, ckpt_err};
use crate::trainer::{Trainer, TrainerConfig};
use spec::Spec;
use tensors::{Place, check, collect, places, slot_names};

const VERSION: &str = "1";
const KEY_VERSION: &str = "dropit.version";
const KEY_MODEL: &str = "dropit.model";
const KEY_CONFIG: &str = "dropit.config";
const KEY_STEP: &str = "dropit.step";
const KEY_CHECKSUM: &str = "dropit.checksum";
/// Largest integer an architecture may hold (channels, kernel sides, strides, image sides…):
/// larger ones are refused before any shape arithmetic.
const MAX_ARCH_INT: u64 = 1 << 24;

fn parse_err(e: impl core::fmt::Display) -> Error {
    Error::Checkpoint {
        what: "file".into(),
        detail: alloc::format!("{e}"),
    }
}

/// CRC-32 of the tensors (name, dtype, shape, bytes, in name order) and of every metadata
/// entry but the checksum itself (in key order).
fn checksum<'a>(
    tensors: impl Iterator<Item = (&'a str, Dtype, &'a [usize], &'a [u8])>,
    meta: &[(String, String)],
) -> String {
    let mut h = crc32fast::Hasher::new();
    for (name, dtype, shape, data) in tensors {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(alloc::format!("{dtype:?}").as_bytes());
        for d in shape {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(data);
    }
    for (k, v) in meta.iter().filter(|(k, _)| k != KEY_CHECKSUM) {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    alloc::format!("{:08x}", h.finalize())
}

fn json<T: serde::Serialize>(what: &str, v: &T) -> Result<String> {
    serde_json::to_string(v).map_err(|e| Error::Checkpoint {
        what: what.into(),
        detail: alloc::format!("{e}"),
    })
}

/// Refuses integers above [`MAX_ARCH_INT`] anywhere in a JSON value.
fn bounded(what: &str, v: &serde_json::Value) -> Result<()> {
    match v {
        serde_json::Value::Number(n) if n.as_u64().is_some_and(|u| u > MAX_ARCH_INT) => {
            ckpt_err(what, alloc::format!("{n} exceeds {MAX_ARCH_INT}"))
        }
        serde_json::Value::Array(a) => a.iter().try_for_each(|x| bounded(what, x)),
        serde_json::Value::Object(o) => o.values().try_for_each(|x| bounded(what, x)),
        _ => Ok(()),
    }
}

/// A parsed file: its tensors by name and its metadata, the checksum verified when present.
struct Parsed<'b> {
    st: SafeTensors<'b>,
    meta: Vec<(String, String)>,
}

impl<'b> Parsed<'b> {
    fn new(bytes: &'b [u8], need_checksum: bool) -> Result<Self> {
        let (_, header) = SafeTensors::read_metadata(bytes).map_err(parse_err)?;
        let mut meta: Vec<(String, String)> = header
            .metadata()
            .iter()
            .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())))
            .collect();
        meta.sort();
        let st = SafeTensors::deserialize(bytes).map_err(parse_err)?;
        let p = Parsed { st, meta };
        match p.get(KEY_CHECKSUM) {
            None if need_checksum => ckpt_err(KEY_CHECKSUM, "missing"),
            None => Ok(p),
            Some(want) => {
                let mut ts = p.st.tensors();
                ts.sort_by(|a, b| a.0.cmp(&b.0));
                let got = checksum(
                    ts.iter()
                        .map(|(n, v)| (n.as_str(), v.dtype(), v.shape(), v.data())),
                    &p.meta,
                );
                if got != want {
                    return ckpt_err(
                        KEY_CHECKSUM,
                        alloc::format!("{got} computed, {want} recorded"),
                    );
                }
                Ok(p)
            }
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.meta
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn need(&self, key: &str) -> Result<&str> {
        self.get(key).ok_or_else(|| Error::Checkpoint {
            what: key.into(),
            detail: "missing from the metadata".into(),
        })
    }

    /// Every tensor of the file is one of `known`, or (when `optim` is allowed) an optimizer
    /// tensor, or a counter.
    fn no_strangers(&self, t: &Trainer<'_>, places: &[Place], optim: bool) -> Result<()> {
        let counters: Vec<String> = t
            .model()
            .nodes()
            .iter()
            .flat_map(|n| {
                n.layer
                    .counters()
                    .iter()
                    .map(move |c| alloc::format!("{}.{c}", n.name))
            })
            .collect();
        let optim_ok = |name: &str| {
            let Some((place, slot)) = name
                .strip_prefix("optim.")
                .and_then(|rest| rest.rsplit_once('.'))
            else {
                return false;
            };
            ["momentum_buffer", "exp_avg", "exp_avg_sq"].contains(&slot)
                && places.iter().any(|p| p.name == place && p.decl.trained)
        };
        for name in self.st.names() {
            let known = places.iter().any(|p| p.name == name)
                || counters.iter().any(|c| c == name)
                || (optim && optim_ok(name));
            if !known {
                return ckpt_err(name, "not a tensor of this model");
            }
        }
        for c in &counters {
            if let Ok(v) = self.st.tensor(c)
                && (v.dtype() != Dtype::I64 || !v.shape().is_empty())
            {
                return ckpt_err(c, "a step counter must be an I64 scalar");
            }
        }
        Ok(())
    }
}

impl Trainer<'_> {
    /// The whole training state as the bytes of a safetensors file (see the module docs).
    pub fn checkpoint(&self) -> Result<Vec<u8>> {
        self.serialize(true)
    }

    /// Parameters and running statistics only, as PyTorch's `state_dict` would hold them.
    pub fn weights(&self) -> Result<Vec<u8>> {
        self.serialize(false)
    }

    fn serialize(&self, full: bool) -> Result<Vec<u8>> {
        let tensors = collect(self, full);
        let mut meta: Vec<(String, String)> = alloc::vec![
            ("format".into(), "pt".into()),
            (KEY_VERSION.into(), VERSION.into()),
        ];
        if full {
            meta.push((KEY_MODEL.into(), json(KEY_MODEL, &Spec::of(self.model()))?));
            meta.push((KEY_CONFIG.into(), json(KEY_CONFIG, self.config())?));
            meta.push((KEY_STEP.into(), self.steps().to_string()));
        }
        meta.sort();
        let sum = checksum(
            tensors.iter().map(|t| {
                (
                    t.name.as_str(),
                    t.dtype,
                    t.shape.as_slice(),
                    t.bytes.as_slice(),
                )
            }),
            &meta,
        );
        meta.push((KEY_CHECKSUM.into(), sum));
        safetensors::serialize(
            tensors.iter().map(|t| (t.name.as_str(), t)),
            Some(meta.into_iter().collect()),
        )
        .map_err(parse_err)
    }

    /// Loads parameters and running statistics from a safetensors file — PyTorch's
    /// `state_dict` with this model's names, or one of our checkpoints — into this trainer's
    /// model. Every parameter and statistic must be there with PyTorch's dtype (F32) and shape;
    /// a tensor the model does not have is an error (our optimizer tensors and PyTorch's
    /// `num_batches_tracked` excepted). Nothing is changed unless all of it checks out.
    pub fn load_weights(&mut self, bytes: &[u8]) -> Result<()> {
        let file = Parsed::new(bytes, false)?;
        let places = places(self);
        file.no_strangers(self, &places, true)?;
        self.copy_in(&file, &places)
    }

    /// Checks every place against the file, then copies them in.
    fn copy_in(&mut self, file: &Parsed<'_>, places: &[Place]) -> Result<()> {
        let mut views = Vec::with_capacity(places.len());
        for p in places {
            let v = file.st.tensor(&p.name).map_err(|_| Error::Checkpoint {
                what: p.name.clone(),
                detail: "missing".into(),
            })?;
            check(&p.name, v.dtype(), v.shape(), v.data(), &p.decl)?;
            views.push(v);
        }
        for (p, v) in places.iter().zip(views) {
            let len = p.decl.len();
            let dst = if p.decl.trained {
                &mut self.params_mut()[p.at..p.at + len]
            } else {
                &mut self.state_mut()[p.at..p.at + len]
            };
            p.decl.read_torch(v.data(), dst);
        }
        Ok(())
    }
}

/// The largest arena [`Trainer::from_checkpoint`] plans for a file: a file's metadata alone
/// decides the batch and the input size, so a few hundred bytes could otherwise ask for
/// gigabytes. [`Trainer::from_checkpoint_within`] sets another limit.
pub const LOAD_ARENA_MAX: usize = 1 << 30;

impl Trainer<'static> {
    /// Rebuilds a trainer from [`Trainer::checkpoint`] bytes: the architecture and the
    /// configuration from the metadata, then every parameter, running statistic and optimizer
    /// state, and the step. Training continues exactly where it stopped (bitwise, for the same
    /// number of threads). A plan above [`LOAD_ARENA_MAX`] bytes is refused.
    pub fn from_checkpoint(bytes: &[u8]) -> Result<Self> {
        Self::from_checkpoint_within(bytes, LOAD_ARENA_MAX)
    }

    /// [`Trainer::from_checkpoint`], refusing a plan above `max_arena` bytes (checked before
    /// anything is allocated).
    pub fn from_checkpoint_within(bytes: &[u8], max_arena: usize) -> Result<Self> {
        let file = Parsed::new(bytes, true)?;
        if file.need(KEY_VERSION)? != VERSION {
            return ckpt_err(
                KEY_VERSION,
                alloc::format!("{:?}, expected {VERSION}", file.get(KEY_VERSION)),
            );
        }
        let arch: serde_json::Value =
            serde_json::from_str(file.need(KEY_MODEL)?).map_err(|e| Error::Checkpoint {
                what: KEY_MODEL.into(),
                detail: alloc::format!("{e}"),
            })?;
        bounded(KEY_MODEL, &arch)?;
        let spec: Spec = serde_json::from_value(arch).map_err(|e| Error::Checkpoint {
            what: KEY_MODEL.into(),
            detail: alloc::format!("{e}"),
        })?;
        let cfg: TrainerConfig =
            serde_json::from_str(file.need(KEY_CONFIG)?).map_err(|e| Error::Checkpoint {
                what: KEY_CONFIG.into(),
                detail: alloc::format!("{e}"),
            })?;
        let step: u64 = file
            .need(KEY_STEP)?
            .parse()
            .map_err(|e| Error::Checkpoint {
                what: KEY_STEP.into(),
                detail: alloc::format!("{e}"),
            })?;
        cfg.validate().map_err(|e| Error::Checkpoint {
            what: KEY_CONFIG.into(),
            detail: alloc::format!("{e}"),
        })?;
        let model = spec.build()?;
        Self::check_sizes(&model, &cfg, &file)?;
        let need = Trainer::plan_bytes(&model, &cfg)?;
        if need > max_arena {
            return ckpt_err(
                KEY_CONFIG,
                alloc::format!(
                    "the plan needs {need} bytes, above the limit of {max_arena} (Trainer::from_checkpoint_within sets another)"
                ),
            );
        }
        let mut t = Trainer::new(model, cfg)?;
        let places = places(&t);
        file.no_strangers(&t, &places, true)?;
        t.copy_in(&file, &places)?;
        t.copy_optimizer_in(&file, &places)?;
        t.set_steps(step);
        Ok(t)
    }

    /// Before planning: every parameter the model declares is in the file with its shape (so
    /// the parameters are no larger than the file), and every activation of a batch has a size
    /// that can be computed.
    fn check_sizes(model: &crate::Model, cfg: &TrainerConfig, file: &Parsed<'_>) -> Result<()> {
        for node in model.nodes() {
            for decl in node.layer.params() {
                let name = alloc::format!("{}.{}", node.name, decl.name);
                let v = file.st.tensor(&name).map_err(|_| Error::Checkpoint {
                    what: name.clone(),
                    detail: "missing".into(),
                })?;
                check(&name, v.dtype(), v.shape(), v.data(), &decl)?;
            }
        }
        let mut total = 0usize;
        for i in 0..model.nodes().len() {
            let (_, y) = model.shapes_of(i);
            total =
                y.h.checked_mul(y.w)
                    .and_then(|v| v.checked_mul(y.c))
                    .and_then(|v| v.checked_mul(cfg.batch))
                    .and_then(|v| v.checked_mul(8))
                    .and_then(|v| v.checked_add(total))
                    .filter(|&v| v <= isize::MAX as usize)
                    .ok_or_else(|| Error::Checkpoint {
                        what: KEY_CONFIG.into(),
                        detail: alloc::format!("batch {} makes activations too large", cfg.batch),
                    })?;
        }
        Ok(())
    }
}

impl Trainer<'_> {
    /// The optimizer's state from `optim.*` tensors (all of them, for every trained parameter).
    fn copy_optimizer_in(&mut self, file: &Parsed<'_>, places: &[Place]) -> Result<()> {
        let slots = slot_names(&self.config().optimizer);
        let (ts, n, frozen) = (
            self.train_start(),
            self.trained_count(),
            self.model().frozen(),
        );
        for p in places.iter().filter(|p| p.decl.trained && p.node >= frozen) {
            for (k, slot) in slots.iter().enumerate() {
                let name = alloc::format!("optim.{}.{slot}", p.name);
                let v = file.st.tensor(&name).map_err(|_| Error::Checkpoint {
                    what: name.clone(),
                    detail: "missing".into(),
                })?;
                check(&name, v.dtype(), v.shape(), v.data(), &p.decl)?;
                let from = k * n + p.at - ts;
                let len = p.decl.len();
                p.decl
                    .read_torch(v.data(), &mut self.optimizer_state_mut()[from..from + len]);
            }
        }
        Ok(())
    }
}
