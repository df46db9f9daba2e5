//! What a layer keeps for backward — the seam where DropIT plugs in.

use dropit_simd::mask::mask_words;

use crate::arena::{words_for_bytes, words_for_f32};

/// How a Linear or Conv2d layer keeps its input for the weight gradient.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub enum InputSave {
    /// The input tensor is held as it is (shared with every other layer that reads it).
    #[default]
    Dense,
}

impl InputSave {
    /// Whether the layer's backward reads its dense input.
    pub(crate) fn holds_input(&self) -> bool {
        matches!(self, InputSave::Dense)
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
    /// Dense floats: a normalized input and per-channel statistics (batch norm).
    Norm {
        /// Floats kept.
        floats: usize,
    },
}

impl Saved {
    /// Words of arena the context takes.
    pub fn words(&self) -> usize {
        match *self {
            Saved::Nothing => 0,
            Saved::Mask { elems } => mask_words(elems),
            Saved::Codes { elems } => words_for_bytes(elems),
            Saved::Norm { floats } => words_for_f32(floats),
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
            Saved::Norm { .. } => "normalized f32",
        }
    }
}
