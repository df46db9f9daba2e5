//! The memory planner: every buffer's size and place, decided once, before anything is allocated.
//!
//! Layout of the arena (8-byte words), region by region:
//! parameters | gradients | optimizer state | running statistics | saved | activations | scratch.
//!
//! - **saved**: each layer's own context (ReLU masks, max-pool codes, BN's x̂) and every tensor a
//!   backward reads as it is (the input of a Linear/Conv kept dense). A tensor read by several
//!   layers is held once.
//! - **activations**: one pool for the tensors nobody holds, reused by liveness (greedy by size):
//!   forward outputs live from their producer to their last reader; in backward, a gradient
//!   lives from its first contribution to its producer's backward. Both phases share the pool.
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
    /// Leading nodes that run forward only (fine-tuning).
    pub frozen: usize,
    /// First trained parameter (floats into the parameter region); gradients and optimizer
    /// state cover the parameters from here on.
    pub train_start: usize,
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

/// Buffers of the activation pool, each a size and a span of time — forward steps 0..=N, then
/// backward steps N..=2N — placed once every span is known.
#[derive(Default)]
struct Pool {
    /// (words, first step, last step).
    bufs: Vec<(usize, usize, usize)>,
}

impl Pool {
    /// A new buffer of `words`, first used at step `at`.
    fn alloc(&mut self, words: usize, at: usize) -> usize {
        self.bufs.push((words, at, at));
        self.bufs.len() - 1
    }

    /// Buffer `b` is used at step `at`.
    fn touch(&mut self, b: usize, at: usize) {
        let (_, first, last) = &mut self.bufs[b];
        *first = (*first).min(at);
        *last = (*last).max(at);
    }

    /// Places the buffers, largest first, each at the lowest offset free for its whole span
    /// ("greedy by size": a tensor that outlives its neighbours cannot strand a hole below
    /// it, as it can when buffers are handed out in time order). Returns each buffer's range
    /// and the pool's size.
    fn place(&self) -> (Vec<Range<usize>>, usize) {
        let mut order: Vec<usize> = (0..self.bufs.len()).collect();
        order.sort_by_key(|&b| (core::cmp::Reverse(self.bufs[b].0), self.bufs[b].1));
        let mut at: Vec<Option<Range<usize>>> = vec![None; self.bufs.len()];
        let mut top = 0;
        for b in order {
            let (words, first, last) = self.bufs[b];
            let mut busy: Vec<Range<usize>> = (0..self.bufs.len())
                .filter_map(|o| {
                    let (_, f, l) = self.bufs[o];
                    at[o].clone().filter(|_| f <= last && first <= l)
                })
                .collect();
            busy.sort_by_key(|r| r.start);
            let mut start = 0;
            for r in &busy {
                if r.start >= start + words {
                    break;
                }
                start = start.max(r.end);
            }
            top = top.max(start + words);
            at[b] = Some(start..start + words);
        }
        (at.into_iter().map(Option::unwrap_or_default).collect(), top)
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
    // Frozen nodes (a fine-tuning prefix) run forward only: they keep nothing for backward.
    let frozen = model.frozen;
    for (i, n) in nodes.iter().enumerate() {
        for &t in n.inputs.iter().take(n.layer.arity()) {
            last_use[t] = Some(i);
            held[t] |= i >= frozen && n.layer.holds_input();
        }
    }
    last_use[model.logits] = Some(nodes.len());
    if let Some(t) = (1..nt).find(|&t| last_use[t].is_none()) {
        return config_err(
            "model",
            alloc::format!("tensor {t} (output of {}) is never used", nodes[t - 1].name),
        );
    }

    if held[model.logits] {
        return config_err(
            "model output",
            "the logits are read by a layer that keeps its input; add a layer in between",
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

    // Activations: buffers of one pool with their spans of use. ReLU, BN, Add, GELU, dropout
    // and equal-size convs write over an input that dies with them (in place).
    let size = |t: usize| words_for_f32(numel(t));
    let reads = |n: &crate::model::Node| n.inputs[..n.layer.arity()].to_vec();
    let once = |n: &crate::model::Node, t: usize| reads(n).iter().filter(|&&u| u == t).count() == 1;
    let mut pool = Pool::default();
    let mut act = vec![usize::MAX; nt];
    let mut inplace = vec![false; nodes.len()];
    if !held[0] {
        act[0] = pool.alloc(size(0), 0);
    }
    for (i, n) in nodes.iter().enumerate() {
        let t0 = n.inputs[0];
        inplace[i] = n.layer.in_place(model.shapes[t0], model.shapes[n.output])
            && !n.layer.holds_input()
            && t0 != 0
            && !held[t0]
            && !held[n.output]
            && last_use[t0] == Some(i)
            && once(n, t0);
        if inplace[i] {
            act[n.output] = act[t0];
        } else if !held[n.output] {
            act[n.output] = pool.alloc(size(n.output), i);
        }
        for &t in &reads(n) {
            if !held[t] {
                pool.touch(act[t], i);
            }
        }
    }
    // Gradients, in backward time (node i runs at step 2N − i): the loss turns the logits into
    // their gradient in place at step N; an in-place layer whose input gradient starts with it
    // writes that over its output gradient.
    let steps = nodes.len();
    let back = |i: usize| 2 * steps - i;
    pool.touch(act[model.logits], steps);
    let mut gact: Vec<Option<usize>> = vec![None; nt];
    gact[model.logits] = Some(act[model.logits]);
    let mut acc = vec![[false; 2]; nodes.len()];
    let mut inplace_bwd = vec![false; nodes.len()];
    for (i, n) in nodes.iter().enumerate().rev().take(nodes.len() - frozen) {
        let dy = gact[n.output];
        if let Some(dy) = dy {
            pool.touch(dy, back(i));
        }
        let t0 = n.inputs[0];
        // No gradient for the model input, nor for what frozen nodes made.
        let wants = |t: usize| t > frozen;
        inplace_bwd[i] = n.layer.in_place(model.shapes[t0], model.shapes[n.output])
            && wants(t0)
            && gact[t0].is_none()
            && dy.is_some()
            && once(n, t0);
        if inplace_bwd[i] {
            gact[t0] = dy;
        }
        for (j, &t) in reads(n).iter().enumerate() {
            if !wants(t) || (j == 0 && inplace_bwd[i]) {
                continue;
            }
            match gact[t] {
                None => gact[t] = Some(pool.alloc(size(t), back(i))),
                Some(g) => {
                    acc[i][j] = true;
                    pool.touch(g, back(i));
                }
            }
        }
    }
    let (placed, pool_words) = pool.place();

    // Own contexts and scratch.
    let saved: Vec<Saved> = nodes
        .iter()
        .enumerate()
        .map(|(i, n)| match i < frozen {
            true => Saved::Nothing,
            false => n
                .layer
                .saved(batch, model.shapes[n.inputs[0]], model.shapes[n.output]),
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
    // Gradients and optimizer state only for the trained suffix of the parameters.
    let train_start = params.get(frozen).map_or(pf, |r| r.start);
    let tw = words_for_f32(pf - train_start);
    let regions_params = take(&mut cur, words_for_f32(pf));
    let regions_grads = take(&mut cur, tw);
    let regions_opt = take(&mut cur, opt_slots * tw);
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
    for (i, n) in nodes.iter().enumerate().skip(frozen) {
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
    let pool = cur;
    let regions_slots = take(&mut cur, pool_words);
    let shift = |r: &Range<usize>| pool + r.start..pool + r.end;
    for t in (0..nt).filter(|&t| !held[t]) {
        tensors[t] = shift(&placed[act[t]]);
    }
    let grads = gact
        .iter()
        .map(|g| g.map_or(0..0, |b| shift(&placed[b])))
        .collect();
    let regions_scratch = take(&mut cur, scratch_words);
    Ok(Plan {
        batch,
        frozen,
        train_start,
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
    })
}
