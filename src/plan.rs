//! The memory planner: every buffer's size and place, decided once, before anything is allocated.
//!
//! Layout of the arena (8-byte words), region by region:
//! parameters | gradients | optimizer state | running statistics | saved | slots | scratch.
//!
//! - **saved**: each layer's own context (ReLU masks, max-pool codes, BN's x̂) and every tensor a
//!   backward reads as it is (the input of a Linear/Conv kept dense). A tensor read by several
//!   layers is held once.
//! - **slots**: equal-sized buffers for the tensors nobody holds, reused by liveness: forward
//!   outputs live from their producer to their last reader; in backward, a gradient lives from
//!   its first contribution to its producer's backward. Both phases share the same slots.
//! - **scratch**: the largest single need of any layer (conv's per-sample im2col), shared.

use alloc::vec;
use alloc::vec::Vec;
use core::ops::Range;

use crate::arena::words_for_f32;
use crate::error::{Result, config_err};
use crate::model::Model;
use dropit_simd::format::Format;

use crate::arena::words_for_bytes;
use crate::saved::{Saved, SparseSave};

/// Where everything lives, in words from the start of the arena.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Plan {
    pub batch: usize,
    /// Per node: its parameters as a float range inside the parameter region.
    pub params: Vec<Range<usize>>,
    /// Per node: its running statistics as a float range inside the state region.
    pub state: Vec<Range<usize>>,
    /// Per tensor: its buffer (sized for the planned batch).
    pub tensors: Vec<Range<usize>>,
    /// Per tensor: whether it is held in the saved region.
    pub held: Vec<bool>,
    /// Per tensor: its gradient's buffer (empty for the model input).
    pub grads: Vec<Range<usize>>,
    /// Per node and input: accumulate into the input's gradient (another reader wrote it first).
    pub acc: Vec<[bool; 2]>,
    /// Per node: forward writes its output over its first input.
    pub inplace: Vec<bool>,
    /// Per node: backward writes its first input's gradient over its output's.
    pub inplace_bwd: Vec<bool>,
    /// Per node: its own saved context.
    pub ctx: Vec<Range<usize>>,
    /// Per node: what that context is.
    pub saved: Vec<Saved>,
    /// Per node: its DropIT-packed input, if it keeps one.
    pub packed: Vec<Option<PackedInput>>,
    pub regions: Regions,
    pub total_words: usize,
    pub slot_words: usize,
    pub slot_count: usize,
}

/// Where a layer's packed (DropIT) input lives.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PackedInput {
    pub words: Range<usize>,
    pub format: Format,
    /// This node packs it in forward; a later reader with the same settings shares it.
    pub packs: bool,
}

/// The regions of the arena.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Regions {
    pub params: Range<usize>,
    pub grads: Range<usize>,
    pub opt: Range<usize>,
    pub state: Range<usize>,
    pub saved: Range<usize>,
    pub slots: Range<usize>,
    pub scratch: Range<usize>,
}

/// Hands out slot ids, lowest free first.
struct Slots {
    used: Vec<bool>,
}

impl Slots {
    fn take(&mut self, not: Option<usize>) -> usize {
        let free = self
            .used
            .iter()
            .enumerate()
            .position(|(i, &u)| !u && Some(i) != not);
        let i = free.unwrap_or_else(|| {
            self.used.push(false);
            self.used.len() - 1
        });
        self.used[i] = true;
        i
    }

    fn give(&mut self, i: usize) {
        self.used[i] = false;
    }
}

fn take(cursor: &mut usize, words: usize) -> Range<usize> {
    let r = *cursor..*cursor + words;
    *cursor += words;
    r
}

/// Plans `model` for batches of up to `batch` samples, with `opt_slots` optimizer floats per
/// parameter and `threads` workers.
pub(crate) fn plan(model: &Model, batch: usize, opt_slots: usize, threads: usize) -> Result<Plan> {
    if batch == 0 {
        return config_err("batch size", "must be at least 1");
    }
    let nodes = &model.nodes;
    let nt = model.shapes.len();
    let numel = |t: usize| batch * model.shapes[t].numel();

    // Readers of each tensor; the logits are read by the loss, after every node.
    let mut last_use = vec![None; nt];
    let mut held = vec![false; nt];
    for (i, n) in nodes.iter().enumerate() {
        for &t in n.inputs.iter().take(n.layer.arity()) {
            last_use[t] = Some(i);
            held[t] |= n.layer.holds_input();
        }
    }
    last_use[model.logits] = Some(nodes.len());
    if let Some(t) = (1..nt).find(|&t| last_use[t].is_none()) {
        return config_err(
            "model",
            alloc::format!("tensor {t} (output of {}) is never used", nodes[t - 1].name),
        );
    }

    // Parameters and running statistics.
    let (mut pf, mut sf) = (0, 0);
    let params: Vec<_> = nodes
        .iter()
        .map(|n| {
            let r = pf..pf + n.layer.param_count();
            pf = r.end;
            r
        })
        .collect();
    let state: Vec<_> = nodes
        .iter()
        .map(|n| {
            let r = sf..sf + n.layer.state_count();
            sf = r.end;
            r
        })
        .collect();

    // Forward slots. ReLU and Add write over an input that dies with them (in place).
    let mut fwd = Slots { used: Vec::new() };
    let mut slot_of = vec![usize::MAX; nt];
    let mut inplace = vec![false; nodes.len()];
    if !held[0] {
        slot_of[0] = fwd.take(None);
    }
    let reads = |n: &crate::model::Node| n.inputs[..n.layer.arity()].to_vec();
    for (i, n) in nodes.iter().enumerate() {
        let t0 = n.inputs[0];
        let ins = reads(n);
        inplace[i] = n.layer.in_place()
            && t0 != 0
            && !held[t0]
            && !held[n.output]
            && last_use[t0] == Some(i)
            && ins.iter().filter(|&&t| t == t0).count() == 1;
        if inplace[i] {
            slot_of[n.output] = slot_of[t0];
        } else if !held[n.output] {
            slot_of[n.output] = fwd.take(None);
        }
        for &t in &ins {
            if last_use[t] == Some(i)
                && !held[t]
                && slot_of[t] != usize::MAX
                && !(inplace[i] && t == t0)
            {
                fwd.give(slot_of[t]);
            }
        }
    }
    // Backward slots: the loss turns the logits into their gradient in place; an in-place
    // layer whose input gradient starts here writes it over its output gradient.
    let logits_slot = slot_of[model.logits];
    let mut bwd = Slots {
        used: vec![false; fwd.used.len()],
    };
    bwd.used[logits_slot] = true;
    let mut grad_slot = vec![usize::MAX; nt];
    grad_slot[model.logits] = logits_slot;
    let mut acc = vec![[false; 2]; nodes.len()];
    let mut inplace_bwd = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev() {
        let dy = grad_slot[n.output];
        let t0 = n.inputs[0];
        inplace_bwd[i] = n.layer.in_place()
            && t0 != 0
            && grad_slot[t0] == usize::MAX
            && reads(n).iter().filter(|&&t| t == t0).count() == 1;
        if inplace_bwd[i] {
            grad_slot[t0] = dy;
        }
        for (j, &t) in reads(n).iter().enumerate() {
            if t == 0 || (j == 0 && inplace_bwd[i]) {
                continue;
            }
            if grad_slot[t] == usize::MAX {
                grad_slot[t] = bwd.take(Some(dy));
            } else {
                acc[i][j] = true;
            }
        }
        if !inplace_bwd[i] {
            bwd.give(dy);
        }
    }
    let slot_count = bwd.used.len().max(fwd.used.len());
    let slot_words = (0..nt)
        // Forward: every tensor not held; backward: the gradient of every tensor but the input.
        .filter(|&t| !held[t] || t != 0)
        .map(|t| words_for_f32(numel(t)))
        .max()
        .unwrap_or(0);

    // Own contexts and scratch.
    let saved: Vec<Saved> = nodes
        .iter()
        .map(|n| {
            n.layer
                .saved(batch, model.shapes[n.inputs[0]], model.shapes[n.output])
        })
        .collect();
    let scratch_words = nodes
        .iter()
        .map(|n| {
            n.layer.scratch_words(
                batch,
                model.shapes[n.inputs[0]],
                model.shapes[n.output],
                threads,
            )
        })
        .max()
        .unwrap_or(0);

    // Lay the regions out.
    let mut cur = 0;
    let pw = words_for_f32(pf);
    let regions_params = take(&mut cur, pw);
    let regions_grads = take(&mut cur, pw);
    let regions_opt = take(&mut cur, opt_slots * pw);
    let regions_state = take(&mut cur, words_for_f32(sf));
    let saved_start = cur;
    let mut tensors = vec![0..0; nt];
    for t in (0..nt).filter(|&t| held[t]) {
        tensors[t] = take(&mut cur, words_for_f32(numel(t)));
    }
    let ctx: Vec<_> = saved.iter().map(|s| take(&mut cur, s.words())).collect();
    // Packed inputs: one per (tensor, settings), shared by every reader with those settings.
    let mut packed: Vec<Option<PackedInput>> = vec![None; nodes.len()];
    let mut owners: Vec<(usize, SparseSave, PackedInput)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let Some(sp) = n.layer.sparse_save() else {
            continue;
        };
        let t = n.inputs[0];
        let numel = model.shapes[t].numel();
        if let Some((_, _, p)) = owners.iter().find(|(tt, ss, _)| *tt == t && ss == sp) {
            packed[i] = Some(PackedInput {
                packs: false,
                ..p.clone()
            });
            continue;
        }
        let p = PackedInput {
            words: take(&mut cur, words_for_bytes(sp.bytes(batch, numel))),
            format: sp.format(batch, numel),
            packs: true,
        };
        packed[i] = Some(p.clone());
        owners.push((t, *sp, p));
    }
    let regions_saved = saved_start..cur;
    let slots_start = cur;
    let regions_slots = take(&mut cur, slot_count * slot_words);
    let slot = |s: usize, t: usize| {
        let start = slots_start + s * slot_words;
        start..start + words_for_f32(numel(t))
    };
    for t in (0..nt).filter(|&t| !held[t]) {
        tensors[t] = slot(slot_of[t], t);
    }
    let grads = (0..nt)
        .map(|t| if t == 0 { 0..0 } else { slot(grad_slot[t], t) })
        .collect();
    let regions_scratch = take(&mut cur, scratch_words);
    Ok(Plan {
        batch,
        params,
        state,
        tensors,
        held,
        grads,
        acc,
        inplace,
        inplace_bwd,
        ctx,
        saved,
        packed,
        regions: Regions {
            params: regions_params,
            grads: regions_grads,
            opt: regions_opt,
            state: regions_state,
            saved: regions_saved,
            slots: regions_slots,
            scratch: regions_scratch,
        },
        total_words: cur,
        slot_words,
        slot_count,
    })
}
