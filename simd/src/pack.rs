//! Keep/drop compaction of a dense tensor into a [`PackedMut`], and scatter back to dense.
//!
//! Packing reads the tensor once: eight keys at a time are compared with the threshold, and only
//! the kept lanes are written (value rounded to the format's type, position in the format's form).

use crate::format::{Packed, PackedMut, Positions, PositionsMut, Value, Values, ValuesMut};
use crate::select::{Threshold, keep_mask8, keeps, keys8};
use crate::{Error, Result, check_len};

/// Where a kept element's position goes.
trait PosSink {
    fn put(&mut self, slot: usize, idx: usize);
}

struct BitmapSink<'a>(&'a mut [u64]);
impl PosSink for BitmapSink<'_> {
    #[inline(always)]
    fn put(&mut self, _slot: usize, idx: usize) {
        self.0[idx >> 6] |= 1u64 << (idx & 63);
    }
}

struct Block16Sink<'a> {
    counts: &'a mut [u32],
    offsets: &'a mut [u16],
}
impl PosSink for Block16Sink<'_> {
    #[inline(always)]
    fn put(&mut self, slot: usize, idx: usize) {
        self.counts[idx >> 16] += 1;
        self.offsets[slot] = idx as u16;
    }
}

struct U32Sink<'a>(&'a mut [u32]);
impl PosSink for U32Sink<'_> {
    #[inline(always)]
    fn put(&mut self, slot: usize, idx: usize) {
        self.0[slot] = idx as u32;
    }
}

const MISMATCH: Error = Error::Invalid {
    what: "threshold keeps more elements than it was computed for (applied to other data?)",
    value: 0,
};

/// Packs `x[..]` (global indices from `base`) under `t`, appending at `*cursor`.
#[inline(always)]
fn pack_range<V: Value, P: PosSink>(
    x: &[f32],
    base: usize,
    t: &Threshold,
    vals: &mut [V],
    pos: &mut P,
    cursor: &mut usize,
) -> Result<()> {
    let mut ties = t.ties();
    let tk = t.key();
    let mut emit = |idx: usize, v: f32, cursor: &mut usize| -> Result<()> {
        let slot = *cursor;
        let dst = vals.get_mut(slot).ok_or(MISMATCH)?;
        *dst = V::from_f32(v);
        pos.put(slot, idx);
        *cursor += 1;
        Ok(())
    };
    let mut chunks = x.chunks_exact(8);
    let mut j = base;
    for c in &mut chunks {
        let mut m = keep_mask8(keys8(c), tk, &mut ties);
        while m != 0 {
            let b = m.trailing_zeros() as usize;
            emit(j + b, c[b], cursor)?;
            m &= m - 1;
        }
        j += 8;
    }
    for &v in chunks.remainder() {
        if keeps(crate::select::key(v), tk, &mut ties) {
            emit(j, v, cursor)?;
        }
        j += 1;
    }
    Ok(())
}

fn pack_typed<V: Value, P: PosSink>(
    x: &[f32],
    block: usize,
    thresholds: &[Threshold],
    vals: &mut [V],
    mut pos: P,
) -> Result<()> {
    let mut cursor = 0;
    for (b, (xb, t)) in x.chunks(block).zip(thresholds).enumerate() {
        pack_range(xb, b * block, t, vals, &mut pos, &mut cursor)?;
    }
    check_len("kept elements after packing", vals.len(), cursor)
}

/// Packs `x` in selection blocks of `block` elements (the last one shorter), block `b` kept by
/// `thresholds[b]` (from [`crate::select::topk_blocks`]). `out.k` must equal the total kept.
pub fn pack_blocks(
    x: &[f32],
    block: usize,
    thresholds: &[Threshold],
    out: &mut PackedMut<'_>,
) -> Result<()> {
    if block == 0 {
        return Err(Error::Invalid {
            what: "selection block length",
            value: 0,
        });
    }
    check_len("packed tensor length", out.n, x.len())?;
    check_len(
        "thresholds (one per block)",
        x.len().div_ceil(block),
        thresholds.len(),
    )?;
    let total: usize = thresholds.iter().map(Threshold::kept).sum();
    check_len("packed tensor kept count", out.k, total)?;
    macro_rules! with_sink {
        ($vals:expr) => {
            match &mut out.positions {
                PositionsMut::Bitmap(w) => {
                    w.fill(0);
                    pack_typed(x, block, thresholds, $vals, BitmapSink(w))
                }
                PositionsMut::Block16 { counts, offsets } => {
                    counts.fill(0);
                    pack_typed(x, block, thresholds, $vals, Block16Sink { counts, offsets })
                }
                PositionsMut::U32(i) => pack_typed(x, block, thresholds, $vals, U32Sink(i)),
            }
        };
    }
    match &mut out.values {
        ValuesMut::F32(v) => with_sink!(v),
        ValuesMut::Bf16(v) => with_sink!(v),
        ValuesMut::F16(v) => with_sink!(v),
    }
}

/// Packs the whole of `x` under one tensor-wide threshold.
pub fn pack(x: &[f32], t: &Threshold, out: &mut PackedMut<'_>) -> Result<()> {
    let blocks = if x.is_empty() {
        &[][..]
    } else {
        core::slice::from_ref(t)
    };
    pack_blocks(x, x.len().max(1), blocks, out)
}

const CORRUPT: Error = Error::Invalid {
    what: "packed positions (out of range, or count differs from k)",
    value: 0,
};

/// Checks that the positions agree with `n` and `k` (every index in range, exactly `k` of them).
fn validate(n: usize, k: usize, positions: Positions<'_>, values: usize) -> Result<()> {
    check_len("packed values", k, values)?;
    let ok = match positions {
        Positions::Bitmap(words) => {
            check_len("bitmap words", n.div_ceil(64), words.len())?;
            let ones: usize = words.iter().map(|w| w.count_ones() as usize).sum();
            let tail_clean = n.is_multiple_of(64) || words.last().is_none_or(|w| w >> (n % 64) == 0);
            ones == k && tail_clean
        }
        Positions::Block16 { counts, offsets } => {
            check_len(
                "block counts",
                n.div_ceil(crate::format::BLOCK16),
                counts.len(),
            )?;
            check_len("block offsets", k, offsets.len())?;
            let total: usize = counts.iter().map(|&c| c as usize).sum();
            let last = counts.len().saturating_sub(1);
            let start_last = counts[..last].iter().map(|&c| c as usize).sum::<usize>();
            total == k
                && offsets[start_last.min(k)..]
                    .iter()
                    .all(|&o| (last << 16) + (o as usize) < n)
        }
        Positions::U32(idx) => {
            check_len("indices", k, idx.len())?;
            idx.iter().all(|&i| (i as usize) < n)
        }
    };
    if ok { Ok(()) } else { Err(CORRUPT) }
}

fn each_typed<V: Value, F: FnMut(usize, f32)>(positions: Positions<'_>, vals: &[V], mut f: F) {
    match positions {
        Positions::Bitmap(words) => {
            let mut j = 0;
            for (wi, &w) in words.iter().enumerate() {
                let mut w = w;
                while w != 0 {
                    f(wi * 64 + w.trailing_zeros() as usize, vals[j].to_f32());
                    j += 1;
                    w &= w - 1;
                }
            }
        }
        Positions::Block16 { counts, offsets } => {
            let mut j = 0;
            for (b, &c) in counts.iter().enumerate() {
                let (base, c) = (b << 16, c as usize);
                for (&o, &v) in offsets[j..j + c].iter().zip(&vals[j..j + c]) {
                    f(base + o as usize, v.to_f32());
                }
                j += c;
            }
        }
        Positions::U32(idx) => {
            for (&i, &v) in idx.iter().zip(vals) {
                f(i as usize, v.to_f32());
            }
        }
    }
}

/// Calls `f(index, value)` for every kept element in index order, after checking that the
/// positions are consistent with `n` and `k`: a corrupt packed tensor is an error before `f` is
/// ever called, never a panic or a partial result.
#[inline]
pub fn for_each_kept<F: FnMut(usize, f32)>(p: &Packed<'_>, f: F) -> Result<()> {
    match p.values {
        Values::F32(v) => {
            validate(p.n, p.k, p.positions, v.len()).map(|_| each_typed(p.positions, v, f))
        }
        Values::Bf16(v) => {
            validate(p.n, p.k, p.positions, v.len()).map(|_| each_typed(p.positions, v, f))
        }
        Values::F16(v) => {
            validate(p.n, p.k, p.positions, v.len()).map(|_| each_typed(p.positions, v, f))
        }
    }
}

/// Scatters a packed tensor into `out` (zeros where nothing was kept).
pub fn unpack(p: &Packed<'_>, out: &mut [f32]) -> Result<()> {
    check_len("unpacked tensor", p.n, out.len())?;
    out.fill(0.0);
    for_each_kept(p, |i, v| out[i] = v)
}
