use core::fmt;

/// What a kernel refused, and why. Every kernel checks its buffers before touching them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Error {
    /// A buffer's length is not what the shapes imply.
    Length {
        /// Which buffer.
        what: &'static str,
        /// The length the shapes imply.
        expected: usize,
        /// The length given.
        given: usize,
    },
    /// More elements asked to be kept than there are.
    KTooLarge {
        /// Elements asked for.
        k: usize,
        /// Elements there are.
        n: usize,
    },
    /// A geometry parameter that cannot work (zero stride, zero block, kernel larger than input…).
    Invalid {
        /// Which parameter.
        what: &'static str,
        /// The value given.
        value: usize,
    },
    /// A byte buffer for a packed tensor is not 8-byte aligned.
    Misaligned,
    /// The packed tensor's value type does not match the format asked for.
    FormatMismatch,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Error::Length {
                what,
                expected,
                given,
            } => write!(f, "{what}: expected {expected} elements, given {given}"),
            Error::KTooLarge { k, n } => write!(f, "top-k: k = {k} exceeds the {n} elements"),
            Error::Invalid { what, value } => write!(f, "{what}: invalid value {value}"),
            Error::Misaligned => write!(f, "packed buffer: not 8-byte aligned"),
            Error::FormatMismatch => write!(f, "packed buffer: value type differs from the format"),
        }
    }
}

impl core::error::Error for Error {}
