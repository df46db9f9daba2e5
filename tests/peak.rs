//! Peak memory of DropIT against dense, measured by the tracking allocator (exact bytes), and
//! the RAM budget. Ratios are to dense training that keeps every input it reads again (as
//! PyTorch does); dense training that rebuilds what it can must be below that. A plain `main` (no test harness), so nothing else allocates while it measures.
mod common;

use common::{config, data, labels};
use dropit::memory::PeakAlloc;
use dropit::{DropIt, Error, Model, Trainer, TrainerConfig};

#[global_allocator]
static ALLOC: PeakAlloc = PeakAlloc::new();

/// Peak bytes of building a trainer and taking two steps, above what was allocated before.
fn peak_of(build: impl FnOnce() -> Trainer<'static>, x: &[f32], y: &[u32]) -> (usize, usize) {
    let before = ALLOC.current();
    ALLOC.reset_peak();
    let mut t = build();
    t.step(x, y).unwrap();
    t.step(x, y).unwrap();
    (ALLOC.peak() - before, t.arena_bytes())
}

fn dropit_peaks_and_budget() {
    let n = 64;
    let x = data(n * 784, 1);
    let y = labels(n, 10, 2);
    let model = Model::cnn().unwrap();
    let run = |d: DropIt| {
        let m = model.clone().with_dropit(&d).unwrap();
        peak_of(|| Trainer::new(m, config(n)).unwrap(), &x, &y)
    };
    let (kept, _) = peak_of(
        || Trainer::new(model.clone(), keeping(config(n))).unwrap(),
        &x,
        &y,
    );
    let (dense, _) = run(DropIt::dense());
    let (sparse, _) = run(DropIt::new(0.9));
    let (lean, _) = run(DropIt::new(0.9).lean(true));
    let (lean16, _) = run(DropIt::new(0.9).lean(true).int8_norms(false));
    let (r, rl) = (sparse as f64 / kept as f64, lean as f64 / kept as f64);
    println!(
        "cnn batch 64 peak: dense keeping its inputs {kept} B, dense {dense} B ({:.3}), γ=0.9 {sparse} B ({r:.3}), γ=0.9 lean {lean} B ({rl:.3}), γ=0.9 lean with bf16 norms {lean16} B ({:.3})",
        dense as f64 / kept as f64,
        lean16 as f64 / kept as f64
    );
    assert!(lean < lean16, "8-bit norms did not lower the lean peak");
    assert!(dense < kept, "rebuilding did not lower the dense peak");
    assert!(r <= 0.75, "γ=0.9 peak ratio {r}");
    assert!(rl <= 0.38, "γ=0.9 lean peak ratio {rl}");

    // A budget between the lean and the plain γ=0.9 plans: a plan is chosen and its measured
    // peak fits.
    let budget = (sparse + lean) / 2;
    let mut chosen = None;
    let (peak, arena) = peak_of(
        || {
            let (t, policy) =
                Trainer::with_budget(model.clone(), config(n), &DropIt::new(0.0), budget).unwrap();
            chosen = Some(policy);
            t
        },
        &x,
        &y,
    );
    let policy = chosen.unwrap();
    assert!(
        peak <= budget,
        "peak {peak} over the budget {budget} ({policy:?})"
    );
    assert!(arena + Trainer::BOOKKEEPING_MAX <= budget);
    // Not the dense f32 plan: dropping or lean forms (dense and lean fits here too).
    assert!(policy.gamma >= 0.5 || policy.lean, "{policy:?}");
    // The dense plan fits a generous budget untouched.
    let (_, p) =
        Trainer::with_budget(model.clone(), config(n), &DropIt::new(0.0), 4 * dense).unwrap();
    assert_eq!((p.gamma, p.lean), (0.0, false));
    // Too small: the error says what the smallest plan needs.
    match Trainer::with_budget(model.clone(), config(n), &DropIt::new(0.0), 1 << 20) {
        Err(Error::BudgetTooSmall { needed }) => {
            assert!(needed > 1 << 20 && needed < lean, "{needed}")
        }
        other => panic!("expected BudgetTooSmall, got {:?}", other.map(|(_, p)| p)),
    }
}

/// The configuration with every input kept (no rebuilding).
fn keeping(cfg: TrainerConfig) -> TrainerConfig {
    TrainerConfig {
        rebuild_inputs: false,
        ..cfg
    }
}

/// A reference workload at batch 64: dense, γ = 0.9, γ = 0.9 lean. Returns the peak ratios
/// (γ = 0.9, lean) to dense keeping its inputs.
fn peaks(name: &str, model: fn() -> dropit::Result<Model>, cfg: TrainerConfig) -> (f64, f64) {
    let n = cfg.batch;
    let (x, y) = (data(n * 784, 3), labels(n, 10, 4));
    let run = |d: DropIt| {
        let m = model().unwrap().with_dropit(&d).unwrap();
        peak_of(|| Trainer::new(m, cfg).unwrap(), &x, &y)
    };
    let kept = peak_of(
        || Trainer::new(model().unwrap(), keeping(cfg)).unwrap(),
        &x,
        &y,
    )
    .0;
    let (dense, _) = run(DropIt::dense());
    let (sparse, _) = run(DropIt::new(0.9));
    let (lean, arena) = run(DropIt::new(0.9).lean(true));
    let (lean16, _) = run(DropIt::new(0.9).lean(true).int8_norms(false));
    let (r, rl) = (sparse as f64 / kept as f64, lean as f64 / kept as f64);
    println!(
        "{name} batch {n} peak: dense keeping its inputs {kept} B, dense {dense} B ({:.3}), γ=0.9 {sparse} B ({r:.3}), γ=0.9 lean {lean} B ({rl:.3}), γ=0.9 lean with bf16 norms {lean16} B ({:.3})",
        dense as f64 / kept as f64,
        lean16 as f64 / kept as f64
    );
    assert!(
        lean < lean16,
        "{name}: 8-bit norms did not lower the lean peak"
    );
    assert!(
        dense < kept,
        "{name}: rebuilding did not lower the dense peak"
    );
    assert!(lean <= arena + Trainer::BOOKKEEPING_MAX);
    (r, rl)
}

fn vit_peaks() {
    let (r, rl) = peaks("vit", Model::vit, TrainerConfig::adamw_recipe(64, 100));
    assert!(r <= 0.70, "γ=0.9 peak ratio {r}");
    assert!(rl <= 0.35, "γ=0.9 lean peak ratio {rl}");
}

fn mobilenet_peaks() {
    let (r, rl) = peaks(
        "mobilenet",
        Model::mobilenet,
        TrainerConfig::sgd_recipe(64, 100),
    );
    assert!(r < 1.0 && rl <= 0.31, "peak ratios {r}, {rl}");
}

fn main() {
    dropit_peaks_and_budget();
    vit_peaks();
    mobilenet_peaks();
    println!("peak: 3 passed, 0 failed");
}
