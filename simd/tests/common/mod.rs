//! Helpers shared by the kernel tests.
#![allow(dead_code)]

pub mod fixture;

use dropit_simd::format::{Format, Packed, PackedMut, PosForm, ValueType};

/// Every format.
pub const FORMATS: [Format; 9] = [
    Format::new(ValueType::F32, PosForm::Bitmap),
    Format::new(ValueType::F32, PosForm::Block16),
    Format::new(ValueType::F32, PosForm::U32),
    Format::new(ValueType::Bf16, PosForm::Bitmap),
    Format::new(ValueType::Bf16, PosForm::Block16),
    Format::new(ValueType::Bf16, PosForm::U32),
    Format::new(ValueType::F16, PosForm::Bitmap),
    Format::new(ValueType::F16, PosForm::Block16),
    Format::new(ValueType::F16, PosForm::U32),
];

/// An owned, 8-byte aligned buffer for one packed tensor.
pub struct Buf {
    pub fmt: Format,
    pub n: usize,
    pub k: usize,
    words: Vec<u64>,
}

impl Buf {
    pub fn new(fmt: Format, n: usize, k: usize) -> Self {
        assert_eq!(fmt.bytes(n, k) % 8, 0);
        Buf {
            fmt,
            n,
            k,
            words: vec![0xA5A5_A5A5_A5A5_A5A5; fmt.bytes(n, k) / 8],
        }
    }
    pub fn bytes(&self) -> &[u8] {
        bytemuck::cast_slice(&self.words)
    }
    pub fn packed_mut(&mut self) -> PackedMut<'_> {
        PackedMut::from_bytes(
            self.fmt,
            self.n,
            self.k,
            bytemuck::cast_slice_mut(&mut self.words),
        )
        .unwrap()
    }
    pub fn packed(&self) -> Packed<'_> {
        Packed::from_bytes(self.fmt, self.n, self.k, bytemuck::cast_slice(&self.words)).unwrap()
    }
}

/// Deterministic pseudo-random floats (xorshift), roughly normal.
pub fn normals(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut u = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        (s >> 40) as f32 / (1u64 << 24) as f32
    };
    (0..n)
        .map(|_| (0..4).map(|_| u()).sum::<f32>() - 2.0)
        .collect()
}

/// Rounds like the format's value type does.
pub fn round_to(fmt: Format, v: f32) -> f32 {
    match fmt.values {
        ValueType::F32 => v,
        ValueType::Bf16 => half::bf16::from_f32(v).to_f32(),
        ValueType::F16 => half::f16::from_f32(v).to_f32(),
    }
}

/// Asserts two float slices agree within `tol · (1 + |b|)`, elementwise.
pub fn assert_close(a: &[f32], b: &[f32], tol: f32) {
    assert_eq!(a.len(), b.len());
    for (i, (&x, &y)) in a.iter().zip(b).enumerate() {
        assert!(
            (x - y).abs() <= tol * (1.0 + y.abs()),
            "element {i}: {x} vs {y}"
        );
    }
}
