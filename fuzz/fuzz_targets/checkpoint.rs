//! The checkpoint loader on arbitrary bytes: `Trainer::from_checkpoint`, `load_weights` into
//! three small prebuilt trainers, and `Trainer::load_from` (two-slot flash) must return
//! (an error, usually) without panicking, aborting, hanging or allocating more than the input
//! justifies. Each input is tried as it is and, where its safetensors header parses, with its
//! checksum recomputed, so that mutations reach the checks behind the CRC.
//!
//! What loads must also save and load back to the same state, and take a training step
//! without panicking.
#![no_main]

use std::cell::RefCell;

use dropit::Trainer;
use dropit_fuzz::{fix_checksum, trainers};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static TRAINERS: RefCell<[(&'static str, Trainer<'static>); 3]> = RefCell::new(trainers());
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|p| p.to_bits()).collect()
}

/// A trainer that loaded: its checkpoint loads back the same, and a step does not panic.
fn exercise(mut t: Trainer<'static>) {
    let again = t.checkpoint().expect("a loaded trainer saves");
    let u = Trainer::from_checkpoint(&again).expect("a re-saved checkpoint loads");
    assert_eq!(u.steps(), t.steps());
    // Debug strings: a NaN read back is the same NaN.
    assert_eq!(format!("{:?}", u.model()), format!("{:?}", t.model()));
    assert_eq!(format!("{:?}", u.config()), format!("{:?}", t.config()));
    assert_eq!(bits(u.params()), bits(t.params()));
    assert_eq!(bits(u.state()), bits(t.state()));
    let n = t.model().input_shape().numel();
    if n <= 1 << 16 {
        let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32 * 0.25 - 0.75).collect();
        let _ = t.step(&x, &[0]);
    }
}

fn load(bytes: &[u8]) {
    if let Ok(t) = Trainer::from_checkpoint_within(bytes, 256 << 20) {
        exercise(t);
    }
    TRAINERS.with_borrow_mut(|ts| {
        for (_, t) in ts.iter_mut() {
            // The heap-free loader changes nothing when it refuses, and where both loaders
            // accept a file they load the same bits. (They may differ on what they refuse: the
            // heap-free one checks no checksum, reads no escaped names, and does not insist
            // that tensors tile the data.)
            let before = bits(t.params());
            let in_place = t.load_weights_in_place(bytes);
            let loaded = bits(t.params());
            if in_place.is_err() {
                assert_eq!(loaded, before, "a refused file changed the weights");
            }
            if t.load_weights(bytes).is_ok() && in_place.is_ok() {
                assert_eq!(bits(t.params()), loaded, "the two loaders disagree");
            }
        }
    });
}

fuzz_target!(|data: &[u8]| {
    load(data);
    if let Ok((t, _)) = Trainer::load_from(data) {
        exercise(t);
    }
    if let Some(fixed) = fix_checksum(data) {
        load(&fixed);
    }
});
