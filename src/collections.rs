//! The collections of the model graph, the plan, names and error messages: `Vec` and `String`
//! with the `alloc` feature (the API as it always was), fixed-capacity `heapless` ones without
//! it, so that a firmware links with no global allocator at all. Capacities are the constants
//! below; pushing past one is [`Error::Capacity`](crate::Error::Capacity), never a panic. Each
//! can be set when the crate is built, e.g. `DROPIT_MAX_NODES=64 cargo build …` (a value that
//! is not a decimal number stops the build).

use core::fmt;

#[cfg(not(feature = "alloc"))]
use crate::error::Error;
use crate::error::Result;

/// Most layers a model holds in a build without `alloc` (`DROPIT_MAX_NODES`, default 24).
pub const MAX_NODES: usize = capacity(option_env!("DROPIT_MAX_NODES"), 24);
/// Most tensors (the input and one per layer).
pub const MAX_TENSORS: usize = MAX_NODES + 1;
/// Longest layer name, in bytes, without `alloc` (`DROPIT_NAME_LEN`, default 24).
pub const NAME_LEN: usize = capacity(option_env!("DROPIT_NAME_LEN"), 24);
/// Longest error message part, in bytes, without `alloc` (longer ones are cut;
/// `DROPIT_TEXT_LEN`, default 80).
pub const TEXT_LEN: usize = capacity(option_env!("DROPIT_TEXT_LEN"), 80);
/// Most per-layer γ overrides of a DropIT policy without `alloc` (`DROPIT_MAX_OVERRIDES`,
/// default 16).
pub const MAX_OVERRIDES: usize = capacity(option_env!("DROPIT_MAX_OVERRIDES"), 16);

/// A capacity given at build time as a decimal number, or `default`.
const fn capacity(given: Option<&str>, default: usize) -> usize {
    let Some(s) = given else {
        return default;
    };
    let b = s.as_bytes();
    assert!(!b.is_empty(), "a dropit capacity must be a decimal number");
    let (mut i, mut n) = (0, 0usize);
    while i < b.len() {
        assert!(
            b[i].is_ascii_digit(),
            "a dropit capacity must be a decimal number"
        );
        n = n * 10 + (b[i] - b'0') as usize;
        i += 1;
    }
    n
}

/// A growable list: `Vec<T>` with `alloc`, `heapless::Vec<T, N>` without.
#[cfg(feature = "alloc")]
pub type List<T, const N: usize> = alloc::vec::Vec<T>;
/// A growable list: `Vec<T>` with `alloc`, `heapless::Vec<T, N>` without.
#[cfg(not(feature = "alloc"))]
pub type List<T, const N: usize> = heapless::Vec<T, N>;

/// Text: `String` with `alloc`, `heapless::String<N>` without.
#[cfg(feature = "alloc")]
pub type Text<const N: usize> = alloc::string::String;
/// Text: `String` with `alloc`, `heapless::String<N>` without.
#[cfg(not(feature = "alloc"))]
pub type Text<const N: usize> = heapless::String<N>;

/// A layer name.
pub type Name = Text<NAME_LEN>;
/// Part of an error message.
pub type Message = Text<TEXT_LEN>;

/// Formats into [`Text`]; without `alloc`, what does not fit is cut (at a character boundary).
pub fn text<const N: usize>(args: fmt::Arguments<'_>) -> Text<N> {
    #[cfg(feature = "alloc")]
    {
        alloc::fmt::format(args)
    }
    #[cfg(not(feature = "alloc"))]
    {
        /// Writes what fits and drops the rest.
        struct Cut<const N: usize>(heapless::String<N>);
        impl<const N: usize> fmt::Write for Cut<N> {
            fn write_str(&mut self, s: &str) -> fmt::Result {
                for c in s.chars() {
                    if self.0.push(c).is_err() {
                        break;
                    }
                }
                Ok(())
            }
        }
        let mut out = Cut::<N>(heapless::String::new());
        let _ = fmt::Write::write_fmt(&mut out, args);
        out.0
    }
}

/// A [`Message`] from format arguments (`format!` that needs no allocator).
macro_rules! msg {
    ($($t:tt)*) => {
        $crate::collections::text::<{ $crate::collections::TEXT_LEN }>(format_args!($($t)*))
    };
}
pub(crate) use msg;

/// A layer name from `s`, or an error when it is longer than [`NAME_LEN`] without `alloc`.
pub(crate) fn name(s: &str) -> Result<Name> {
    #[cfg(feature = "alloc")]
    {
        Ok(alloc::string::String::from(s))
    }
    #[cfg(not(feature = "alloc"))]
    {
        heapless::String::try_from(s).map_err(|_| Error::Capacity {
            what: "layer name bytes",
            capacity: NAME_LEN,
        })
    }
}

/// Fallible `push`: the allocator's refusal is [`Error::OutOfMemory`], a full fixed list
/// [`Error::Capacity`] naming `what`.
pub(crate) trait Push<T> {
    /// Appends `v`.
    fn push_or(&mut self, v: T, what: &'static str) -> Result<()>;
}

#[cfg(feature = "alloc")]
impl<T> Push<T> for alloc::vec::Vec<T> {
    fn push_or(&mut self, v: T, _what: &'static str) -> Result<()> {
        crate::error::try_reserve(self, 1)?;
        self.push(v);
        Ok(())
    }
}

#[cfg(not(feature = "alloc"))]
impl<T, const N: usize> Push<T> for heapless::Vec<T, N> {
    fn push_or(&mut self, v: T, what: &'static str) -> Result<()> {
        self.push(v)
            .map_err(|_| Error::Capacity { what, capacity: N })
    }
}

/// `len` copies of `v`, or fails as [`Push::push_or`] does.
pub(crate) fn filled<T: Clone, L: Default + Push<T>>(
    len: usize,
    v: T,
    what: &'static str,
) -> Result<L> {
    collect(core::iter::repeat_n(v, len), what)
}

/// Collects `it` into a list, or fails as [`Push::push_or`] does.
pub(crate) fn collect<T, L: Default + Push<T>>(
    it: impl IntoIterator<Item = T>,
    what: &'static str,
) -> Result<L> {
    let mut out = L::default();
    for v in it {
        out.push_or(v, what)?;
    }
    Ok(out)
}
