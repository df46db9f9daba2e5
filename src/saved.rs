//! What a layer keeps for backward — the seam where DropIT plugs in.

use dropit_simd::format::{Format, PosForm, ValueType};
use dropit_simd::mask::mask_words;
use dropit_simd::select::{kept_count, kept_in_blocks};

use crate::arena::{words_for_bytes, words_for_f32};

/// How a Linear or Conv2d layer keeps its input for the weight gradient.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum InputSave {
    /// The input tensor is held as it is (shared with every other layer that reads it).
    #[default]
    Dense,
    /// DropIT: only the largest-magnitude elements are kept, packed; grad_W is computed from
    /// them. Layers that read the same tensor with the same settings share one packed copy.
    Sparse(SparseSave),
}

impl InputSave {
    /// Whether the layer's backward reads its dense input.
    pub(crate) fn holds_input(&self) -> bool {
        matches!(self, InputSave::Dense)
    }

    /// The sparse settings, if any.
    pub(crate) fn sparse(&self) -> Option<&SparseSave> {
        match self {
            InputSave::Sparse(s) => Some(s),
            InputSave::Dense => None,
        }
    }
}

/// Over what the top-k is taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Scope {
    /// One top-k over the whole batch tensor (the paper's choice).
    #[default]
    Tensor,
    /// One top-k per sample.
    PerSample,
    /// One top-k per block of this many elements.
    Block(usize),
}

/// Where kept positions are stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Positions {
    /// The smallest form for the layer's n and k.
    #[default]
    Auto,
    /// This form.
    Fixed(PosForm),
}

/// How grad_W is computed from the packed input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum GradPath {
    /// Straight from the packed form (the sparse-recovery GEMM).
    Direct,
    /// Scatter into a dense buffer, then a dense GEMM (Linear only; a conv always goes direct,
    /// since its dense buffer would be the whole batch's input).
    Scatter,
    /// Chosen per layer from the keep ratio (direct below [`GradPath::AUTO_DIRECT_BELOW`]).
    #[default]
    Auto,
}

impl GradPath {
    /// Keep ratio under which `Auto` goes direct for a Linear layer: the measured break-even of
    /// the sparse kernel against scatter + dense GEMM (bench `spmm_linear`: 1.3× faster at 10%
    /// kept, 2.1× slower at 30%).
    pub const AUTO_DIRECT_BELOW: f32 = 0.15;
}

/// DropIT settings of one layer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SparseSave {
    /// Fraction of elements kept: 1 − γ.
    pub keep: f32,
    /// Selection scope.
    pub scope: Scope,
    /// Value type of kept elements.
    pub values: ValueType,
    /// Position form.
    pub positions: Positions,
    /// grad_W path.
    pub path: GradPath,
}

impl SparseSave {
    /// Selection block length for `n` samples of `numel` elements.
    pub(crate) fn block(&self, n: usize, numel: usize) -> usize {
        match self.scope {
            Scope::Tensor => (n * numel).max(1),
            Scope::PerSample => numel.max(1),
            Scope::Block(b) => b.max(1),
        }
    }

    /// Elements kept of `n` samples of `numel`.
    pub(crate) fn kept(&self, n: usize, numel: usize) -> usize {
        let len = n * numel;
        kept_in_blocks(len, self.block(n, numel), self.keep).unwrap_or(kept_count(len, self.keep))
    }

    /// The storage format for `n` samples of `numel` (fixed at plan time for the planned batch).
    pub(crate) fn format(&self, n: usize, numel: usize) -> Format {
        match self.positions {
            Positions::Auto => Format::smallest(n * numel, self.kept(n, numel), self.values),
            Positions::Fixed(p) => Format::new(self.values, p),
        }
    }

    /// Bytes of the packed input of `n` samples of `numel`.
    pub(crate) fn bytes(&self, n: usize, numel: usize) -> usize {
        self.format(n, numel).bytes(n * numel, self.kept(n, numel))
    }

    /// Whether grad_W goes straight from the packed form, for a layer of this kind.
    pub(crate) fn direct(&self, conv: bool) -> bool {
        conv || match self.path {
            GradPath::Direct => true,
            GradPath::Scatter => false,
            GradPath::Auto => self.keep < GradPath::AUTO_DIRECT_BELOW,
        }
    }
}

/// A layer's own saved context (a held input is planned separately, once per tensor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Saved {
    /// Nothing.
    Nothing,
    /// One bit per output element (ReLU).
    Mask {
        /// Elements covered.
        elems: usize,
    },
    /// One byte per output element: which element of its window won (max-pool).
    Codes {
        /// Elements covered.
        elems: usize,
    },
    /// The layer's input itself (GELU), or when lean its derivative as a one-byte code.
    Input {
        /// Elements.
        elems: usize,
        /// Stored as a derivative code.
        lean: bool,
    },
    /// Attention's log-sum-exp per score row (f32), and q|k|v as bf16 when lean (else the
    /// input is held and `qkv` is 0).
    Attention {
        /// Score rows (samples × heads × tokens).
        rows: usize,
        /// Elements of the bf16 q|k|v copy.
        qkv: usize,
    },
    /// A normalized input and one f32 statistic per channel (batch norm) or per row (layer
    /// norm); the normalized input as bf16 when lean.
    Norm {
        /// Elements of the normalized input.
        elems: usize,
        /// Channels (one f32 statistic each).
        channels: usize,
        /// Normalized input stored as bf16.
        lean: bool,
    },
}

impl Saved {
    /// Words of arena the context takes.
    pub fn words(&self) -> usize {
        match *self {
            Saved::Nothing => 0,
            Saved::Mask { elems } => mask_words(elems),
            Saved::Codes { elems } => words_for_bytes(elems),
            Saved::Input { elems, lean } => {
                if lean {
                    words_for_bytes(elems)
                } else {
                    words_for_f32(elems)
                }
            }
            Saved::Attention { rows, qkv } => words_for_f32(rows) + words_for_bytes(2 * qkv),
            Saved::Norm {
                elems,
                channels,
                lean,
            } => {
                let x = if lean {
                    words_for_bytes(2 * elems)
                } else {
                    words_for_f32(elems)
                };
                x + words_for_f32(channels)
            }
        }
    }

    /// Bytes the context takes.
    pub fn bytes(&self) -> usize {
        self.words() * 8
    }

    /// Short description for the memory report.
    pub fn describe(&self) -> &'static str {
        match self {
            Saved::Nothing => "-",
            Saved::Mask { .. } => "1-bit mask",
            Saved::Codes { .. } => "argmax u8",
            Saved::Input { lean: false, .. } => "input f32",
            Saved::Input { lean: true, .. } => "slope u8",
            Saved::Attention { qkv: 0, .. } => "log-sum-exp f32",
            Saved::Attention { .. } => "qkv bf16 + lse",
            Saved::Norm { lean: false, .. } => "normalized f32",
            Saved::Norm { lean: true, .. } => "normalized bf16",
        }
    }
}
