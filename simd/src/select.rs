//! Exact top-k by magnitude: which k elements of a tensor DropIT keeps.
//!
//! The order of |x| is the order of the bit patterns of |x| read as integers (the "key"). NaN
//! keys lie above +inf's, so a NaN is always kept (and the loss check sees it later); -0.0 and
//! 0.0 share key 0.
//!
//! The result is a [`Threshold`]: every element whose key is above `key()` is kept, and of the
//! elements whose key equals it, the first `ties()` in index order. That is exactly k elements.
//!
//! [`topk_threshold`] reads the tensor about once:
//!
//! 1. a sample of up to 1024 keys (16 short runs spread over the tensor, a few cache lines each)
//!    gives a key window that holds the k-th largest key with near certainty;
//! 2. one streaming pass compares every key with the window a vector at a time (AVX-512 where
//!    the CPU has it, else eight portable lanes): keys above are only counted, keys inside are
//!    appended to a 12 KiB candidate buffer on the stack, and whenever the buffer fills the
//!    window is narrowed around where the k-th largest key is now expected (its rank among the
//!    elements seen so far is known to within a few standard deviations, fewer as the pass goes
//!    on);
//! 3. a radix select over the candidates alone gives the exact k-th largest key, the counts
//!    above and equal to it and the largest key below it.
//!
//! A full histogram pass is not used: one scalar increment per element costs more here
//! (0.3–0.4 ns per element on a Xeon) than the whole pass above. When the pass cannot be sure
//! (a window that guessed wrong, data sorted by magnitude, a tie class larger than the buffer),
//! the counts say so and the multi-pass [`RadixSelect`] runs instead: the result never depends
//! on the sample, only the time does.
//!
//! Both give the same [`Threshold`], field for field. When the k-th largest key's tie class is
//! split, that is (key, above, ties); when it is kept whole, the key reported is one below the
//! coarsest bin edge of [`RadixSelect`]'s passes that separates the k-th largest key from the
//! next one down — those edges depend on its sampled first pass (every 16th element), which the
//! one pass also counts (a window of 256 bins) so that it can name the same edge.
//!
//! [`RadixSelect`] is the multi-pass select, also usable chunk by chunk: parallel callers split
//! the tensor into chunks, [`RadixSelect::count`] each chunk into its own [`Histogram`],
//! [`Histogram::merge`] them and [`RadixSelect::advance`] once per pass.

mod fast;

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

/// Bins per pass.
const BINS: usize = 1 << 11;

/// One pass's counts: keys above the pass's range, and a histogram of the keys inside it.
#[derive(Clone)]
pub struct Histogram {
    above: u64,
    bins: [u32; BINS],
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            above: 0,
            bins: [0; BINS],
        }
    }
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets every count to zero.
    pub fn clear(&mut self) {
        *self = Self::default();
    }

    /// Adds another chunk's counts.
    pub fn merge(&mut self, other: &Histogram) {
        self.above += other.above;
        for (a, b) in self.bins.iter_mut().zip(other.bins.iter()) {
            *a += *b;
        }
    }

    /// The counts inside the pass's range.
    pub fn bins(&self) -> &[u32] {
        &self.bins
    }
}

/// The first pass samples every `SAMPLE`-th element to guess where the threshold lies.
const SAMPLE: usize = 16;
/// Below this many elements the guess is not worth a pass.
const SAMPLE_MIN: usize = 1 << 14;

/// What the next pass counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pass {
    /// Every `SAMPLE`-th element, full key range at 11 bits: an estimate only.
    Sample,
    /// Exact: keys in `lo..hi` into bin `(key - lo) >> shift`, plus the count of keys at or
    /// above `hi`. `guessed` marks the range the sample chose, which may have missed.
    Range {
        lo: i64,
        hi: i64,
        shift: u32,
        guessed: bool,
    },
}

/// The state of a radix select between passes.
///
/// Passes narrow a key range until one key (or a bin kept whole) is left. A cheap sampled pass
/// first guesses a range a few bins wide around the threshold, so that the exact passes are
/// compare-and-count sweeps in which only the few elements inside the range touch a histogram;
/// if the guess misses (the exact counts say so), the select restarts over the full key range.
#[derive(Debug, Clone)]
pub struct RadixSelect {
    n: usize,
    k: usize,
    pass: Pass,
    done: Option<Threshold>,
}

fn full_range() -> Pass {
    Pass::Range {
        lo: 0,
        hi: 1 << 31,
        shift: 20,
        guessed: false,
    }
}

impl RadixSelect {
    /// Starts selecting the `k` largest of `n` elements by magnitude.
    pub fn new(n: usize, k: usize) -> Result<Self> {
        if k > n {
            return Err(Error::KTooLarge { k, n });
        }
        let done = match k {
            0 => Some(Threshold::NONE),
            _ if k == n => Some(Threshold::all(n)),
            _ => None,
        };
        let pass = if n >= SAMPLE_MIN {
            Pass::Sample
        } else {
            full_range()
        };
        Ok(RadixSelect { n, k, pass, done })
    }

    /// Whether the threshold is known.
    pub fn is_done(&self) -> bool {
        self.done.is_some()
    }

    /// The threshold, once [`RadixSelect::is_done`].
    pub fn threshold(&self) -> Option<Threshold> {
        self.done
    }

    /// Counts this pass over a chunk of the tensor. Chunks may be counted in any order, into
    /// separate histograms that are then merged.
    pub fn count(&self, x: &[f32], h: &mut Histogram) {
        if self.done.is_some() {
            return;
        }
        match self.pass {
            Pass::Sample => {
                for &v in x.iter().step_by(SAMPLE) {
                    h.bins[(key(v) >> 20) as usize] += 1;
                }
            }
            Pass::Range {
                lo: 0, shift: 20, ..
            } => count_all(x, &mut h.bins),
            Pass::Range { lo, hi, shift, .. } => count_range(x, lo, hi, shift, h),
        }
    }

    /// Consumes the histogram of the whole tensor for this pass and narrows the search.
    pub fn advance(&mut self, h: &Histogram) -> Result<()> {
        if self.done.is_some() {
            return Ok(());
        }
        match self.pass {
            Pass::Sample => {
                self.pass = guess_range(&h.bins, self.n, self.k);
                Ok(())
            }
            Pass::Range {
                lo, shift, guessed, ..
            } => self.narrow(h, lo, shift, guessed),
        }
    }

    fn narrow(&mut self, h: &Histogram, lo: i64, shift: u32, guessed: bool) -> Result<()> {
        // Every pass counts all keys above its range afresh.
        let above = h.above as usize;
        let inside: usize = h.bins.iter().map(|&c| c as usize).sum();
        if above >= self.k || above + inside < self.k {
            // A guessed range that missed the threshold: start again over every key. An exact
            // range cannot miss unless the histograms were not of this tensor.
            if !guessed {
                return Err(Error::Invalid {
                    what: "histogram total (fewer elements than k were counted)",
                    value: above + inside,
                });
            }
            self.pass = full_range();
            return Ok(());
        }
        let need = self.k - above;
        let mut cum = 0usize;
        let mut b = BINS;
        for i in (0..BINS).rev() {
            let c = h.bins[i] as usize;
            if cum + c >= need {
                b = i;
                break;
            }
            cum += c;
        }
        let c = h.bins[b] as usize;
        let bin_lo = lo + ((b as i64) << shift);
        let need = need - cum;
        let above = above + cum;
        if need == c {
            // The whole bin is kept: everything at or above its lowest key.
            self.done = Some(Threshold::from_parts((bin_lo - 1) as i32, above + c, 0));
        } else if shift == 0 {
            self.done = Some(Threshold::from_parts(bin_lo as i32, above, need));
        } else {
            self.pass = Pass::Range {
                lo: bin_lo,
                hi: bin_lo + (1 << shift),
                shift: shift.saturating_sub(11),
                guessed: false,
            };
        }
        Ok(())
    }
}

/// From a sampled histogram (11-bit bins over all keys), a range of bins that holds the k-th
/// largest key unless the sample was unlucky by more than a few standard deviations.
fn guess_range(sample: &[u32; BINS], n: usize, k: usize) -> Pass {
    let ns: usize = sample.iter().map(|&c| c as usize).sum();
    let ks = k * ns / n.max(1);
    let margin = 4 * ks.isqrt() + 8;
    let (want_hi, want_lo) = (ks.saturating_sub(margin), ks + margin);
    let (mut cum, mut b_hi, mut b_lo) = (0usize, None, 0usize);
    for b in (0..BINS).rev() {
        cum += sample[b] as usize;
        if b_hi.is_none() && cum > want_hi {
            b_hi = Some(b);
        }
        if cum >= want_lo {
            b_lo = b;
            break;
        }
    }
    let b_hi = b_hi.unwrap_or(BINS - 1);
    let lo = (b_lo as i64) << 20;
    let width = (((b_hi + 1) as i64) << 20) - lo;
    // The smallest shift whose BINS bins cover the range.
    let mut shift = 0;
    while ((BINS as i64) << shift) < width {
        shift += 1;
    }
    if shift >= 20 {
        return full_range();
    }
    Pass::Range {
        lo,
        hi: lo + width,
        shift,
        guessed: true,
    }
}

/// Full key range at 11 bits: every element lands in a bin. Four interleaved sub-histograms
/// keep runs of equal exponents from serialising on one counter.
fn count_all(x: &[f32], bins: &mut [u32; BINS]) {
    let mut sub = [[0u32; BINS]; 4];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        let k = (keys8(c) >> 20u32).to_array();
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
        sub[0][(key(v) >> 20) as usize] += 1;
    }
    for (i, b) in bins.iter_mut().enumerate() {
        *b += sub[0][i] + sub[1][i] + sub[2][i] + sub[3][i];
    }
}

/// Keys at or above `hi` are counted; keys in `lo..hi` are binned. Keys are compared eight at
/// a time; the in-range lanes of a 64-element run are gathered into one mask, so that only one
/// hard-to-predict branch per run remains and only in-range elements touch the histogram.
fn count_range(x: &[f32], lo: i64, hi: i64, shift: u32, h: &mut Histogram) {
    // Keys are below 2^31, so a range end past that can never be reached.
    let below_lo = i32x8::splat((lo - 1).clamp(-1, i32::MAX as i64) as i32);
    let below_hi = i32x8::splat((hi - 1).min(i32::MAX as i64) as i32);
    let lo32 = lo as i32;
    let mut above_lanes = i32x8::splat(0);
    let mut runs = x.chunks_exact(64);
    for run in &mut runs {
        let mut inside = 0u64;
        for (q, c) in run.chunks_exact(8).enumerate() {
            let k = keys8(c);
            let ge_hi = k.simd_gt(below_hi);
            above_lanes -= ge_hi; // a true lane is -1
            inside |= ((k.simd_gt(below_lo) & !ge_hi).to_bitmask() as u64) << (8 * q);
        }
        while inside != 0 {
            let j = inside.trailing_zeros() as usize;
            h.bins[((key(run[j]) - lo32) >> shift) as usize] += 1;
            inside &= inside - 1;
        }
    }
    h.above += above_lanes
        .to_array()
        .iter()
        .map(|&c| c as u64)
        .sum::<u64>();
    for &v in runs.remainder() {
        let k = key(v) as i64;
        if k >= hi {
            h.above += 1;
        } else if k >= lo {
            h.bins[((k - lo) >> shift) as usize] += 1;
        }
    }
}

/// The k elements of largest |x|: the threshold that keeps exactly them.
///
/// Reads `x` about once (see the module docs): a sampled window, one streaming pass that
/// narrows it, an exact finish over the candidates. When that pass cannot be sure of the answer
/// it falls back to the multi-pass [`RadixSelect`]; either way the result is the same.
pub fn topk_threshold(x: &[f32], k: usize) -> Result<Threshold> {
    topk_with(x, k, fast::Engine::best(), FAST_MIN)
}

/// Below this many elements the multi-pass select is as quick as the one-pass one.
const FAST_MIN: usize = 512;

/// [`topk_threshold`] with the pass's engine and the size from which it is tried (tests force
/// both).
fn topk_with(x: &[f32], k: usize, engine: fast::Engine, fast_min: usize) -> Result<Threshold> {
    let n = x.len();
    if k > n {
        return Err(Error::KTooLarge { k, n });
    }
    if k == 0 {
        return Ok(Threshold::NONE);
    }
    if k == n {
        return Ok(Threshold::all(n));
    }
    if n >= fast_min
        && let Some((found, guess)) = fast::one_pass(x, k, engine)
    {
        let guess = match guess {
            None if n >= SAMPLE_MIN => Some(fast::legacy_guess_full(x, k)),
            g => g,
        };
        return Ok(fast::legacy_threshold(n, k, &found, guess));
    }
    multi_pass(x, k)
}

/// The multi-pass radix select over the whole tensor (the fallback, and the twin the one-pass
/// select is tested against).
#[inline(never)]
pub(crate) fn multi_pass(x: &[f32], k: usize) -> Result<Threshold> {
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

#[cfg(test)]
mod tests {
    use super::fast::Engine;
    use super::*;
    use proptest::prelude::*;
    use std::vec::Vec;

    /// Every engine the CPU runs.
    fn engines() -> Vec<Engine> {
        let mut e = std::vec![Engine::Portable];
        if Engine::best() != Engine::Portable {
            e.push(Engine::best());
        }
        e
    }

    /// The one-pass select (forced at every size, each engine) against the multi-pass one:
    /// the same threshold, field for field.
    fn same_as_multi_pass(x: &[f32], k: usize) {
        let want = multi_pass(x, k).unwrap();
        for e in engines() {
            assert_eq!(
                topk_with(x, k, e, 0).unwrap(),
                want,
                "{e:?}, n {}, k {k}",
                x.len()
            );
        }
        assert_eq!(topk_threshold(x, k).unwrap(), want);
    }

    fn xorshift(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                // A spread of magnitudes: uniform mantissa bits, exponents around 0.
                let u = (s >> 40) as f32 / (1u64 << 24) as f32;
                let e = ((s >> 8) & 7) as i32 - 4;
                (u * 2.0 - 1.0) * libm::powf(2.0, e as f32)
            })
            .collect()
    }

    fn special() -> impl Strategy<Value = f32> {
        prop_oneof![
            4 => -100.0f32..100.0,
            2 => prop::sample::select(std::vec![0.0f32, -0.0, 1.0, -1.0, 2.5]),
            1 => prop::sample::select(std::vec![
                f32::INFINITY, f32::NEG_INFINITY, f32::NAN, -f32::NAN, f32::MIN_POSITIVE,
                1e-40, -1e-42, f32::MAX, f32::MIN,
            ]),
            1 => any::<f32>(),
        ]
    }

    proptest! {
        #[test]
        fn one_pass_matches_multi_pass(x in prop::collection::vec(special(), 0..3000), kf in 0.0f64..=1.0) {
            let k = (x.len() as f64 * kf) as usize;
            same_as_multi_pass(&x, k);
        }

        #[test]
        fn one_pass_matches_on_shapes(n in 1usize..70_000, seed in any::<u64>(), kf in 0.0f64..=1.0, ties in 0u32..4) {
            let mut x = xorshift(n, seed);
            // Coarser values: bigger tie classes at the threshold.
            for v in x.iter_mut() {
                *v = match ties {
                    0 => *v,
                    1 => (*v * 64.0).round(),
                    2 => (*v * 4.0).round(),
                    _ => f32::from_bits(v.to_bits() & !0xFFFF),
                };
            }
            let k = (n as f64 * kf) as usize;
            same_as_multi_pass(&x, k);
        }
    }

    #[test]
    fn one_pass_matches_on_hard_inputs() {
        let n = 100_003;
        let base = xorshift(n, 1);
        let mut sorted = base.clone();
        sorted.sort_by(|a, b| a.abs().total_cmp(&b.abs()));
        let mut reversed = sorted.clone();
        reversed.reverse();
        let mut relu: Vec<f32> = base.iter().map(|v| v.max(0.0)).collect();
        relu[5] = f32::NAN;
        let mut blocks = base.clone();
        for (i, v) in blocks.iter_mut().enumerate() {
            // The scale changes halfway: the first half says little about the second.
            if i > n / 2 {
                *v *= 1000.0;
            }
        }
        let ties = std::vec![1.5f32; n];
        let mut two: Vec<f32> = (0..n)
            .map(|i| if i % 3 == 0 { 2.0 } else { -1.0 })
            .collect();
        two[n - 1] = f32::INFINITY;
        for x in [&base, &sorted, &reversed, &relu, &blocks, &ties, &two] {
            for k in [1, 2, 100, n / 100, n / 10, n / 3, n / 2, n - 100, n - 1] {
                same_as_multi_pass(x, k);
            }
        }
    }

    #[test]
    fn one_pass_decides_alone_on_ordinary_data() {
        // Not a fallback in disguise: on well-mixed data the pass itself finds the k-th key, and
        // it is the true one.
        for n in [1000, 65_536, 300_001] {
            let x = xorshift(n, n as u64);
            let mut keys: Vec<i32> = x.iter().map(|&v| key(v)).collect();
            keys.sort_unstable();
            for k in [n / 10, n / 2] {
                for e in engines() {
                    let (f, _) = fast::one_pass(&x, k, e).expect("the one pass decides");
                    assert_eq!(f.kth, keys[n - k], "{e:?} n {n} k {k}");
                    assert_eq!(f.above, keys.iter().filter(|&&c| c > f.kth).count());
                    assert_eq!(f.equal, keys.iter().filter(|&&c| c == f.kth).count());
                    let below = keys.iter().filter(|&&c| c < f.kth).max().copied();
                    assert_eq!(f.below, below.unwrap_or(-1));
                }
            }
        }
    }

    #[test]
    fn key_below_found_by_another_read_when_no_candidate_is_below() {
        // The first half holds a tie class at 5.0 that, with the large values spread over the
        // whole tensor, completes k exactly: the pass narrows onto the class early and skips
        // every smaller key afterwards, so the largest key below it takes one more read.
        let n = 40_000;
        let small = xorshift(n, 4);
        let x: Vec<f32> = (0..n)
            .map(|i| match i {
                _ if i < n / 2 && i % 10 == 0 => 5.0,
                _ if i % 20 == 5 => 10.0 + small[i].abs(),
                _ => small[i].abs().min(0.99),
            })
            .collect();
        let k = n / 10;
        for e in engines() {
            let (f, _) = fast::one_pass(&x, k, e).expect("the one pass decides");
            assert_eq!((f.kth, f.equal, f.above), (key(5.0), n / 20, n / 20));
            let below = x.iter().map(|&v| key(v)).filter(|&c| c < key(5.0)).max();
            assert_eq!(Some(f.below), below);
        }
        same_as_multi_pass(&x, k);
    }

    #[test]
    fn legacy_sample_outside_the_window_is_recounted() {
        // Every 16th element (the multi-pass select's sample) is far above the rest: its guessed
        // bins lie outside the pass's window histogram, so the full sample is counted again, and
        // the threshold still matches field for field.
        let n = 1 << 15;
        for far in [1e6f32, 1e30, 1e-30] {
            let x: Vec<f32> = xorshift(n, 3)
                .iter()
                .enumerate()
                .map(|(i, v)| if i % 16 == 0 { far } else { *v })
                .collect();
            for k in [n / 10, n / 4] {
                for e in engines() {
                    let (_, guess) = fast::one_pass(&x, k, e).expect("the one pass decides");
                    assert_eq!(guess, None, "far {far}: the window histogram saw the guess");
                }
                same_as_multi_pass(&x, k);
            }
        }
    }

    #[test]
    fn one_pass_agrees_at_every_k_of_a_small_tensor() {
        let x = xorshift(700, 9);
        for k in 0..=x.len() {
            same_as_multi_pass(&x, k);
        }
    }
}
