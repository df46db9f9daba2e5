//! Keep only what cannot be rebuilt: a Linear or convolution reads its input again in backward
//! (for its weight gradient), but when that input is a layer's output that the layer can
//! rebuild from what it keeps anyway — a batch or layer norm's `γ·x̂ + β` from its x̂, GELU of
//! its kept input, then any ReLU, ReLU6 or dropout on top — nobody holds it: the reader's
//! backward rebuilds it piece by piece in its scratch where it declared it can
//! (`Needs::rebuild_scratch`: a 3×3 convolution one sample at a time, a Linear 256 rows at a
//! time), and otherwise the trainer rebuilds it first into an activation buffer that lives for
//! that one step. Each layer declares what it can rebuild ([`Rebuild`]); this module follows
//! those declarations back from a tensor to the layer that keeps what it is made of, and the
//! planner rebuilds wherever that makes the plan smaller (a rebuilt input needs no copy, but
//! its buffer can raise the activations' peak: a 10% sparse copy may be smaller). A reader that
//! would have kept a DropIT copy then computes an exact weight gradient.

use crate::layers::{Needs, Rebuild};
use crate::model::Model;
use heapless::Vec as HVec;

/// Longest chain followed: a norm and three elementwise layers on top of it.
pub(crate) const MAX_CHAIN: usize = 4;

/// The nodes that rebuild a tensor, in the order they run: the first rebuilds from its own
/// saved context, each next one transforms the buffer in place.
pub(crate) type Chain = HVec<usize, MAX_CHAIN>;

/// How tensor `t` of `model` can be rebuilt in backward, if it can: only from trained nodes
/// (a frozen node keeps no context).
pub(crate) fn chain(model: &Model, t: usize) -> Option<Chain> {
    let mut rev = Chain::new();
    let mut t = t;
    loop {
        let p = model.nodes.iter().position(|n| n.output == t)?;
        if p < model.frozen {
            return None;
        }
        rev.push(p).ok()?;
        match model.nodes[p].layer.rebuilds() {
            Rebuild::No => return None,
            Rebuild::FromSaved => break,
            Rebuild::FromInput => t = model.nodes[p].inputs[0],
        }
    }
    rev.reverse();
    Some(rev)
}

/// The chain that could rebuild node `i`'s input, if its backward reads the input (held, or
/// packed by DropIT) and the input can be rebuilt.
pub(crate) fn candidate(model: &Model, i: usize, needs: &Needs) -> Option<Chain> {
    if !(needs.holds_input || needs.packed.is_some()) {
        return None;
    }
    chain(model, model.nodes[i].inputs[0])
}

/// Node `i`'s declaration once its input is rebuilt: it neither holds nor packs it, and when
/// it takes the input piece by piece it needs that scratch more.
pub(crate) fn rebuilt(mut needs: Needs) -> Needs {
    needs.holds_input = false;
    needs.packed = None;
    needs.scratch = needs
        .scratch
        .saturating_add(needs.rebuild_scratch.unwrap_or(0));
    needs
}
