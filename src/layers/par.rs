//! Work split over sample groups: in parallel with rayon (feature `parallel`) inside the
//! trainer's own pool, else one group after another. Groups are built by the caller from
//! disjoint slices, so no group sees another's memory.

use crate::collections::msg;
use crate::error::{Error, Result};

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

/// Runs `f` on every item of `it`: one per worker, so at most [`MAX_THREADS`] (kept on the
/// stack); more is an error, never silently dropped work.
pub(crate) fn each<T: Send>(
    mut it: impl Iterator<Item = T>,
    f: impl Fn(T) -> Result<()> + Sync + Send,
) -> Result<()> {
    let mut groups: [Option<T>; MAX_THREADS] = [const { None }; MAX_THREADS];
    let mut k = 0;
    for (g, item) in groups.iter_mut().zip(&mut it) {
        *g = Some(item);
        k += 1;
    }
    if k == MAX_THREADS && it.next().is_some() {
        return Err(Error::Config {
            what: msg!("worker groups"),
            detail: msg!("more than {MAX_THREADS} groups of work were made"),
        });
    }
    run(&mut groups[..k], |g| g.take().map_or(Ok(()), &f))
}

/// Elements per group when `len` elements are split over `threads` workers, a multiple of 64
/// (so that 1-bit masks split on word boundaries).
pub(crate) fn elem_chunk(len: usize, threads: usize) -> usize {
    len.div_ceil(threads.clamp(1, MAX_THREADS))
        .div_ceil(64)
        .max(1)
        * 64
}

/// The most groups [`split`] makes for up to `n` samples: what scratch is planned for.
pub(crate) fn max_groups(n: usize, threads: usize) -> usize {
    threads.clamp(1, MAX_THREADS).min(n.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn each_runs_every_item_and_refuses_too_many() {
        let sum = AtomicUsize::new(0);
        let add = |i: usize| {
            sum.fetch_add(i, Ordering::Relaxed);
            Ok(())
        };
        each(0..MAX_THREADS, add).unwrap();
        assert_eq!(
            sum.load(Ordering::Relaxed),
            MAX_THREADS * (MAX_THREADS - 1) / 2
        );
        assert!(each(0..MAX_THREADS + 1, |_| Ok(())).is_err());
    }
}
