//! Layers: one file each, forward and backward side by side.
//!
//! Each layer implements the contract (`contract.rs`) in its own file: it declares its
//! parameters (PyTorch's names and layouts), what it saves for backward as typed entries, its
//! scratch and whether it runs in place, and computes forward and backward. A layer never
//! allocates and never keeps pointers between calls: the trainer hands it, for each call, its
//! slices of the arena — input, output, parameters, gradients, its saved entries and the shared
//! scratch — through `Fwd` and `Bwd`.

pub(crate) mod bands;
pub(crate) mod contract;
pub(crate) mod loss;
pub(crate) mod par;
pub(crate) mod xhat;

pub use contract::{Elem, Entry, Layout, Needs, ParamDecl, Rebuild};

use crate::collections::msg;
use contract::{Dims, Input, Mode, Op, Params, Saved, SavedMut};

use dropit_simd::format::{Format, Packed, PackedMut};
use dropit_simd::gemm::{Mat, MatMut, scratch_len, sgemm};
use dropit_simd::mask::{apply_mask, mask_in_place};
use dropit_simd::pack::{
    PackPart, chunk_counts, pack, pack_part, part_align, select_and_pack, split_parts,
};
use dropit_simd::select::{Threshold, topk_threshold};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::error::Result;
use crate::saved::{InputSave, SparseSave};
use crate::shape::Shape;

/// What a forward call reads and writes. Tensors hold `n` samples, NHWC.
pub(crate) struct Fwd<'a> {
    pub n: usize,
    pub x_shape: Shape,
    pub y_shape: Shape,
    pub mode: Mode,
    pub x: Input<'a>,
    /// The second input (residual add).
    pub x2: Option<&'a [f32]>,
    pub y: &'a mut [f32],
    pub p: &'a [f32],
    /// Running statistics and other non-trained state.
    pub state: &'a mut [f32],
    /// The declared saved entries (none when frozen).
    pub saved: SavedMut<'a>,
    pub scratch: &'a mut [u64],
    pub threads: usize,
    /// Randomness of this step and node (dropout).
    pub seed: u64,
    /// The layer's packed input region (DropIT), where it keeps one.
    pub packed: Option<PackedMutRef<'a>>,
}

/// A layer's packed-input region in forward.
pub(crate) struct PackedMutRef<'a> {
    pub words: &'a mut [u64],
    pub format: Format,
    /// Pack it here (false: an earlier reader of the same tensor already did).
    pub packs: bool,
}

/// What a backward call reads and writes.
pub(crate) struct Bwd<'a> {
    pub n: usize,
    pub x_shape: Shape,
    pub y_shape: Shape,
    /// The input, where the layer holds it ([`Needs::holds_input`]).
    pub x: Option<&'a [f32]>,
    /// The output gradient (in place: it is in `dx`).
    pub dy: Input<'a>,
    /// The input gradient; `None` when no gradient is needed (the model's input).
    pub dx: Option<&'a mut [f32]>,
    /// The second input's gradient (residual add).
    pub dx2: Option<&'a mut [f32]>,
    /// Add into `dx` (another consumer of the same tensor wrote it first) instead of overwriting.
    pub acc: bool,
    /// The same for `dx2`.
    pub acc2: bool,
    pub p: &'a [f32],
    /// Parameter gradients, accumulated.
    pub g: &'a mut [f32],
    pub saved: Saved<'a>,
    pub scratch: &'a mut [u64],
    pub threads: usize,
    /// The layer's packed input (DropIT), where it keeps one.
    pub packed: Option<(&'a [u64], Format)>,
    /// The input, rebuilt piece by piece on demand, where the plan rebuilds it and the layer
    /// declared [`Needs::rebuild_scratch`] (its scratch then has those words more).
    pub rebuild: Option<&'a Rebuilder<'a>>,
}

/// What a rebuild call reads and writes (see [`Rebuild`]): elements `at .. at + y.len()` of
/// the layer's output, rebuilt in backward from its saved context (and, for
/// [`Rebuild::FromInput`], from its rebuilt input, already in `y`).
pub(crate) struct Rb<'a, 'y> {
    pub y: &'y mut [f32],
    pub at: usize,
    pub p: &'a [f32],
    pub saved: Saved<'a>,
}

/// A layer's input, rebuilt on demand by the chain of layers that keep what it is made of
/// (`crate::rebuild`): each link is a layer, its parameters and its saved context.
pub(crate) struct Rebuilder<'a> {
    pub links: heapless::Vec<(&'a Layer, &'a [f32], Saved<'a>), { crate::rebuild::MAX_CHAIN }>,
}

impl Rebuilder<'_> {
    /// Rebuilds elements `at .. at + y.len()` of the input into `y`, on this thread.
    pub fn fill(&self, at: usize, y: &mut [f32]) -> Result<()> {
        for &(layer, p, saved) in &self.links {
            layer.rebuild(&mut Rb { y, at, p, saved })?;
        }
        Ok(())
    }

    /// Rebuilds the whole input of `n` samples into `y`, samples shared out over `threads`.
    pub fn fill_all(&self, y: &mut [f32], n: usize, threads: usize) -> Result<()> {
        let (per, _) = par::split(n, threads);
        let chunk = (y.len() / n.max(1) * per).max(1);
        par::each(y.chunks_mut(chunk).enumerate(), |(g, y)| {
            self.fill(g * chunk, y)
        })
    }
}

/// The buffer of a tensor that a layer which never runs in place reads.
pub(crate) fn not_in_place<'a>(t: Input<'a>, kind: &str) -> Result<&'a [f32]> {
    t.buf()
        .ok_or_else(|| planner_bug(kind, "run in place, which it cannot"))
}

/// The held input of a layer that declared one.
pub(crate) fn held<'a>(x: Option<&'a [f32]>, kind: &str) -> Result<&'a [f32]> {
    x.ok_or_else(|| planner_bug(kind, "its input was not held"))
}

/// `c = alpha · a · b + beta · c` with the GEMM's packing buffers in `scratch`.
pub(crate) fn gemm(
    alpha: f32,
    a: Mat<'_>,
    b: Mat<'_>,
    beta: f32,
    c: MatMut<'_>,
    scratch: &mut [u64],
) -> Result<()> {
    Ok(sgemm(
        alpha,
        a,
        b,
        beta,
        c,
        crate::arena::f32s_mut(scratch),
    )?)
}

/// Words of scratch a GEMM of `m × k` by `k × n` needs.
pub(crate) fn gemm_words(m: usize, k: usize, n: usize) -> usize {
    crate::arena::words_for_f32(scratch_len(m, k, n))
}

/// Packs a layer's input `x` (`n` samples of `numel`) under its DropIT settings. A tensor-wide
/// selection finds its threshold in one read of `x` (`topk_threshold`), then packs split across
/// `threads` workers: each counts its chunk, a prefix sum over the counts gives every chunk its
/// share of the ties and its output slots, and each packs its chunk. The packed bytes are the
/// same for any number of workers.
pub(crate) fn pack_input(
    sp: &SparseSave,
    x: &[f32],
    n: usize,
    numel: usize,
    p: PackedMutRef<'_>,
    threads: usize,
) -> Result<()> {
    let (len, k) = (n * numel, sp.kept(n, numel));
    let bytes = &mut bytemuck::cast_slice_mut(p.words)[..p.format.bytes(len, k)];
    let mut out = PackedMut::from_bytes(p.format, len, k, bytes)?;
    let block = sp.block(n, numel);
    if threads > 1 && block >= len && len >= PARALLEL_PACK_MIN {
        let t = topk_threshold(x, k)?;
        return parallel_pack(x, &t, &mut out, threads);
    }
    Ok(select_and_pack(x, block, sp.keep, &mut out)?)
}

/// Below this many elements packing is not worth handing out.
const PARALLEL_PACK_MIN: usize = 1 << 16;

/// Packs `x` under the tensor-wide `t` in chunks on up to `threads` workers (chunk lengths a
/// multiple of what the position form needs; one chunk packs on this thread).
fn parallel_pack(x: &[f32], t: &Threshold, out: &mut PackedMut<'_>, threads: usize) -> Result<()> {
    let align = part_align(out);
    let chunk = par::elem_chunk(x.len(), threads).div_ceil(align) * align;
    let parts = x.len().div_ceil(chunk);
    if parts < 2 {
        return Ok(pack(x, t, out)?);
    }
    let mut counts = [(0usize, 0usize); par::MAX_THREADS];
    par::each(counts.iter_mut().zip(x.chunks(chunk)), |(c, xc)| {
        *c = chunk_counts(xc, t);
        Ok(())
    })?;
    let mut slots: [Option<PackPart<'_>>; par::MAX_THREADS] = [const { None }; par::MAX_THREADS];
    split_parts(t, chunk, &counts[..parts], out, &mut slots)?;
    par::each(slots.iter_mut().filter_map(Option::take), |part| {
        let s = part.start();
        Ok(pack_part(&x[s..s + part.len()], part)?)
    })
}

/// Views a layer's packed input (`n` samples of `numel`).
pub(crate) fn packed_input<'a>(
    sp: &SparseSave,
    n: usize,
    numel: usize,
    (w, f): (&'a [u64], Format),
) -> Result<Packed<'a>> {
    let (len, k) = (n * numel, sp.kept(n, numel));
    Ok(Packed::from_bytes(
        f,
        len,
        k,
        &bytemuck::cast_slice(w)[..f.bytes(len, k)],
    )?)
}

/// The error for a DropIT layer planned without its packed region (a planner bug).
pub(crate) fn missing(kind: &str) -> crate::error::Error {
    planner_bug(kind, "no packed-input region was planned")
}

/// An error for a call the planner set up wrongly.
pub(crate) fn planner_bug(kind: &str, detail: &str) -> crate::error::Error {
    crate::error::Error::Config {
        what: msg!("{kind} layer"),
        detail: msg!("{detail}"),
    }
}

/// The part of a saved entry a rebuild call covers (`r.at ..`, as long as `r.y`).
pub(crate) fn rebuilt_part<'s, T>(r: &Rb<'_, '_>, saved: &'s [T], kind: &str) -> Result<&'s [T]> {
    r.at.checked_add(r.y.len())
        .and_then(|end| saved.get(r.at..end))
        .ok_or_else(|| planner_bug(kind, "rebuilds past what it kept"))
}

/// Rebuilds part of a norm's output from its x̂ kept in `form` (entry 1 of its context; for
/// 8-bit codes, their scales in entry `scales`, one per channel or, `per_row`, per row of `c`).
pub(crate) fn rebuild_norm(
    r: &mut Rb<'_, '_>,
    form: xhat::Form,
    c: usize,
    (scales, per_row): (usize, bool),
    kind: &str,
) -> Result<()> {
    match form {
        xhat::Form::F32 => rebuild_affine(r, r.saved.f32(1)?, c, Scales::One, kind),
        xhat::Form::Bf16 => rebuild_affine(r, r.saved.bf16(1)?, c, Scales::One, kind),
        xhat::Form::Int8 => {
            let s = r.saved.f32(scales)?;
            let q: &[i8] = bytemuck::cast_slice(r.saved.bytes(1)?);
            let s = if per_row {
                Scales::PerRow(s)
            } else {
                Scales::PerChannel(s)
            };
            rebuild_affine(r, q, c, s, kind)
        }
    }
}

/// The scales of a kept x̂'s codes.
#[derive(Clone, Copy)]
enum Scales<'a> {
    /// None (the float forms).
    One,
    /// One per channel (batch norm).
    PerChannel(&'a [f32]),
    /// One per row (layer norm).
    PerRow(&'a [f32]),
}

/// Rebuilds part of a norm's output, `y = γ·(x̂·scale) + β` per channel, from its kept `xhat`
/// (rows of `c`; the parameters are γ then β), one row at a time so that the loop over a
/// row's channels vectorizes: from f32, the same products and sums as its forward.
fn rebuild_affine<V: dropit_simd::norm::Xhat>(
    r: &mut Rb<'_, '_>,
    xhat: &[V],
    c: usize,
    scales: Scales<'_>,
    kind: &str,
) -> Result<()> {
    let h = rebuilt_part(r, xhat, kind)?;
    if r.p.len() < 2 * c || c == 0 || !r.at.is_multiple_of(c) {
        return Err(planner_bug(kind, "rebuilds from the middle of a row"));
    }
    let missing = || planner_bug(kind, "rebuilds past its codes' scales");
    let (gamma, beta) = r.p[..2 * c].split_at(c);
    let first = r.at / c;
    for (k, (yr, hr)) in r.y.chunks_mut(c).zip(h.chunks(c)).enumerate() {
        let (gamma, beta) = (&gamma[..yr.len()], &beta[..yr.len()]);
        let hr = &hr[..yr.len()];
        match scales {
            Scales::One => {
                for (((y, h), g), b) in yr.iter_mut().zip(hr).zip(gamma).zip(beta) {
                    *y = g * h.get() + b;
                }
            }
            Scales::PerChannel(s) => {
                let s = s.get(..yr.len()).ok_or_else(missing)?;
                for ((((y, h), g), b), s) in yr.iter_mut().zip(hr).zip(gamma).zip(beta).zip(s) {
                    *y = g * (h.get() * s) + b;
                }
            }
            Scales::PerRow(s) => {
                let s = *s.get(first + k).ok_or_else(missing)?;
                for (((y, h), g), b) in yr.iter_mut().zip(hr).zip(gamma).zip(beta) {
                    *y = g * (h.get() * s) + b;
                }
            }
        }
    }
    Ok(())
}

/// Rebuilds an elementwise activation's output in place from its rebuilt input in `r.y`.
pub(crate) fn rebuild_elementwise(r: &mut Rb<'_, '_>, f: impl Fn(f32) -> f32) -> Result<()> {
    r.y.iter_mut().for_each(|v| *v = f(*v));
    Ok(())
}

/// Backward of an activation that saved one bit per element (entry 0): the output gradient
/// passes where the bit is set (ReLU, ReLU6).
pub(crate) fn mask_backward(b: &mut Bwd<'_>, kind: &str) -> Result<()> {
    let bits = b.saved.bits(0)?;
    let (dy, acc) = (b.dy.buf(), b.acc);
    let Some(dx) = b.dx.as_deref_mut() else {
        return Ok(());
    };
    if bits.len() * 64 < dx.len() || dy.is_some_and(|dy| dy.len() != dx.len()) {
        return Err(planner_bug(kind, "the mask or dY does not match dX"));
    }
    let c = par::elem_chunk(dx.len(), b.threads);
    let Some(dy) = dy else {
        return par::each(dx.chunks_mut(c).zip(bits.chunks(c / 64)), |(d, bits)| {
            Ok(mask_in_place(d, bits)?)
        });
    };
    par::each(
        dy.chunks(c).zip(dx.chunks_mut(c)).zip(bits.chunks(c / 64)),
        |((dy, dx), bits)| {
            if !acc {
                return Ok(apply_mask(dy, bits, dx)?);
            }
            for (i, (d, &g)) in dx.iter_mut().zip(dy).enumerate() {
                if (bits[i / 64] >> (i % 64)) & 1 == 1 {
                    *d += g;
                }
            }
            Ok(())
        },
    )
}

/// Writes or accumulates `v` into `d` depending on `acc`.
#[inline(always)]
pub(crate) fn put(d: &mut f32, v: f32, acc: bool) {
    if acc {
        *d += v;
    } else {
        *d = v;
    }
}

/// Lists every layer: its module (one file) and the types it defines, each with the line that
/// documents its variant of [`Layer`]. Adding a layer is one file and one line here.
macro_rules! layers {
    ($($m:ident { $($v:ident: $doc:literal),+ $(,)? })+) => {
        $(mod $m; $(pub use $m::$v;)+)+

        /// A layer of the model.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        pub enum Layer {
            $($(#[doc = $doc] $v($v),)+)+
        }

        $($(impl From<$v> for Layer {
            fn from(l: $v) -> Self {
                Layer::$v(l)
            }
        })+)+

        impl Layer {
            /// The kind, as PyTorch names it.
            pub fn kind(&self) -> &'static str {
                match self { $($(Layer::$v(_) => <$v as Op>::KIND,)+)+ }
            }

            fn op_arity(&self) -> usize {
                match self { $($(Layer::$v(l) => l.arity(),)+)+ }
            }

            fn op_out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
                match self { $($(Layer::$v(l) => l.out_shape(name, x),)+)+ }
            }

            fn op_params(&self) -> Params {
                match self { $($(Layer::$v(l) => l.params(),)+)+ }
            }

            fn op_needs(&self, d: &Dims) -> Needs {
                match self { $($(Layer::$v(l) => l.needs(d),)+)+ }
            }

            fn op_init(&self, p: &mut [f32], s: &mut [f32], r: &mut Xoshiro256PlusPlus) {
                match self { $($(Layer::$v(l) => l.init(p, s, r),)+)+ }
            }

            fn op_forward(&self, f: &mut Fwd<'_>) -> Result<()> {
                match self { $($(Layer::$v(l) => l.forward(f),)+)+ }
            }

            fn op_backward(&self, b: &mut Bwd<'_>) -> Result<()> {
                match self { $($(Layer::$v(l) => l.backward(b),)+)+ }
            }

            fn op_input_save(&self) -> Option<&InputSave> {
                match self { $($(Layer::$v(l) => l.input_save(),)+)+ }
            }

            fn op_input_save_mut(&mut self) -> Option<&mut InputSave> {
                match self { $($(Layer::$v(l) => l.input_save_mut(),)+)+ }
            }

            fn op_can_commit(&self, saved: &Saved<'_>) -> bool {
                match self { $($(Layer::$v(l) => l.can_commit(saved),)+)+ }
            }

            fn op_commit(&self, state: &mut [f32], saved: &Saved<'_>) -> Result<()> {
                match self { $($(Layer::$v(l) => l.commit(state, saved),)+)+ }
            }

            fn op_counters(&self) -> &'static [&'static str] {
                match self { $($(Layer::$v(l) => l.counters(),)+)+ }
            }

            fn op_rebuilds(&self) -> Rebuild {
                match self { $($(Layer::$v(l) => l.rebuilds(),)+)+ }
            }

            fn op_rebuild(&self, r: &mut Rb<'_, '_>) -> Result<()> {
                match self { $($(Layer::$v(l) => l.rebuild(r),)+)+ }
            }

            fn op_set_lean(&mut self, lean: bool) {
                match self { $($(Layer::$v(l) => l.set_lean(lean),)+)+ }
            }

            fn op_set_int8(&mut self, int8: bool) {
                match self { $($(Layer::$v(l) => l.set_int8(int8),)+)+ }
            }
        }
    };
}

layers! {
    linear { Linear: "Fully connected over the channel dimension." }
    conv2d { Conv2d: "2-D convolution, NHWC." }
    depthwise { DepthwiseConv2d: "Depthwise 2-D convolution (groups = channels), NHWC." }
    batchnorm { BatchNorm2d: "Batch normalization over N, H, W per channel." }
    relu { Relu: "max(x, 0)." }
    relu6 { Relu6: "min(max(x, 0), 6)." }
    pool {
        MaxPool2d: "Max pooling.",
        AvgPool2d: "Average pooling.",
        GlobalAvgPool: "Mean over H and W.",
    }
    flatten { Flatten: "`[h, w, c]` → `[1, 1, h·w·c]`." }
    add { Add: "Elementwise sum of two tensors (residual connections)." }
    layernorm { LayerNorm: "Layer normalization over the channel dimension." }
    gelu { Gelu: "GELU activation." }
    attention { Attention: "Multi-head self-attention on a fused q|k|v input." }
    tokens {
        PosEmbed: "Learned cls token and positions: patches → tokens.",
        TokenSelect: "One token of a sequence.",
    }
    dropout { Dropout: "Dropout." }
}

impl Layer {
    /// Inputs the layer takes (1, or 2 for [`Add`]).
    pub fn arity(&self) -> usize {
        self.op_arity()
    }

    /// The output shape for an input shape, or an error naming `name`, expected and given.
    pub fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        self.op_out_shape(name, x)
    }

    /// Parameters then running statistics, with PyTorch's `state_dict` names, shapes and the
    /// mapping from our layout.
    pub fn params(&self) -> Params {
        self.op_params()
    }

    /// Trained parameters.
    pub fn param_count(&self) -> usize {
        self.params()
            .iter()
            .filter(|p| p.trained)
            .map(ParamDecl::len)
            .sum()
    }

    /// Non-trained state (running statistics).
    pub fn state_count(&self) -> usize {
        self.params()
            .iter()
            .filter(|p| !p.trained)
            .map(ParamDecl::len)
            .sum()
    }

    /// What the layer saves for backward, its scratch and in-place ability, for `n` samples of
    /// input shape `x` and output shape `y` on `threads` workers.
    pub fn needs(&self, n: usize, x: Shape, y: Shape, threads: usize) -> Needs {
        self.op_needs(&Dims { n, x, y, threads })
    }

    /// How a Linear or convolution keeps its input for the weight gradient (DropIT applies to
    /// the layers that have one).
    pub fn input_save(&self) -> Option<&InputSave> {
        self.op_input_save()
    }

    /// The same, to change it.
    pub fn input_save_mut(&mut self) -> Option<&mut InputSave> {
        self.op_input_save_mut()
    }

    /// Switches the layer's lean forms (bf16 normalized inputs, one-byte GELU slopes, …) on
    /// or off; a layer without one ignores it.
    pub fn set_lean(&mut self, lean: bool) {
        self.op_set_lean(lean)
    }

    /// With lean on, keeps a batch or layer norm's normalized input as 8-bit codes with one
    /// scale per channel (batch norm) or row (layer norm) instead of bf16; other layers ignore
    /// it.
    pub fn set_int8(&mut self, int8: bool) {
        self.op_set_int8(int8)
    }

    /// Whether and how the layer's output can be rebuilt in backward from what it keeps.
    pub fn rebuilds(&self) -> Rebuild {
        self.op_rebuilds()
    }

    pub(crate) fn rebuild(&self, r: &mut Rb<'_, '_>) -> Result<()> {
        self.op_rebuild(r)
    }

    /// Int64 step counters PyTorch keeps for the same module (`num_batches_tracked`).
    pub fn counters(&self) -> &'static [&'static str] {
        self.op_counters()
    }

    /// Fills freshly planned parameters.
    pub(crate) fn init(&self, p: &mut [f32], state: &mut [f32], rng: &mut Xoshiro256PlusPlus) {
        self.op_init(p, state, rng)
    }

    pub(crate) fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        self.op_forward(f)
    }

    pub(crate) fn can_commit(&self, saved: &Saved<'_>) -> bool {
        self.op_can_commit(saved)
    }

    pub(crate) fn commit(&self, state: &mut [f32], saved: &Saved<'_>) -> Result<()> {
        self.op_commit(state, saved)
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        self.op_backward(b)
    }
}

/// Runs one layer without parameters by itself, for the layers' unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::contract::{Dims, Input, Mode, Op, Saved, SavedMut};
    use super::{Bwd, Fwd};
    use crate::shape::Shape;
    use alloc::vec;
    use alloc::vec::Vec;

    /// Forward (training) and backward of `op` on `n` samples of `xs` → `ys` with `threads`
    /// workers and output gradient `dy`: returns `(y, dx)`, dx accumulated onto `start` if
    /// given. Backward reads `x` when `held`.
    pub(crate) fn run<O: Op>(
        op: &O,
        (n, xs, ys, threads): (usize, Shape, Shape, usize),
        x: &[f32],
        dy: &[f32],
        held: bool,
        start: Option<&[f32]>,
    ) -> (Vec<f32>, Vec<f32>) {
        let needs = op.needs(&Dims {
            n,
            x: xs,
            y: ys,
            threads,
        });
        let mut ctx = vec![0u64; needs.saved_words()];
        let mut scratch = vec![0u64; needs.scratch];
        let mut y = vec![f32::NAN; n * ys.numel()];
        op.forward(&mut Fwd {
            n,
            x_shape: xs,
            y_shape: ys,
            mode: Mode::Train,
            x: Input::Buf(x),
            x2: None,
            y: &mut y,
            p: &[],
            state: &mut [],
            saved: SavedMut::split(&mut ctx, &needs.saved).unwrap(),
            scratch: &mut scratch,
            threads,
            seed: 0,
            packed: None,
        })
        .unwrap();
        let mut dx = start.map_or(vec![f32::NAN; x.len()], <[f32]>::to_vec);
        op.backward(&mut Bwd {
            n,
            x_shape: xs,
            y_shape: ys,
            x: held.then_some(x),
            dy: Input::Buf(dy),
            dx: Some(&mut dx),
            dx2: None,
            acc: start.is_some(),
            acc2: false,
            p: &[],
            g: &mut [],
            saved: Saved::split(&ctx, &needs.saved).unwrap(),
            scratch: &mut scratch,
            threads,
            packed: None,
            rebuild: None,
        })
        .unwrap();
        (y, dx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_pack_is_the_serial_one() {
        use dropit_simd::format::{PosForm, ValueType};
        let n = 3 * 65_536 + 1_003;
        let mut s = 0x9E37_79B9_7F4A_7C15u64;
        let mut x: alloc::vec::Vec<f32> = (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 4.0 - 2.0
            })
            .collect();
        // Ties across chunk borders, zeros and a NaN.
        x[40_000..90_000].fill(1.5);
        x[100_000..101_000].fill(0.0);
        x[99_999] = f32::NAN;
        for k in [0, 1, 10_000, 30_000, 60_000, n - 1, n] {
            let t = topk_threshold(&x, k).unwrap();
            for pos in [PosForm::Bitmap, PosForm::Block16, PosForm::U32] {
                let fmt = Format::new(ValueType::Bf16, pos);
                let mut want = alloc::vec![!0u64; fmt.bytes(n, k).div_ceil(8)];
                let bytes = &mut bytemuck::cast_slice_mut(&mut want)[..fmt.bytes(n, k)];
                pack(
                    &x,
                    &t,
                    &mut PackedMut::from_bytes(fmt, n, k, bytes).unwrap(),
                )
                .unwrap();
                for threads in [2, 3, 8, 64] {
                    // Stale bytes (as in `want`) must be overwritten alike.
                    let mut got = alloc::vec![!0u64; want.len()];
                    let bytes = &mut bytemuck::cast_slice_mut(&mut got)[..fmt.bytes(n, k)];
                    let mut out = PackedMut::from_bytes(fmt, n, k, bytes).unwrap();
                    parallel_pack(&x, &t, &mut out, threads).unwrap();
                    let (a, b): (&[u8], &[u8]) = (
                        &bytemuck::cast_slice(&got)[..fmt.bytes(n, k)],
                        &bytemuck::cast_slice(&want)[..fmt.bytes(n, k)],
                    );
                    assert!(a == b, "k {k}, {pos:?}, {threads} threads");
                }
            }
        }
    }
}
