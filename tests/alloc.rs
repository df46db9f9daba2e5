//! Steps allocate nothing, and the measured peak is the plan (plus the trainer's small
//! bookkeeping). One test in this binary, so no other test allocates while it counts.
mod common;

use common::{config, data, labels};
use dropit::memory::PeakAlloc;
use dropit::{Model, Trainer};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc::new();

/// Bytes a trainer may hold beyond its arena: the plan's per-node tables and the model's names
/// (documented on `Trainer::new`).
const BOOKKEEPING: usize = Trainer::BOOKKEEPING_MAX;

fn check(model: Model, batch: usize, threads: usize) {
    let per = model.input_shape().numel();
    let classes = model.classes();
    let x = data(batch * per, 1);
    let y = labels(batch, classes, 2);
    let small = &y[..batch / 2];
    let before = ALLOC.current();
    ALLOC.reset_peak();
    let mut cfg = config(batch);
    cfg.threads = threads;
    let mut t = Trainer::new(model, cfg).unwrap();
    let arena = t.arena_bytes();
    let built = ALLOC.allocations();
    for _ in 0..20 {
        t.step(&x, &y).unwrap();
    }
    t.step(&x[..small.len() * per], small).unwrap();
    t.evaluate(&x, &y).unwrap();
    let during = ALLOC.allocations() - built;
    let peak = ALLOC.peak() - before;
    assert_eq!(during, 0, "steps and evaluation allocated {during} times");
    assert!(peak >= arena, "peak {peak} below the arena {arena}");
    assert!(
        peak <= arena + BOOKKEEPING,
        "peak {peak} exceeds the arena {arena} + {BOOKKEEPING}"
    );
    let report = t.memory_report();
    assert_eq!(report.total, arena);
    assert_eq!(
        report.params
            + report.grads
            + report.optimizer
            + report.state
            + report.saved
            + report.activations
            + report.scratch,
        arena
    );
}

#[test]
fn steps_allocate_nothing_and_peak_is_the_plan() {
    check(Model::mlp().unwrap(), 32, 1);
    check(Model::cnn().unwrap(), 8, 1);
    check(Model::cnn().unwrap(), 8, 2);
}
