//! cfg aliases for the crate (`cfg_aliases` also declares them to rustc's `check-cfg`).

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    cfg_aliases::cfg_aliases! {
        // x86_64 with run-time CPU-feature detection: the AVX2 / AVX-512 builds of the hot loops.
        x86_detect: { all(feature = "std", target_arch = "x86_64") },
    }
}
