//! The one block of memory a trainer owns or borrows, and disjoint typed views into it.
//!
//! Everything lives in 8-byte words so that every buffer starts 8-byte aligned; f32 tensors
//! are views of whole words (a tensor of odd length has one unused float at its end).

use crate::collections::msg;
use core::ops::Range;

use crate::error::{Error, Result};

/// Words needed for `n` floats.
pub(crate) const fn words_for_f32(n: usize) -> usize {
    n.div_ceil(2)
}

/// Largest tensor, in elements, that a model may hold (per sample) or a plan may lay out (for
/// the whole batch): 16 bytes of headroom per element keep every size computed from a tensor's
/// length — its f32 words, its gradient, a packed copy, byte offsets — below `isize::MAX`, on
/// 32-bit targets too. Larger sizes are refused before anything is computed from them.
pub(crate) const MAX_TENSOR_ELEMS: usize = isize::MAX as usize / 16;

/// Words needed for `n` bytes.
pub(crate) const fn words_for_bytes(n: usize) -> usize {
    n.div_ceil(8)
}

/// Where the arena lives.
pub(crate) enum Storage<'a> {
    #[cfg(feature = "alloc")]
    Owned(alloc::vec::Vec<u64>),
    Borrowed(&'a mut [u64]),
}

impl Storage<'_> {
    pub(crate) fn words(&mut self) -> &mut [u64] {
        match self {
            #[cfg(feature = "alloc")]
            Storage::Owned(v) => v,
            Storage::Borrowed(s) => s,
        }
    }

    pub(crate) fn words_ref(&self) -> &[u64] {
        match self {
            #[cfg(feature = "alloc")]
            Storage::Owned(v) => v,
            Storage::Borrowed(s) => s,
        }
    }
}

/// The 8-byte-aligned words of a caller's byte buffer, or an error if it holds fewer than `words`.
pub(crate) fn borrow_words(buf: &mut [u8], words: usize) -> Result<&mut [u64]> {
    let skip = buf.as_ptr().align_offset(8).min(buf.len());
    let given = buf.len();
    let usable = &mut buf[skip..];
    let whole = usable.len() / 8 * 8;
    if whole / 8 < words {
        return Err(Error::ArenaTooSmall {
            needed: words * 8 + skip,
            given,
        });
    }
    let w: &mut [u64] = bytemuck::try_cast_slice_mut(&mut usable[..words * 8]).map_err(|_| {
        Error::ArenaTooSmall {
            needed: words * 8 + 7,
            given,
        }
    })?;
    Ok(w)
}

/// Splits `arena` into the `N` word ranges asked for, which must not overlap (empty ones may be
/// anywhere). The planner guarantees that; an overlap is reported, not a panic.
pub(crate) fn carve<const N: usize>(
    arena: &mut [u64],
    ranges: [Range<usize>; N],
) -> Result<[&mut [u64]; N]> {
    let mut order: [usize; N] = core::array::from_fn(|i| i);
    order.sort_unstable_by_key(|&i| ranges[i].start);
    let mut out: [&mut [u64]; N] = core::array::from_fn(|_| <&mut [u64]>::default());
    let mut rest = arena;
    let mut base = 0;
    for i in order {
        let r = ranges[i].clone();
        if r.is_empty() {
            continue;
        }
        if r.start < base || r.end - base > rest.len() {
            return Err(Error::Config {
                what: msg!("arena"),
                detail: msg!("buffer {:?} overlaps another or lies outside the arena", r),
            });
        }
        let (_, tail) = core::mem::take(&mut rest).split_at_mut(r.start - base);
        let (mid, tail) = tail.split_at_mut(r.len());
        out[i] = mid;
        rest = tail;
        base = r.end;
    }
    Ok(out)
}

/// Views words as floats.
pub(crate) fn f32s(w: &[u64]) -> &[f32] {
    bytemuck::cast_slice(w)
}

/// Views words as floats, writable.
pub(crate) fn f32s_mut(w: &mut [u64]) -> &mut [f32] {
    bytemuck::cast_slice_mut(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn carve_gives_disjoint_views_in_any_order() {
        let mut a: alloc::vec::Vec<u64> = (0..10).collect();
        let [x, y, z, e] = carve(&mut a, [6..8, 0..2, 3..4, 5..5]).unwrap();
        assert_eq!(
            (&*x, &*y, &*z, e.len()),
            (&[6u64, 7][..], &[0u64, 1][..], &[3u64][..], 0)
        );
        assert!(carve(&mut a, [0..3, 2..4]).is_err());
        assert!(carve(&mut a, [8..11, 0..0]).is_err());
    }

    #[test]
    fn borrowed_bytes_align_and_check_size() {
        let mut buf = alloc::vec![0u8; 100];
        assert_eq!(borrow_words(&mut buf[1..], 11).unwrap().len(), 11);
        assert!(matches!(
            borrow_words(&mut buf[1..], 13),
            Err(Error::ArenaTooSmall { .. })
        ));
    }
}
