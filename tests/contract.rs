//! Every layer's declaration is consistent: parameter names and shapes, layout maps that are
//! permutations, saved entries that fit the plan, and a memory report that reads them.
mod common;

use common::config;
use dropit::layers::{Elem, Layout};
use dropit::{DropIt, Model, Trainer};

fn models() -> Vec<(&'static str, Model)> {
    let lean = DropIt::new(0.9).lean(true);
    vec![
        ("mlp", Model::mlp().unwrap()),
        ("cnn", Model::cnn().unwrap()),
        (
            "cnn lean",
            Model::cnn().unwrap().with_dropit(&lean).unwrap(),
        ),
        ("vit", Model::vit().unwrap()),
        (
            "vit lean",
            Model::vit().unwrap().with_dropit(&lean).unwrap(),
        ),
        ("mobilenet", Model::mobilenet().unwrap()),
        (
            "mobilenet γ0.9",
            Model::mobilenet()
                .unwrap()
                .with_dropit(&DropIt::new(0.9))
                .unwrap(),
        ),
    ]
}

#[test]
fn parameters_are_declared_as_pytorch_names_them() {
    for (m, model) in models() {
        for node in model.nodes() {
            let params = node.layer.params();
            let mut names: Vec<&str> = params.iter().map(|p| p.name).collect();
            names.sort_unstable();
            names.dedup();
            assert_eq!(names.len(), params.len(), "{m} {}: names repeat", node.name);
            // Trained parameters first, then running statistics.
            assert!(params.windows(2).all(|w| w[0].trained || !w[1].trained));
            let trained: usize = params.iter().filter(|p| p.trained).map(|p| p.len()).sum();
            assert_eq!(trained, node.layer.param_count(), "{m} {}", node.name);
            for p in &params {
                let len = p.len();
                let mut seen = vec![false; len];
                for i in 0..len {
                    let j = p.layout.torch_index(i);
                    assert!(
                        j < len && !seen[j],
                        "{m} {}.{}: {i} → {j}",
                        node.name,
                        p.name
                    );
                    seen[j] = true;
                }
                if let Layout::Transposed { rows, cols } = p.layout {
                    assert_eq!(p.torch_shape.as_slice(), [cols, rows]);
                }
            }
        }
    }
    // The names a PyTorch state_dict would hold for the cnn's first block and the vit's head.
    let cnn = Model::cnn().unwrap();
    let bn = &cnn.nodes()[cnn.find("layer1.0.bn1").unwrap()].layer;
    let names: Vec<&str> = bn.params().iter().map(|p| p.name).collect();
    assert_eq!(names, ["weight", "bias", "running_mean", "running_var"]);
    let conv = &cnn.nodes()[cnn.find("layer2.0.conv1").unwrap()].layer;
    assert_eq!(conv.params()[0].torch_shape.as_slice(), [64, 32, 3, 3]);
    let mob = Model::mobilenet().unwrap();
    let dw = &mob.nodes()[mob.find("features.1.conv.1.0").unwrap()].layer;
    assert_eq!(dw.params()[0].torch_shape.as_slice(), [64, 1, 3, 3]);
}

#[test]
fn saved_entries_fit_and_the_report_reads_them() {
    for (m, model) in models() {
        for threads in [1, 2] {
            let mut cfg = config(8);
            cfg.threads = threads;
            let t = Trainer::new(model.clone(), cfg).unwrap();
            let report = t.memory_report();
            let mut own = 0;
            for (i, node) in model.nodes().iter().enumerate() {
                let (x, y) = model.shapes_of(i);
                let needs = node.layer.needs(8, x, y, threads);
                // A lean batch norm's four: 1/σ, x̂, its codes' scales, the staged statistics.
                assert!(needs.saved.len() <= 4, "{m} {}", node.name);
                // Fewer samples never need more.
                let fewer = node.layer.needs(3, x, y, threads);
                assert!(
                    fewer.saved_words() <= needs.saved_words(),
                    "{m} {}",
                    node.name
                );
                for e in &needs.saved {
                    let bytes = match e.elem {
                        Elem::F32 => 4 * e.len,
                        Elem::Bf16 => 2 * e.len,
                        Elem::Byte => e.len,
                        Elem::Bit => e.len.div_ceil(8),
                    };
                    assert!(e.words() * 8 >= bytes && e.words() * 8 < bytes + 8);
                }
                own += needs.saved_words() * 8;
                let line = &report.layers[i];
                assert_eq!(line.dense_bytes, needs.torch_bytes, "{m} {}", node.name);
                for e in &needs.saved {
                    assert!(
                        line.saved.contains(e.what),
                        "{m} {}: {}",
                        node.name,
                        line.saved
                    );
                }
            }
            // Own contexts plus held and packed inputs make the saved region.
            assert!(own <= report.saved, "{m}: {own} > {}", report.saved);
        }
    }
}
