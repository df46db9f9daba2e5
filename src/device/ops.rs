//! The launch sequences of the device kernels, over any [`Backend`]: the exact top-k
//! threshold, packing and unpacking DropIT's copies, the sparse Linear weight gradient, the
//! optimizers and the small reductions a step needs. Buffers are byte offsets into the
//! backend's block; every caller passes buffers of the sizes named here.

use std::format;

use dropit_simd::format::{Format, PosForm, ValueType};

use super::{Arg, Backend, Grid};
use crate::error::{Error, Result};
use crate::optim::Optimizer;

/// Blocks the `sum_squares` reduction may use (its partial sums' room).
pub(crate) const MAX_PARTIALS: usize = 1024;

/// Which elements a selection keeps: keys above `key`, and of the keys equal to it the first
/// `ties` in index order (the CPU's `dropit_simd::select::Threshold` keeps the same elements).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Threshold {
    pub key: i32,
    pub above: usize,
    pub ties: usize,
}

impl Threshold {
    pub fn kept(&self) -> usize {
        self.above + self.ties
    }
}

/// The device buffers of a select and pack over at most `words` 64-element words (offsets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Work {
    /// 256 u32.
    pub hist: usize,
    /// `words` u32 each.
    pub counts: [usize; 2],
    /// `words` u64 each.
    pub sums: [usize; 2],
    /// `words` u64 (the bitmap when positions are u32).
    pub bits: usize,
    /// [`MAX_PARTIALS`] f64.
    pub partials: usize,
}

impl Work {
    /// Bytes of the buffers for `words` words.
    pub fn bytes(words: usize) -> usize {
        1024 + 8 * words + 24 * words + 8 * MAX_PARTIALS + 64
    }

    /// The buffers for `words` words from byte offset `at` (8-byte aligned).
    pub fn at(at: usize, words: usize) -> Work {
        let c0 = at + 1024;
        let c1 = c0 + 4 * words;
        let s0 = (c1 + 4 * words).next_multiple_of(8);
        let s1 = s0 + 8 * words;
        let bits = s1 + 8 * words;
        Work {
            hist: at,
            counts: [c0, c1],
            sums: [s0, s1],
            bits,
            partials: bits + 8 * words,
        }
    }
}

/// A launch, its error naming the kernel.
pub(crate) fn run<B: Backend>(b: &mut B, name: &str, grid: Grid, args: &[Arg]) -> Result<()> {
    // SAFETY: every caller in this module and the trainer passes the kernel's parameters in
    // order, with addresses of buffers planned for the sizes the kernel touches (see each
    // call's comment).
    unsafe { b.launch(name, grid, args) }.map_err(|e| Error::Gpu(format!("kernel {name}: {e}")))
}

/// The device address of byte offset `off`.
pub(crate) fn ptr<B: Backend>(b: &B, off: usize) -> Arg {
    Arg::Ptr(b.base() + off as u64)
}

fn read_u32s<B: Backend>(b: &B, at: usize, out: &mut [u32]) -> Result<()> {
    b.read(at, bytemuck::cast_slice_mut(out))
}

fn read_u64<B: Backend>(b: &B, at: usize) -> Result<u64> {
    let mut v = [0u64];
    b.read(at, bytemuck::cast_slice_mut(&mut v))?;
    Ok(v[0])
}

/// The digit of the k-th largest key from a histogram of the keys still in the running:
/// counts from the top down, `need` and `above` updated.
pub(crate) fn kth_digit(hist: &[u32; 256], need: &mut usize, above: &mut usize) -> Result<i32> {
    let mut d = 255usize;
    while (hist[d] as usize) < *need {
        *need -= hist[d] as usize;
        *above += hist[d] as usize;
        if d == 0 {
            return Err(Error::Gpu("top-k: histogram counts short of k".into()));
        }
        d -= 1;
    }
    Ok(d as i32)
}

/// The threshold keeping the `k ≤ n` largest-magnitude of the `n` floats at `x`: four
/// histogram passes, each fixing 8 more bits of the k-th largest key.
pub(crate) fn threshold<B: Backend>(
    b: &mut B,
    x: usize,
    n: usize,
    k: usize,
    work: &Work,
) -> Result<Threshold> {
    if k == 0 {
        return Ok(Threshold {
            key: i32::MAX,
            above: 0,
            ties: 0,
        });
    }
    if k >= n {
        return Ok(Threshold {
            key: -1,
            above: n,
            ties: 0,
        });
    }
    let (mut prefix, mut above, mut need) = (0i32, 0usize, k);
    let mut hist = [0u32; 256];
    for shift in [24i32, 16, 8, 0] {
        b.zero(work.hist, 1024)?;
        let args = [ptr(b, x), Arg::U64(n as u64), Arg::I32(shift)];
        let args = [&args[..], &[Arg::I32(prefix), ptr(b, work.hist)]].concat();
        // x: n floats; hist: 256 counts.
        run(b, "radix_hist", Grid::Strided(n), &args)?;
        read_u32s(b, work.hist, &mut hist)?;
        prefix = (prefix << 8) | kth_digit(&hist, &mut need, &mut above)?;
    }
    Ok(Threshold {
        key: prefix,
        above,
        ties: need,
    })
}

/// Exclusive prefix sums of `len` u32 at `counts` into `len` u64 at `out`.
fn scan<B: Backend>(b: &mut B, counts: usize, out: usize, len: usize) -> Result<()> {
    let args = [ptr(b, counts), ptr(b, out), Arg::U64(len as u64)];
    run(b, "scan_exclusive", Grid::OneBlock, &args)
}

/// The kernels' code of a format's values (f32 0, bf16 1) for bitmap or u32 positions.
pub(crate) fn value_code(f: Format) -> Result<i32> {
    let v = match f.values {
        ValueType::F32 => 0,
        ValueType::Bf16 => 1,
        ValueType::F16 => return Err(Error::Gpu("f16 values are not packed on the GPU".into())),
    };
    match f.positions {
        PosForm::Bitmap | PosForm::U32 => Ok(v),
        PosForm::Block16 => Err(Error::Gpu(
            "Block16 positions are not packed on the GPU".into(),
        )),
    }
}

/// Packs the elements of the `n` floats at `x` that `t` keeps into `format` at `dst` (room for
/// [`Format::bytes`]`(n, t.kept())`), byte for byte the CPU's `dropit_simd::pack::pack`.
pub(crate) fn pack<B: Backend>(
    b: &mut B,
    (x, n): (usize, usize),
    t: &Threshold,
    format: Format,
    dst: usize,
    work: &Work,
) -> Result<()> {
    let form = value_code(format)?;
    let (k, words) = (t.kept(), n.div_ceil(64));
    if n == 0 {
        return Ok(());
    }
    let (w64, n64) = (Arg::U64(words as u64), Arg::U64(n as u64));
    let [equal, kept] = work.counts;
    let [eq_before, at] = work.sums;
    let args = [ptr(b, x), n64, Arg::I32(t.key), ptr(b, equal), w64];
    // x: n floats; equal: one count per word.
    run(b, "word_ties", Grid::Items(words), &args)?;
    scan(b, equal, eq_before, words)?;
    let values = dst + format.position_bytes(n, k);
    let bits = match format.positions {
        PosForm::Bitmap => dst,
        _ => work.bits,
    };
    let args = [
        ptr(b, x),
        n64,
        Arg::I32(t.key),
        Arg::U64(t.ties as u64),
        ptr(b, equal),
        ptr(b, eq_before),
        ptr(b, bits),
        ptr(b, kept),
        w64,
    ];
    // bits: one word per 64 elements (the bitmap region or the work's); kept as many counts.
    run(b, "keep_words", Grid::Items(words), &args)?;
    scan(b, kept, at, words)?;
    let last = 8 * (words - 1);
    let mut tail = [0u32];
    read_u32s(b, kept + 4 * (words - 1), &mut tail)?;
    let total = read_u64(b, at + last)? + tail[0] as u64;
    if total != k as u64 {
        return Err(Error::Gpu(format!(
            "pack: the threshold keeps {total} elements of this tensor, not its {k}"
        )));
    }
    let idx = match format.positions {
        PosForm::Bitmap => Arg::Ptr(0),
        _ => ptr(b, dst),
    };
    let args = [
        ptr(b, x),
        ptr(b, bits),
        ptr(b, at),
        ptr(b, values),
        Arg::I32(form),
        idx,
        w64,
    ];
    // The kept counts sum to k (checked above): k values and, for u32 positions, k indices.
    run(b, "write_kept", Grid::Items(words), &args)
}

/// A packed tensor in the block: its format, dense length, kept count and first byte.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct PackedAt {
    pub format: Format,
    pub n: usize,
    pub k: usize,
    pub at: usize,
}

impl PackedAt {
    fn values(&self) -> usize {
        self.at + self.format.position_bytes(self.n, self.k)
    }
}

/// Each bitmap word's first value slot (into `work.sums[1]`).
fn bitmap_offsets<B: Backend>(b: &mut B, p: &PackedAt, work: &Work) -> Result<()> {
    let words = p.n.div_ceil(64);
    let args = [ptr(b, p.at), ptr(b, work.counts[1]), Arg::U64(words as u64)];
    // The bitmap's words, as many counts.
    run(b, "word_popcounts", Grid::Items(words), &args)?;
    scan(b, work.counts[1], work.sums[1], words)
}

/// The dense tensor (`p.n` floats at `out`) of a packed one: kept values in place, zeros
/// elsewhere — the CPU's `dropit_simd::pack::unpack`.
pub(crate) fn unpack<B: Backend>(b: &mut B, p: &PackedAt, out: usize, work: &Work) -> Result<()> {
    let form = Arg::I32(value_code(p.format)?);
    if p.n == 0 {
        return Ok(());
    }
    match p.format.positions {
        PosForm::U32 => {
            b.zero(out, 4 * p.n)?;
            let args = [
                ptr(b, p.at),
                ptr(b, p.values()),
                form,
                ptr(b, out),
                Arg::U64(p.k as u64),
            ];
            // k indices below n, k values, n outputs.
            run(b, "unpack_u32", Grid::Items(p.k), &args)
        }
        _ => {
            bitmap_offsets(b, p, work)?;
            let words = p.n.div_ceil(64);
            let args = [
                ptr(b, p.at),
                ptr(b, work.sums[1]),
                ptr(b, p.values()),
                form,
                ptr(b, out),
                Arg::U64(p.n as u64),
                Arg::U64(words as u64),
            ];
            // ⌈n/64⌉ words totalling k bits, k values, n outputs.
            run(b, "unpack_bitmap", Grid::Items(words), &args)
        }
    }
}

/// `gwt[i, :] += x[r, i]·dy[r, :]` for every kept `(r, i)` of the packed input (`rows × inp`),
/// `dy` `rows × out`, `gwt` grad_Wᵀ `inp × out` — the CPU's `spmm::linear_grad_w`, its sums in
/// no fixed order (atomic adds).
pub(crate) fn linear_grad_w<B: Backend>(
    b: &mut B,
    p: &PackedAt,
    (inp, out): (usize, usize),
    dy: usize,
    gwt: usize,
    work: &Work,
) -> Result<()> {
    let form = Arg::I32(value_code(p.format)?);
    if p.n == 0 || p.k == 0 {
        return Ok(());
    }
    let tail = [
        ptr(b, dy),
        Arg::U64(inp as u64),
        Arg::U64(out as u64),
        ptr(b, gwt),
    ];
    match p.format.positions {
        PosForm::U32 => {
            let head = [ptr(b, p.at), ptr(b, p.values()), form];
            let args = [&head[..], &tail, &[Arg::U64(p.k as u64)]].concat();
            // k indices below rows·inp, k values; dy rows·out, gwt inp·out floats.
            run(b, "linear_grad_w_u32", Grid::Items(p.k), &args)
        }
        _ => {
            bitmap_offsets(b, p, work)?;
            let words = p.n.div_ceil(64);
            let head = [ptr(b, p.at), ptr(b, work.sums[1]), ptr(b, p.values()), form];
            let args = [&head[..], &tail, &[Arg::U64(words as u64)]].concat();
            // As above, the positions a bitmap of ⌈n/64⌉ words.
            run(b, "linear_grad_w_bitmap", Grid::Items(words), &args)
        }
    }
}

/// One optimizer update at step `t` with rate `lr` of `n` parameters at `p` from their
/// gradients at `g`, with `state` ([`Optimizer::state_slots`] arrays of `n` floats, one after
/// the other): bitwise the CPU's [`Optimizer::update`].
pub(crate) fn optimizer_update<B: Backend>(
    b: &mut B,
    opt: &Optimizer,
    (lr, t): (f32, u64),
    (p, g, state, n): (usize, usize, usize, usize),
) -> Result<()> {
    let head = [ptr(b, p), ptr(b, g)];
    match *opt {
        Optimizer::Sgd {
            momentum,
            nesterov,
            weight_decay,
        } => {
            let args = [
                ptr(b, state),
                Arg::U64(n as u64),
                Arg::F32(lr),
                Arg::F32(momentum),
                Arg::F32(weight_decay),
                Arg::I32(nesterov as i32),
            ];
            // p, g n floats; state n where momentum is used (not read without).
            run(
                b,
                "sgd_update",
                Grid::Items(n),
                &[&head[..], &args].concat(),
            )
        }
        Optimizer::AdamW {
            beta1,
            beta2,
            eps,
            weight_decay,
        } => {
            let (c1, c2) = Optimizer::bias_corrections(beta1, beta2, t);
            let args = [
                ptr(b, state),
                ptr(b, state + 4 * n),
                Arg::U64(n as u64),
                Arg::F32(lr),
                Arg::F32(beta1),
                Arg::F32(beta2),
                Arg::F32(eps),
                Arg::F32(weight_decay),
                Arg::F32(c1),
                Arg::F32(c2),
            ];
            // p, g, m and v n floats each.
            run(
                b,
                "adamw_update",
                Grid::Items(n),
                &[&head[..], &args].concat(),
            )
        }
    }
}

/// Σ x² in f64 of the `n` floats at `x` (per-block sums added here in block order).
pub(crate) fn sum_of_squares<B: Backend>(
    b: &mut B,
    x: usize,
    n: usize,
    work: &Work,
) -> Result<f64> {
    b.zero(work.partials, 8 * MAX_PARTIALS)?;
    let args = [ptr(b, x), Arg::U64(n as u64), ptr(b, work.partials)];
    // x: n floats; one partial sum per block, at most MAX_PARTIALS blocks.
    run(b, "sum_squares", Grid::Strided(n), &args)?;
    let mut partial = [0f64; MAX_PARTIALS];
    b.read(work.partials, bytemuck::cast_slice_mut(&mut partial))?;
    Ok(partial.iter().sum())
}
