//! How a batch or layer norm keeps its normalized input x̂ for backward: f32, bf16 (lean), or
//! 8-bit codes with one scale per normalization group (lean, 8-bit) — per channel for batch
//! norm, whose x̂ is normalized over a channel, per row for layer norm, whose x̂ is normalized
//! over a row. As ActNN and GACT do: x̂ ≈ code · scale, the scale the group's largest |x̂| / 127,
//! codes rounded to nearest. The codes and their loops are `dropit_simd::norm`'s
//! (`Xhat`, `code_scale`).

use super::contract::{Elem, Entry};

/// The form of a kept x̂.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Form {
    /// f32: exact.
    F32,
    /// bf16 (`lean`).
    Bf16,
    /// One signed byte per element and one f32 scale per group (`lean` with 8-bit norms).
    Int8,
}

impl Form {
    /// The form of a norm with these settings.
    pub fn of(lean: bool, int8: bool) -> Self {
        match (lean, int8) {
            (false, _) => Form::F32,
            (true, false) => Form::Bf16,
            (true, true) => Form::Int8,
        }
    }

    /// The saved entry of `len` elements.
    pub fn entry(self, len: usize) -> Entry {
        match self {
            Form::F32 => Entry::new("normalized f32", Elem::F32, len),
            Form::Bf16 => Entry::new("normalized bf16", Elem::Bf16, len),
            Form::Int8 => Entry::new("normalized int8", Elem::Byte, len),
        }
    }
}

#[cfg(test)]
mod tests {
    use dropit_simd::norm::{Xhat, code_scale as scale_for};
    use half::bf16;

    #[test]
    fn codes_round_to_nearest_within_half_a_step() {
        let max = 3.7f32;
        let s = scale_for(max);
        for i in -1000..=1000 {
            let v = max * i as f32 / 1000.0;
            let q = i8::put(v, 1.0 / s);
            assert!((q.get() * s - v).abs() <= 0.5 * s * 1.0001, "{v}");
        }
        assert_eq!(i8::put(max, 1.0 / s), 127);
        assert_eq!(i8::put(-max, 1.0 / s), -127);
        assert_eq!(i8::put(10.0 * max, 1.0 / s), 127);
        assert_eq!(i8::put(f32::NAN, 1.0 / s), 0);
        assert_eq!(scale_for(0.0), 1.0);
        assert_eq!(scale_for(f32::INFINITY), 1.0);
        // The float forms are exact (bf16: its own rounding) and ignore the scale.
        assert_eq!(f32::put(0.1, 7.0).get(), 0.1);
        assert_eq!(bf16::put(1.5, 7.0).get(), 1.5);
    }
}
