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
//!
//! A tensor that a backward reads but that can be rebuilt from what its producer keeps anyway
//! (`crate::rebuild`) is not held: the reader rebuilds it piece by piece in its scratch, or gets
//! an activation buffer for its backward step alone in which the trainer rebuilds it first.
//!
//! Every size comes from the layers' declarations ([`crate::layers::Needs`]); the plan is made
//! in named steps: declarations, readers and liveness, parameters, the activation pool, the
//! saved region (held tensors, contexts, shared packed copies), and the layout of the regions.

use crate::collections::{List, MAX_NODES, MAX_TENSORS, Push, msg};
use core::ops::Range;

use crate::arena::{MAX_TENSOR_ELEMS, words_for_bytes, words_for_f32};
use crate::error::{Error, Result, config_err};
use crate::layers::Needs;
use crate::model::{Model, Node};
use crate::rebuild::{self, Chain};
use crate::saved::SparseSave;
use dropit_simd::format::Format;

/// A list with one entry per node.
pub(crate) type PerNode<T> = List<T, MAX_NODES>;
/// A list with one entry per tensor.
pub(crate) type PerTensor<T> = List<T, MAX_TENSORS>;
/// The activation pool's buffers: at most a forward buffer and a gradient per tensor.
const MAX_BUFS: usize = 2 * MAX_TENSORS;
type PerBuf<T> = List<T, MAX_BUFS>;

/// `n` copies of `v` (the lists are sized for every tensor and node a model may have, so this
/// cannot run out of capacity).
fn repeat<T: Clone, L: FromIterator<T>>(v: T, n: usize) -> L {
    core::iter::repeat_n(v, n).collect()
}

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
    pub params: PerNode<Range<usize>>,
    /// Per node: its running statistics as a float range inside the state region.
    pub state: PerNode<Range<usize>>,
    /// Workers the plan is made for.
    pub threads: usize,
    /// Per tensor: its buffer (sized for the planned batch).
    pub tensors: PerTensor<Range<usize>>,
    /// Per tensor: its gradient's buffer (empty for the model input).
    pub grads: PerTensor<Range<usize>>,
    /// Per node and input: accumulate into the input's gradient (another reader wrote it first).
    pub acc: PerNode<[bool; 2]>,
    /// Per node: forward writes its output over its first input.
    pub inplace: PerNode<bool>,
    /// Per node: backward writes its first input's gradient over its output's.
    pub inplace_bwd: PerNode<bool>,
    /// Per node: its own saved context (its declared entries, in order).
    pub ctx: PerNode<Range<usize>>,
    /// Per node: its DropIT-packed input, if it keeps one.
    pub packed: PerNode<Option<PackedInput>>,
    /// Per node: its input, rebuilt before its backward, if it reads one that can be.
    pub rebuilt: PerNode<Option<RebuiltInput>>,
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

/// Where a layer's rebuilt input is made, and by which nodes.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RebuiltInput {
    /// The nodes that rebuild it, in order (see [`rebuild::chain`]).
    pub chain: Chain,
    /// Its buffer in the activation pool, live for the reader's backward step only; `None`
    /// when the reader takes it piece by piece (in its scratch).
    pub words: Option<Range<usize>>,
}

/// The regions of the arena.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Regions {
    pub params: Range<usize>,
    pub grads: Range<usize>,
    pub opt: Range<usize>,
    pub state: Range<usize>,
    pub saved: Range<usize>,
    /// The activation pool.
    pub pool: Range<usize>,
    pub scratch: Range<usize>,
}

/// Buffers of the activation pool, each a size and a span of time — forward steps 0..=N, then
/// backward steps N..=2N — placed once every span is known.
#[derive(Default)]
struct Pool {
    /// (words, first step, last step).
    bufs: PerBuf<(usize, usize, usize)>,
}

impl Pool {
    /// A new buffer of `words`, first used at step `at`.
    fn alloc(&mut self, words: usize, at: usize) -> Result<usize> {
        self.bufs.push_or((words, at, at), "activation buffers")?;
        Ok(self.bufs.len() - 1)
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
    fn place(&self) -> (PerBuf<Range<usize>>, usize) {
        let mut order: PerBuf<usize> = (0..self.bufs.len()).collect();
        // Unstable sort (no allocation) with the index last: the same order as a stable sort.
        order.sort_unstable_by_key(|&b| (core::cmp::Reverse(self.bufs[b].0), self.bufs[b].1, b));
        let mut at: PerBuf<Option<Range<usize>>> = repeat(None, self.bufs.len());
        let mut top = 0;
        for b in order {
            let (words, first, last) = self.bufs[b];
            let mut busy: PerBuf<Range<usize>> = (0..self.bufs.len())
                .filter_map(|o| {
                    let (_, f, l) = self.bufs[o];
                    at[o].clone().filter(|_| f <= last && first <= l)
                })
                .collect();
            busy.sort_unstable_by_key(|r| (r.start, r.end));
            let mut start = 0usize;
            for r in &busy {
                if r.start >= start.saturating_add(words) {
                    break;
                }
                start = start.max(r.end);
            }
            let end = start.saturating_add(words);
            top = top.max(end);
            at[b] = Some(start..end);
        }
        (at.into_iter().map(Option::unwrap_or_default).collect(), top)
    }
}

/// The next `words` of the arena. Sizes saturate rather than wrap (a layer's declaration of an
/// absurd size is `usize::MAX`): a cursor past [`MAX_WORDS`] is `Err(OutOfMemory)`.
fn take(cursor: &mut usize, words: usize) -> Result<Range<usize>> {
    match cursor.checked_add(words).filter(|&end| end <= MAX_WORDS) {
        Some(end) => {
            let r = *cursor..end;
            *cursor = end;
            Ok(r)
        }
        None => Err(Error::OutOfMemory {
            bytes: cursor.saturating_add(words).saturating_mul(8),
        }),
    }
}

/// The most words an arena can have (its bytes must fit in `isize`).
const MAX_WORDS: usize = isize::MAX as usize / 8;

/// Refuses a batch whose tensors are too large to lay out: every later size is computed from
/// tensors of at most [`MAX_TENSOR_ELEMS`] elements, and cannot wrap.
fn check_sizes(model: &Model, batch: usize) -> Result<()> {
    for s in &model.shapes {
        if s.numel()
            .checked_mul(batch)
            .is_none_or(|e| e > MAX_TENSOR_ELEMS)
        {
            return Err(Error::OutOfMemory {
                bytes: s.numel().saturating_mul(batch).saturating_mul(4),
            });
        }
    }
    Ok(())
}

/// The tensors a node reads (one, or two for a residual add).
fn reads(n: &Node) -> &[usize] {
    &n.inputs[..n.layer.arity()]
}

/// Whether node `n` reads tensor `t` exactly once.
fn reads_once(n: &Node, t: usize) -> bool {
    reads(n).iter().filter(|&&u| u == t).count() == 1
}

/// Step 1: every node's declaration for the planned batch; frozen nodes keep nothing. (Not
/// kept in the plan: the trainer asks each layer again for the batch at hand, and the memory
/// report asks again too; both then apply [`Plan::rebuilt`].)
pub(crate) fn declare(model: &Model, batch: usize, threads: usize) -> PerNode<Needs> {
    model
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let (x, y) = (model.shapes[n.inputs[0]], model.shapes[n.output]);
            let needs = n.layer.needs(batch, x, y, threads);
            if i < model.frozen {
                needs.frozen()
            } else {
                needs
            }
        })
        .collect()
}

/// Node `i`'s declaration as planned: not holding or packing an input the plan rebuilds.
pub(crate) fn as_planned(plan: &Plan, i: usize, needs: Needs) -> Needs {
    if plan.rebuilt.get(i).is_some_and(Option::is_some) {
        rebuild::rebuilt(needs)
    } else {
        needs
    }
}

/// Step 2: who makes and who reads each tensor, and which tensors a backward reads as they are
/// (held in the saved region, once however many read them).
struct Readers {
    /// Per tensor: the node that makes it (`None`: the model input).
    producer: PerTensor<Option<usize>>,
    /// Per tensor: its last reader (the loss, after every node, for the logits).
    last_use: PerTensor<usize>,
    /// Per tensor: held for backward.
    held: PerTensor<bool>,
    /// Per tensor: whether its gradient is of use — it was made by a trained node that has
    /// parameters or reads such a tensor. The mlp's flatten output is not: the first Linear
    /// computes no input gradient, and the flatten no backward.
    wants_grad: PerTensor<bool>,
}

impl Readers {
    fn of(model: &Model, needs: &[Needs]) -> Result<Self> {
        let nt = model.shapes.len();
        let mut producer: PerTensor<Option<usize>> = repeat(None, nt);
        let mut last_use: PerTensor<Option<usize>> = repeat(None, nt);
        let mut held: PerTensor<bool> = repeat(false, nt);
        let mut wants_grad: PerTensor<bool> = repeat(false, nt);
        for (i, n) in model.nodes.iter().enumerate() {
            producer[n.output] = Some(i);
            wants_grad[n.output] = i >= model.frozen
                && (n.layer.param_count() > 0 || reads(n).iter().any(|&t| wants_grad[t]));
            for &t in reads(n) {
                last_use[t] = Some(i);
                held[t] |= needs[i].holds_input;
            }
        }
        last_use[model.logits] = Some(model.nodes.len());
        if let Some(t) = (0..nt).find(|&t| last_use[t].is_none()) {
            let by = producer[t].map_or("the model input", |i| model.nodes[i].name.as_str());
            return config_err("model", msg!("tensor {t} (output of {by}) is never used"));
        }
        if held[model.logits] {
            return config_err(
                "model output",
                "the logits are read by a layer that keeps its input; add a layer in between",
            );
        }
        Ok(Readers {
            producer,
            last_use: last_use
                .into_iter()
                .map(Option::unwrap_or_default)
                .collect(),
            held,
            wants_grad,
        })
    }
}

/// Step 3: parameters and running statistics, node by node, as float ranges.
fn lay_params(model: &Model) -> (PerNode<Range<usize>>, PerNode<Range<usize>>) {
    let (mut pf, mut sf) = (0usize, 0usize);
    model
        .nodes
        .iter()
        .map(|n| {
            let p = pf..pf.saturating_add(n.layer.param_count());
            let s = sf..sf.saturating_add(n.layer.state_count());
            (pf, sf) = (p.end, s.end);
            (p, s)
        })
        .unzip()
}

/// Step 4: the activation pool — every unheld tensor and every gradient as a buffer with its
/// span of use, forward steps 0..=N then backward steps N..=2N, and which nodes run in place.
struct Activations {
    pool: Pool,
    /// Per tensor: its forward buffer (unheld tensors).
    act: PerTensor<usize>,
    /// Per tensor: its gradient's buffer.
    grad: PerTensor<Option<usize>>,
    inplace: PerNode<bool>,
    inplace_bwd: PerNode<bool>,
    acc: PerNode<[bool; 2]>,
    /// Per node: the buffer its input is rebuilt in.
    rebuilt: PerNode<Option<usize>>,
}

impl Activations {
    fn plan(
        model: &Model,
        batch: usize,
        needs: &[Needs],
        chains: &[Option<Chain>],
        r: &Readers,
    ) -> Result<Self> {
        let (nodes, frozen) = (&model.nodes, model.frozen);
        let nt = model.shapes.len();
        let size = |t: usize| words_for_f32(batch * model.shapes[t].numel());
        let mut pool = Pool::default();
        let mut act: PerTensor<usize> = repeat(usize::MAX, nt);
        let mut inplace: PerNode<bool> = repeat(false, nodes.len());
        // Forward: ReLU, BN, Add, GELU, dropout and equal-size convs write over an input that
        // dies with them.
        for t in (0..nt).filter(|&t| r.producer[t].is_none() && !r.held[t]) {
            act[t] = pool.alloc(size(t), 0)?;
        }
        for (i, n) in nodes.iter().enumerate() {
            let t0 = n.inputs[0];
            inplace[i] = needs[i].in_place
                && !needs[i].holds_input
                && r.producer[t0].is_some()
                && !r.held[t0]
                && !r.held[n.output]
                && r.last_use[t0] == i
                && reads_once(n, t0);
            if inplace[i] {
                act[n.output] = act[t0];
            } else if !r.held[n.output] {
                act[n.output] = pool.alloc(size(n.output), i)?;
            }
            for &t in reads(n).iter().filter(|&&t| !r.held[t]) {
                pool.touch(act[t], i);
            }
        }
        // Backward (node i runs at step 2N − i): the loss turns the logits into their gradient
        // in place at step N; an in-place layer whose input gradient starts with it writes that
        // over its output gradient; a second contribution to a gradient adds.
        let steps = nodes.len();
        let back = |i: usize| 2 * steps - i;
        pool.touch(act[model.logits], steps);
        let mut grad: PerTensor<Option<usize>> = repeat(None, nt);
        grad[model.logits] = Some(act[model.logits]);
        let mut acc: PerNode<[bool; 2]> = repeat([false; 2], nodes.len());
        let mut inplace_bwd: PerNode<bool> = repeat(false, nodes.len());
        let mut rebuilt: PerNode<Option<usize>> = repeat(None, nodes.len());
        for (i, n) in nodes.iter().enumerate().rev().take(nodes.len() - frozen) {
            if chains[i].is_some() && needs[i].rebuild_scratch.is_none() {
                rebuilt[i] = Some(pool.alloc(size(n.inputs[0]), back(i))?);
            }
            let dy = grad[n.output];
            if let Some(dy) = dy {
                pool.touch(dy, back(i));
            }
            let t0 = n.inputs[0];
            inplace_bwd[i] = needs[i].in_place
                && r.wants_grad[t0]
                && grad[t0].is_none()
                && dy.is_some()
                && reads_once(n, t0);
            if inplace_bwd[i] {
                grad[t0] = dy;
            }
            for (j, &t) in reads(n).iter().enumerate() {
                if !r.wants_grad[t] || (j == 0 && inplace_bwd[i]) {
                    continue;
                }
                match grad[t] {
                    None => grad[t] = Some(pool.alloc(size(t), back(i))?),
                    Some(g) => {
                        acc[i][j] = true;
                        pool.touch(g, back(i));
                    }
                }
            }
        }
        Ok(Activations {
            pool,
            act,
            grad,
            inplace,
            inplace_bwd,
            acc,
            rebuilt,
        })
    }
}

/// The saved region's layout: held tensors' ranges, each node's context, packed inputs.
type Saved = (
    PerTensor<Range<usize>>,
    PerNode<Range<usize>>,
    PerNode<Option<PackedInput>>,
);

/// Step 5, the saved region: held tensors, each node's own context, and the DropIT-packed
/// inputs — one per (tensor, settings), shared by every reader with those settings. Returns
/// the held tensors' ranges, the contexts and the packed inputs.
fn lay_saved(
    model: &Model,
    batch: usize,
    needs: &[Needs],
    held: &[bool],
    cur: &mut usize,
) -> Result<Saved> {
    let numel = |t: usize| batch * model.shapes[t].numel();
    let mut tensors: PerTensor<Range<usize>> = repeat(0..0, model.shapes.len());
    for t in (0..model.shapes.len()).filter(|&t| held[t]) {
        tensors[t] = take(cur, words_for_f32(numel(t)))?;
    }
    let ctx = needs
        .iter()
        .map(|n| take(cur, n.saved_words()))
        .collect::<Result<PerNode<_>>>()?;
    let mut packed: PerNode<Option<PackedInput>> = repeat(None, model.nodes.len());
    let mut owners: PerNode<(usize, SparseSave, PackedInput)> = List::new();
    for (i, n) in model.nodes.iter().enumerate() {
        let Some(sp) = &needs[i].packed else {
            continue;
        };
        let t = n.inputs[0];
        if let Some((_, _, p)) = owners.iter().find(|(tt, ss, _)| *tt == t && ss == sp) {
            packed[i] = Some(PackedInput {
                packs: false,
                ..p.clone()
            });
            continue;
        }
        let one = model.shapes[t].numel();
        if sp.kept(batch, one) == 0 {
            return config_err(
                &n.name,
                msg!(
                    "DropIT keeps {} of {} elements: none, so its weight gradient would be zero",
                    sp.keep,
                    batch * one
                ),
            );
        }
        let p = PackedInput {
            words: take(cur, words_for_bytes(sp.bytes(batch, one)))?,
            format: sp.format(batch, one),
            packs: true,
        };
        packed[i] = Some(p.clone());
        owners.push_or((t, *sp, p), "packed inputs")?;
    }
    Ok((tensors, ctx, packed))
}

/// Plans `model` for batches of up to `batch` samples, with `opt_slots` optimizer floats per
/// parameter and `threads` workers, rebuilding inputs where it can if `rebuild_inputs`.
///
/// Inputs that can be rebuilt are rebuilt one candidate at a time, in execution order,
/// wherever that does not make the arena larger (the rebuilt input's buffer can raise the
/// activations' peak by more than the copy it saves) — or, for a DropIT layer, larger by at
/// most the sparse copy it replaces: an exact weight gradient is worth that much (a bf16 copy
/// of a small late layer cost the mobilenet 0.4 points of accuracy where rebuilding cost 40 KB).
pub(crate) fn plan(
    model: &Model,
    batch: usize,
    opt_slots: usize,
    threads: usize,
    rebuild_inputs: bool,
) -> Result<Plan> {
    if batch == 0 {
        return config_err("batch size", "must be at least 1");
    }
    check_sizes(model, batch)?;
    let declared = declare(model, batch, threads);
    let mut chains: PerNode<Option<Chain>> = repeat(None, declared.len());
    // Only the sizes are compared, so that one plan at a time is on the stack (a
    // microcontroller's is small).
    let words = |c: &[Option<Chain>]| {
        plan_with(model, batch, opt_slots, threads, &declared, c).map(|p| p.total_words)
    };
    let mut best = words(&chains)?;
    for (i, n) in declared.iter().enumerate().filter(|_| rebuild_inputs) {
        chains[i] = rebuild::candidate(model, i, n);
        if chains[i].is_none() {
            continue;
        }
        let copy = n.packed.as_ref().map_or(0, |sp| {
            let numel = model.shapes[model.nodes[i].inputs[0]].numel();
            words_for_bytes(sp.bytes(batch, numel))
        });
        match words(&chains) {
            Ok(w) if w <= best.saturating_add(copy) => best = w,
            _ => chains[i] = None,
        }
    }
    plan_with(model, batch, opt_slots, threads, &declared, &chains)
}

/// The plan with the inputs of the nodes that have a chain rebuilt.
fn plan_with(
    model: &Model,
    batch: usize,
    opt_slots: usize,
    threads: usize,
    declared: &[Needs],
    chains: &[Option<Chain>],
) -> Result<Plan> {
    let needs: PerNode<Needs> = declared
        .iter()
        .zip(chains)
        .map(|(n, c)| match c {
            Some(_) => rebuild::rebuilt(n.clone()),
            None => n.clone(),
        })
        .collect();
    let readers = Readers::of(model, &needs)?;
    let (params, state) = lay_params(model);
    let acts = Activations::plan(model, batch, &needs, chains, &readers)?;
    let (placed, pool_words) = acts.pool.place();
    let scratch_words = needs.iter().map(|n| n.scratch).max().unwrap_or(0);

    // Lay the regions out. Gradients and optimizer state only for the trained suffix of the
    // parameters.
    let frozen = model.frozen;
    let pf = params.last().map_or(0, |r| r.end);
    let sf = state.last().map_or(0, |r| r.end);
    let train_start = params.get(frozen).map_or(pf, |r| r.start);
    let tw = words_for_f32(pf - train_start);
    let mut cur = 0;
    let regions_params = take(&mut cur, words_for_f32(pf))?;
    let regions_grads = take(&mut cur, tw)?;
    let regions_opt = take(&mut cur, opt_slots.saturating_mul(tw))?;
    let regions_state = take(&mut cur, words_for_f32(sf))?;
    let saved_start = cur;
    let (mut tensors, ctx, packed) = lay_saved(model, batch, &needs, &readers.held, &mut cur)?;
    let regions_saved = saved_start..cur;
    let pool = cur;
    let regions_pool = take(&mut cur, pool_words)?;
    let shift = |r: &Range<usize>| pool + r.start..pool + r.end;
    for t in (0..tensors.len()).filter(|&t| !readers.held[t]) {
        tensors[t] = shift(&placed[acts.act[t]]);
    }
    let rebuilt = chains
        .iter()
        .zip(&acts.rebuilt)
        .map(|(c, b)| {
            Some(RebuiltInput {
                chain: c.clone()?,
                words: b.map(|b| shift(&placed[b])),
            })
        })
        .collect();
    let grads = acts
        .grad
        .iter()
        .map(|g| g.map_or(0..0, |b| shift(&placed[b])))
        .collect();
    let regions_scratch = take(&mut cur, scratch_words)?;
    Ok(Plan {
        batch,
        frozen,
        train_start,
        params,
        state,
        threads,
        tensors,
        grads,
        acc: acts.acc,
        inplace: acts.inplace,
        inplace_bwd: acts.inplace_bwd,
        ctx,
        packed,
        rebuilt,
        regions: Regions {
            params: regions_params,
            grads: regions_grads,
            opt: regions_opt,
            state: regions_state,
            saved: regions_saved,
            pool: regions_pool,
            scratch: regions_scratch,
        },
        total_words: cur,
    })
}
