//! Triage: what the loaders make of each file given, without the fuzzer's sanitizers and
//! limits (so a huge arena is really allocated: mind the machine's memory).
//!
//! `cargo run --release --manifest-path fuzz/Cargo.toml --example load -- FILE...`

use std::time::Instant;

use dropit::Trainer;
use dropit_fuzz::{fix_checksum, trainers};

fn main() {
    for path in std::env::args().skip(1) {
        let raw = std::fs::read(&path).unwrap();
        let fixed = fix_checksum(&raw);
        for (what, bytes) in [("as is", Some(raw.clone())), ("checksum fixed", fixed)] {
            let Some(bytes) = bytes else { continue };
            let t0 = Instant::now();
            match Trainer::from_checkpoint(&bytes) {
                Ok(t) => println!(
                    "{path} ({what}, {} bytes): from_checkpoint: loaded, step {}, arena {} bytes \
                     ({:.1?})",
                    bytes.len(),
                    t.steps(),
                    t.arena_bytes(),
                    t0.elapsed()
                ),
                Err(e) => println!("{path} ({what}): from_checkpoint: {e}"),
            }
            for (name, mut t) in trainers() {
                match t.load_weights(&bytes) {
                    Ok(()) => println!("{path} ({what}): load_weights into {name}: loaded"),
                    Err(e) => println!("{path} ({what}): load_weights into {name}: {e}"),
                }
            }
        }
    }
}
