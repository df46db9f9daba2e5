//! Exact top-k by magnitude: which k elements of a tensor DropIT keeps.
//!
//! The order of |x| is the order of the bit patterns of |x| read as integers (the "key"), so a
//! radix select over keys finds the k-th largest in three streaming passes (11, 10 and 10 bits)
//! with one small histogram — no sort, no copy of the tensor. NaN keys lie above +inf's, so a NaN
//! is always kept (and the loss check sees it later); -0.0 and 0.0 share key 0.
//!
//! The result is a [`Threshold`]: every element whose key is above `key()` is kept, and of the
//! elements whose key equals it, the first `ties()` in index order. That is exactly k elements.
//!
//! Parallel callers split the tensor into chunks, [`RadixSelect::count`] each chunk into its own
//! [`Histogram`], [`Histogram::merge`] them and [`RadixSelect::advance`] once per pass.

use wide::i32x8;

use crate::{Error, Result};

/// The magnitude key of `x`: the bits of |x| as a non-negative integer.
#[inline(always)]
pub fn key(x: f32) -> i32 {
    (x.to_bits() & 0x7FFF_FFFF) as i32
}

/// Keys of eight elements at once.
#[inline(always)]
pub(crate) fn keys8(x: &[f32]) -> i32x8 {
    let a: [f32; 8] = x[..8].try_into().unwrap();
    bytemuck::cast::<[f32; 8], i32x8>(a) & i32x8::splat(0x7FFF_FFFF)
}

/// How many of `n` elements a keep fraction keeps: `round(n · keep)`, within `0..=n`.
///
/// The planner and the kernels both call this, so sizes agree before and after data exists.
pub fn kept_count(n: usize, keep: f32) -> usize {
    let keep = if keep.is_nan() {
        0.0
    } else {
        keep.clamp(0.0, 1.0)
    };
    // Round half up (`f64::round` is not in core; the product is never negative).
    ((n as f64 * keep as f64 + 0.5) as usize).min(n)
}

/// Total kept when `n` elements are selected in blocks of `block` (the last one shorter), each
/// block keeping [`kept_count`] of its own length.
pub fn kept_in_blocks(n: usize, block: usize, keep: f32) -> Result<usize> {
    if block == 0 {
        return Err(Error::Invalid {
            what: "selection block length",
            value: 0,
        });
    }
    let full = n / block;
    Ok(full * kept_count(block, keep) + kept_count(n % block, keep))
}

/// Which elements are kept: keys above [`Threshold::key`], plus the first [`Threshold::ties`]
/// elements (in index order) whose key equals it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    t: i32,
    ties: usize,
    above: usize,
}

impl Threshold {
    /// A threshold that keeps nothing.
    pub const NONE: Threshold = Threshold {
        t: i32::MAX,
        ties: 0,
        above: 0,
    };

    /// Keeps every one of `n` elements.
    pub const fn all(n: usize) -> Threshold {
        Threshold {
            t: -1,
            ties: 0,
            above: n,
        }
    }

    /// The threshold key (−1 when every element is kept).
    pub fn key(&self) -> i32 {
        self.t
    }

    /// How many elements with key equal to [`Threshold::key`] are kept, first in index order.
    pub fn ties(&self) -> usize {
        self.ties
    }

    /// How many elements have a key above the threshold.
    pub fn above(&self) -> usize {
        self.above
    }

    /// Elements kept in all: `above + ties` — the k asked for.
    pub fn kept(&self) -> usize {
        self.above + self.ties
    }

    /// Builds a threshold from its parts (used by the scalar twin).
    pub(crate) fn from_parts(t: i32, above: usize, ties: usize) -> Threshold {
        Threshold { t, ties, above }
    }
}

/// One pass's counts: bins for the next 11 (first pass) or 10 bits of the key.
#[derive(Clone)]
pub struct Histogram {
    bins: [u32; 1 << 11],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram { bins: [0; 1 << 11] }
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets every bin to zero.
    pub fn clear(&mut self) {
        self.bins = [0; 1 << 11];
    }

    /// Adds another chunk's counts (saturating never happens: a tensor has < 2^32 elements).
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.bins.iter_mut().zip(other.bins.iter()) {
            *a += *b;
        }
    }

    /// The counts.
    pub fn bins(&self) -> &[u32] {
        &self.bins
    }
}

/// (shift of the digit, bits in the digit) for each pass; bit 31 of a key is always 0.
const PASSES: [(u32, u32); 3] = [(20, 11), (10, 10), (0, 10)];

/// The state of a radix select between passes.
#[derive(Debug, Clone)]
pub struct RadixSelect {
    pass: usize,
    prefix: i32,
    need: usize,
    above: usize,
    done: Option<Threshold>,
}

impl RadixSelect {
    /// Starts selecting the `k` largest of `n` elements by magnitude.
    pub fn new(n: usize, k: usize) -> Result<Self> {
        if k > n {
            return Err(Error::KTooLarge { k, n });
        }
        if n > u32::MAX as usize {
            return Err(Error::Invalid {
                what: "top-k tensor length (at most 2^32 - 1)",
                value: n,
            });
        }
        let done = match k {
            0 => Some(Threshold::NONE),
            _ if k == n => Some(Threshold::all(n)),
            _ => None,
        };
        Ok(RadixSelect {
            pass: 0,
            prefix: 0,
            need: k,
            above: 0,
            done,
        })
    }

    /// Whether the threshold is known.
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    /// The threshold, once [`RadixSelect::is_done`].
    pub fn threshold(&self) -> Option<Threshold> {
        self.done
    }

    /// Counts this pass's digit of every element of `x` whose earlier digits match the prefix
    /// chosen so far. Chunks of one tensor may be counted in any order, into separate histograms.
    pub fn count(&self, x: &[f32], h: &mut Histogram) {
        if self.done.is_some() {
            return;
        }
        let (shift, bits) = PASSES[self.pass];
        let digit_mask = (1i32 << bits) - 1;
        if self.pass == 0 {
            count_all(x, shift, &mut h.bins);
            return;
        }
        let hi_shift = shift + bits;
        let want = i32x8::splat(self.prefix);
        let mut chunks = x.chunks_exact(8);
        for c in &mut chunks {
            let k = keys8(c);
            let m = (k >> hi_shift).simd_eq(want).to_bitmask();
            if m != 0 {
                let ks = k.to_array();
                let mut m = m;
                while m != 0 {
                    let j = m.trailing_zeros() as usize;
                    h.bins[((ks[j] >> shift) & digit_mask) as usize] += 1;
                    m &= m - 1;
                }
            }
        }
        for &v in chunks.remainder() {
            let k = key(v);
            if k >> hi_shift == self.prefix {
                h.bins[((k >> shift) & digit_mask) as usize] += 1;
            }
        }
    }

    /// Consumes the histogram of the whole tensor for this pass and narrows the search.
    pub fn advance(&mut self, h: &Histogram) -> Result<()> {
        if self.done.is_some() {
            return Ok(());
        }
        let (shift, bits) = PASSES[self.pass];
        let mut cum = 0usize;
        let mut found = None;
        for b in (0..1usize << bits).rev() {
            let c = h.bins[b] as usize;
            if cum + c >= self.need {
                found = Some((b, c));
                break;
            }
            cum += c;
        }
        let Some((b, c)) = found else {
            return Err(Error::Invalid {
                what: "histogram total (fewer elements than k match the prefix)",
                value: cum,
            });
        };
        self.above += cum;
        self.need -= cum;
        let digits = (self.prefix << bits) | b as i32;
        if self.need == c {
            // The whole bin is kept: everything at or above its lowest key.
            let t = (digits << shift) - 1;
            self.done = Some(Threshold::from_parts(t, self.above + c, 0));
        } else if self.pass + 1 == PASSES.len() {
            self.done = Some(Threshold::from_parts(digits, self.above, self.need));
        } else {
            self.prefix = digits;
            self.pass += 1;
        }
        Ok(())
    }
}

/// First pass: every element lands in a bin. Four interleaved sub-histograms keep runs of equal
/// exponents from serialising on one counter.
fn count_all(x: &[f32], shift: u32, bins: &mut [u32; 1 << 11]) {
    let mut sub = [[0u32; 1 << 11]; 4];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        let k = (keys8(c) >> shift).to_array();
        sub[0][k[0] as usize] += 1;
        sub[1][k[1] as usize] += 1;
        sub[2][k[2] as usize] += 1;
        sub[3][k[3] as usize] += 1;
        sub[0][k[4] as usize] += 1;
        sub[1][k[5] as usize] += 1;
        sub[2][k[6] as usize] += 1;
        sub[3][k[7] as usize] += 1;
    }
    for &v in chunks.remainder() {
        sub[0][(key(v) >> shift) as usize] += 1;
    }
    for (i, b) in bins.iter_mut().enumerate() {
        *b += sub[0][i] + sub[1][i] + sub[2][i] + sub[3][i];
    }
}

/// The k elements of largest |x|: the threshold that keeps exactly them.
pub fn topk_threshold(x: &[f32], k: usize) -> Result<Threshold> {
    let mut rs = RadixSelect::new(x.len(), k)?;
    let mut h = Histogram::new();
    while !rs.is_done() {
        h.clear();
        rs.count(x, &mut h);
        rs.advance(&h)?;
    }
    Ok(rs.threshold().unwrap_or(Threshold::NONE))
}

/// Per-block selection: block `b` is `x[b·block ..]` (the last one shorter) and keeps
/// [`kept_count`]`(its length, keep)` elements. `out` gets one threshold per block.
pub fn topk_blocks(x: &[f32], block: usize, keep: f32, out: &mut [Threshold]) -> Result<()> {
    if block == 0 {
        return Err(Error::Invalid {
            what: "selection block length",
            value: 0,
        });
    }
    crate::check_len("per-block thresholds", x.len().div_ceil(block), out.len())?;
    for (xb, t) in x.chunks(block).zip(out.iter_mut()) {
        *t = topk_threshold(xb, kept_count(xb.len(), keep))?;
    }
    Ok(())
}

/// The keep mask of eight elements with keys `k` under threshold `t`, taking ties from
/// `ties_left` in index order.
#[inline(always)]
pub(crate) fn keep_mask8(k: i32x8, t: i32, ties_left: &mut usize) -> u32 {
    let tv = i32x8::splat(t);
    let mut m = k.simd_gt(tv).to_bitmask();
    if *ties_left > 0 {
        let mut eq = k.simd_eq(tv).to_bitmask();
        while eq != 0 && *ties_left > 0 {
            m |= eq & eq.wrapping_neg();
            eq &= eq - 1;
            *ties_left -= 1;
        }
    }
    m
}

/// Scalar form of [`keep_mask8`] for one element.
#[inline(always)]
pub(crate) fn keeps(k: i32, t: i32, ties_left: &mut usize) -> bool {
    if k > t {
        true
    } else if k == t && *ties_left > 0 {
        *ties_left -= 1;
        true
    } else {
        false
    }
}
