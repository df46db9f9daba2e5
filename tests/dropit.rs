//! DropIT in the trainer: exactness where nothing is dropped, grad_W from the recovered input,
//! learning, memory accounting and sharing.
mod common;

use common::{config, data, gradcheck, labels};
use dropit::kernels::format::{Format, PackedMut};
use dropit::kernels::pack::{select_and_pack, unpack};
use dropit::layers::Layer;
use dropit::{
    DropIt, GradPath, InputSave, LayerRef, Model, ModelBuilder, PosForm, Positions, Scope, Shape,
    SparseSave, Trainer, ValueType,
};

const SCOPES: [Scope; 3] = [Scope::Tensor, Scope::PerSample, Scope::Block(50)];

fn sparse(
    keep: f32,
    scope: Scope,
    values: ValueType,
    positions: Positions,
    path: GradPath,
) -> InputSave {
    InputSave::Sparse(SparseSave {
        keep,
        scope,
        values,
        positions,
        path,
    })
}

/// Sets every Linear/Conv2d of `model` to `save`.
fn all(mut model: Model, save: InputSave) -> Model {
    for i in 0..model.nodes().len() {
        match model.layer_mut(i) {
            Some(Layer::Linear(l)) => l.save = save,
            Some(Layer::Conv2d(c)) => c.save = save,
            _ => {}
        }
    }
    model
}

fn small_cnn() -> Model {
    Model::resnet8(Shape::new(8, 8, 1), 4).unwrap()
}

#[test]
fn keeping_everything_is_exact() {
    // keep = 1: every element is packed, so the sparse paths (packing, sharing, in-place
    // convolutions, grad_W from the packed form) must give the true gradient.
    for (scope, path) in [
        (Scope::Tensor, GradPath::Direct),
        (Scope::PerSample, GradPath::Scatter),
        (Scope::Block(37), GradPath::Auto),
    ] {
        let save = sparse(1.0, scope, ValueType::F32, Positions::Auto, path);
        // (12×12, as the dense probe: at 8×8 the last batch norms see 12 values per channel and
        // the loss is too curved for finite differences.)
        gradcheck(
            all(Model::resnet8(Shape::new(12, 12, 1), 10).unwrap(), save),
            3,
            0.0,
            3,
            11,
        );
        let mut b = ModelBuilder::new(Shape::new(3, 3, 2));
        let x = b.flatten("flat", b.input()).unwrap();
        let x = b.linear("fc1", x, 6).unwrap();
        let x = b.relu("relu", x).unwrap();
        let x = b.linear("fc2", x, 3).unwrap();
        gradcheck(all(b.build(x).unwrap(), save), 4, 0.0, 12, 22);
    }
}

#[test]
fn gamma_zero_is_bitwise_dense() {
    let run = |model: Model| {
        let mut t = Trainer::new(model, config(8)).unwrap();
        let x = data(8 * 64, 3);
        let y = labels(8, 4, 4);
        let losses: Vec<u32> = (0..20)
            .map(|_| t.step(&x, &y).unwrap().loss.to_bits())
            .collect();
        (
            losses,
            t.params().iter().map(|p| p.to_bits()).collect::<Vec<_>>(),
        )
    };
    let zero = DropIt::new(0.0).with_override(LayerRef::Name("layer2.0.conv1".into()), 0.0);
    assert_eq!(
        run(small_cnn()),
        run(small_cnn().with_dropit(&zero).unwrap())
    );
}

/// With the weights of the first layer at zero, its output — and so every gradient reaching it —
/// does not depend on its input; grad_W from the packed input must then equal the dense grad_W
/// of a run fed the recovered input (the input with the dropped elements zeroed).
fn recovered_input_check(model: Model, save: InputSave) {
    let InputSave::Sparse(sp) = save else {
        unreachable!()
    };
    let n = 4;
    let numel = model.input_shape().numel();
    let x = data(n * numel, 9);
    let y = labels(n, model.classes(), 10);
    let mut sparse_model = model.clone();
    match sparse_model.layer_mut(0) {
        Some(Layer::Linear(l)) => l.save = save,
        Some(Layer::Conv2d(c)) => c.save = save,
        _ => panic!("the first layer must be a Linear or Conv2d"),
    }
    let mut a = Trainer::new(sparse_model, config(n)).unwrap();
    let mut b = Trainer::new(model, config(n)).unwrap();
    for t in [&mut a, &mut b] {
        let r = t.param_range(0);
        t.params_mut()[r].fill(0.0);
    }
    // The recovered input, by the kernels the trainer uses.
    let block = match sp.scope {
        Scope::Tensor => n * numel,
        Scope::PerSample => numel,
        Scope::Block(b) => b,
    };
    let k = dropit::kernels::select::kept_in_blocks(n * numel, block, sp.keep).unwrap();
    let fmt = match sp.positions {
        Positions::Auto => Format::smallest(n * numel, k, sp.values),
        Positions::Fixed(p) => Format::new(sp.values, p),
    };
    let mut buf = vec![0u64; fmt.bytes(n * numel, k) / 8];
    let mut p =
        PackedMut::from_bytes(fmt, n * numel, k, bytemuck::cast_slice_mut(&mut buf)).unwrap();
    select_and_pack(&x, block, sp.keep, &mut p).unwrap();
    let mut recovered = vec![0.0; n * numel];
    unpack(&p.as_packed(), &mut recovered).unwrap();

    let la = a.loss_and_grads(&x, &y).unwrap().loss;
    let lb = b.loss_and_grads(&recovered, &y).unwrap().loss;
    assert_eq!(la, lb, "the forward pass does not see the dropping");
    let (ga, gb) = (a.grads(), b.grads());
    for (i, (u, v)) in ga.iter().zip(gb).enumerate() {
        assert!(
            (u - v).abs() <= 1e-5 * (1.0 + v.abs()),
            "{save:?}: grad {i}: {u} vs {v}"
        );
    }
}

#[test]
fn sparse_grad_w_equals_dense_on_the_recovered_input() {
    let mut lin = ModelBuilder::new(Shape::new(2, 3, 20));
    let x = lin.linear("fc", lin.input(), 7).unwrap();
    let x = lin.flatten("flat", x).unwrap();
    let x = lin.linear("head", x, 3).unwrap();
    let lin = lin.build(x).unwrap();
    let mut conv = ModelBuilder::new(Shape::new(6, 5, 3));
    let x = conv.conv2d("conv", conv.input(), 4, 3, 2, 1).unwrap();
    let x = conv.flatten("flat", x).unwrap();
    let x = conv.linear("head", x, 3).unwrap();
    let conv = conv.build(x).unwrap();
    for values in [ValueType::F32, ValueType::Bf16, ValueType::F16] {
        for positions in [PosForm::Bitmap, PosForm::Block16, PosForm::U32] {
            for scope in SCOPES {
                for path in [GradPath::Direct, GradPath::Scatter] {
                    let save = sparse(0.3, scope, values, Positions::Fixed(positions), path);
                    recovered_input_check(lin.clone(), save);
                    recovered_input_check(conv.clone(), save);
                }
            }
        }
    }
}

/// The class is which quarter of an 8×8 image is brightest.
fn quadrant_task(n: usize) -> (Vec<f32>, Vec<u32>) {
    let noise = data(n * 64, 3);
    let y = labels(n, 4, 4);
    let x = (0..n * 64)
        .map(|j| {
            let (i, r, c) = (j / 64, j % 64 / 8, j % 8);
            let q = (r >= 4) as u32 * 2 + (c >= 4) as u32;
            noise[j] * 0.3 + if q == y[i] { 1.0 } else { 0.0 }
        })
        .collect();
    (x, y)
}

#[test]
fn gamma_09_learns() {
    for (lean, int8) in [(false, false), (true, false), (true, true)] {
        let model = small_cnn()
            .with_dropit(&DropIt::new(0.9).lean(lean).int8_norms(int8))
            .unwrap();
        let (x, y) = quadrant_task(16);
        let mut t = Trainer::new(model, config(16)).unwrap();
        let first = t.evaluate(&x, &y).unwrap();
        for _ in 0..40 {
            t.step(&x, &y).unwrap();
        }
        let last = t.evaluate(&x, &y).unwrap();
        assert!(
            last.loss < 0.5 * first.loss && last.correct >= 12,
            "lean {lean}: {first:?} → {last:?}"
        );
    }
}

#[test]
fn planned_bytes_are_the_formats_and_shared_inputs_are_held_once() {
    let n = 64;
    let model = Model::cnn()
        .unwrap()
        .with_dropit(&DropIt::new(0.9))
        .unwrap();
    let t = Trainer::new(model.clone(), config(n)).unwrap();
    let report = t.memory_report();
    for (i, node) in model.nodes().iter().enumerate() {
        let Some(sp) = (match &node.layer {
            Layer::Conv2d(c) => match c.save {
                InputSave::Sparse(s) => Some(s),
                _ => None,
            },
            _ => None,
        }) else {
            continue;
        };
        let row = &report.layers[i];
        let shape = model.shapes_of(i).0;
        let len = n * shape.numel();
        let k = dropit::kernels::select::kept_count(len, sp.keep);
        let bytes = Format::smallest(len, k, sp.values).bytes(len, k);
        if row.saved.starts_with("input rebuilt") {
            // The planner rebuilds it instead (tests/rebuild.rs).
            assert_eq!(row.saved_bytes, 0, "{}", node.name);
        } else if node.name.ends_with("downsample.0") {
            assert_eq!(
                (row.saved.as_str(), row.saved_bytes),
                ("packed (shared)", 0),
                "{}",
                node.name
            );
        } else {
            assert_eq!(row.saved_bytes, bytes.div_ceil(8) * 8, "{}", node.name);
        }
        assert_eq!(row.dense_bytes, len * 4);
    }
    let rows: usize = report.layers.iter().map(|l| l.saved_bytes).sum();
    assert_eq!(
        rows, report.saved,
        "every saved byte is accounted to one layer"
    );
    // Lean keeps batch norm's x̂ in a byte and a scale per channel; with bf16 norms, in two.
    let trainer = |p: DropIt| {
        Trainer::new(Model::cnn().unwrap().with_dropit(&p).unwrap(), config(n)).unwrap()
    };
    let lean = trainer(DropIt::new(0.9).lean(true));
    let lean16 = trainer(DropIt::new(0.9).lean(true).int8_norms(false));
    let bn = |r: &dropit::MemoryReport| {
        r.layers
            .iter()
            .find(|l| l.name == "bn1")
            .unwrap()
            .saved_bytes
    };
    // x̂, 1/σ, and the staged batch mean and variance (and the scales).
    assert_eq!(
        bn(&lean.memory_report()),
        64 * 28 * 28 * 32 + 32 * 4 + 2 * 32 * 4 + 32 * 4
    );
    assert_eq!(
        bn(&lean16.memory_report()),
        64 * 28 * 28 * 32 * 2 + 32 * 4 + 2 * 32 * 4
    );
    assert_eq!(bn(&report), 64 * 28 * 28 * 32 * 4 + 32 * 4 + 2 * 32 * 4);
}

#[test]
fn policy_errors_name_the_problem() {
    let e = Model::cnn()
        .unwrap()
        .with_dropit(&DropIt::new(1.0))
        .unwrap_err();
    assert!(e.to_string().contains("γ = 1"), "{e}");
    let e = Model::cnn()
        .unwrap()
        .with_dropit(&DropIt::new(0.5).with_override(LayerRef::Name("nope".into()), 0.5))
        .unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    let e = Model::cnn()
        .unwrap()
        .with_dropit(&DropIt::new(0.5).with_override(LayerRef::Name("bn1".into()), 0.5))
        .unwrap_err();
    assert!(e.to_string().contains("bn1"), "{e}");
    // Exclusions: first layer and head dense by default; an override wins.
    let m = Model::cnn()
        .unwrap()
        .with_dropit(&DropIt::new(0.9).with_override(LayerRef::Name("fc".into()), 0.5))
        .unwrap();
    let save = |name: &str| match &m.nodes()[m.find(name).unwrap()].layer {
        Layer::Conv2d(c) => c.save,
        Layer::Linear(l) => l.save,
        _ => unreachable!(),
    };
    assert_eq!(save("conv1"), InputSave::Dense);
    assert!(matches!(save("fc"), InputSave::Sparse(s) if (s.keep - 0.5).abs() < 1e-6));
    assert!(matches!(save("layer1.0.conv1"), InputSave::Sparse(s) if (s.keep - 0.1).abs() < 1e-6));
}

#[test]
fn lean_stores_norms_attention_and_gelu_small() {
    let build = || {
        let mut b = ModelBuilder::new(Shape::new(1, 10, 16));
        let x = b.linear("in", b.input(), 16).unwrap();
        let x = b.layernorm("ln", x).unwrap();
        let x = b.attention("attn", x, 2).unwrap();
        let x = b.linear("fc1", x, 32).unwrap();
        let x = b.gelu("gelu", x).unwrap();
        let x = b.linear("fc2", x, 16).unwrap();
        let x = b.flatten("flat", x).unwrap();
        let x = b.linear("head", x, 4).unwrap();
        b.build(x).unwrap()
    };
    let bytes = |p: DropIt| {
        let m = build().with_dropit(&p).unwrap();
        let mut t = Trainer::new(m, config(8)).unwrap();
        let (x, y) = (data(8 * 160, 1), labels(8, 4, 2));
        assert!(t.step(&x, &y).unwrap().loss.is_finite());
        let r = t.memory_report();
        let row = |n: &str| r.layers.iter().find(|l| l.name == n).unwrap().saved_bytes;
        [row("ln"), row("attn.sdpa"), row("gelu")]
    };
    // LayerNorm: x̂ and 1/σ per row (lean: x̂ in bytes and a scale per row, or bf16);
    // attention: q|k|v (held, or bf16) and one log-sum-exp per row and head; GELU: its input,
    // or a one-byte derivative.
    let (lse, rows) = (8 * 2 * 10 * 4, 8 * 10 * 4);
    assert_eq!(
        bytes(DropIt::new(0.9)),
        [
            8 * 10 * 16 * 4 + 8 * 10 * 4,
            8 * 10 * 48 * 4 + lse,
            8 * 10 * 32 * 4
        ]
    );
    assert_eq!(
        bytes(DropIt::new(0.9).lean(true)),
        [8 * 10 * 16 + 2 * rows, 8 * 10 * 48 * 2 + lse, 8 * 10 * 32]
    );
    assert_eq!(
        bytes(DropIt::new(0.9).lean(true).int8_norms(false))[0],
        8 * 10 * 16 * 2 + rows
    );
}

#[test]
fn lean_gradients_stay_close_to_exact() {
    // A small ViT with γ = 0: lean changes only how norms, attention and GELU keep their
    // inputs, so its gradients must be the exact ones up to bf16 / one-byte rounding.
    let cfg = common::small_vit();
    let grads = |lean: bool| {
        let m = Model::vision_transformer(&cfg)
            .unwrap()
            .with_dropit(&DropIt::new(0.0).lean(lean))
            .unwrap();
        let mut t = Trainer::new(m, config(8)).unwrap();
        t.loss_and_grads(&data(8 * 64, 3), &labels(8, 4, 4))
            .unwrap();
        t.grads().to_vec()
    };
    let (exact, lean) = (grads(false), grads(true));
    assert_ne!(exact, lean, "lean must change how things are kept");
    let dot: f64 = exact.iter().zip(&lean).map(|(a, b)| (a * b) as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|a| (a * a) as f64).sum::<f64>().sqrt();
    let cos = dot / (norm(&exact) * norm(&lean));
    assert!(cos > 0.999, "cosine of lean and exact gradients {cos}");
}

#[test]
fn vit_policy_drops_on_every_block_linear_but_not_patch_embed_or_head() {
    let m = Model::vit()
        .unwrap()
        .with_dropit(&DropIt::new(0.9))
        .unwrap();
    let save = |name: &str| match &m.nodes()[m.find(name).unwrap()].layer {
        Layer::Linear(l) => l.save,
        Layer::Conv2d(c) => c.save,
        other => panic!("{name} is a {}", other.kind()),
    };
    assert_eq!(save("patch_embed.proj"), InputSave::Dense);
    assert_eq!(save("head"), InputSave::Dense);
    for b in 0..4 {
        for l in ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"] {
            let name = format!("blocks.{b}.{l}");
            assert!(
                matches!(save(&name), InputSave::Sparse(s) if (s.keep - 0.1).abs() < 1e-6),
                "{name}"
            );
        }
    }
    // The reference vit: 4 blocks, 3 heads of 32, MLP 384, 49 patches + cls.
    let attn = m.find("blocks.3.attn.sdpa").unwrap();
    assert!(matches!(&m.nodes()[attn].layer, Layer::Attention(a) if a.heads == 3 && a.dim == 96));
    assert_eq!(
        m.output_shape(m.find("pos_embed").unwrap()),
        Shape::new(1, 50, 96)
    );
    assert_eq!(
        m.output_shape(m.find("blocks.0.mlp.fc1").unwrap()),
        Shape::new(1, 50, 384)
    );
    assert_eq!(m.classes(), 10);
}
