//! Keep/drop compaction of a dense tensor into a [`PackedMut`], and scatter back to dense.
//!
//! Packing reads the tensor once: eight keys at a time are compared with the threshold, and only
//! the kept lanes are written (value rounded to the format's type, position in the format's form).

use crate::format::{Packed, PackedMut, Positions, PositionsMut, Value, Values, ValuesMut};
use crate::select::{Threshold, keep_mask8, keeps, keys8};
use crate::{Error, Result, check_len};

/// Where the positions of a run's kept elements go.
trait PosSink {
    /// Bits set in `mask` (bit j = element `base + j`) are kept, their values at `slot..`.
    fn run(&mut self, base: usize, mask: u64, slot: usize);
}

struct BitmapSink<'a>(&'a mut [u64]);
impl PosSink for BitmapSink<'_> {
    #[inline(always)]
    fn run(&mut self, base: usize, mask: u64, _slot: usize) {
        let (w, sh) = (base >> 6, base & 63);
        self.0[w] |= mask << sh;
        // A run that straddles two words (selection blocks need not be 64-aligned).
        let spill = if sh > 0 { mask >> (64 - sh) } else { 0 };
        if spill != 0 {
            self.0[w + 1] |= spill;
        }
    }
}

struct Block16Sink<'a> {
    counts: &'a mut [u32],
    offsets: &'a mut [u16],
}
impl PosSink for Block16Sink<'_> {
    #[inline(always)]
    fn run(&mut self, base: usize, mut mask: u64, mut slot: usize) {
        while mask != 0 {
            let idx = base + mask.trailing_zeros() as usize;
            self.counts[idx >> 16] += 1;
            self.offsets[slot] = idx as u16;
            slot += 1;
            mask &= mask - 1;
        }
    }
}

struct U32Sink<'a>(&'a mut [u32]);
impl PosSink for U32Sink<'_> {
    #[inline(always)]
    fn run(&mut self, base: usize, mut mask: u64, mut slot: usize) {
        while mask != 0 {
            self.0[slot] = (base + mask.trailing_zeros() as usize) as u32;
            slot += 1;
            mask &= mask - 1;
        }
    }
}

const MISMATCH: Error = Error::Invalid {
    what: "threshold keeps more elements than it was computed for (applied to other data?)",
    value: 0,
};

/// The keep mask of a run of at most 64 elements, ties taken in index order.
#[inline(always)]
fn run_mask(c: &[f32], tk: i32, ties: &mut usize) -> u64 {
    let mut m = 0u64;
    let mut eights = c.chunks_exact(8);
    for (q, e) in (&mut eights).enumerate() {
        m |= (keep_mask8(keys8(e), tk, ties) as u64) << (8 * q);
    }
    let done = c.len() - eights.remainder().len();
    for (j, &v) in eights.remainder().iter().enumerate() {
        m |= (keeps(crate::select::key(v), tk, ties) as u64) << (done + j);
    }
    m
}

/// Writes the kept elements of a run and advances `*slot`. Working a 64-element run at a time
/// leaves one hard-to-predict branch (the loop's end) per run instead of one per 8 elements.
#[inline(always)]
fn emit<V: Value, P: PosSink>(
    c: &[f32],
    base: usize,
    mask: u64,
    vals: &mut [V],
    pos: &mut P,
    slot: &mut usize,
) -> Result<()> {
    let end = *slot + mask.count_ones() as usize;
    let dst = vals.get_mut(*slot..end).ok_or(MISMATCH)?;
    let mut m = mask;
    for d in dst {
        *d = V::from_f32(c[m.trailing_zeros() as usize]);
        m &= m - 1;
    }
    pos.run(base, mask, *slot);
    *slot = end;
    Ok(())
}

/// Packs `x[..]` (global indices from `base`) under `t`, appending at `*slot`.
#[inline(always)]
fn pack_range<V: Value, P: PosSink>(
    x: &[f32],
    base: usize,
    t: &Threshold,
    vals: &mut [V],
    pos: &mut P,
    slot: &mut usize,
) -> Result<()> {
    let mut ties = t.ties();
    let tk = t.key();
    for (r, c) in x.chunks(64).enumerate() {
        let m = run_mask(c, tk, &mut ties);
        emit(c, base + 64 * r, m, vals, pos, slot)?;
    }
    Ok(())
}

/// Packs `x` block by block, each block under the threshold `thr(block index, block)` gives.
fn pack_typed<V: Value, P: PosSink>(
    x: &[f32],
    block: usize,
    thr: &mut impl FnMut(usize, &[f32]) -> Result<Threshold>,
    vals: &mut [V],
    mut pos: P,
) -> Result<()> {
    let mut cursor = 0;
    for (b, xb) in x.chunks(block).enumerate() {
        let t = thr(b, xb)?;
        pack_range(xb, b * block, &t, vals, &mut pos, &mut cursor)?;
    }
    check_len("kept elements after packing", vals.len(), cursor)
}

/// Clears `out`'s positions and packs `x` into it (see [`pack_typed`]), for every format.
fn pack_with(
    x: &[f32],
    block: usize,
    out: &mut PackedMut<'_>,
    mut thr: impl FnMut(usize, &[f32]) -> Result<Threshold>,
) -> Result<()> {
    macro_rules! with_sink {
        ($vals:expr) => {
            match &mut out.positions {
                PositionsMut::Bitmap(w) => {
                    w.fill(0);
                    pack_typed(x, block, &mut thr, $vals, BitmapSink(w))
                }
                PositionsMut::Block16 { counts, offsets } => {
                    counts.fill(0);
                    pack_typed(x, block, &mut thr, $vals, Block16Sink { counts, offsets })
                }
                PositionsMut::U32(i) => pack_typed(x, block, &mut thr, $vals, U32Sink(i)),
            }
        };
    }
    match &mut out.values {
        ValuesMut::F32(v) => with_sink!(v),
        ValuesMut::Bf16(v) => with_sink!(v),
        ValuesMut::F16(v) => with_sink!(v),
    }
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
    pack_with(x, block, out, |b, _| Ok(thresholds[b]))
}

/// Selects and packs in one go: blocks of `block` elements (the last one shorter) each keep
/// [`crate::select::kept_count`]`(len, keep)` elements, selected just before the block is
/// packed, so no per-block thresholds are stored. `out.k` must equal
/// [`crate::select::kept_in_blocks`]`(x.len(), block, keep)`.
pub fn select_and_pack(x: &[f32], block: usize, keep: f32, out: &mut PackedMut<'_>) -> Result<()> {
    let total = crate::select::kept_in_blocks(x.len(), block, keep)?;
    check_len("packed tensor length", out.n, x.len())?;
    check_len("packed tensor kept count", out.k, total)?;
    pack_with(x, block, out, |_, xb| {
        crate::select::topk_threshold(xb, crate::select::kept_count(xb.len(), keep))
    })
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

/// Checks that the positions agree with `n` and `k`: exactly `k` of them, strictly increasing
/// (the sparse GEMMs decode them with a forward-only cursor), all below `n`.
fn validate(n: usize, k: usize, positions: Positions<'_>, values: usize) -> Result<()> {
    check_len("packed values", k, values)?;
    let ok = match positions {
        Positions::Bitmap(words) => {
            check_len("bitmap words", n.div_ceil(64), words.len())?;
            let ones: usize = words.iter().map(|w| w.count_ones() as usize).sum();
            let tail_clean =
                n.is_multiple_of(64) || words.last().is_none_or(|w| w >> (n % 64) == 0);
            ones == k && tail_clean
        }
        Positions::Block16 { counts, offsets } => {
            check_len(
                "block counts",
                n.div_ceil(crate::format::BLOCK16),
                counts.len(),
            )?;
            check_len("block offsets", k, offsets.len())?;
            let total = counts
                .iter()
                .try_fold(0usize, |a, &c| a.checked_add(c as usize));
            // Each block's offsets rise strictly and stay inside the block (the last one may
            // be short): the kernels index by them without further checks.
            total == Some(k) && {
                let mut start = 0;
                counts.iter().enumerate().all(|(b, &c)| {
                    let seg = &offsets[start..start + c as usize];
                    start += c as usize;
                    let len = (n - b * crate::format::BLOCK16).min(crate::format::BLOCK16);
                    seg.windows(2).all(|p| p[0] < p[1])
                        && seg.last().is_none_or(|&o| (o as usize) < len)
                })
            }
        }
        Positions::U32(idx) => {
            check_len("indices", k, idx.len())?;
            idx.windows(2).all(|p| p[0] < p[1]) && idx.last().is_none_or(|&i| (i as usize) < n)
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
