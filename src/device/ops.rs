//! DropIT's device kernels, each the twin of a CPU kernel of `dropit_simd`, as launch sequences
//! over any [`Backend`]: the exact top-k threshold ([`threshold`]), packing into the CPU's
//! formats byte for byte ([`pack`], [`upload_packed`]) and back ([`unpack`]), the sparse Linear
//! weight gradient ([`linear_grad_w`]), the optimizers' updates ([`optimizer_update`], bitwise
//! the CPU's) and the gradients' norm ([`sum_of_squares`]).
//!
//! Buffers are byte offsets into the backend's block ([`Backend::allocate`]); every function
//! checks that the buffers it is given lie inside it (an error, never a write past it).

use std::format;

use dropit_simd::format::{Format, PosForm, ValueType};

use super::{Arg, Backend, Grid};
use crate::error::{Error, Result};
use crate::optim::Optimizer;

/// Blocks the `sum_squares` reduction may use (its partial sums' room).
pub(crate) const MAX_PARTIALS: usize = 1024;

/// Which elements a selection keeps: keys (`|x|`'s bits) above `key`, and of the keys equal to
/// it the first `ties` in index order — the elements the CPU's
/// `dropit_simd::select::Threshold` keeps for the same tensor and k.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Threshold {
    /// The threshold key (−1 when every element is kept, `i32::MAX` with no ties when none is).
    pub key: i32,
    /// Keys above it.
    pub above: usize,
    /// Keys equal to it that are kept, first in index order.
    pub ties: usize,
}

impl Threshold {
    /// Elements kept.
    pub fn kept(&self) -> usize {
        self.above + self.ties
    }
}

/// The device buffers the kernels here work in, for tensors of up to `64·words` elements:
/// a histogram, per-word counts and their prefix sums, a bitmap, per-block partial sums.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Work {
    words: usize,
    start: usize,
    hist: usize,
    counts: [usize; 2],
    sums: [usize; 2],
    bits: usize,
    partials: usize,
}

impl Work {
    /// Bytes of the buffers for tensors of up to `64·words` elements (`usize::MAX` past it).
    pub fn bytes(words: usize) -> usize {
        words
            .saturating_mul(32)
            .saturating_add(1024 + 8 * MAX_PARTIALS)
    }

    /// The buffers from byte offset `at` (rounded up to 8 bytes) for tensors of up to
    /// `64·words` elements; [`Work::bytes`]`(words)` (+ 7) bytes from `at` must be in the block
    /// (each kernel here checks that before it runs).
    pub fn at(at: usize, words: usize) -> Work {
        // Saturating: buffers past usize fail the check, and are never used.
        let hist = at.saturating_add(7) / 8 * 8;
        let next = |from: usize, bytes: usize| from.saturating_add(words.saturating_mul(bytes));
        let c0 = hist.saturating_add(1024);
        let (c1, s0) = (next(c0, 4), next(c0, 8));
        let (s1, bits) = (next(s0, 8), next(s0, 16));
        Work {
            words,
            start: hist,
            hist,
            counts: [c0, c1],
            sums: [s0, s1],
            bits,
            partials: next(bits, 8),
        }
    }

    /// That these buffers are in `b`'s block and cover tensors of `n` elements.
    fn check<B: Backend>(&self, b: &B, n: usize) -> Result<()> {
        if n.div_ceil(64) > self.words {
            return Err(Error::Gpu(format!(
                "device work buffers for {} elements, a tensor of {n}",
                64 * self.words
            )));
        }
        room(b, "work buffers", self.start, Self::bytes(self.words))
    }
}

/// That `bytes` bytes from offset `at` lie in `b`'s block, 4-byte aligned.
fn room<B: Backend>(b: &B, what: &str, at: usize, bytes: usize) -> Result<()> {
    match at.checked_add(bytes) {
        Some(end) if end <= b.len() && at.is_multiple_of(4) => Ok(()),
        _ => Err(Error::Gpu(format!(
            "{what}: {bytes} bytes at offset {at} do not fit a device block of {} (4-byte aligned)",
            b.len()
        ))),
    }
}

/// `n` floats from offset `at` in the block.
fn floats<B: Backend>(b: &B, what: &str, at: usize, n: usize) -> Result<()> {
    let bytes = n
        .checked_mul(4)
        .ok_or_else(|| Error::Gpu(format!("{what}: {n} floats overflow")))?;
    room(b, what, at, bytes)
}

/// A launch, its error naming the kernel. Callers pass the kernel's parameters with buffers
/// checked here ([`room`]) or planned for the sizes the kernel touches (the trainer's).
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
fn kth_digit(hist: &[u32; 256], need: &mut usize, above: &mut usize) -> Result<i32> {
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
/// histogram passes, each fixing 8 more bits of the k-th largest key (`dropit_simd::select::
/// topk_threshold`'s selection).
pub fn threshold<B: Backend>(
    b: &mut B,
    x: usize,
    n: usize,
    k: usize,
    work: &Work,
) -> Result<Threshold> {
    if k > n {
        return Err(Error::Gpu(format!("top-k: k = {k} of {n} elements")));
    }
    floats(b, "top-k input", x, n)?;
    work.check(b, n)?;
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

/// The kernels' code of a format's values (f32 0, bf16 1) for bitmap or u32 positions; an
/// error for the formats the device does not pack.
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

/// Packs the elements of the `n` floats at `x` that `t` keeps into `format` at `dst` (8-byte
/// aligned, room for [`Format::bytes`]`(n, t.kept())`), byte for byte the CPU's
/// `dropit_simd::pack::pack` of the same tensor. A threshold of another tensor is an error.
pub fn pack<B: Backend>(
    b: &mut B,
    (x, n): (usize, usize),
    t: &Threshold,
    format: Format,
    dst: usize,
    work: &Work,
) -> Result<PackedAt> {
    let form = value_code(format)?;
    let (k, words) = (t.kept(), n.div_ceil(64));
    if k > n {
        return Err(Error::Gpu(format!("pack: {k} kept of {n} elements")));
    }
    floats(b, "pack input", x, n)?;
    room(b, "packed tensor", dst, format.bytes(n, k))?;
    work.check(b, n)?;
    let packed = PackedAt {
        format,
        n,
        k,
        at: aligned8(dst)?,
    };
    // The padding after the positions and the values is zero, as in the CPU's buffers.
    b.zero(dst, packed.bytes())?;
    if n == 0 {
        return Ok(packed);
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
    run(b, "write_kept", Grid::Items(words), &args)?;
    Ok(packed)
}

/// `at` if it is 8-byte aligned (a packed tensor's bitmap words).
fn aligned8(at: usize) -> Result<usize> {
    match at % 8 {
        0 => Ok(at),
        _ => Err(Error::Gpu(format!(
            "a packed tensor at offset {at}, not 8-byte aligned"
        ))),
    }
}

/// Bytes a CPU packed (or read from anywhere) into the block at `at` (8-byte aligned), checked
/// first as the CPU checks them — length, positions in range and in order, as many as `k` —
/// so that the kernels reading them stay inside their buffers.
pub fn upload_packed<B: Backend>(
    b: &mut B,
    (format, n, k): (Format, usize, usize),
    bytes: &[u8],
    at: usize,
) -> Result<PackedAt> {
    value_code(format)?;
    // The CPU parser reads words: the bytes, wherever they come from, copied aligned.
    let mut words = std::vec![0u64; bytes.len().div_ceil(8)];
    bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
    let aligned = &bytemuck::cast_slice::<u64, u8>(&words)[..bytes.len()];
    let parsed = dropit_simd::format::Packed::from_bytes(format, n, k, aligned)?;
    let mut seen = 0usize;
    dropit_simd::pack::for_each_kept(&parsed, |_, _| seen += 1)?;
    if seen != k {
        return Err(Error::Gpu(format!(
            "packed tensor: {seen} kept positions, {k} declared"
        )));
    }
    let len = format.bytes(n, k);
    room(b, "packed tensor", at, len)?;
    b.write(aligned8(at)?, &bytes[..len])?;
    Ok(PackedAt { format, n, k, at })
}

/// A packed tensor in the block: its format, dense length, kept count and first byte. Made by
/// [`pack`] or from checked bytes ([`upload_packed`]), so that the kernels reading it stay in
/// its buffers (as long as nothing else writes over its bytes).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PackedAt {
    pub(crate) format: Format,
    pub(crate) n: usize,
    pub(crate) k: usize,
    pub(crate) at: usize,
}

impl PackedAt {
    /// The format.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Elements of the dense tensor.
    pub fn len(&self) -> usize {
        self.n
    }

    /// Whether the dense tensor has no element.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Elements kept.
    pub fn kept(&self) -> usize {
        self.k
    }

    /// Its first byte in the block.
    pub fn offset(&self) -> usize {
        self.at
    }

    /// Its bytes: [`Format::bytes`] of its length and kept count, the CPU's packed buffer.
    pub fn bytes(&self) -> usize {
        self.format.bytes(self.n, self.k)
    }

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

/// The dense tensor (`p.len()` floats at `out`) of a packed one: kept values in place, zeros
/// elsewhere — the CPU's `dropit_simd::pack::unpack`.
pub fn unpack<B: Backend>(b: &mut B, p: &PackedAt, out: usize, work: &Work) -> Result<()> {
    let form = Arg::I32(value_code(p.format)?);
    floats(b, "unpacked tensor", out, p.n)?;
    work.check(b, p.n)?;
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
/// no fixed order (atomic adds), so within f32 rounding of the CPU's.
pub fn linear_grad_w<B: Backend>(
    b: &mut B,
    p: &PackedAt,
    (inp, out): (usize, usize),
    dy: usize,
    gwt: usize,
    work: &Work,
) -> Result<()> {
    let form = Arg::I32(value_code(p.format)?);
    let rows = p.n.checked_div(inp).unwrap_or(0);
    if inp == 0 || rows * inp != p.n {
        return Err(Error::Gpu(format!(
            "linear grad_W: a packed input of {} elements is not rows × {inp}",
            p.n
        )));
    }
    floats(b, "linear grad_W: dY", dy, rows.saturating_mul(out))?;
    floats(b, "linear grad_W: grad_Wᵀ", gwt, inp.saturating_mul(out))?;
    work.check(b, p.n)?;
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

/// The sparse convolution grad_W (`[kh, kw, cin, cout]`, or `[kh, kw, c]` when `depthwise`)
/// from a packed NHWC input, every kept element's taps against dY (`cout` channels) added
/// atomically — the CPU's `spmm::conv2d_grad_w` or `spmm::depthwise_grad_w` within f32
/// rounding. `geom` holds the layer's 11-count geometry; the trainer plans every buffer.
pub(crate) fn conv_grad_w<B: Backend>(
    b: &mut B,
    p: &PackedAt,
    (dy, cout, depthwise): (usize, usize, bool),
    geom: usize,
    gw: usize,
    work: &Work,
) -> Result<()> {
    let form = Arg::I32(value_code(p.format)?);
    if p.n == 0 || p.k == 0 {
        return Ok(());
    }
    let dw = Arg::I32(depthwise as i32);
    let tail = [ptr(b, dy), u(cout), dw, ptr(b, geom), ptr(b, gw)];
    match p.format.positions {
        PosForm::U32 => {
            let head = [ptr(b, p.at), ptr(b, p.values()), form];
            let args = [&head[..], &tail, &[u(p.k)]].concat();
            run(b, "conv_grad_w_u32", Grid::Items(p.k), &args)
        }
        _ => {
            bitmap_offsets(b, p, work)?;
            let words = p.n.div_ceil(64);
            let head = [ptr(b, p.at), ptr(b, work.sums[1]), ptr(b, p.values()), form];
            let args = [&head[..], &tail, &[u(words)]].concat();
            run(b, "conv_grad_w_bitmap", Grid::Items(words), &args)
        }
    }
}

/// ReLU forward (`dropit_simd::mask::relu_forward`): `y = x` where `x > 0` or NaN, else 0, and
/// bit `i` of the `⌈n/64⌉` words at `bits` (8-byte aligned) set when `x[i] > 0`; `y` may be
/// `x`.
pub fn relu_forward<B: Backend>(
    b: &mut B,
    (x, y, n): (usize, usize, usize),
    bits: usize,
) -> Result<()> {
    floats(b, "ReLU input", x, n)?;
    floats(b, "ReLU output", y, n)?;
    let words = n.div_ceil(64);
    room(b, "ReLU mask", aligned8(bits)?, 8 * words)?;
    let args = [ptr(b, x), ptr(b, y), u(n), ptr(b, bits), u(words)];
    // x and y: n floats; the mask a word per 64 (checked above).
    run(b, "relu_forward", Grid::Items(words), &args)
}

/// `dx = dy` where the mask's bit is set, else 0 — or, with `acc`, `dx += dy` where it is set
/// (`dropit_simd::mask::apply_mask`); `dx` may be `dy`.
pub fn apply_mask<B: Backend>(
    b: &mut B,
    (dy, dx, n): (usize, usize, usize),
    bits: usize,
    acc: bool,
) -> Result<()> {
    floats(b, "mask: dY", dy, n)?;
    floats(b, "mask: dX", dx, n)?;
    room(b, "mask", aligned8(bits)?, 8 * n.div_ceil(64))?;
    let args = [
        ptr(b, dy),
        ptr(b, bits),
        ptr(b, dx),
        u(n),
        Arg::I32(acc as i32),
    ];
    // dy, dx: n floats; the mask a word per 64 (checked above).
    run(b, "apply_mask", Grid::Items(n), &args)
}

/// A count as a kernel's 64-bit argument.
pub(crate) fn u(v: usize) -> Arg {
    Arg::U64(v as u64)
}

/// One optimizer update at step `t` with rate `lr` of `n` parameters at `p` from their
/// gradients at `g`, with `state` ([`Optimizer::state_slots`] arrays of `n` floats, one after
/// the other): bitwise the CPU's [`Optimizer::update`].
pub fn optimizer_update<B: Backend>(
    b: &mut B,
    opt: &Optimizer,
    (lr, t): (f32, u64),
    (p, g, state, n): (usize, usize, usize, usize),
) -> Result<()> {
    floats(b, "optimizer: parameters", p, n)?;
    floats(b, "optimizer: gradients", g, n)?;
    let slots = opt.state_slots();
    floats(b, "optimizer: state", state, n.saturating_mul(slots))?;
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
pub fn sum_of_squares<B: Backend>(b: &mut B, x: usize, n: usize, work: &Work) -> Result<f64> {
    floats(b, "sum of squares", x, n)?;
    work.check(b, 0)?;
    b.zero(work.partials, 8 * MAX_PARTIALS)?;
    let args = [ptr(b, x), Arg::U64(n as u64), ptr(b, work.partials)];
    // x: n floats; one partial sum per block, at most MAX_PARTIALS blocks.
    run(b, "sum_squares", Grid::Strided(n), &args)?;
    let mut partial = [0f64; MAX_PARTIALS];
    b.read(work.partials, bytemuck::cast_slice_mut(&mut partial))?;
    Ok(partial.iter().sum())
}
