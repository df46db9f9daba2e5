//! Helpers shared by the trainer tests.
#![allow(dead_code)]

use dropit::{Model, Optimizer, Schedule, Trainer, TrainerConfig};

/// Deterministic pseudo-random floats in about ±1.5.
pub fn data(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 3.0 - 1.5
        })
        .collect()
}

/// Labels in `0..classes`.
pub fn labels(n: usize, classes: usize, seed: u64) -> Vec<u32> {
    data(n, seed)
        .iter()
        .map(|v| ((v + 1.5) / 3.0 * classes as f32) as u32 % classes as u32)
        .collect()
}

/// A plain config: SGD, constant rate.
pub fn config(batch: usize) -> TrainerConfig {
    TrainerConfig {
        batch,
        optimizer: Optimizer::sgd(0.9, 0.0),
        schedule: Schedule::constant(0.05),
        seed: 7,
        label_smoothing: 0.0,
        threads: 1,
        clip_grad_norm: None,
        rebuild_inputs: true,
    }
}

/// Checks the trainer's parameter gradients of `model` against central finite differences of
/// the loss (in f32: agreement within 2e-3 + 3%), on up to `per_node` parameters of every node.
pub fn gradcheck(model: Model, n: usize, smoothing: f32, per_node: usize, seed: u64) {
    let input = model.input_shape().numel();
    let classes = model.classes();
    let mut cfg = config(n);
    cfg.label_smoothing = smoothing;
    let mut t = Trainer::new(model, cfg).unwrap();
    let x = data(n * input, seed);
    let y = labels(n, classes, seed + 1);
    t.loss_and_grads(&x, &y).unwrap();
    let grads = t.grads().to_vec();
    // Frozen nodes have no gradients; the others' start at the first trained parameter.
    let frozen = t.model().frozen();
    let ts = t.param_range(frozen).start;
    let mut worst = (0.0f32, String::new());
    for node in frozen..t.model().nodes().len() {
        let r = t.param_range(node);
        let step = (r.len() / per_node).max(1);
        for i in r.clone().step_by(step).take(per_node) {
            // The median of three step sizes: a ReLU or max-pool kink crossed by one step
            // spoils that estimate only.
            let mut fds = [3e-3f32, 1e-3, 3e-4].map(|eps| {
                let p0 = t.params()[i];
                t.params_mut()[i] = p0 + eps;
                let lp = t.loss_and_grads(&x, &y).unwrap().loss as f64;
                t.params_mut()[i] = p0 - eps;
                let lm = t.loss_and_grads(&x, &y).unwrap().loss as f64;
                t.params_mut()[i] = p0;
                ((lp - lm) / (2.0 * eps as f64)) as f32
            });
            fds.sort_by(f32::total_cmp);
            let fd = fds[1];
            let g = grads[i - ts];
            let err = (fd - g).abs() / (2e-3 + 0.03 * g.abs().max(fd.abs()));
            if err > worst.0 {
                worst = (
                    err,
                    format!(
                        "{} param {}: analytic {g}, finite difference {fd}",
                        t.model().nodes()[node].name,
                        i - r.start
                    ),
                );
            }
        }
    }
    assert!(worst.0 <= 1.0, "{}", worst.1);
}

/// A ViT small enough for a test: 8×8 images in 2×2 patches, width 16, 2 blocks of 2 heads,
/// 4 classes.
pub fn small_vit() -> dropit::VitConfig {
    dropit::VitConfig {
        input: dropit::Shape::new(8, 8, 1),
        classes: 4,
        patch: 2,
        dim: 16,
        depth: 2,
        heads: 2,
        mlp: 32,
        dropout: 0.0,
    }
}

/// Tensors that selection, packing and masks must get right, for each length in `sizes` plain
/// and with ties (few distinct magnitudes); one with ±0, quiet and signalling NaN of both signs,
/// ±∞ and repeated values; one constant; one of bf16 rounding's halfway cases (both parities)
/// and their neighbours.
pub fn selection_tensors(sizes: &[usize]) -> Vec<Vec<f32>> {
    let mut out = Vec::new();
    for &n in sizes {
        out.push(data(n, n as u64));
        let ties = data(n, 7 + n as u64).into_iter();
        out.push(ties.map(|v| (v * 4.0).round() / 4.0).collect());
    }
    let mut odd = data(777, 5);
    let specials = [
        0.0,
        -0.0,
        f32::NAN,
        f32::from_bits(0x7F80_0001),
        f32::from_bits(0xFF81_2345),
        f32::INFINITY,
        f32::NEG_INFINITY,
        -1.5,
        1.5,
    ];
    for (i, v) in specials.into_iter().enumerate() {
        odd[i * 80] = v;
        odd[i * 80 + 1] = v;
    }
    out.push(odd);
    out.push(vec![0.5; 300]);
    let halves = (0..512u32).map(|i| {
        let low = [0x8000, 0x7FFF, 0x8001, 0][i as usize % 4];
        let sign = (i / 4 % 3 == 0) as u32;
        f32::from_bits(sign << 31 | (0x3F80 + i / 4) << 16 | low)
    });
    out.push(halves.collect());
    out
}
