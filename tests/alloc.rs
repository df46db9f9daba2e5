//! Steps allocate nothing, and the measured peak is the plan (plus the trainer's small
//! bookkeeping). A plain `main` (no test harness): nothing else in the process allocates while
//! it counts — libtest's main thread would, to announce a test running over 60 s (emulation).
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
    let mut per_step = Vec::with_capacity(32);
    let built = ALLOC.allocations();
    for _ in 0..20 {
        let a = ALLOC.allocations();
        t.step(&x, &y).unwrap();
        per_step.push(ALLOC.allocations() - a);
    }
    let a = ALLOC.allocations();
    t.step(&x[..small.len() * per], small).unwrap();
    per_step.push(ALLOC.allocations() - a);
    let a = ALLOC.allocations();
    t.evaluate(&x, &y).unwrap();
    per_step.push(ALLOC.allocations() - a);
    let during = ALLOC.allocations() - built;
    let peak = ALLOC.peak() - before;
    let nodes = t.model().nodes().len();
    assert_eq!(
        during, 0,
        "{nodes}-node model, {threads} threads: steps and evaluation allocated {during} times (per step {per_step:?})"
    );
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

/// A long loop with workers, run on the workers: no allocation at all.
fn long_loop_on_workers() {
    let n = 8;
    let (x, y) = (data(n * 784, 3), labels(n, 10, 4));
    let mut cfg = config(n);
    cfg.threads = 2;
    let mut t = Trainer::new(Model::mlp().unwrap(), cfg).unwrap();
    // Let the workers of pools dropped earlier finish exiting (they free as they go).
    std::thread::sleep(std::time::Duration::from_millis(300));
    let before = ALLOC.allocations();
    t.with_workers(|t| {
        for _ in 0..200 {
            t.step(&x, &y).unwrap();
        }
    });
    assert_eq!(ALLOC.allocations() - before, 0);
}

/// After its first batch, the batcher allocates nothing, epoch after epoch.
fn batcher_reuses_buffers() {
    let dir = std::path::PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/data/fashion-mnist-subset"
    ));
    let (_, test) = dropit::data::fashion_mnist(&dir).unwrap();
    let mut b = dropit::data::Batcher::new(&test, 64, &[0.286], &[0.353], 3).unwrap();
    b.next_batch();
    let before = ALLOC.allocations();
    for _ in 0..3 * b.batches_per_epoch() {
        b.next_batch();
    }
    assert_eq!(ALLOC.allocations() - before, 0, "the batcher allocated");
}

/// Reading IDX holds the body once: a raw file costs its payload (plus the small header and
/// reader buffers), and a gzip stream that declares 1 GiB but holds 1 MiB costs about what it
/// holds, not what it declares; a gzip bomb behind a small header is refused after the header's
/// bytes, not inflated whole.
fn idx_memory_is_what_the_data_holds() {
    use std::io::Write;
    let idx = |len: u32, body: usize| {
        let mut raw = vec![0, 0, 8, 1];
        raw.extend_from_slice(&len.to_be_bytes());
        raw.extend(std::iter::repeat_n(3u8, body));
        raw
    };
    let raw = idx(1 << 20, 1 << 20);
    let before = ALLOC.current();
    ALLOC.reset_peak();
    let read = dropit::data::read_idx(&raw).unwrap();
    let peak = ALLOC.peak() - before;
    assert_eq!(read.data.len(), 1 << 20);
    assert!(
        peak < (1 << 20) + (64 << 10),
        "raw IDX of 1 MiB peaked at {peak} bytes"
    );
    drop(read);
    let gzip = |raw: &[u8]| {
        let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        z.write_all(raw).unwrap();
        z.finish().unwrap()
    };
    for (what, gz, bound) in [
        (
            "declaring 1 GiB, holding 1 MiB",
            gzip(&idx(1 << 30, 1 << 20)),
            4 << 20,
        ),
        (
            "declaring 16 bytes, inflating to 64 MiB",
            gzip(&idx(16, 64 << 20)),
            1 << 20,
        ),
    ] {
        let before = ALLOC.current();
        ALLOC.reset_peak();
        assert!(dropit::data::read_idx(&gz).is_err(), "{what}");
        let peak = ALLOC.peak() - before;
        assert!(peak < bound, "gzip IDX {what} peaked at {peak} bytes");
    }
}

fn steps_allocate_nothing_and_peak_is_the_plan() {
    idx_memory_is_what_the_data_holds();
    batcher_reuses_buffers();
    check(Model::mlp().unwrap(), 32, 1);
    check(Model::cnn().unwrap(), 8, 1);
    check(Model::cnn().unwrap(), 8, 2);
    let vit = |dropout: f32| {
        let cfg = dropit::VitConfig {
            dropout,
            ..Default::default()
        };
        Model::vision_transformer(&cfg).unwrap()
    };
    check(vit(0.1), 8, 1);
    let lean = dropit::DropIt::new(0.9).lean(true);
    check(vit(0.0).with_dropit(&lean).unwrap(), 8, 2);
    // Last: a dropped pool's threads may still be winding down (and freeing) for a while.
    long_loop_on_workers();
}

fn main() {
    steps_allocate_nothing_and_peak_is_the_plan();
    println!("alloc: 1 passed, 0 failed");
}
