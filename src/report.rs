//! The memory report: what every layer keeps for backward, and the plan's totals by category.

use crate::collections::{List, MAX_NODES, Message, Name, msg};
use core::fmt;

use crate::model::Model;
use crate::plan::Plan;
use crate::shape::Shape;

/// One layer's line.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerMemory {
    /// Layer name.
    pub name: Name,
    /// Layer kind.
    pub kind: &'static str,
    /// Frozen: runs forward only, no gradients or optimizer state.
    pub frozen: bool,
    /// Output shape of one sample.
    pub output: Shape,
    /// What is saved for backward.
    pub saved: Message,
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
    pub layers: List<LayerMemory, MAX_NODES>,
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
        // Per-tensor and per-node lists have room for every tensor and node of a model.
        let mut counted: crate::plan::PerTensor<bool> =
            core::iter::repeat_n(false, model.shapes.len()).collect();
        let declared: crate::plan::PerNode<_> =
            crate::plan::declare(model, plan.batch, plan.threads)
                .into_iter()
                .enumerate()
                .map(|(i, n)| crate::plan::as_planned(plan, i, n))
                .collect();
        let layers: List<LayerMemory, MAX_NODES> = model
            .nodes
            .iter()
            .enumerate()
            .map(|(i, node)| {
                let needs = &declared[i];
                let t = node.inputs[0];
                let mut saved_bytes = bytes(&plan.ctx[i]);
                // What is saved, as "part + part + …".
                let mut saved: Option<Message> = None;
                let mut add = |part: core::fmt::Arguments<'_>| {
                    saved = Some(match saved.take() {
                        None => msg!("{part}"),
                        Some(s) => msg!("{s} + {part}"),
                    });
                };
                if let Some(r) = &plan.rebuilt[i] {
                    let from = r
                        .chain
                        .first()
                        .map_or("", |&c| model.nodes[c].name.as_str());
                    add(format_args!("input rebuilt from {from}"));
                }
                if needs.holds_input {
                    if counted[t] {
                        add(format_args!("input (shared)"));
                    } else {
                        add(format_args!("input f32"));
                        saved_bytes += bytes(&plan.tensors[t]);
                        counted[t] = true;
                    }
                }
                if let (Some(p), Some(sp)) = (&plan.packed[i], &needs.packed) {
                    if p.packs {
                        saved_bytes += bytes(&p.words);
                        add(format_args!(
                            "γ{:.2} {:?}+{:?}",
                            1.0 - sp.keep,
                            p.format.values,
                            p.format.positions
                        ));
                    } else {
                        add(format_args!("packed (shared)"));
                    }
                }
                needs
                    .saved
                    .iter()
                    .for_each(|e| add(format_args!("{}", e.what)));
                LayerMemory {
                    name: node.name.clone(),
                    kind: node.layer.kind(),
                    frozen: i < plan.frozen,
                    output: model.shapes[node.output],
                    saved: saved.unwrap_or_else(|| msg!("-")),
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
            let out = msg!("{}", l.output);
            let saved = if l.frozen {
                msg!("frozen {}", l.saved)
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
