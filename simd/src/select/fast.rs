//! The one-read selection behind [`super::topk_threshold`]: a sampled window, one streaming pass
//! that narrows it, and an exact finish over a few thousand candidate keys.
//!
//! 1. **Sample.** Up to 1024 keys, taken as 16 short runs spread over the tensor (a few cache
//!    lines each), are narrowed in memory to a key window `[lo, hi)` that holds the k-th largest
//!    key unless the sample is off by more than five standard deviations.
//! 2. **One pass.** Keys are compared with `hi` and `lo` a vector at a time: keys at or above `hi`
//!    are only counted, keys in the window are appended to a candidate buffer of [`CAP`] keys
//!    (AVX-512: compressed into place, 16 keys per store; while the window is sparse only the
//!    64-element runs that hold a candidate store anything). Whenever the buffer fills, the window
//!    is narrowed around where the k-th largest key is now expected — its rank among the elements
//!    seen so far is known to within a few standard deviations, and the margin shrinks as the pass
//!    goes on — so the buffer stays small.
//! 3. **Finish.** If the k-th largest key lies in the final window (the counts say so for
//!    certain), its exact value and the counts above and equal to it follow from the candidates
//!    alone, by a radix select over them (histograms of 256 bins, a few rounds); so does the
//!    largest key below it, unless no candidate lay below it (then one more read finds it, and
//!    only when the threshold needs it). Otherwise (a sample or a narrowing that guessed wrong,
//!    data sorted by magnitude, a tie class larger than the buffer) the caller falls back to the
//!    exact multi-pass radix select, so the result never depends on luck, only the time does.
//!
//! The pass also counts every 16th element's 11-bit key prefix into a small window histogram: the
//! sample the multi-pass select draws, which fixes the bin edges it reports a threshold on (see
//! [`legacy_threshold`]), so the two give the same [`Threshold`] for every input.

use super::{BINS, SAMPLE, SAMPLE_MIN, Threshold, key};
use wide::i32x8;

/// Candidate keys the pass keeps (12 KiB on the stack).
pub(super) const CAP: usize = 3072;
/// Elements per step of the pass (the buffer has room for a whole run before each).
const RUN: usize = 64;
/// Bins of the legacy-sample window histogram, plus one below and one above it.
const LEG: usize = 128;
/// Bins of a narrowing histogram over the candidates.
const NB: usize = 256;
/// Standard deviations of margin when narrowing mid-pass, and for the sampled window.
const Z_PASS: f64 = 4.5;
const Z_SAMPLE: f64 = 5.5;

/// The state of the pass: the window, what it has counted and the candidates.
pub(super) struct Scan {
    n: usize,
    k: usize,
    /// The window `[lo, hi)` of keys kept as candidates (`hi` up to 2^31).
    lo: i64,
    hi: i64,
    /// Elements seen with keys at or above `hi` (for the `hi` of the time they were seen, and
    /// candidates that narrowing moved above the window).
    above: usize,
    /// The largest key of the candidates narrowing moved below the window (−1: none). Keys the
    /// pass itself found below the window are not tracked (see [`Scan::finish`]).
    below_max: i32,
    /// Elements seen so far.
    seen: usize,
    len: usize,
    buf: [i32; CAP],
    /// Every 16th element's `key >> 20`, bins `leg_base .. leg_base + LEG` at `1 ..= LEG`,
    /// those below in 0, above in `LEG + 1`; two interleaved copies (sample `i` counts into
    /// copy `i % 2`) so that runs of equal bins do not wait on one counter.
    leg: [[u32; LEG + 2]; 2],
    leg_base: i32,
    /// The share of the sample inside the window it set.
    sample_share: f64,
    engine: Engine,
}

/// What the pass found: the exact k-th largest key and its neighbourhood.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Found {
    /// The k-th largest key.
    pub kth: i32,
    /// Elements with a key above it.
    pub above: usize,
    /// Elements with a key equal to it.
    pub equal: usize,
    /// The largest key below it (−1: none).
    pub below: i32,
}

/// Which build of the pass to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Engine {
    /// Portable: eight lanes (`wide`), in-window lanes extracted from a 64-bit run mask.
    Portable,
    /// AVX-512F: 16 lanes, mask registers and compress-stores (x86_64, detected at run time).
    #[cfg(x86_detect)]
    Avx512,
}

impl Engine {
    /// The best engine this CPU runs.
    pub(super) fn best() -> Engine {
        #[cfg(x86_detect)]
        if std::is_x86_feature_detected!("avx512f") {
            return Engine::Avx512;
        }
        Engine::Portable
    }
}

impl Scan {
    pub(super) fn new(n: usize, k: usize, engine: Engine) -> Self {
        Scan {
            n,
            k,
            lo: 0,
            hi: 1 << 31,
            above: 0,
            below_max: -1,
            seen: 0,
            len: 0,
            buf: [0; CAP],
            leg: [[0; LEG + 2]; 2],
            leg_base: 0,
            sample_share: 1.0,
            engine,
        }
    }

    /// Narrows the window until it holds the `r1`-th through `r2`-th largest keys (1-based,
    /// counting `above`) of what was seen as tightly as the candidates allow. Candidates moved out
    /// above are counted, those moved out below update `below_max`.
    fn narrow(&mut self, r1: i64, r2: i64) {
        loop {
            let (j1, j2) = (r1 - self.above as i64, r2 - self.above as i64);
            let width = self.hi - self.lo;
            if width <= 1 || self.len == 0 {
                return;
            }
            // The smallest shift whose NB bins cover the window.
            let mut sh = 0u32;
            while ((width - 1) >> sh) >= NB as i64 {
                sh += 1;
            }
            // Four interleaved copies: candidates cluster in few bins, and increments of one
            // counter would wait on each other. `u16` is enough: at most CAP candidates.
            let mut hs = [[0u16; NB]; 4];
            let lo = self.lo;
            let mut quads = self.buf[..self.len].chunks_exact(4);
            for c in &mut quads {
                for (h, &c) in hs.iter_mut().zip(c) {
                    h[((c as i64 - lo) >> sh) as usize] += 1;
                }
            }
            for &c in quads.remainder() {
                hs[0][((c as i64 - lo) >> sh) as usize] += 1;
            }
            let [h, h1, h2, h3] = &mut hs;
            for b in 0..NB {
                h[b] += h1[b] + h2[b] + h3[b];
            }
            let top = ((width - 1) >> sh) as usize;
            // From the top bin down: `cum` counts candidates at or above the current bin's top.
            let (mut cum, mut new_hi, mut new_lo) = (0i64, self.hi, self.lo);
            let mut hi_set = false;
            for b in (0..=top).rev() {
                if cum < j1 {
                    // At most j1 − 1 candidates lie at or above this bin's top edge.
                    new_hi = (lo + ((b as i64 + 1) << sh)).min(self.hi);
                    hi_set = true;
                }
                cum += h[b] as i64;
                if cum >= j2 {
                    new_lo = lo + ((b as i64) << sh);
                    break;
                }
            }
            if !hi_set {
                new_hi = self.hi;
            }
            if new_hi == self.hi && new_lo == self.lo {
                return;
            }
            // Another round only pays when this one cut the window at least in half.
            let again = new_hi - new_lo <= width / 2;
            let (kept, above, below) = self.partition(new_lo, new_hi);
            self.len = kept;
            self.above += above;
            self.below_max = self.below_max.max(below);
            self.hi = new_hi;
            self.lo = new_lo;
            if !again {
                return;
            }
        }
    }

    /// Keeps the candidates in `[lo, hi)` at the front of the buffer: returns how many, how many
    /// were at or above `hi`, and the largest below `lo` (−1: none).
    fn partition(&mut self, lo: i64, hi: i64) -> (usize, usize, i32) {
        match self.engine {
            Engine::Portable => self.partition_portable(0, 0, lo, hi),
            // SAFETY: `Engine::Avx512` is only chosen when the CPU reports AVX-512F.
            #[cfg(x86_detect)]
            Engine::Avx512 => unsafe { self.partition_avx512(lo, hi) },
        }
    }

    /// [`Scan::partition`] one candidate at a time from `from` on (`kept` kept before it).
    fn partition_portable(
        &mut self,
        from: usize,
        kept: usize,
        lo: i64,
        hi: i64,
    ) -> (usize, usize, i32) {
        let (mut kept, mut above, mut below) = (kept, 0usize, -1i32);
        for i in from..self.len {
            // Branch-free: the three outcomes are equally hard to predict.
            let c = self.buf[i];
            let (over, under) = (c as i64 >= hi, (c as i64) < lo);
            self.buf[kept] = c;
            kept += (!over && !under) as usize;
            above += over as usize;
            below = below.max(if under { c } else { -1 });
        }
        (kept, above, below)
    }

    /// [`Scan::partition`], 16 candidates at a time.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg(x86_detect)]
    #[target_feature(enable = "avx512f,popcnt")]
    unsafe fn partition_avx512(&mut self, lo: i64, hi: i64) -> (usize, usize, i32) {
        use core::arch::x86_64::*;
        // Keys are below 2^31: `hi` up to 2^31 compares as "greater than hi − 1".
        let ge_hi = _mm512_set1_epi32((hi - 1) as i32);
        let ge_lo = _mm512_set1_epi32((lo - 1) as i32);
        let (mut kept, mut above) = (0usize, 0usize);
        let mut below = _mm512_set1_epi32(-1);
        let whole = self.len / 16 * 16;
        let ptr = self.buf.as_mut_ptr();
        for i in (0..whole).step_by(16) {
            // SAFETY: `i + 16 <= len <= CAP`, so the load reads `buf[i .. i + 16]`; the store
            // writes `buf[kept .. kept + 16]` with `kept <= i`, so it stays inside `buf` and only
            // overwrites candidates already read (this vector's included, which is in a register).
            unsafe {
                let k = _mm512_loadu_si512(ptr.add(i) as *const _);
                let over = _mm512_cmpgt_epi32_mask(k, ge_hi);
                let at_lo = _mm512_cmpgt_epi32_mask(k, ge_lo);
                let inside = _kandn_mask16(over, at_lo);
                below = _mm512_mask_max_epi32(below, _knot_mask16(at_lo), below, k);
                _mm512_storeu_si512(
                    ptr.add(kept) as *mut _,
                    _mm512_maskz_compress_epi32(inside, k),
                );
                kept += inside.count_ones() as usize;
                above += over.count_ones() as usize;
            }
        }
        let (kept, a, b) = self.partition_portable(whole, kept, lo, hi);
        (kept, above + a, b.max(_mm512_reduce_max_epi32(below)))
    }

    /// Sets the window from a sample of up to 1024 keys spread over `x`.
    pub(super) fn sample(&mut self, x: &[f32]) {
        let n = x.len();
        let run = (n / 16).clamp(1, 64);
        let runs = if n >= 16 { 16 } else { n };
        let mut m = 0;
        for r in 0..runs {
            let start = r * (n / runs);
            for &v in &x[start..start + run] {
                self.buf[m] = key(v);
                m += 1;
            }
        }
        self.len = m;
        let q = self.k as f64 / n as f64;
        let mid = q * m as f64;
        let d = Z_SAMPLE * libm::sqrt(q * (1.0 - q) * m as f64) + 3.0;
        self.narrow(libm::floor(mid - d) as i64, libm::ceil(mid + d) as i64);
        self.sample_share = self.len as f64 / m.max(1) as f64;
        // The legacy-sample histogram is centred on the window.
        let centre = ((self.lo + self.hi) / 2) >> 20;
        self.leg_base = (centre as i32 - LEG as i32 / 2).clamp(0, (BINS - LEG) as i32);
        self.len = 0;
        self.above = 0;
        self.below_max = -1;
    }

    /// Makes room for another run by narrowing around the expected rank of the k-th largest key
    /// among the `seen` elements; false when that does not free enough room.
    #[cold]
    #[inline(never)]
    fn make_room(&mut self) -> bool {
        let (n, p) = (self.n as f64, self.seen as f64);
        let q = self.k as f64 / n;
        let mid = q * p;
        let d = Z_PASS * libm::sqrt(q * (1.0 - q) * p * (n - p) / n) + 8.0;
        self.narrow(libm::floor(mid - d) as i64, libm::ceil(mid + d) as i64);
        self.len + 4 * RUN <= CAP
    }

    #[inline(always)]
    fn legacy(&mut self, v: f32, copy: usize) {
        let b = (key(v) >> 20) - self.leg_base + 1;
        self.leg[copy][b.clamp(0, LEG as i32 + 1) as usize] += 1;
    }

    /// One element, for the ends the vector loops leave.
    #[inline(always)]
    fn scalar(&mut self, v: f32, index: usize) {
        if index.is_multiple_of(SAMPLE) {
            self.legacy(v, 0);
        }
        let c = key(v);
        if c as i64 >= self.hi {
            self.above += 1;
        } else if c as i64 >= self.lo {
            self.buf[self.len] = c;
            self.len += 1;
        }
        self.seen += 1;
    }

    /// The tail shorter than a run, one element at a time.
    fn tail(&mut self, x: &[f32], done: usize) -> bool {
        if self.len + RUN > CAP && !self.make_room() {
            return false;
        }
        for (j, &v) in x[done..].iter().enumerate() {
            self.scalar(v, done + j);
        }
        true
    }

    /// The pass, portable build.
    fn pass_portable(&mut self, x: &[f32]) -> bool {
        let mut runs = x.chunks_exact(RUN);
        let mut above = i32x8::splat(0);
        for run in &mut runs {
            if self.len + RUN > CAP {
                self.above += above.to_array().iter().map(|&c| c as usize).sum::<usize>();
                above = i32x8::splat(0);
                if !self.make_room() {
                    return false;
                }
            }
            let ge_hi = i32x8::splat((self.hi - 1) as i32);
            let ge_lo = i32x8::splat((self.lo - 1) as i32);
            let mut inside = 0u64;
            for (q, c) in run.chunks_exact(8).enumerate() {
                let k = super::keys8(c);
                let hi = k.simd_gt(ge_hi);
                let lo = k.simd_gt(ge_lo);
                above -= hi; // a true lane is −1
                inside |= ((lo & !hi).to_bitmask() as u64) << (8 * q);
            }
            while inside != 0 {
                let j = inside.trailing_zeros() as usize;
                self.buf[self.len] = key(run[j]);
                self.len += 1;
                inside &= inside - 1;
            }
            for q in 0..RUN / SAMPLE {
                self.legacy(run[q * SAMPLE], q % 2);
            }
            self.seen += RUN;
        }
        self.above += above.to_array().iter().map(|&c| c as usize).sum::<usize>();
        self.tail(x, x.len() - runs.remainder().len())
    }

    /// The pass, AVX-512F build.
    ///
    /// # Safety
    /// The CPU must support AVX-512F.
    #[cfg(x86_detect)]
    #[target_feature(enable = "avx512f,popcnt")]
    unsafe fn pass_avx512(&mut self, x: &[f32]) -> bool {
        use core::arch::x86_64::*;
        let abs = _mm512_set1_epi32(0x7FFF_FFFF);
        let one = _mm512_set1_epi32(1);
        let mut above = _mm512_setzero_si512();
        let mut runs = x.chunks_exact(RUN);
        let mut len = self.len;
        let mut ge_hi = _mm512_set1_epi32((self.hi - 1) as i32);
        let mut ge_lo = _mm512_set1_epi32((self.lo - 1) as i32);
        let mut sparse = self.sparse();
        for (r, run) in (&mut runs).enumerate() {
            if len + RUN > CAP {
                let counted = _mm512_reduce_add_epi32(above) as u32 as usize;
                (self.len, self.above, self.seen) = (len, self.above + counted, r * RUN);
                above = _mm512_setzero_si512();
                if !self.make_room() {
                    return false;
                }
                len = self.len;
                ge_hi = _mm512_set1_epi32((self.hi - 1) as i32);
                ge_lo = _mm512_set1_epi32((self.lo - 1) as i32);
                sparse = self.sparse();
            }
            let mut keys = [_mm512_setzero_si512(); RUN / 16];
            let mut inside = [0u16; RUN / 16];
            let mut any = 0u16;
            for q in 0..RUN / 16 {
                // SAFETY: `run` has RUN = 64 elements, so lanes 16q .. 16q + 16 are in bounds
                // (an unaligned load).
                let v = unsafe { _mm512_loadu_si512(run.as_ptr().add(16 * q) as *const _) };
                let k = _mm512_and_si512(v, abs);
                let hi = _mm512_cmpgt_epi32_mask(k, ge_hi);
                inside[q] = _kandn_mask16(hi, _mm512_cmpgt_epi32_mask(k, ge_lo));
                any |= inside[q];
                above = _mm512_mask_add_epi32(above, hi, above, one);
                keys[q] = k;
            }
            // Dense windows (the start of a small tensor) compress every vector; sparse ones
            // skip the runs without a candidate, which is then most of them.
            if !sparse || any != 0 {
                for q in 0..RUN / 16 {
                    let packed = _mm512_maskz_compress_epi32(inside[q], keys[q]);
                    // SAFETY: 16 keys are stored at `buf[len ..]` (the in-window ones first):
                    // `len + RUN <= CAP` holds before every run (checked above) and `len` grows
                    // by at most 16 per vector, so `len + 16 <= CAP` here.
                    unsafe {
                        _mm512_storeu_si512(self.buf.as_mut_ptr().add(len) as *mut _, packed)
                    };
                    len += inside[q].count_ones() as usize;
                }
            }
            for q in 0..RUN / SAMPLE {
                self.legacy(run[q * SAMPLE], q % 2);
            }
        }
        let counted = _mm512_reduce_add_epi32(above) as u32 as usize;
        (self.len, self.above) = (len, self.above + counted);
        self.seen = x.len() - runs.remainder().len();
        self.tail(x, self.seen)
    }

    /// Whether few runs are expected to hold a candidate: under ~1 in 600 elements in the window
    /// (from the candidates per element seen so far, or the sample's share at the start).
    #[cfg(x86_detect)]
    fn sparse(&self) -> bool {
        self.len * 600 < self.seen.max(1) || (self.seen == 0 && self.sample_share * 600.0 < 1.0)
    }

    pub(super) fn pass(&mut self, x: &[f32]) -> bool {
        match self.engine {
            Engine::Portable => self.pass_portable(x),
            // SAFETY: `Engine::Avx512` is only chosen (by `Engine::best`, or by tests after the
            // same check) when the CPU reports AVX-512F.
            #[cfg(x86_detect)]
            Engine::Avx512 => unsafe { self.pass_avx512(x) },
        }
    }

    /// After the pass: the exact k-th largest key if the window holds it. `below` is exact when
    /// a candidate below the k-th largest key was left in the window (every key the pass did
    /// not keep lies below those); otherwise it is −1 and the caller finds it if it needs it.
    fn finish(&mut self) -> Option<Found> {
        let k = self.k as i64;
        if (self.above as i64) >= k || ((self.above + self.len) as i64) < k {
            return None;
        }
        let lo = self.lo;
        self.narrow(k, k);
        // `narrow(k, k)` leaves one key when the window holds the k-th largest; the counts
        // confirm it.
        if self.hi - self.lo != 1 || self.above as i64 >= k || ((self.above + self.len) as i64) < k
        {
            return None;
        }
        Some(Found {
            kth: self.lo as i32,
            above: self.above,
            equal: self.len,
            below: if self.below_max as i64 >= lo {
                self.below_max
            } else {
                -1
            },
        })
    }

    /// The legacy sample's guessed range, as the multi-pass select's first pass computes it from
    /// its full 2048-bin histogram: `None` when the window histogram cannot tell (the guess lies
    /// outside it).
    fn legacy_guess(&self) -> Option<(usize, usize)> {
        let ns = self.n.div_ceil(SAMPLE);
        let ks = self.k * ns / self.n.max(1);
        let margin = 4 * ks.isqrt() + 8;
        let (want_hi, want_lo) = (ks.saturating_sub(margin), ks + margin);
        let base = self.leg_base as usize;
        let bin = |i: usize| self.leg.iter().map(|c| c[i] as usize).sum::<usize>();
        let mut cum = bin(LEG + 1);
        if cum > want_hi {
            return None;
        }
        let mut b_hi = None;
        for i in (0..LEG).rev() {
            cum += bin(i + 1);
            if b_hi.is_none() && cum > want_hi {
                b_hi = Some(base + i);
            }
            if cum >= want_lo {
                return Some((base + i, b_hi.unwrap_or(BINS - 1)));
            }
        }
        // Not reached inside the window: only known when nothing lies below it.
        (base == 0).then_some((0, b_hi.unwrap_or(BINS - 1)))
    }
}

/// The exact k-th largest key and its neighbourhood in one pass, or `None` when the pass could
/// not be sure (the caller then runs the multi-pass select). Also returns the legacy sample's
/// guessed bins when the pass could see them. `0 < k < x.len()`.
#[inline(never)]
pub(super) fn one_pass(
    x: &[f32],
    k: usize,
    engine: Engine,
) -> Option<(Found, Option<(usize, usize)>)> {
    let mut s = Scan::new(x.len(), k, engine);
    s.sample(x);
    if !s.pass(x) {
        return None;
    }
    let mut f = s.finish()?;
    if f.below < 0 && k - f.above == f.equal {
        // The whole tie class is kept and the largest key below it was not among the
        // candidates: one more read finds it (rare: the window's lowest candidate was the
        // k-th largest).
        f.below = x
            .iter()
            .map(|&v| key(v))
            .filter(|&c| c < f.kth)
            .max()
            .unwrap_or(-1);
    }
    Some((f, s.legacy_guess()))
}

/// The shifts of the multi-pass select's exact passes, coarsest first, given its sampled guess
/// `(b_lo, b_hi)` (11-bit bins) and the k-th largest key: the guessed range's shift and what
/// follows it when the guess holds the key, else the full range's 20, 9, 0.
fn legacy_shifts(n: usize, guess: Option<(usize, usize)>, kth: i32) -> [u32; 3] {
    const FULL: [u32; 3] = [20, 9, 0];
    if n < SAMPLE_MIN {
        return FULL;
    }
    let Some((b_lo, b_hi)) = guess else {
        return FULL;
    };
    let lo = (b_lo as i64) << 20;
    let width = (((b_hi + 1) as i64) << 20) - lo;
    let mut shift = 0u32;
    while ((BINS as i64) << shift) < width {
        shift += 1;
    }
    if shift >= 20 || (kth as i64) < lo || (kth as i64) >= lo + width {
        return FULL;
    }
    let s1 = shift.saturating_sub(11);
    [shift, s1, s1.saturating_sub(11)]
}

/// The threshold the multi-pass select reports for the same input: keys above the k-th largest
/// plus the first ties when the k-th largest key's class is split; otherwise (every element of
/// that key kept) the key just below the lowest bin edge, over that select's bin grid, that
/// separates the k-th largest key from the next one down.
pub(super) fn legacy_threshold(
    n: usize,
    k: usize,
    f: &Found,
    guess: Option<(usize, usize)>,
) -> Threshold {
    let ties = k - f.above;
    if ties < f.equal {
        return Threshold::from_parts(f.kth, f.above, ties);
    }
    // The whole class is kept: the first pass whose bin edge falls between the next key down and
    // the k-th largest stops there, at that bin's lowest key.
    let diff = if f.below < 0 {
        u32::MAX
    } else {
        (f.kth ^ f.below) as u32
    };
    let d = 31 - diff.leading_zeros();
    let s = legacy_shifts(n, guess, f.kth)
        .into_iter()
        .find(|&s| s <= d)
        .unwrap_or(0);
    Threshold::from_parts(((f.kth >> s) << s) - 1, k, 0)
}

/// The full legacy sample guess from a strided pass (when the window histogram could not see
/// it).
#[inline(never)]
pub(super) fn legacy_guess_full(x: &[f32], k: usize) -> (usize, usize) {
    let mut h = [0u32; BINS];
    for &v in x.iter().step_by(SAMPLE) {
        h[(key(v) >> 20) as usize] += 1;
    }
    let (n, ns) = (x.len(), x.len().div_ceil(SAMPLE));
    let ks = k * ns / n.max(1);
    let margin = 4 * ks.isqrt() + 8;
    let (want_hi, want_lo) = (ks.saturating_sub(margin), ks + margin);
    let (mut cum, mut b_hi, mut b_lo) = (0usize, None, 0usize);
    for b in (0..BINS).rev() {
        cum += h[b] as usize;
        if b_hi.is_none() && cum > want_hi {
            b_hi = Some(b);
        }
        if cum >= want_lo {
            b_lo = b;
            break;
        }
    }
    (b_lo, b_hi.unwrap_or(BINS - 1))
}
