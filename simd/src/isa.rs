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

/// Runs `body` in a build for the best ISA of this CPU: the same code, but what the compiler
/// inlines into `body` (`wide` lanes, `#[inline(always)]` helpers) may use AVX2's whole 256-bit
/// registers. The operations and their order are the same in every build, so are the results.
#[inline(always)]
pub(crate) fn vectorized<R>(body: impl FnOnce() -> R) -> R {
    match isa() {
        #[cfg(x86_detect)]
        // SAFETY: `isa()` returned Avx2Fma only after the CPU reported AVX2 and FMA.
        Isa::Avx2Fma => unsafe { with_avx2(body) },
        Isa::Base => body(),
    }
}

#[cfg(x86_detect)]
#[target_feature(enable = "avx2,fma")]
fn with_avx2<R>(body: impl FnOnce() -> R) -> R {
    body()
}
