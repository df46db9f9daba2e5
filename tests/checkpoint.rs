//! Checkpoints: exact resume, PyTorch weights in, validation of corrupt bytes, torn flash writes.
mod common;

use common::{data, labels};
use dropit::{DropIt, Error, Model, Trainer, TrainerConfig, VitConfig};
use proptest::prelude::*;

/// A workload: name, how to build it, whether it takes the AdamW recipe.
type Case = (&'static str, fn() -> Model, bool);

fn small_cnn() -> Model {
    Model::resnet8_widths(dropit::Shape::new(28, 28, 1), 10, [8, 16, 32]).unwrap()
}

fn small_vit(dropout: f32) -> Model {
    Model::vision_transformer(&VitConfig {
        dim: 32,
        depth: 2,
        heads: 2,
        mlp: 64,
        dropout,
        ..VitConfig::default()
    })
    .unwrap()
}

fn trainer(model: Model, vit: bool, threads: usize) -> Trainer<'static> {
    let mut cfg = if vit {
        TrainerConfig::adamw_recipe(8, 40)
    } else {
        TrainerConfig::sgd_recipe(8, 40)
    };
    cfg.threads = threads;
    cfg.seed = 5;
    Trainer::new(model, cfg).unwrap()
}

/// Losses of steps `from..to` on fixed batches.
fn run(t: &mut Trainer<'_>, from: u64, to: u64) -> Vec<u32> {
    (from..to)
        .map(|s| {
            let (x, y) = (data(8 * 784, 40 + s), labels(8, 10, 80 + s));
            t.step(&x, &y).unwrap().loss.to_bits()
        })
        .collect()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|p| p.to_bits()).collect()
}

#[test]
fn resume_is_bitwise_exact() {
    let policy = DropIt::new(0.9).lean(true);
    let cases: [Case; 3] = [
        ("mlp", || Model::mlp().unwrap(), false),
        ("cnn", small_cnn, false),
        ("vit", || small_vit(0.1), true),
    ];
    for (name, make, vit) in cases {
        for threads in [1, 2] {
            let model = || make().with_dropit(&policy).unwrap();
            let mut whole = trainer(model(), vit, threads);
            let want = run(&mut whole, 0, 6);
            let mut first = trainer(model(), vit, threads);
            let mut got = run(&mut first, 0, 3);
            let bytes = first.checkpoint().unwrap();
            drop(first);
            // In a fresh process: this test binary continues the checkpoint (`resume_child`).
            let (in_child, child_losses) = continue_in_child(&bytes);
            assert_eq!(
                child_losses,
                want[3..],
                "{name}, {threads} threads: child's losses"
            );
            assert_eq!(
                bits(in_child.params()),
                bits(whole.params()),
                "{name}: child's params"
            );
            let mut resumed = Trainer::from_checkpoint(&bytes).unwrap();
            assert_eq!(resumed.steps(), 3);
            assert_eq!(resumed.model(), &model(), "{name}: architecture");
            got.extend(run(&mut resumed, 3, 6));
            assert_eq!(got, want, "{name}, {threads} threads: losses");
            assert_eq!(
                bits(resumed.params()),
                bits(whole.params()),
                "{name}: params"
            );
            assert_eq!(
                bits(resumed.state()),
                bits(whole.state()),
                "{name}: statistics"
            );
            // The same evaluation too (running statistics restored).
            let (x, y) = (data(8 * 784, 7), labels(8, 10, 8));
            assert_eq!(
                resumed.evaluate(&x, &y).unwrap(),
                whole.evaluate(&x, &y).unwrap()
            );
        }
    }
}

/// Run by `continue_in_child` in a fresh process: loads the checkpoint at `$DROPIT_RESUME`,
/// takes steps 3..6, and saves the result and the losses beside it.
#[test]
fn resume_child() {
    let Ok(path) = std::env::var("DROPIT_RESUME") else {
        return;
    };
    let mut t = Trainer::load(&path).unwrap();
    let losses: Vec<String> = run(&mut t, 3, 6).iter().map(u32::to_string).collect();
    t.save(format!("{path}.out")).unwrap();
    std::fs::write(format!("{path}.losses"), losses.join(",")).unwrap();
}

/// Continues `checkpoint` for steps 3..6 in a child process; returns its trainer and losses.
fn continue_in_child(checkpoint: &[u8]) -> (Trainer<'static>, Vec<u32>) {
    let path = std::env::temp_dir().join(format!(
        "dropit-resume-{}-{:?}.safetensors",
        std::process::id(),
        std::thread::current().id()
    ));
    std::fs::write(&path, checkpoint).unwrap();
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "resume_child", "--test-threads", "1"])
        .env("DROPIT_RESUME", &path)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "the child failed");
    let p = path.display();
    let t = Trainer::load(format!("{p}.out")).unwrap();
    let losses = std::fs::read_to_string(format!("{p}.losses")).unwrap();
    for f in [
        path.clone(),
        format!("{p}.out").into(),
        format!("{p}.losses").into(),
    ] {
        let _ = std::fs::remove_file(f);
    }
    (t, losses.split(',').map(|l| l.parse().unwrap()).collect())
}

/// A PyTorch reference fixture (written by `tests/fixtures/torch_checkpoints.py`).
fn fixture(name: &str) -> Vec<u8> {
    let path = format!(
        "{}/tests/fixtures/checkpoints/{name}.safetensors",
        env!("CARGO_MANIFEST_DIR")
    );
    std::fs::read(path).unwrap()
}

/// `x` and `logits` of an io fixture, read with the checkpoint reader's own parser.
fn io(name: &str) -> (Vec<f32>, Vec<f32>) {
    let bytes = fixture(&format!("{name}_io"));
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |t: &str| -> Vec<f32> {
        st.tensor(t)
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    };
    (f32s("x"), f32s("logits"))
}

fn small_mlp() -> Model {
    let mut b = dropit::ModelBuilder::new(dropit::Shape::new(28, 28, 1));
    let x = b.flatten("flatten", b.input()).unwrap();
    let x = b.linear("fc1", x, 32).unwrap();
    let x = b.relu("relu1", x).unwrap();
    let x = b.linear("fc2", x, 32).unwrap();
    let x = b.relu("relu2", x).unwrap();
    let x = b.linear("fc3", x, 10).unwrap();
    b.build(x).unwrap()
}

#[test]
fn pytorch_weights_give_pytorchs_logits() {
    let cases: [Case; 3] = [
        ("mlp", small_mlp, false),
        ("cnn", small_cnn, false),
        ("vit", || small_vit(0.0), true),
    ];
    for (name, make, vit) in cases {
        let mut t = trainer(make(), vit, 1);
        t.load_weights(&fixture(&format!("{name}_torch"))).unwrap();
        let (x, want) = io(name);
        let mut got = vec![0.0; want.len()];
        t.predict(&x, &mut got).unwrap();
        let worst = got
            .iter()
            .zip(&want)
            .map(|(g, w)| (g - w).abs() / w.abs().max(1.0))
            .fold(0.0f32, f32::max);
        println!("{name}: max relative logit error against PyTorch {worst:.2e}");
        assert!(worst <= 1e-5, "{name}: {worst}");
        // Our weights-only file holds the same tensors, and loads back to the same logits.
        let ours = t.weights().unwrap();
        let mut u = trainer(make(), vit, 1);
        u.load_weights(&ours).unwrap();
        let mut again = vec![0.0; want.len()];
        u.predict(&x, &mut again).unwrap();
        assert_eq!(bits(&again), bits(&got));
    }
}

#[test]
fn loading_names_the_first_problem() {
    let mut t = trainer(small_mlp(), false, 1);
    // Another model's file: its first tensor is a stranger here.
    let e = t.load_weights(&fixture("cnn_torch")).unwrap_err();
    assert!(
        matches!(&e, Error::Checkpoint { what, .. } if what.contains('.')),
        "{e}"
    );
    // A missing tensor is named.
    let mut other = trainer(Model::mlp().unwrap(), false, 1);
    let e = other.load_weights(&fixture("mlp_torch")).unwrap_err();
    assert!(e.to_string().contains("fc1.weight"), "{e}");
    // A checkpoint needs its metadata; a weights file is not one.
    let Err(e) = Trainer::from_checkpoint(&fixture("mlp_torch")) else {
        panic!("a weights file loaded as a checkpoint");
    };
    assert!(e.to_string().contains("dropit."), "{e}");
}

fn saved() -> (Vec<u8>, Vec<u32>) {
    let mut t = trainer(small_mlp(), false, 1);
    run(&mut t, 0, 2);
    (t.checkpoint().unwrap(), bits(t.params()))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn random_bytes_are_refused(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(Trainer::from_checkpoint(&bytes).is_err());
        let mut t = trainer(small_mlp(), false, 1);
        prop_assert!(t.load_weights(&bytes).is_err());
    }

    #[test]
    fn truncated_or_flipped_checkpoints_are_refused(cut in 0.0f64..1.0, flip in 0.0f64..1.0,
                                                    bit in 0u8..8) {
        let (bytes, params) = saved();
        let at = (cut * bytes.len() as f64) as usize;
        prop_assert!(Trainer::from_checkpoint(&bytes[..at]).is_err());
        let mut bad = bytes.clone();
        let i = (flip * bytes.len() as f64) as usize;
        bad[i] ^= 1 << bit;
        // Any flip is caught (checksum, header or JSON), except one that turns a header
        // padding space into other whitespace: then the same state loads.
        if let Ok(t) = Trainer::from_checkpoint(&bad) {
            prop_assert_eq!(bits(t.params()), params);
        }
    }
}

#[test]
fn torn_flash_writes_leave_the_last_checkpoint() {
    let mut t = trainer(small_mlp(), false, 1);
    run(&mut t, 0, 1);
    let size = t.checkpoint().unwrap().len();
    let mut flash = vec![0xFFu8; 2 * (size + dropit::checkpoint::SLOT_HEADER) + 16];
    assert!(Trainer::load_from(&flash).is_err());
    assert_eq!(t.save_to(&mut flash).unwrap(), 1);
    let first = bits(t.params());
    run(&mut t, 1, 2);
    // The next save, torn after k byte writes, for many k: the loader finds seq 1 intact, or
    // (only once complete) seq 2.
    let mut done = flash.clone();
    assert_eq!(t.save_to(&mut done).unwrap(), 2);
    let changed: Vec<usize> = (0..flash.len()).filter(|&i| flash[i] != done[i]).collect();
    // The writes in order: spoil the slot's magic, the checkpoint, then its header.
    let mut order: Vec<usize> = changed
        .iter()
        .copied()
        .filter(|&i| i % (flash.len() / 2) >= 32)
        .collect();
    order.extend(
        changed
            .iter()
            .copied()
            .filter(|&i| i % (flash.len() / 2) < 32),
    );
    for k in (0..=order.len()).step_by((order.len() / 97).max(1)) {
        let mut torn = flash.clone();
        // The magic goes first.
        let slot = order
            .first()
            .map_or(0, |&i| i / (flash.len() / 2) * (flash.len() / 2));
        torn[slot..slot + 8].fill(0);
        for &i in &order[..k] {
            torn[i] = done[i];
        }
        let (u, seq) = Trainer::load_from(&torn).unwrap();
        match seq {
            1 => assert_eq!(bits(u.params()), first),
            2 => {
                assert_eq!(k, order.len());
                assert_eq!(bits(u.params()), bits(t.params()));
            }
            s => panic!("sequence {s}"),
        }
    }
    let (u, seq) = Trainer::load_from(&done).unwrap();
    assert_eq!((seq, bits(u.params())), (2, bits(t.params())));
    // Too small a buffer is an error, not a panic.
    assert!(t.save_to(&mut [0u8; 100]).is_err());
}

#[test]
fn freezing_by_name_for_fine_tuning() {
    let model = small_cnn();
    let k = model.find("layer2.0.conv1").unwrap();
    let by_count = model.clone().freeze(k).unwrap();
    assert_eq!(model.clone().freeze_until("layer1").unwrap(), by_count);
    let named = model
        .clone()
        .freeze_layers(&["conv1", "bn1", "relu", "layer1"]);
    assert_eq!(named.unwrap(), by_count);
    let gap = model.clone().freeze_layers(&["layer1"]).unwrap_err();
    assert!(gap.to_string().contains("conv1"), "{gap}");
    assert!(model.clone().freeze_until("nope").is_err());
    // The report marks frozen layers; a frozen model's checkpoint has no optimizer state for
    // them, and resumes exactly.
    let mut t = trainer(by_count.clone(), false, 1);
    let report = t.memory_report();
    assert!(
        report.layers[..k]
            .iter()
            .all(|l| l.frozen && l.saved_bytes == 0)
    );
    assert!(!report.layers[k].frozen);
    assert!(format!("{report}").contains("frozen"));
    run(&mut t, 0, 2);
    let bytes = t.checkpoint().unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensor("optim.conv1.weight.momentum_buffer").is_err());
    assert!(
        st.tensor("optim.layer2.0.conv1.weight.momentum_buffer")
            .is_ok()
    );
    let mut u = Trainer::from_checkpoint(&bytes).unwrap();
    assert_eq!(u.model().frozen(), k);
    assert_eq!(run(&mut u, 2, 4), run(&mut t, 2, 4));
}

/// An f32 tensor to write with the `safetensors` crate.
struct F32s(Vec<usize>, Vec<u8>);

impl safetensors::View for &F32s {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.0
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.1)
    }
    fn data_len(&self) -> usize {
        self.1.len()
    }
}

fn f32s(shape: &[usize], v: &[f32]) -> F32s {
    F32s(
        shape.to_vec(),
        v.iter().flat_map(|x| x.to_le_bytes()).collect(),
    )
}

/// Our checkpoints (trained a few steps further, DropIT on) load into PyTorch's modules and give
/// our logits — checked by `tests/fixtures/torch_checkpoints.py check` where PyTorch is
/// installed (Debian's `python3-torch`); elsewhere only the files are written.
#[test]
fn pytorch_reads_our_checkpoints() {
    let dir = std::env::temp_dir().join(format!("dropit-torch-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let torch = std::process::Command::new("/usr/bin/python3")
        .args(["-c", "import torch"])
        .output()
        .is_ok_and(|o| o.status.success());
    let cases: [Case; 3] = [
        ("mlp", small_mlp, false),
        ("cnn", small_cnn, false),
        ("vit", || small_vit(0.0), true),
    ];
    for (name, make, vit) in cases {
        let model = make().with_dropit(&DropIt::new(0.9)).unwrap();
        let mut t = trainer(model, vit, 1);
        t.load_weights(&fixture(&format!("{name}_torch"))).unwrap();
        run(&mut t, 0, 3);
        let (x, _) = io(name);
        let mut logits = vec![0.0; 8 * 10];
        t.predict(&x, &mut logits).unwrap();
        let ckpt = dir.join(format!("{name}_ours.safetensors"));
        t.save(&ckpt).unwrap();
        let io_path = dir.join(format!("{name}_ours_io.safetensors"));
        let tensors = [
            ("logits", f32s(&[8, 10], &logits)),
            ("x", f32s(&[8, 28, 28, 1], &x)),
        ];
        let bytes = safetensors::serialize(tensors.iter().map(|(n, t)| (*n, t)), None).unwrap();
        std::fs::write(&io_path, bytes).unwrap();
        if !torch {
            println!("SKIP {name}: no PyTorch here to read {}", ckpt.display());
            continue;
        }
        let script = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/torch_checkpoints.py"
        );
        let out = std::process::Command::new("/usr/bin/python3")
            .arg(script)
            .args(["check", name])
            .arg(&ckpt)
            .arg("--io")
            .arg(&io_path)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        println!("{}", text.lines().last().unwrap_or_default());
        assert!(
            out.status.success(),
            "{name}: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Files found to ask for gigabytes of arena from a few hundred bytes of metadata
/// (`fuzz/regressions/`): refused before anything is allocated.
#[test]
fn metadata_cannot_ask_for_huge_arenas() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/regressions");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            let bytes = std::fs::read(&path).unwrap();
            let Err(e) = Trainer::from_checkpoint_within(&bytes, 256 << 20) else {
                panic!("{} loaded", path.display());
            };
            assert!(
                e.to_string().contains("limit") || e.to_string().contains("large"),
                "{e}"
            );
            seen += 1;
        }
    }
    assert!(seen >= 2);
    // The same files' models load within a larger limit only where the plan really fits.
    let (bytes, _) = saved();
    assert!(Trainer::from_checkpoint_within(&bytes, 1000).is_err());
    assert!(Trainer::from_checkpoint_within(&bytes, usize::MAX).is_ok());
}
