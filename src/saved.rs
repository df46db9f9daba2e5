//! How a Linear or convolution keeps its input for the weight gradient — the seam where DropIT
//! plugs in. (What every layer saves is declared in its own file: see `layers::contract`.)

use dropit_simd::format::{Format, PosForm, ValueType};
use dropit_simd::select::{kept_count, kept_in_blocks};

/// How a Linear or Conv2d layer keeps its input for the weight gradient.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub enum Positions {
    /// The smallest form for the layer's n and k.
    #[default]
    Auto,
    /// This form.
    Fixed(PosForm),
}

/// How grad_W is computed from the packed input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
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
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
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
