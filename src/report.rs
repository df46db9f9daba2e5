//! The memory report: what every layer keeps for backward, and the plan's totals by category.

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt;

use crate::model::Model;
use crate::plan::Plan;
use crate::shape::Shape;

/// One layer's line.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMemory {
    /// Layer name.
    pub name: String,
    /// Layer kind.
    pub kind: &'static str,
    /// Frozen: runs forward only, no gradients or optimizer state.
    pub frozen: bool,
    /// Output shape of one sample.
    pub output: Shape,
    /// What is saved for backward.
    pub saved: String,
    /// Bytes saved for backward (a held input is counted at its first reader).
    pub saved_bytes: usize,
    /// Bytes PyTorch's autograd keeps for the same module, as dense f32 (its declaration).
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
    /// Reads every layer's line from its declaration in the plan.
    pub(crate) fn new(model: &Model, plan: &Plan) -> Self {
        let bytes = |r: &core::ops::Range<usize>| r.len() * 8;
        let mut counted = alloc::vec![false; model.shapes.len()];
        let declared = crate::plan::declare(model, plan.batch, plan.threads);
        let layers: Vec<LayerMemory> = model
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let needs = &declared[i];
                let t = node.inputs[0];
                let mut saved_bytes = bytes(&plan.ctx[i]);
                let mut parts: Vec<String> = Vec::new();
                if needs.holds_input {
                    if counted[t] {
                        parts.push("input (shared)".into());
                    } else {
                        parts.push("input f32".into());
                        saved_bytes += bytes(&plan.tensors[t]);
                        counted[t] = true;
                    }
                }
                if let (Some(p), Some(sp)) = (&plan.packed[i], &needs.packed) {
                    parts.push(if p.packs {
                        saved_bytes += bytes(&p.words);
                        alloc::format!(
                            "γ{:.2} {:?}+{:?}",
                            1.0 - sp.keep,
                            p.format.values,
                            p.format.positions
                        )
                    } else {
                        "packed (shared)".into()
                    });
                }
                parts.extend(needs.saved.iter().map(|e| String::from(e.what)));
                LayerMemory {
                    name: node.name.clone(),
                    kind: node.layer.kind(),
                    frozen: i < plan.frozen,
                    output: model.shapes[node.output],
                    saved: if parts.is_empty() {
                        "-".into()
                    } else {
                        parts.join(" + ")
                    },
                    saved_bytes,
                    dense_bytes: needs.torch_bytes,
                }
            })
            .collect();
        let r = &plan.regions;
        MemoryReport {
            batch: plan.batch,
            saved_dense: layers.iter().map(|l| l.dense_bytes).sum(),
            layers,
            params: bytes(&r.params),
            grads: bytes(&r.grads),
            optimizer: bytes(&r.opt),
            state: bytes(&r.state),
            saved: bytes(&r.saved),
            activations: bytes(&r.pool),
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
            let saved = if l.frozen {
                alloc::format!("frozen {}", l.saved)
            } else {
                l.saved.clone()
            };
            writeln!(
                f,
                "{:<22} {:<20} {:<15} {:<22} {:>12} {:>12}",
                l.name, l.kind, out, saved, l.saved_bytes, l.dense_bytes
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
