//! Keep/drop compaction of a dense tensor into a [`PackedMut`], and scatter back to dense.
//!
//! Packing reads the tensor once: eight keys at a time are compared with the threshold, and only
//! the kept lanes are written (value rounded to the format's type, position in the format's form).
//! With [`crate::select::topk_threshold`] reading it about once as well, selecting and packing
//! ([`select_and_pack`]) read the input about twice.
//!
//! A tensor-wide packing can be split across workers: each counts its chunk
//! ([`chunk_counts`]), [`split_parts`] turns the counts into every chunk's share of the ties
//! (the first ones in index order) and its output slots, and each worker packs its part
//! ([`pack_part`]). Chunks are whole bitmap words (64 elements) or whole `Block16` blocks, so no
//! two parts write the same word or count; the bytes are those of one [`pack`].

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

/// `u32` indices; `.1` is added to every index (a part's first element in the tensor).
struct U32Sink<'a>(&'a mut [u32], usize);
impl PosSink for U32Sink<'_> {
    #[inline(always)]
    fn run(&mut self, base: usize, mut mask: u64, mut slot: usize) {
        while mask != 0 {
            self.0[slot] = (self.1 + base + mask.trailing_zeros() as usize) as u32;
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
                PositionsMut::U32(i) => pack_typed(x, block, &mut thr, $vals, U32Sink(i, 0)),
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

/// How many elements of `x` have a key above `t`'s, and how many equal it: what one worker's
/// chunk contributes to a packing split across workers (see [`split_parts`]).
pub fn chunk_counts(x: &[f32], t: &Threshold) -> (usize, usize) {
    let tk = t.key();
    let (tv, mut gt, mut eq) = (
        wide::i32x8::splat(tk),
        wide::i32x8::splat(0),
        wide::i32x8::splat(0),
    );
    let mut eights = x.chunks_exact(8);
    for e in &mut eights {
        let k = keys8(e);
        gt -= k.simd_gt(tv); // a true lane is −1
        eq -= k.simd_eq(tv);
    }
    let sum = |v: wide::i32x8| {
        v.to_array()
            .iter()
            .map(|&c| c as u32 as usize)
            .sum::<usize>()
    };
    let (mut above, mut equal) = (sum(gt), sum(eq));
    for &v in eights.remainder() {
        let k = crate::select::key(v);
        above += (k > tk) as usize;
        equal += (k == tk) as usize;
    }
    (above, equal)
}

/// One worker's share of a packing split across workers: elements `start .. start + len` of the
/// tensor and the slots their kept values go to (from [`split_parts`]; pack it with
/// [`pack_part`]).
#[derive(Debug)]
pub struct PackPart<'a> {
    start: usize,
    len: usize,
    key: i32,
    ties: usize,
    values: ValuesMut<'a>,
    positions: PositionsMut<'a>,
}

impl PackPart<'_> {
    /// The part's first element in the tensor.
    pub fn start(&self) -> usize {
        self.start
    }

    /// Elements in the part.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the part has no elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// How long each part's chunk must be a multiple of for `out`'s position form: 64 for a bitmap
/// (a part owns whole words), [`crate::format::BLOCK16`] for `Block16` (a part owns whole block
/// counts), 1 for `u32` indices.
pub fn part_align(out: &PackedMut<'_>) -> usize {
    match out.positions {
        PositionsMut::Bitmap(_) => 64,
        PositionsMut::Block16 { .. } => crate::format::BLOCK16,
        PositionsMut::U32(_) => 1,
    }
}

fn split_vals<'a>(v: ValuesMut<'a>, at: usize) -> (ValuesMut<'a>, ValuesMut<'a>) {
    match v {
        ValuesMut::F32(a) => {
            let (l, r) = a.split_at_mut(at);
            (ValuesMut::F32(l), ValuesMut::F32(r))
        }
        ValuesMut::Bf16(a) => {
            let (l, r) = a.split_at_mut(at);
            (ValuesMut::Bf16(l), ValuesMut::Bf16(r))
        }
        ValuesMut::F16(a) => {
            let (l, r) = a.split_at_mut(at);
            (ValuesMut::F16(l), ValuesMut::F16(r))
        }
    }
}

/// Splits `out` (a tensor of `out.n` elements packed under the tensor-wide `t`) into one part
/// per chunk of `chunk` elements (the last one shorter). `counts[i]` is
/// [`chunk_counts`] of chunk `i`; from them each part gets its share of the ties (the first
/// ones in index order) and its output slots (a prefix sum), so the parts can be packed in any
/// order, on any thread, and give the bytes [`pack`] gives. `chunk` must be a multiple of
/// [`part_align`] (or cover the whole tensor); `parts` gets one part per chunk, `None` after.
pub fn split_parts<'a>(
    t: &Threshold,
    chunk: usize,
    counts: &[(usize, usize)],
    out: &'a mut PackedMut<'_>,
    parts: &mut [Option<PackPart<'a>>],
) -> Result<()> {
    let n = out.n;
    if chunk == 0 || (chunk < n && !chunk.is_multiple_of(part_align(out))) {
        return Err(Error::Invalid {
            what: "part length (a multiple of the position form's alignment)",
            value: chunk,
        });
    }
    let nparts = n.div_ceil(chunk);
    check_len("chunk counts", nparts, counts.len())?;
    if parts.len() < nparts {
        return Err(Error::Length {
            what: "parts",
            expected: nparts,
            given: parts.len(),
        });
    }
    // Each part's kept count: all its keys above, and the ties left when it starts.
    let mut ties_left = t.ties();
    let mut total = 0usize;
    for &(above, equal) in counts {
        total += above + equal.min(ties_left);
        ties_left -= equal.min(ties_left);
    }
    check_len("packed tensor kept count", out.k, total)?;
    let value_len = match &out.values {
        ValuesMut::F32(v) => v.len(),
        ValuesMut::Bf16(v) => v.len(),
        ValuesMut::F16(v) => v.len(),
    };
    check_len("packed values", out.k, value_len)?;
    match &out.positions {
        PositionsMut::Bitmap(w) => check_len("bitmap words", n.div_ceil(64), w.len())?,
        PositionsMut::Block16 { counts, offsets } => {
            check_len(
                "block counts",
                n.div_ceil(crate::format::BLOCK16),
                counts.len(),
            )?;
            check_len("block offsets", out.k, offsets.len())?;
        }
        PositionsMut::U32(i) => check_len("indices", out.k, i.len())?,
    }
    let mut values = core::mem::replace(&mut out.values, ValuesMut::F32(&mut []));
    let mut positions = core::mem::replace(&mut out.positions, PositionsMut::U32(&mut []));
    let mut ties_left = t.ties();
    for (i, (&(above, equal), slot)) in counts.iter().zip(parts.iter_mut()).enumerate() {
        let (start, len) = (i * chunk, chunk.min(n - i * chunk));
        let ties = equal.min(ties_left);
        ties_left -= ties;
        let kept = above + ties;
        let (v, rest) = split_vals(values, kept);
        values = rest;
        let p = match &mut positions {
            PositionsMut::Bitmap(w) => {
                let (l, r) = core::mem::take(w).split_at_mut(len.div_ceil(64));
                *w = r;
                PositionsMut::Bitmap(l)
            }
            PositionsMut::Block16 { counts, offsets } => {
                let blocks = len.div_ceil(crate::format::BLOCK16);
                let (cl, cr) = core::mem::take(counts).split_at_mut(blocks);
                let (ol, or) = core::mem::take(offsets).split_at_mut(kept);
                (*counts, *offsets) = (cr, or);
                PositionsMut::Block16 {
                    counts: cl,
                    offsets: ol,
                }
            }
            PositionsMut::U32(idx) => {
                let (l, r) = core::mem::take(idx).split_at_mut(kept);
                *idx = r;
                PositionsMut::U32(l)
            }
        };
        *slot = Some(PackPart {
            start,
            len,
            key: t.key(),
            ties,
            values: v,
            positions: p,
        });
    }
    parts[nparts..].iter_mut().for_each(|p| *p = None);
    Ok(())
}

/// Packs one part (from [`split_parts`]): `x` is the part's chunk of the tensor.
pub fn pack_part(x: &[f32], part: PackPart<'_>) -> Result<()> {
    check_len("part length", part.len, x.len())?;
    let t = Threshold::from_parts(part.key, 0, part.ties);
    let mut slot = 0;
    macro_rules! with_sink {
        ($vals:expr) => {{
            let vals = $vals;
            match part.positions {
                PositionsMut::Bitmap(w) => {
                    w.fill(0);
                    pack_range(x, 0, &t, vals, &mut BitmapSink(w), &mut slot)?;
                }
                PositionsMut::Block16 { counts, offsets } => {
                    counts.fill(0);
                    pack_range(
                        x,
                        0,
                        &t,
                        vals,
                        &mut Block16Sink { counts, offsets },
                        &mut slot,
                    )?;
                }
                PositionsMut::U32(i) => {
                    pack_range(x, 0, &t, vals, &mut U32Sink(i, part.start), &mut slot)?;
                }
            }
            check_len("kept elements after packing a part", vals.len(), slot)
        }};
    }
    match part.values {
        ValuesMut::F32(v) => with_sink!(v),
        ValuesMut::Bf16(v) => with_sink!(v),
        ValuesMut::F16(v) => with_sink!(v),
    }
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
