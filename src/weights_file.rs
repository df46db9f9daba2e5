//! Weights-only safetensors files (PyTorch `state_dict` names and layouts, or our checkpoints)
//! read without a heap, for builds without `alloc`: the header is parsed in place
//! (`serde-json-core`) and every tensor is checked before any is copied.
//!
//! The checks are those of the `alloc` loader but for the checksum, which needs the names
//! sorted: the 8-byte header length and the JSON header against the buffer, every tensor's
//! dtype (F32), PyTorch's shape and its offsets against the data; a tensor the model does not
//! have is an error (optimizer tensors and batch norm's `num_batches_tracked` excepted), and so
//! is a missing or repeated one. Nothing is changed unless all of it checks out.

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use crate::collections::{List, MAX_NODES, Push, msg};
use crate::error::{Error, Result};
use crate::layers::contract::{MAX_PARAMS, ParamDecl};
use crate::trainer::Trainer;

/// One tensor's entry in the header.
#[derive(serde::Deserialize)]
struct Info<'a> {
    dtype: &'a str,
    shape: heapless::Vec<usize, 8>,
    data_offsets: [usize; 2],
}

/// Where a declared tensor of the model lives, and where the file keeps it.
struct Place {
    node: usize,
    decl: ParamDecl,
    /// Offset into `params()` (trained) or `state()`.
    at: usize,
    /// Byte range in the data section, once seen.
    found: Option<(usize, usize)>,
}

fn err(what: impl core::fmt::Display, detail: impl core::fmt::Display) -> Error {
    Error::Checkpoint {
        what: msg!("{what}"),
        detail: msg!("{detail}"),
    }
}

/// Whether `key` is `{node}.{tail}`.
fn names(key: &str, node: &str, tail: &str) -> bool {
    key.strip_prefix(node)
        .and_then(|r| r.strip_prefix('.'))
        .is_some_and(|r| r == tail)
}

/// Visits the header's entries: checks each against the model and records where it lies.
struct Entries<'p, 't> {
    places: &'p mut [Place],
    trainer: &'p Trainer<'t>,
    data: usize,
    /// The first problem (the JSON parser's own error carries no text).
    problem: &'p mut Option<Error>,
}

impl Entries<'_, '_> {
    fn entry(&mut self, key: &str, info: &Info<'_>) -> Result<()> {
        let nodes = self.trainer.model().nodes();
        let Some(p) = self
            .places
            .iter_mut()
            .find(|p| names(key, &nodes[p.node].name, p.decl.name))
        else {
            let counter = nodes
                .iter()
                .any(|n| n.layer.counters().iter().any(|c| names(key, &n.name, c)));
            return match key.starts_with("optim.") || counter {
                true => Ok(()),
                false => Err(err(key, "not a tensor of this model")),
            };
        };
        if p.found.is_some() {
            return Err(err(key, "appears twice"));
        }
        if info.dtype != "F32" {
            return Err(err(key, format_args!("dtype {}, expected F32", info.dtype)));
        }
        if info.shape.as_slice() != p.decl.torch_shape.as_slice() {
            return Err(err(
                key,
                format_args!(
                    "shape {:?}, expected {:?}",
                    info.shape.as_slice(),
                    p.decl.torch_shape.as_slice()
                ),
            ));
        }
        let [b, e] = info.data_offsets;
        let bytes = p.decl.len_checked().and_then(|l| l.checked_mul(4));
        if b > e || e > self.data || Some(e - b) != bytes {
            return Err(err(
                key,
                format_args!(
                    "data offsets [{b}, {e}] for shape {:?} in {} bytes of data",
                    info.shape.as_slice(),
                    self.data
                ),
            ));
        }
        p.found = Some((b, e));
        Ok(())
    }
}

impl<'de> Visitor<'de> for Entries<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a safetensors header")
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut m: A) -> core::result::Result<(), A::Error> {
        while let Some(key) = m.next_key::<&'de str>()? {
            if key == "__metadata__" {
                m.next_value::<IgnoredAny>()?;
                continue;
            }
            let info: Info<'de> = m.next_value()?;
            if let Err(e) = self.entry(key, &info) {
                *self.problem = Some(e);
                return Err(de::Error::custom(""));
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Entries<'_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> core::result::Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

impl Trainer<'_> {
    /// Loads parameters and running statistics from a safetensors file — PyTorch's
    /// `state_dict` with this model's names, or one of our checkpoints — into this trainer's
    /// model, without a heap. Every parameter and statistic must be there with PyTorch's dtype
    /// (F32) and shape; a tensor the model does not have is an error (optimizer tensors and
    /// PyTorch's `num_batches_tracked` excepted). Nothing is changed unless all of it checks
    /// out. (Builds with `alloc` check a checkpoint's checksum too.)
    #[cfg(not(feature = "alloc"))]
    pub fn load_weights(&mut self, bytes: &[u8]) -> Result<()> {
        self.load_weights_in_place(bytes)
    }

    /// [`Trainer::load_weights`] without allocating (what it is without `alloc`): the header
    /// parsed in place, every tensor checked before any is copied — but a checkpoint's checksum
    /// is not verified. Tested against the `alloc` loader, fuzzed with it (`fuzz/`).
    pub fn load_weights_in_place(&mut self, bytes: &[u8]) -> Result<()> {
        let len = bytes
            .get(..8)
            .map(|h| u64::from_le_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]));
        let header_end = len
            .and_then(|l| usize::try_from(l).ok())
            .and_then(|l| l.checked_add(8))
            .filter(|&end| end <= bytes.len())
            .ok_or_else(|| err("file", "header length beyond the file"))?;
        let (header, data) = (&bytes[8..header_end], &bytes[header_end..]);
        let mut places: List<Place, { MAX_NODES * MAX_PARAMS }> = List::new();
        for (node, decl, at) in self.declared() {
            let found = None;
            places.push_or(
                Place {
                    node,
                    decl,
                    at,
                    found,
                },
                "declared tensors",
            )?;
        }
        let mut problem = None;
        let entries = Entries {
            places: &mut places,
            trainer: self,
            data: data.len(),
            problem: &mut problem,
        };
        let mut de = serde_json_core::de::Deserializer::new(header, None);
        let parsed = entries.deserialize(&mut de).and_then(|()| de.end());
        if let Some(e) = problem {
            return Err(e);
        }
        parsed.map_err(|e| err("header", e))?;
        let nodes = self.model().nodes();
        if let Some(p) = places.iter().find(|p| p.found.is_none()) {
            return Err(err(
                msg!("{}.{}", nodes[p.node].name, p.decl.name),
                "missing",
            ));
        }
        for p in &places {
            let ((b, e), len) = (p.found.unwrap_or_default(), p.decl.len());
            let dst = if p.decl.trained {
                &mut self.params_mut()[p.at..p.at + len]
            } else {
                &mut self.state_mut()[p.at..p.at + len]
            };
            p.decl.read_torch(&data[b..e], dst);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use alloc::vec::Vec;

    use crate::{DropIt, Model, ModelBuilder, Shape, Trainer, TrainerConfig};

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    /// A small CNN with batch norm (running statistics and a step counter) and a Linear.
    fn cnn() -> Model {
        let mut b = ModelBuilder::new(Shape::new(6, 6, 2));
        let x = b.conv2d("conv", b.input(), 4, 3, 1, 1).unwrap();
        let x = b.batchnorm2d("bn", x).unwrap();
        let x = b.relu("relu", x).unwrap();
        let x = b.global_avgpool("pool", x).unwrap();
        let x = b.linear("fc", x, 3).unwrap();
        b.build(x).unwrap().with_dropit(&DropIt::new(0.5)).unwrap()
    }

    fn trained(seed: u64) -> Trainer<'static> {
        let mut cfg = TrainerConfig::sgd_recipe(2, 10);
        cfg.seed = seed;
        let mut t = Trainer::new(cnn(), cfg).unwrap();
        let x: Vec<f32> = (0..2 * 72).map(|i| (i % 7) as f32 * 0.3 - 1.0).collect();
        t.step(&x, &[0, 2]).unwrap();
        t
    }

    /// Weights files and whole checkpoints (optimizer tensors, counters) load in place to the
    /// bits the `alloc` loader gives.
    #[test]
    fn loads_what_the_alloc_loader_loads() {
        let src = trained(1);
        for file in [src.weights().unwrap(), src.checkpoint().unwrap()] {
            let (mut a, mut b) = (trained(2), trained(2));
            a.load_weights(&file).unwrap();
            b.load_weights_in_place(&file).unwrap();
            assert_eq!(bits(b.params()), bits(src.params()));
            assert_eq!(bits(b.state()), bits(src.state()));
            assert_eq!(bits(a.params()), bits(b.params()));
        }
    }

    /// Truncated files, flipped bits, a missing or foreign tensor: an error or (a flip inside
    /// the data) a load — never a panic, and an error changes nothing.
    #[test]
    fn corrupt_files_change_nothing() {
        let file = trained(1).weights().unwrap();
        let mut t = trained(2);
        let before = (bits(t.params()), bits(t.state()));
        for cut in (0..file.len()).step_by(7) {
            assert!(
                t.load_weights_in_place(&file[..cut]).is_err(),
                "cut at {cut}"
            );
        }
        for i in (0..file.len()).step_by(3) {
            let mut bad = file.clone();
            bad[i] ^= 0x24;
            if t.load_weights_in_place(&bad).is_err() {
                assert_eq!((bits(t.params()), bits(t.state())), before, "flip at {i}");
            } else {
                t.load_weights_in_place(&file)
                    .unwrap_or_else(|e| panic!("{e}"));
                let mut u = trained(2);
                u.load_weights_in_place(&file).unwrap();
                assert_eq!(bits(t.params()), bits(u.params()));
                t = trained(2);
            }
        }
        let other = Trainer::new(Model::mlp().unwrap(), TrainerConfig::sgd_recipe(2, 10))
            .unwrap()
            .weights()
            .unwrap();
        let e = t.load_weights_in_place(&other).unwrap_err();
        assert!(
            alloc::format!("{e}").contains("not a tensor of this model"),
            "{e}"
        );
        assert_eq!((bits(t.params()), bits(t.state())), before);
    }
}
