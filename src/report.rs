//! The memory report: what every layer keeps for backward, and the plan's totals by category.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::arena::words_for_f32;
use crate::layers::Layer;
use crate::model::Model;
use crate::plan::Plan;
use crate::saved::Saved;
use crate::shape::Shape;

/// One layer's line.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMemory {
    /// Layer name.
    pub name: String,
    /// Layer kind.
    pub kind: &'static str,
    /// Output shape of one sample.
    pub output: Shape,
    /// What is saved for backward.
    pub saved: String,
    /// Bytes saved for backward (a held input is counted at its first reader).
    pub saved_bytes: usize,
    /// Bytes the same information takes as dense f32.
    pub dense_bytes: usize,
}

/// The plan's bytes by category, and every layer's saved bytes.
#[derive(Debug, Clone, PartialEq)]
pub struct MemoryReport {
    /// Planned batch.
    pub batch: usize,
    /// Per layer.
    pub layers: Vec<LayerMemory>,
    /// Parameters.
    pub params: usize,
    /// Parameter gradients.
    pub grads: usize,
    /// Optimizer state.
    pub optimizer: usize,
    /// Running statistics.
    pub state: usize,
    /// Everything saved for backward.
    pub saved: usize,
    /// The same saved information as dense f32.
    pub saved_dense: usize,
    /// Forward/backward activation slots.
    pub activations: usize,
    /// Shared scratch.
    pub scratch: usize,
    /// The whole arena.
    pub total: usize,
}

impl MemoryReport {
    pub(crate) fn new(model: &Model, plan: &Plan) -> Self {
        let bytes = |r: &core::ops::Range<usize>| r.len() * 8;
        let n = plan.batch;
        let mut counted = alloc::vec![false; model.shapes.len()];
        let layers: Vec<LayerMemory> = model
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let (xs, ys) = (model.shapes[node.inputs[0]], model.shapes[node.output]);
                let t = node.inputs[0];
                let mut saved_bytes = bytes(&plan.ctx[i]);
                let mut dense_bytes = 0;
                let mut what = String::from(plan.saved[i].describe());
                if node.layer.holds_input() && i >= plan.frozen {
                    dense_bytes += n * xs.numel() * 4;
                    what = if counted[t] {
                        "input (shared)".into()
                    } else {
                        "input f32".into()
                    };
                    if !counted[t] {
                        saved_bytes += bytes(&plan.tensors[t]);
                        counted[t] = true;
                    }
                    if plan.saved[i] != Saved::Nothing {
                        what = alloc::format!("{what} + {}", plan.saved[i].describe());
                    }
                }
                if let Some(p) = &plan.packed[i] {
                    dense_bytes += n * xs.numel() * 4;
                    what = if p.packs {
                        saved_bytes += bytes(&p.words);
                        let keep = node.layer.sparse_save().map_or(1.0, |s| s.keep);
                        alloc::format!(
                            "γ{:.2} {:?}+{:?}",
                            1.0 - keep,
                            p.format.values,
                            p.format.positions
                        )
                    } else {
                        "packed (shared)".into()
                    };
                }
                dense_bytes += if i < plan.frozen {
                    0
                } else {
                    match &node.layer {
                        Layer::Relu(_) | Layer::MaxPool2d(_) => n * ys.numel() * 4,
                        Layer::Gelu(_) => n * xs.numel() * 4,
                        Layer::LayerNorm(_) => {
                            (words_for_f32(n * xs.numel()) + words_for_f32(n * xs.rows())) * 8
                        }
                        Layer::BatchNorm2d(b) => {
                            (words_for_f32(n * xs.numel()) + words_for_f32(b.c)) * 8
                        }
                        // PyTorch keeps q, k, v (the input) and the probabilities.
                        Layer::Attention(a) => {
                            let held = if a.lean { n * xs.numel() * 4 } else { 0 };
                            held + a.lse_rows(n, xs.rows()) * xs.rows() * 4
                        }
                        Layer::Dropout(_) => n * ys.numel() * 4,
                        _ => 0,
                    }
                };
                LayerMemory {
                    name: node.name.clone(),
                    kind: node.layer.kind(),
                    output: ys,
                    saved: what,
                    saved_bytes,
                    dense_bytes,
                }
            })
            .collect();
        let r = &plan.regions;
        MemoryReport {
            batch: n,
            saved_dense: layers.iter().map(|l| l.dense_bytes).sum(),
            layers,
            params: bytes(&r.params),
            grads: bytes(&r.grads),
            optimizer: bytes(&r.opt),
            state: bytes(&r.state),
            saved: bytes(&r.saved),
            activations: bytes(&r.slots),
            scratch: bytes(&r.scratch),
            total: plan.total_words * 8,
        }
    }
}

fn mb(b: usize) -> f64 {
    b as f64 / 1e6
}

impl fmt::Display for MemoryReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "memory plan, batch {}", self.batch)?;
        writeln!(
            f,
            "{:<22} {:<20} {:<15} {:<22} {:>12} {:>12}",
            "layer", "kind", "output", "saved", "saved B", "dense B"
        )?;
        for l in &self.layers {
            let out = alloc::format!("{}", l.output);
            writeln!(
                f,
                "{:<22} {:<20} {:<15} {:<22} {:>12} {:>12}",
                l.name, l.kind, out, l.saved, l.saved_bytes, l.dense_bytes
            )?;
        }
        writeln!(
            f,
            "saved for backward: {:.3} MB (dense f32 equivalent {:.3} MB)",
            mb(self.saved),
            mb(self.saved_dense)
        )?;
        writeln!(
            f,
            "params {:.3} MB | grads {:.3} MB | optimizer {:.3} MB | running stats {:.3} MB | saved {:.3} MB | activations {:.3} MB | scratch {:.3} MB",
            mb(self.params),
            mb(self.grads),
            mb(self.optimizer),
            mb(self.state),
            mb(self.saved),
            mb(self.activations),
            mb(self.scratch)
        )?;
        write!(
            f,
            "total arena: {:.3} MB ({} bytes)",
            mb(self.total),
            self.total
        )
    }
}
