//! Layers: one file each, forward and backward side by side.
//!
//! A layer never allocates and never keeps pointers between calls: the trainer hands it, for
//! each call, its slices of the arena — input, output, parameters, gradients, its saved context
//! and the shared scratch — through `Fwd` and `Bwd`.

mod add;
mod attention;
mod batchnorm;
mod conv2d;
mod dropout;
mod flatten;
mod gelu;
mod layernorm;
mod linear;
pub(crate) mod loss;
pub(crate) mod par;
mod pool;
mod relu;
mod tokens;

pub use add::Add;
pub use attention::Attention;
pub use batchnorm::BatchNorm2d;
pub use conv2d::Conv2d;
pub use dropout::Dropout;
pub use flatten::Flatten;
pub use gelu::Gelu;
pub use layernorm::LayerNorm;
pub use linear::Linear;
pub use pool::{AvgPool2d, GlobalAvgPool, MaxPool2d};
pub use relu::Relu;
pub use tokens::{PosEmbed, TokenSelect};

use dropit_simd::format::{Format, Packed, PackedMut};
use dropit_simd::gemm::{Mat, MatMut, scratch_len, sgemm};
use dropit_simd::pack::{pack, select_and_pack};
use dropit_simd::select::{Histogram, RadixSelect, Threshold};
use rand_xoshiro::Xoshiro256PlusPlus;

use crate::error::Result;
use crate::saved::{Saved, SparseSave};
use crate::shape::Shape;

/// What a forward call reads and writes. Tensors hold `n` samples, NHWC.
pub(crate) struct Fwd<'a> {
    pub n: usize,
    pub x_shape: Shape,
    pub y_shape: Shape,
    pub train: bool,
    pub x: &'a [f32],
    /// The second input (residual add), else empty.
    pub x2: &'a [f32],
    pub y: &'a mut [f32],
    pub p: &'a [f32],
    /// Running statistics and other non-trained state.
    pub state: &'a mut [f32],
    pub saved: &'a mut [u64],
    pub scratch: &'a mut [u64],
    pub threads: usize,
    /// `y` already holds the input (`x` is empty): work in place.
    pub inplace: bool,
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
    /// The input, where the layer holds it (see [`Layer::holds_input`]), else empty.
    pub x: &'a [f32],
    pub dy: &'a [f32],
    /// The input gradient; empty when no gradient is needed (the model's input).
    pub dx: &'a mut [f32],
    /// The second input's gradient (residual add).
    pub dx2: &'a mut [f32],
    /// Add into `dx` (another consumer of the same tensor wrote it first) instead of overwriting.
    pub acc: bool,
    /// The same for `dx2`.
    pub acc2: bool,
    pub p: &'a [f32],
    /// Parameter gradients, accumulated.
    pub g: &'a mut [f32],
    pub saved: &'a [u64],
    pub scratch: &'a mut [u64],
    pub threads: usize,
    /// `dx` already holds the output gradient (`dy` is empty): work in place.
    pub inplace: bool,
    /// The layer's packed input (DropIT), where it keeps one.
    pub packed: Option<(&'a [u64], Format)>,
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
/// selection counts its histograms on `threads` workers; the threshold, and so the packed copy,
/// is the same for any number of workers.
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
    if threads > 1 && block >= len && len >= PARALLEL_SELECT_MIN {
        let t = parallel_threshold(x, k, threads)?;
        return Ok(pack(x, &t, &mut out)?);
    }
    Ok(select_and_pack(x, block, sp.keep, &mut out)?)
}

/// Below this many elements a selection is not worth handing out.
const PARALLEL_SELECT_MIN: usize = 1 << 16;

/// The top-k threshold of `x`, each radix pass counted in chunks on up to 8 workers (their
/// histograms, 8 KiB each, on this thread's stack) and merged.
fn parallel_threshold(x: &[f32], k: usize, threads: usize) -> Result<Threshold> {
    const GROUPS: usize = 8;
    let mut rs = RadixSelect::new(x.len(), k)?;
    let mut hs: [Histogram; GROUPS] = core::array::from_fn(|_| Histogram::new());
    let chunk = x.len().div_ceil(threads.clamp(1, GROUPS));
    let groups = x.len().div_ceil(chunk);
    while !rs.is_done() {
        let sel = &rs;
        par::each(hs.iter_mut().zip(x.chunks(chunk)), |(h, xc)| {
            h.clear();
            sel.count(xc, h);
            Ok(())
        })?;
        let (all, rest) = hs.split_at_mut(1);
        rest[..groups - 1].iter().for_each(|h| all[0].merge(h));
        rs.advance(&all[0])?;
    }
    Ok(rs.threshold().unwrap_or(Threshold::NONE))
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
    crate::error::Error::Config {
        what: alloc::format!("{kind} with DropIT"),
        detail: "no packed-input region was planned".into(),
    }
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

/// A layer of the model.
#[derive(Debug, Clone, PartialEq)]
pub enum Layer {
    /// Fully connected over the channel dimension.
    Linear(Linear),
    /// 2-D convolution, NHWC.
    Conv2d(Conv2d),
    /// Batch normalization over N, H, W per channel.
    BatchNorm2d(BatchNorm2d),
    /// max(x, 0).
    Relu(Relu),
    /// Max pooling.
    MaxPool2d(MaxPool2d),
    /// Average pooling.
    AvgPool2d(AvgPool2d),
    /// Mean over H and W.
    GlobalAvgPool(GlobalAvgPool),
    /// `[h, w, c]` → `[1, 1, h·w·c]`.
    Flatten(Flatten),
    /// Elementwise sum of two tensors (residual connections).
    Add(Add),
    /// Layer normalization over the channel dimension.
    LayerNorm(LayerNorm),
    /// GELU activation.
    Gelu(Gelu),
    /// Multi-head self-attention on a fused q|k|v input.
    Attention(Attention),
    /// Learned cls token and positions: patches → tokens.
    PosEmbed(PosEmbed),
    /// One token of a sequence.
    TokenSelect(TokenSelect),
    /// Dropout.
    Dropout(Dropout),
}

macro_rules! each {
    ($self:expr, $l:ident => $e:expr) => {
        match $self {
            Layer::Linear($l) => $e,
            Layer::Conv2d($l) => $e,
            Layer::BatchNorm2d($l) => $e,
            Layer::Relu($l) => $e,
            Layer::MaxPool2d($l) => $e,
            Layer::AvgPool2d($l) => $e,
            Layer::GlobalAvgPool($l) => $e,
            Layer::Flatten($l) => $e,
            Layer::Add($l) => $e,
            Layer::LayerNorm($l) => $e,
            Layer::Gelu($l) => $e,
            Layer::Attention($l) => $e,
            Layer::PosEmbed($l) => $e,
            Layer::TokenSelect($l) => $e,
            Layer::Dropout($l) => $e,
        }
    };
}

impl Layer {
    /// The kind, as PyTorch names it.
    pub fn kind(&self) -> &'static str {
        match self {
            Layer::Linear(_) => "Linear",
            Layer::Conv2d(_) => "Conv2d",
            Layer::BatchNorm2d(_) => "BatchNorm2d",
            Layer::Relu(_) => "ReLU",
            Layer::MaxPool2d(_) => "MaxPool2d",
            Layer::AvgPool2d(_) => "AvgPool2d",
            Layer::GlobalAvgPool(_) => "AdaptiveAvgPool2d(1)",
            Layer::Flatten(_) => "Flatten",
            Layer::Add(_) => "Add",
            Layer::LayerNorm(_) => "LayerNorm",
            Layer::Gelu(_) => "GELU",
            Layer::Attention(_) => "MultiheadAttention",
            Layer::PosEmbed(_) => "PosEmbed",
            Layer::TokenSelect(_) => "TokenSelect",
            Layer::Dropout(_) => "Dropout",
        }
    }

    /// Whether the layer can write its output over its (first) input, and its input gradient
    /// over its output gradient, for these shapes.
    pub(crate) fn in_place(&self, x: Shape, y: Shape) -> bool {
        match self {
            Layer::Relu(_)
            | Layer::Add(_)
            | Layer::BatchNorm2d(_)
            | Layer::Gelu(_)
            | Layer::Dropout(_) => true,
            Layer::Conv2d(c) => c.in_place(x, y),
            _ => false,
        }
    }

    /// Inputs the layer takes (1, or 2 for [`Add`]).
    pub fn arity(&self) -> usize {
        if matches!(self, Layer::Add(_)) { 2 } else { 1 }
    }

    /// The output shape for an input shape, or an error naming `name`, expected and given.
    pub fn out_shape(&self, name: &str, x: Shape) -> Result<Shape> {
        each!(self, l => l.out_shape(name, x))
    }

    /// Trained parameters.
    pub fn param_count(&self) -> usize {
        each!(self, l => l.param_count())
    }

    /// Non-trained state (running statistics).
    pub fn state_count(&self) -> usize {
        match self {
            Layer::BatchNorm2d(b) => 2 * b.c,
            _ => 0,
        }
    }

    /// Whether backward reads the layer's own input, so the planner must hold that tensor.
    pub(crate) fn holds_input(&self) -> bool {
        match self {
            Layer::Linear(l) => l.save.holds_input(),
            Layer::Conv2d(c) => c.save.holds_input(),
            // q, k and v themselves, unless a bf16 copy is kept instead.
            Layer::Attention(a) => !a.lean,
            _ => false,
        }
    }

    /// The layer's DropIT settings, if it keeps its input packed.
    pub(crate) fn sparse_save(&self) -> Option<&crate::saved::SparseSave> {
        match self {
            Layer::Linear(l) => l.save.sparse(),
            Layer::Conv2d(c) => c.save.sparse(),
            _ => None,
        }
    }

    /// What the layer saves for backward beyond a held input, for `n` samples of shape `x`.
    pub(crate) fn saved(&self, n: usize, x: Shape, y: Shape) -> Saved {
        match self {
            Layer::Relu(_) => Saved::Mask {
                elems: n * y.numel(),
            },
            Layer::MaxPool2d(_) => Saved::Codes {
                elems: n * y.numel(),
            },
            Layer::BatchNorm2d(b) => Saved::Norm {
                elems: n * x.numel(),
                channels: b.c,
                lean: b.lean,
            },
            Layer::LayerNorm(l) => Saved::Norm {
                elems: n * x.numel(),
                channels: n * x.rows(),
                lean: l.lean,
            },
            Layer::Gelu(g) => Saved::Input {
                elems: n * x.numel(),
                lean: g.lean,
            },
            Layer::Attention(a) => Saved::Attention {
                rows: a.lse_rows(n, x.rows()),
                qkv: if a.lean { n * x.numel() } else { 0 },
            },
            Layer::Dropout(_) => Saved::Mask {
                elems: n * y.numel(),
            },
            _ => Saved::Nothing,
        }
    }

    /// Scratch words while running forward or backward for `n` samples.
    pub(crate) fn scratch_words(&self, n: usize, x: Shape, y: Shape, threads: usize) -> usize {
        match self {
            Layer::Linear(l) => l.scratch_words(n * x.rows(), threads),
            Layer::Conv2d(c) => c.scratch_words(n, x, y, threads),
            Layer::BatchNorm2d(b) => b.scratch_words(n, threads),
            Layer::LayerNorm(l) => l.scratch_words(n * x.rows(), threads),
            Layer::Attention(a) => a.scratch_words(n, x, threads),
            _ => 0,
        }
    }

    /// Fills freshly planned parameters.
    pub(crate) fn init(&self, p: &mut [f32], state: &mut [f32], rng: &mut Xoshiro256PlusPlus) {
        match self {
            Layer::Linear(l) => l.init(p, rng),
            Layer::Conv2d(c) => c.init(p, rng),
            Layer::BatchNorm2d(b) => b.init(p, state),
            Layer::LayerNorm(l) => l.init(p),
            Layer::PosEmbed(e) => e.init(p, rng),
            _ => {}
        }
    }

    pub(crate) fn forward(&self, f: &mut Fwd<'_>) -> Result<()> {
        each!(self, l => l.forward(f))
    }

    pub(crate) fn backward(&self, b: &mut Bwd<'_>) -> Result<()> {
        each!(self, l => l.backward(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallel_threshold_is_the_serial_one() {
        let n = 100_003;
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
        x[40_000..60_000].fill(1.5);
        x[70_000..71_000].fill(0.0);
        x[99_999] = f32::NAN;
        for k in [0, 1, 10_000, 30_000, n - 1, n] {
            let want = dropit_simd::select::topk_threshold(&x, k).unwrap();
            for threads in [2, 3, 8, 64] {
                let got = parallel_threshold(&x, k, threads).unwrap();
                assert_eq!(
                    (got.key(), got.above(), got.ties()),
                    (want.key(), want.above(), want.ties()),
                    "k {k}, {threads} threads"
                );
            }
        }
    }
}
