//! Work split over sample groups: in parallel with rayon (feature `parallel`) inside the
//! trainer's own pool, else one group after another. Groups are built by the caller from
//! disjoint slices, so no group sees another's memory.

use crate::error::Result;

/// Most worker threads a trainer uses (groups are kept on the stack).
pub(crate) const MAX_THREADS: usize = 64;

/// Runs `f` on every group.
pub(crate) fn run<G: Send>(
    groups: &mut [G],
    f: impl Fn(&mut G) -> Result<()> + Sync + Send,
) -> Result<()> {
    #[cfg(feature = "parallel")]
    if groups.len() > 1 {
        use rayon::prelude::*;
        return groups.par_iter_mut().try_for_each(f);
    }
    groups.iter_mut().try_for_each(f)
}

/// Samples per group when `n` samples are split over at most `threads` groups, and the number
/// of groups.
pub(crate) fn split(n: usize, threads: usize) -> (usize, usize) {
    let t = threads.clamp(1, MAX_THREADS).min(n.max(1));
    let per = n.div_ceil(t).max(1);
    (per, n.div_ceil(per).max(1))
}
