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

/// Runs `f` on this worker of a rayon pool while one other worker of the pool polls for work
/// (`rayon::yield_now`) instead of going to sleep, until `f` returns: each parallel region
/// inside `f` then starts on an awake worker. A sleeping rayon worker takes tens of
/// microseconds to wake (the OS must schedule it), which on small layers costs as much as
/// their work; OpenMP runtimes spin likewise. The helper yields the CPU to the OS between
/// polls once it has found nothing for a while. No allocation: the helper is a stack job of
/// `rayon::join`.
///
/// One helper, never more: it is the oldest job in this worker's queue, so the first worker
/// to steal from it takes the helper while that worker is idle, never from inside another job
/// (a helper running inside a job that `f` waits for would wait for `f` in turn). With `awake`
/// false, `f` just runs.
#[cfg(feature = "parallel")]
pub(crate) fn with_helper<R: Send>(awake: bool, f: impl FnOnce() -> R + Send) -> R {
    use core::sync::atomic::AtomicBool;
    /// Sets the flag when dropped: also when `f` panics, so the helper stops.
    struct Done<'a>(&'a AtomicBool);
    impl Drop for Done<'_> {
        fn drop(&mut self) {
            self.0.store(true, core::sync::atomic::Ordering::Release);
        }
    }
    if !awake {
        return f();
    }
    let done = AtomicBool::new(false);
    let home = rayon::current_thread_index();
    let (r, ()) = rayon::join(
        || {
            let _done = Done(&done);
            f()
        },
        || poll(&done, home),
    );
    r
}

/// Empty looks after which the helper yields the CPU to the OS between polls.
#[cfg(feature = "parallel")]
const SPINS: u32 = 2_000;

/// The helper: runs pending work of the pool until `done`. On the worker running `f` itself
/// (which picks an unstolen helper back up while it waits) it returns at once, or `f` could
/// never finish.
#[cfg(feature = "parallel")]
fn poll(done: &core::sync::atomic::AtomicBool, home: Option<usize>) {
    use core::sync::atomic::Ordering;
    if rayon::current_thread_index() == home {
        return;
    }
    let mut idle = 0u32;
    while !done.load(Ordering::Acquire) {
        match rayon::yield_now() {
            Some(rayon::Yield::Executed) => idle = 0,
            Some(rayon::Yield::Idle) if idle < SPINS => {
                idle += 1;
                core::hint::spin_loop();
            }
            Some(rayon::Yield::Idle) => std::thread::yield_now(),
            None => return,
        }
    }
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

    #[cfg(feature = "parallel")]
    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[cfg(feature = "parallel")]
    #[test]
    fn the_helper_runs_work_until_f_returns_then_stops() {
        for threads in 1..=4 {
            let sum = AtomicUsize::new(0);
            let r = pool(threads).install(|| {
                with_helper(threads > 1, || {
                    for _ in 0..200 {
                        each(0..threads, |i| {
                            sum.fetch_add(i + 1, Ordering::Relaxed);
                            // Nested regions, as a layer inside a worker's group may run.
                            each(0..2, |j| {
                                sum.fetch_add(j, Ordering::Relaxed);
                                Ok(())
                            })
                        })
                        .unwrap();
                    }
                    7
                })
            });
            assert_eq!(r, 7);
            let per = threads * (threads + 1) / 2 + threads;
            assert_eq!(sum.load(Ordering::Relaxed), 200 * per, "{threads} threads");
        }
    }

    #[cfg(feature = "parallel")]
    #[test]
    fn a_panic_inside_stops_the_helper_and_leaves_the_pool_usable() {
        let p = pool(2);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            p.install(|| with_helper(true, || -> usize { panic!("inside") }))
        }));
        assert!(r.is_err());
        assert_eq!(p.install(|| with_helper(true, || 3)), 3);
    }

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
