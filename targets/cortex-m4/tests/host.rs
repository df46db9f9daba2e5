//! The firmware's fine-tuning on the desktop: the same library code, configuration, weights and
//! samples (the build script's), the same heap-free trainer. `targets/check.sh` compares these
//! accuracies with the emulated Cortex-M4's.

use dropit_cortex_m4::{Samples, evaluate, fine_tune, tiny, trainer};

fn bytes(name: &str) -> Vec<u8> {
    std::fs::read(std::path::Path::new(env!("OUT_DIR")).join(name)).unwrap()
}

#[test]
fn fine_tuning_improves_held_out_accuracy() {
    let (w, ti, tl, si, sl) = (
        bytes("weights.safetensors"),
        bytes("tune-images.bin"),
        bytes("tune-labels.bin"),
        bytes("test-images.bin"),
        bytes("test-labels.bin"),
    );
    let tune = Samples {
        images: &ti,
        labels: &tl,
    };
    let test = Samples {
        images: &si,
        labels: &sl,
    };
    let mut arena = vec![0u8; 232 * 1024];
    let mut x = vec![0f32; tiny::BATCH * tiny::PIXELS];
    let mut t = trainer(&mut arena, &w).unwrap();
    let before = evaluate(&mut t, test, &mut x).unwrap();
    let last = fine_tune(&mut t, tune, &mut x, |_, _| {}).unwrap();
    let after = evaluate(&mut t, test, &mut x).unwrap();
    println!(
        "host: before {:.2}% after {:.2}% (final training loss {last:.4})",
        before.percent(),
        after.percent()
    );
    assert!(after.correct > before.correct, "{before:?} → {after:?}");
}

/// The heap-free build's fixed capacities: one layer too many, or a name too long, is an
/// `Error::Capacity` naming what is full — and the builder is left as it was.
#[test]
fn capacities_are_errors_not_panics() {
    use dropit::collections::{MAX_NODES, NAME_LEN};
    use dropit::{Error, ModelBuilder, Shape};
    let mut b = ModelBuilder::new(Shape::new(1, 1, 4));
    let mut x = b.input();
    let names = ["a", "b"];
    for i in 0..MAX_NODES {
        let name = dropit::collections::text::<8>(format_args!("{}{i}", names[i % 2]));
        x = b.relu(&name, x).unwrap();
    }
    match b.relu("one.too.many", x) {
        Err(Error::Capacity { what, capacity }) => {
            assert_eq!((what, capacity), ("layers", MAX_NODES))
        }
        other => panic!("{other:?}"),
    }
    // Still usable: the failed call changed nothing.
    assert!(b.shape(x).is_some());
    let long = "n".repeat(NAME_LEN + 1);
    let mut b = ModelBuilder::new(Shape::new(1, 1, 4));
    assert!(matches!(
        b.relu(&long, b.input()),
        Err(Error::Capacity {
            what: "layer name bytes",
            ..
        })
    ));
}
