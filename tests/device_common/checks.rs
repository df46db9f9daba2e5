//! Checks that hold on any device backend: every kernel against its CPU twin (bitwise for
//! selection, packing, masks and optimizers; within f32 rounding for products), bad sizes
//! refused, and the device trainer against the CPU trainer.

use dropit::device::ops::{self, Work};
use dropit::device::{Backend, DeviceTrainer, Gemm};
use dropit::optim::Optimizer;
use dropit::{Model, Trainer, TrainerConfig};
use dropit_simd::format::{Format, Packed, PackedMut, PosForm, ValueType};
use dropit_simd::{mask, pack, select, spmm};

use crate::common::{data, labels, selection_tensors};

/// The formats the device packs.
pub const FORMATS: [Format; 4] = [
    Format::new(ValueType::Bf16, PosForm::Bitmap),
    Format::new(ValueType::F32, PosForm::Bitmap),
    Format::new(ValueType::F32, PosForm::U32),
    Format::new(ValueType::Bf16, PosForm::U32),
];

/// The CPU's packed bytes of `x` keeping `k`.
pub fn cpu_pack(x: &[f32], k: usize, fmt: Format) -> Vec<u8> {
    let t = select::topk_threshold(x, k).unwrap();
    let bytes = fmt.bytes(x.len(), k);
    let mut words = vec![0u64; bytes.div_ceil(8)];
    let buf = &mut bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes];
    pack::pack(
        x,
        &t,
        &mut PackedMut::from_bytes(fmt, x.len(), k, buf).unwrap(),
    )
    .unwrap();
    buf.to_vec()
}

/// The CPU's dense tensor of packed bytes.
fn cpu_unpack(bytes: &[u8], fmt: Format, n: usize, k: usize) -> Vec<f32> {
    let mut w = vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut w)[..bytes.len()].copy_from_slice(bytes);
    let aligned = &bytemuck::cast_slice::<u64, u8>(&w)[..bytes.len()];
    let mut out = vec![7.0f32; n];
    pack::unpack(&Packed::from_bytes(fmt, n, k, aligned).unwrap(), &mut out).unwrap();
    out
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

fn read_f32<B: Backend>(b: &B, at: usize, n: usize) -> Vec<f32> {
    let mut v = vec![0f32; n];
    b.read(at, bytemuck::cast_slice_mut(&mut v)).unwrap();
    v
}

fn write_f32<B: Backend>(b: &mut B, at: usize, v: &[f32]) {
    b.write(at, bytemuck::cast_slice(v)).unwrap();
}

/// A block for tensors of up to `n` elements: x, a packed copy, a dense one, another packed
/// one, a mask, and the work buffers (byte offsets).
struct Layout {
    x: usize,
    packed: usize,
    dense: usize,
    other: usize,
    mask: usize,
    work: Work,
}

fn layout<B: Backend>(b: &mut B, n: usize) -> Layout {
    let slot = (8 * n + 64).next_multiple_of(8);
    let work_at = 5 * slot;
    b.allocate(work_at + Work::bytes(n.div_ceil(64)) + 8)
        .unwrap();
    Layout {
        x: 0,
        packed: slot,
        dense: 2 * slot,
        other: 3 * slot,
        mask: 4 * slot,
        work: Work::at(work_at, n.div_ceil(64)),
    }
}

/// Every kernel against its CPU twin on the tensors of `selection_tensors(sizes)`: the same
/// threshold and packed bytes (4 formats, k from none to all), unpacking its own bytes and the
/// CPU's, ReLU's masks and their use; then the sparse Linear grad_W, a batched product, the
/// optimizers and the sum of squares. Returns the packing cases checked.
pub fn kernels<B: Backend>(b: &mut B, sizes: &[usize]) -> usize {
    let mut cases = 0;
    for x in selection_tensors(sizes) {
        let n = x.len();
        let l = layout(b, n);
        write_f32(b, l.x, &x);
        for k in [0, 1, n / 10, n / 2, n - 1, n] {
            let t = ops::threshold(b, l.x, n, k, &l.work).unwrap();
            assert_eq!(t.kept(), k, "n {n}, k {k}");
            for fmt in FORMATS {
                let what = format!("n {n}, k {k}, {fmt:?}");
                let want = cpu_pack(&x, k, fmt);
                let p = ops::pack(b, (l.x, n), &t, fmt, l.packed, &l.work).unwrap();
                let mut got = vec![0u8; p.bytes()];
                b.read(p.offset(), &mut got).unwrap();
                assert_eq!(got, want, "packed bytes, {what}");
                let dense = cpu_unpack(&want, fmt, n, k);
                ops::unpack(b, &p, l.dense, &l.work).unwrap();
                assert_eq!(
                    bits(&read_f32(b, l.dense, n)),
                    bits(&dense),
                    "unpack, {what}"
                );
                let q = ops::upload_packed(b, (fmt, n, k), &want, l.other).unwrap();
                write_f32(b, l.dense, &vec![7.0; n]);
                ops::unpack(b, &q, l.dense, &l.work).unwrap();
                assert_eq!(
                    bits(&read_f32(b, l.dense, n)),
                    bits(&dense),
                    "CPU bytes, {what}"
                );
                cases += 1;
            }
        }
        // ReLU: the mask and the output, then the mask applied (and added).
        let mut y = x.clone();
        let mut want = vec![0u64; n.div_ceil(64)];
        mask::relu_forward(&mut y, &mut want).unwrap();
        ops::relu_forward(b, (l.x, l.dense, n), l.mask).unwrap();
        let mut got = vec![0u64; n.div_ceil(64)];
        b.read(l.mask, bytemuck::cast_slice_mut(&mut got)).unwrap();
        assert_eq!(got, want, "ReLU mask, n {n}");
        assert_eq!(bits(&read_f32(b, l.dense, n)), bits(&y), "ReLU, n {n}");
        let dy = data(n, 99);
        write_f32(b, l.other, &dy);
        ops::apply_mask(b, (l.other, l.dense, n), l.mask, false).unwrap();
        let mut cpu = vec![0.0f32; n];
        mask::apply_mask(&dy, &want, &mut cpu).unwrap();
        assert_eq!(
            bits(&read_f32(b, l.dense, n)),
            bits(&cpu),
            "apply mask, n {n}"
        );
        ops::apply_mask(b, (l.other, l.dense, n), l.mask, true).unwrap();
        let twice: Vec<f32> = cpu.iter().map(|v| v + v).collect();
        assert_eq!(
            bits(&read_f32(b, l.dense, n)),
            bits(&twice),
            "add mask, n {n}"
        );
    }
    grad_w(b);
    products(b);
    optimizers(b);
    cases
}

/// Linear grad_W from a packed input (the CPU's bytes), within f32 rounding of the CPU's.
fn grad_w<B: Backend>(b: &mut B) {
    let (rows, inp, out) = (64, 96, 40);
    let (x, dy) = (data(rows * inp, 3), data(rows * out, 4));
    let k = rows * inp / 10;
    let l = layout(b, rows * inp);
    for fmt in FORMATS {
        let bytes = cpu_pack(&x, k, fmt);
        let dense = cpu_unpack(&bytes, fmt, rows * inp, k);
        let mut want = vec![0.25f32; inp * out];
        let mut w = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut::<u64, u8>(&mut w)[..bytes.len()].copy_from_slice(&bytes);
        let p = Packed::from_bytes(fmt, rows * inp, k, &bytemuck::cast_slice(&w)[..bytes.len()]);
        spmm::linear_grad_w(&p.unwrap(), rows, inp, &dy, out, &mut want).unwrap();
        let q = ops::upload_packed(b, (fmt, rows * inp, k), &bytes, l.packed).unwrap();
        write_f32(b, l.x, &dy);
        write_f32(b, l.dense, &vec![0.25f32; inp * out]);
        ops::linear_grad_w(b, &q, (inp, out), l.x, l.dense, &l.work).unwrap();
        for (i, (g, w)) in read_f32(b, l.dense, inp * out)
            .iter()
            .zip(&want)
            .enumerate()
        {
            // The exact sum from the same kept values, for the scale of the rounding.
            let (r, o) = (i / out, i % out);
            let mag: f32 = (0..rows)
                .map(|s| (dense[s * inp + r] * dy[s * out + o]).abs())
                .sum();
            assert!((g - w).abs() <= 1e-6 * (1.0 + mag), "{fmt:?}: {g} vs {w}");
        }
    }
}

/// Two products at once through the backend's dense product (column-major, strided batch),
/// against sums in f64.
fn products<B: Backend>(b: &mut B) {
    let (m, n, k) = (33, 17, 45);
    let (a, c) = (data(2 * m * k, 5), data(2 * k * n, 6));
    let l = layout(b, 4 * m * k.max(n));
    write_f32(b, l.x, &a);
    write_f32(b, l.packed, &c);
    write_f32(b, l.dense, &vec![0.5; 2 * m * n]);
    let base = b.base();
    // C = 2·Aᵀ·B + C, A stored k × m (transposed), B k × n, column-major.
    let g = Gemm {
        trans_a: true,
        trans_b: false,
        m,
        n,
        k,
        alpha: 2.0,
        a: (base + l.x as u64, k),
        b: (base + l.packed as u64, k),
        beta: 1.0,
        c: (base + l.dense as u64, m),
        batch: 2,
        strides: [m * k, k * n, m * n],
    };
    // SAFETY: both products' operands lie inside the block (laid out above).
    unsafe { b.gemm(&g) }.unwrap();
    let got = read_f32(b, l.dense, 2 * m * n);
    for p in 0..2 {
        for i in 0..m {
            for j in 0..n {
                let s: f64 = (0..k)
                    .map(|q| a[p * m * k + i * k + q] as f64 * c[p * k * n + j * k + q] as f64)
                    .sum();
                let (want, g) = (0.5 + 2.0 * s, got[p * m * n + i + j * m] as f64);
                assert!(
                    (g - want).abs() <= 1e-4 * (1.0 + want.abs()),
                    "gemm: {g} vs {want}"
                );
            }
        }
    }
}

/// SGD (plain, momentum, Nesterov) and AdamW, three steps each, bitwise the CPU's; the sum of
/// squares against the CPU's.
fn optimizers<B: Backend>(b: &mut B) {
    let n = 1000;
    let l = layout(b, 4 * n);
    let mut nesterov = Optimizer::sgd(0.9, 5e-4);
    if let Optimizer::Sgd { nesterov: nv, .. } = &mut nesterov {
        *nv = true;
    }
    let (p_at, g_at, s_at) = (l.x, l.packed, l.dense);
    for opt in [
        Optimizer::sgd(0.0, 1e-4),
        Optimizer::sgd(0.9, 5e-4),
        nesterov,
        Optimizer::adamw(0.05),
    ] {
        let (mut p, mut state) = (data(n, 1), vec![0.0f32; 2 * n]);
        write_f32(b, p_at, &p);
        write_f32(b, s_at, &state);
        for t in 1..=3u64 {
            let g = data(n, 10 + t);
            let lr = 0.01 * t as f32;
            opt.update(lr, t, &mut p, &g, &mut state[..opt.state_slots() * n]);
            write_f32(b, g_at, &g);
            ops::optimizer_update(b, &opt, (lr, t), (p_at, g_at, s_at, n)).unwrap();
            assert_eq!(bits(&read_f32(b, p_at, n)), bits(&p), "{opt:?} step {t}");
            let s = read_f32(b, s_at, 2 * n);
            assert_eq!(bits(&s), bits(&state), "{opt:?} step {t}: state");
        }
    }
    let x = data(3 * n + 7, 8);
    write_f32(b, l.x, &x);
    let got = ops::sum_of_squares(b, l.x, x.len(), &l.work).unwrap();
    let want: f64 = x.iter().map(|&v| v as f64 * v as f64).sum();
    assert!(
        (got - want).abs() <= 1e-12 * want,
        "sum of squares {got} vs {want}"
    );
}

/// Sizes and arguments the kernels cannot take are errors, never writes past the block.
pub fn wrong_sizes<B: Backend>(b: &mut B) {
    let n = 100;
    let l = layout(b, n);
    let len = b.len();
    write_f32(b, l.x, &data(n, 1));
    assert!(ops::threshold(b, l.x, n, n + 1, &l.work).is_err(), "k > n");
    assert!(
        ops::threshold(b, len - 8, n, 10, &l.work).is_err(),
        "x past the block"
    );
    let big = Work::at(l.x, 1000);
    assert!(
        ops::threshold(b, l.x, n, 10, &big).is_err(),
        "work past the block"
    );
    let huge = Work::at(usize::MAX - 3, usize::MAX / 3);
    assert!(
        ops::threshold(b, l.x, n, 10, &huge).is_err(),
        "work sizes past usize"
    );
    let small = Work::at(l.x, 1);
    assert!(
        ops::threshold(b, l.x, n, 10, &small).is_err(),
        "work too small"
    );
    let t = ops::threshold(b, l.x, n, 10, &l.work).unwrap();
    let f16 = Format::new(ValueType::F16, PosForm::Bitmap);
    assert!(ops::pack(b, (l.x, n), &t, f16, l.packed, &l.work).is_err());
    let fmt = Format::new(ValueType::F32, PosForm::U32);
    assert!(
        ops::pack(b, (l.x, n), &t, fmt, len - 8, &l.work).is_err(),
        "dst past the block"
    );
    assert!(
        ops::pack(b, (l.x, n), &t, fmt, l.packed + 4, &l.work).is_err(),
        "misaligned"
    );
    // A threshold of another tensor is refused.
    write_f32(b, l.dense, &vec![0.0; n]);
    assert!(ops::pack(b, (l.dense, n), &t, fmt, l.packed, &l.work).is_err());
    // Bytes that do not parse as the format.
    assert!(ops::upload_packed(b, (fmt, n, 10), &[0u8; 3], l.other).is_err());
    let p = ops::pack(b, (l.x, n), &t, fmt, l.packed, &l.work).unwrap();
    assert!(
        ops::linear_grad_w(b, &p, (7, 3), l.dense, l.other, &l.work).is_err(),
        "not rows × 7"
    );
    assert!(ops::linear_grad_w(b, &p, (10, 3), l.dense, len - 4, &l.work).is_err());
    assert!(ops::unpack(b, &p, len - 4, &l.work).is_err());
    let opt = Optimizer::adamw(0.0);
    assert!(ops::optimizer_update(b, &opt, (0.1, 1), (l.x, l.dense, len - 4 * n, n)).is_err());
    assert!(
        ops::relu_forward(b, (l.x, l.dense, n), l.mask + 4).is_err(),
        "misaligned mask"
    );
    assert!(ops::sum_of_squares(b, l.x, len, &l.work).is_err());
}

/// 30 fixed-seed steps of `model` on the CPU and on the device from `make()`, the first batch's
/// gradients compared node by node (within f32 rounding), then each step's loss and the final
/// one to 3 significant digits, the parameters and an evaluation.
pub fn compare<B: Backend>(make: impl Fn() -> B, model: Model, cfg: TrainerConfig, what: &str) {
    let mut cpu = Trainer::new(model.clone(), cfg).unwrap();
    let mut dev = DeviceTrainer::new(make(), model.clone(), cfg).unwrap();
    assert_eq!(
        dev.params().unwrap(),
        cpu.params(),
        "{what}: initial parameters"
    );
    let per = model.input_shape().numel();
    let batch = |s: usize| {
        let seed = (s % 4) as u64;
        (
            data(cfg.batch * per, 100 + seed),
            labels(cfg.batch, model.classes(), 200 + seed),
        )
    };
    let (x, y) = batch(0);
    cpu.loss_and_grads(&x, &y).unwrap();
    dev.loss_and_grads(&x, &y).unwrap();
    let (gc, gd) = (cpu.grads().to_vec(), dev.grads().unwrap());
    // Gradients cover the trained parameters only (from the first unfrozen node on).
    let ts = cpu.params().len() - gc.len();
    for (i, node) in model.nodes().iter().enumerate() {
        let r = cpu.param_range(i);
        if r.start < ts {
            continue;
        }
        let r = r.start - ts..r.end - ts;
        let (c, d) = (&gc[r.clone()], &gd[r]);
        let scale = c.iter().fold(0f32, |a, v| a.max(v.abs()));
        let worst = c.iter().zip(d).fold(0f32, |a, (c, d)| a.max((c - d).abs()));
        assert!(
            worst <= 1e-3 * scale + 1e-7,
            "{what}: {} gradient apart by {worst} (largest {scale})",
            node.name
        );
    }
    let (mut a, mut b) = (0.0, 0.0);
    for s in 0..30 {
        let (x, y) = batch(s);
        let (c, d) = (cpu.step(&x, &y).unwrap(), dev.step(&x, &y).unwrap());
        assert!(!c.skipped && !d.skipped, "{what} step {s}");
        assert_eq!(c.lr, d.lr, "{what} step {s}: learning rate");
        assert!(
            (c.loss - d.loss).abs() <= 1e-3 * c.loss.abs(),
            "{what} step {s}: loss {} on the CPU, {} on the device",
            c.loss,
            d.loss
        );
        (a, b) = (c.loss, d.loss);
    }
    println!("{what}: final loss CPU {a:.6}, device {b:.6}");
    assert!(
        (a - b).abs() <= 5e-4 * a.abs().max(b.abs()),
        "{what}: final loss {a} on the CPU, {b} on the device (3 significant digits)"
    );
    let (pc, pd) = (cpu.params(), dev.params().unwrap());
    let worst = pc
        .iter()
        .zip(&pd)
        .map(|(c, d)| (c - d).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "{what}: parameters apart by {worst}");
    let classes = model.classes();
    let (mut lc, mut ld) = (vec![0f32; 3 * classes], vec![0f32; 3 * classes]);
    cpu.predict(&x[..3 * per], &mut lc).unwrap();
    dev.predict(&x[..3 * per], &mut ld).unwrap();
    let worst = lc
        .iter()
        .zip(&ld)
        .map(|(c, d)| (c - d).abs())
        .fold(0f32, f32::max);
    assert!(worst < 1e-3, "{what}: logits apart by {worst}");
    assert!(
        dev.predict(&x[..per], &mut ld).is_err(),
        "{what}: logits of the wrong size"
    );
    let (e, f) = (cpu.evaluate(&x, &y).unwrap(), dev.evaluate(&x, &y).unwrap());
    assert!(
        (e.loss - f.loss).abs() <= 1e-3 * e.loss,
        "{what}: evaluation {} vs {}",
        e.loss,
        f.loss
    );
}
