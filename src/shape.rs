use core::fmt;

/// The shape of one sample, channels last (NHWC without the N). A feature vector is `[1, 1, F]`;
/// a sequence of tokens is `[1, T, D]`.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Shape {
    /// Height (rows).
    pub h: usize,
    /// Width (columns).
    pub w: usize,
    /// Channels (the contiguous dimension).
    pub c: usize,
}

impl Shape {
    /// `[h, w, c]`.
    pub const fn new(h: usize, w: usize, c: usize) -> Self {
        Shape { h, w, c }
    }

    /// A feature vector `[1, 1, f]`.
    pub const fn flat(f: usize) -> Self {
        Shape { h: 1, w: 1, c: f }
    }

    /// Elements per sample. A model's shapes are checked to fit when it is built; for any
    /// other shape see [`Shape::checked_numel`].
    pub const fn numel(&self) -> usize {
        self.h * self.w * self.c
    }

    /// Elements per sample, or `None` when the product overflows `usize`.
    pub const fn checked_numel(&self) -> Option<usize> {
        match self.h.checked_mul(self.w) {
            Some(hw) => hw.checked_mul(self.c),
            None => None,
        }
    }

    /// Rows of a `[rows, c]` view of one sample (every position is a row of channels).
    pub const fn rows(&self) -> usize {
        self.h * self.w
    }
}

impl fmt::Display for Shape {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{}, {}, {}]", self.h, self.w, self.c)
    }
}
