//! How a packed (DropIT) tensor is stored: a value type × a position form.
//!
//! Sizes are known from `(n, k)` alone, before any data exists, so the planner can reserve them.
//! A packed tensor lives in one 8-byte-aligned byte buffer of [`Format::bytes`] bytes, laid out
//! as three regions, each padded to 8 bytes:
//!
//! 1. positions: bitmap words (`u64`), or `u32` indices, or per-block `u32` counts (`Block16`);
//! 2. values: `k` of `f32`, `bf16` or `f16`, in index order;
//! 3. `Block16` only: `k` of `u16` offsets inside their block of [`BLOCK16`] elements.

use half::{bf16, f16};

use crate::{Error, Result};

/// Elements per block of the `Block16` position form.
pub const BLOCK16: usize = 1 << 16;

/// How kept values are stored.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// Exact.
    F32,
    /// bfloat16: f32's range, 8 bits of mantissa; rounded to nearest even.
    Bf16,
    /// IEEE half: 11 bits of mantissa, range ±65504; rounded to nearest even.
    F16,
}

impl ValueType {
    /// Bytes per value.
    pub const fn size(self) -> usize {
        match self {
            ValueType::F32 => 4,
            ValueType::Bf16 | ValueType::F16 => 2,
        }
    }
}

/// How the positions of kept values are stored.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PosForm {
    /// One bit per element: `n/8` bytes whatever `k` is. Best when more than ~1/16 is kept.
    Bitmap,
    /// A `u16` offset per kept element inside blocks of [`BLOCK16`], plus a `u32` count per block.
    Block16,
    /// A `u32` index per kept element.
    U32,
}

/// A storage format: value type × position form.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Format {
    /// How values are stored.
    pub values: ValueType,
    /// How positions are stored.
    pub positions: PosForm,
}

const fn pad8(b: usize) -> usize {
    b.div_ceil(8) * 8
}

impl Format {
    /// A format from its parts.
    pub const fn new(values: ValueType, positions: PosForm) -> Self {
        Format { values, positions }
    }

    /// Bytes of region 1 (bitmap words, `u32` indices or `Block16` counts), padded to 8.
    pub const fn position_bytes(self, n: usize, k: usize) -> usize {
        match self.positions {
            PosForm::Bitmap => n.div_ceil(64) * 8,
            PosForm::Block16 => pad8(n.div_ceil(BLOCK16) * 4),
            PosForm::U32 => pad8(k * 4),
        }
    }

    /// Bytes of region 2 (values), padded to 8.
    pub const fn value_bytes(self, k: usize) -> usize {
        pad8(k * self.values.size())
    }

    /// Bytes of region 3 (`Block16` offsets), padded to 8; 0 for the other forms.
    pub const fn offset_bytes(self, k: usize) -> usize {
        match self.positions {
            PosForm::Block16 => pad8(k * 2),
            _ => 0,
        }
    }

    /// Total bytes of a packed tensor of `n` elements keeping `k`.
    pub const fn bytes(self, n: usize, k: usize) -> usize {
        self.position_bytes(n, k) + self.value_bytes(k) + self.offset_bytes(k)
    }

    /// The smallest format for `(n, k)` with the given value type (ties go to the bitmap, whose
    /// decoding is the cheapest).
    pub fn smallest(n: usize, k: usize, values: ValueType) -> Format {
        [PosForm::Bitmap, PosForm::Block16, PosForm::U32]
            .into_iter()
            .map(|p| Format::new(values, p))
            .min_by_key(|f| f.bytes(n, k))
            .unwrap_or(Format::new(values, PosForm::Bitmap))
    }
}

/// Kept values, in index order.
#[derive(Debug, Clone, Copy)]
pub enum Values<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// bf16 values.
    Bf16(&'a [bf16]),
    /// f16 values.
    F16(&'a [f16]),
}

/// Kept values, writable.
#[derive(Debug)]
pub enum ValuesMut<'a> {
    /// f32 values.
    F32(&'a mut [f32]),
    /// bf16 values.
    Bf16(&'a mut [bf16]),
    /// f16 values.
    F16(&'a mut [f16]),
}

/// Positions of the kept values.
#[derive(Debug, Clone, Copy)]
pub enum Positions<'a> {
    /// Bit `i % 64` of word `i / 64` is set when element `i` is kept.
    Bitmap(&'a [u64]),
    /// `counts[b]` values lie in block `b`; their offsets inside it are the next `counts[b]`
    /// entries of `offsets`.
    Block16 {
        /// Kept elements per block.
        counts: &'a [u32],
        /// Offset of each kept element inside its block.
        offsets: &'a [u16],
    },
    /// The index of each kept element.
    U32(&'a [u32]),
}

/// Positions of the kept values, writable.
#[derive(Debug)]
pub enum PositionsMut<'a> {
    /// See [`Positions::Bitmap`].
    Bitmap(&'a mut [u64]),
    /// See [`Positions::Block16`].
    Block16 {
        /// Kept elements per block.
        counts: &'a mut [u32],
        /// Offset of each kept element inside its block.
        offsets: &'a mut [u16],
    },
    /// See [`Positions::U32`].
    U32(&'a mut [u32]),
}

/// A packed tensor: `k` of `n` elements, read-only.
#[derive(Debug, Clone, Copy)]
pub struct Packed<'a> {
    /// Elements of the dense tensor.
    pub n: usize,
    /// Elements kept.
    pub k: usize,
    /// Kept values.
    pub values: Values<'a>,
    /// Where they were.
    pub positions: Positions<'a>,
}

/// A packed tensor being written.
#[derive(Debug)]
pub struct PackedMut<'a> {
    /// Elements of the dense tensor.
    pub n: usize,
    /// Elements kept.
    pub k: usize,
    /// Kept values.
    pub values: ValuesMut<'a>,
    /// Where they were.
    pub positions: PositionsMut<'a>,
}

fn region<T: bytemuck::Pod>(bytes: &[u8], len: usize) -> Result<&[T]> {
    bytemuck::try_cast_slice(&bytes[..len * core::mem::size_of::<T>()])
        .map_err(|_| Error::Misaligned)
}

fn region_mut<T: bytemuck::Pod>(bytes: &mut [u8], len: usize) -> Result<&mut [T]> {
    bytemuck::try_cast_slice_mut(&mut bytes[..len * core::mem::size_of::<T>()])
        .map_err(|_| Error::Misaligned)
}

/// Splits a buffer of `fmt.bytes(n, k)` bytes into its three regions.
fn split(fmt: Format, n: usize, k: usize, len: usize) -> Result<(usize, usize, usize)> {
    if k > n {
        return Err(Error::KTooLarge { k, n });
    }
    // At most 16 bytes per element: no size below can wrap.
    if n > isize::MAX as usize / 16 {
        return Err(Error::Invalid {
            what: "packed tensor length (too large to address)",
            value: n,
        });
    }
    crate::check_len("packed buffer bytes", fmt.bytes(n, k), len)?;
    let p = fmt.position_bytes(n, k);
    let v = fmt.value_bytes(k);
    Ok((p, p + v, len))
}

impl<'a> Packed<'a> {
    /// Views `buf` (exactly [`Format::bytes`] bytes, 8-byte aligned) as a packed tensor.
    pub fn from_bytes(fmt: Format, n: usize, k: usize, buf: &'a [u8]) -> Result<Self> {
        let (p_end, v_end, _) = split(fmt, n, k, buf.len())?;
        let (pos, rest) = buf.split_at(p_end);
        let (vals, offs) = rest.split_at(v_end - p_end);
        let values = match fmt.values {
            ValueType::F32 => Values::F32(region(vals, k)?),
            ValueType::Bf16 => Values::Bf16(region(vals, k)?),
            ValueType::F16 => Values::F16(region(vals, k)?),
        };
        let positions = match fmt.positions {
            PosForm::Bitmap => Positions::Bitmap(region(pos, n.div_ceil(64))?),
            PosForm::Block16 => Positions::Block16 {
                counts: region(pos, n.div_ceil(BLOCK16))?,
                offsets: region(offs, k)?,
            },
            PosForm::U32 => Positions::U32(region(pos, k)?),
        };
        Ok(Packed {
            n,
            k,
            values,
            positions,
        })
    }

    /// The format this tensor is stored in.
    pub fn format(&self) -> Format {
        let values = match self.values {
            Values::F32(_) => ValueType::F32,
            Values::Bf16(_) => ValueType::Bf16,
            Values::F16(_) => ValueType::F16,
        };
        let positions = match self.positions {
            Positions::Bitmap(_) => PosForm::Bitmap,
            Positions::Block16 { .. } => PosForm::Block16,
            Positions::U32(_) => PosForm::U32,
        };
        Format::new(values, positions)
    }
}

impl<'a> PackedMut<'a> {
    /// Views `buf` (exactly [`Format::bytes`] bytes, 8-byte aligned) as a packed tensor to write.
    pub fn from_bytes(fmt: Format, n: usize, k: usize, buf: &'a mut [u8]) -> Result<Self> {
        let (p_end, v_end, _) = split(fmt, n, k, buf.len())?;
        let (pos, rest) = buf.split_at_mut(p_end);
        let (vals, offs) = rest.split_at_mut(v_end - p_end);
        let values = match fmt.values {
            ValueType::F32 => ValuesMut::F32(region_mut(vals, k)?),
            ValueType::Bf16 => ValuesMut::Bf16(region_mut(vals, k)?),
            ValueType::F16 => ValuesMut::F16(region_mut(vals, k)?),
        };
        let positions = match fmt.positions {
            PosForm::Bitmap => PositionsMut::Bitmap(region_mut(pos, n.div_ceil(64))?),
            PosForm::Block16 => PositionsMut::Block16 {
                counts: region_mut(pos, n.div_ceil(BLOCK16))?,
                offsets: region_mut(offs, k)?,
            },
            PosForm::U32 => PositionsMut::U32(region_mut(pos, k)?),
        };
        Ok(PackedMut {
            n,
            k,
            values,
            positions,
        })
    }

    /// A read-only view.
    pub fn as_packed(&self) -> Packed<'_> {
        let values = match &self.values {
            ValuesMut::F32(v) => Values::F32(v),
            ValuesMut::Bf16(v) => Values::Bf16(v),
            ValuesMut::F16(v) => Values::F16(v),
        };
        let positions = match &self.positions {
            PositionsMut::Bitmap(w) => Positions::Bitmap(w),
            PositionsMut::Block16 { counts, offsets } => Positions::Block16 { counts, offsets },
            PositionsMut::U32(i) => Positions::U32(i),
        };
        Packed {
            n: self.n,
            k: self.k,
            values,
            positions,
        }
    }
}

/// A stored value type: conversion from f32 (round to nearest even) and back (exact).
pub trait Value: Copy + bytemuck::Pod {
    /// Rounds an f32 into this type.
    fn from_f32(x: f32) -> Self;
    /// Widens back to f32.
    fn to_f32(self) -> f32;
}

impl Value for f32 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        x
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Value for bf16 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        bf16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        bf16::to_f32(self)
    }
}

impl Value for f16 {
    #[inline(always)]
    fn from_f32(x: f32) -> Self {
        f16::from_f32(x)
    }
    #[inline(always)]
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}
