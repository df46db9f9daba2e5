//! Which build of a hot loop to run: chosen once per call from the CPU's features.

/// A build of the hot loops.
#[derive(Clone, Copy)]
pub(crate) enum Isa {
    /// The build's baseline (SSE2 on x86_64, NEON on aarch64).
    Base,
    /// x86_64 with AVX2 and FMA, detected at run time (feature `std`).
    #[cfg(x86_detect)]
    Avx2Fma,
}

/// The best build this CPU runs.
pub(crate) fn isa() -> Isa {
    #[cfg(x86_detect)]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        return Isa::Avx2Fma;
    }
    Isa::Base
}
