//! IDX files (the MNIST format), raw or gzip-compressed, read as a stream: the header is checked
//! before any of the body is inflated or stored, and the body grows only as bytes arrive.

use std::io::{self, BufRead, BufReader, Read};
use std::string::String;
use std::vec::Vec;

use crate::error::{Error, Result};

/// An IDX array of unsigned bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idx {
    /// Dimensions, outermost first.
    pub dims: Vec<usize>,
    /// The elements, row-major.
    pub data: Vec<u8>,
}

/// Largest IDX payload accepted (guards against a corrupt header asking for terabytes).
const MAX_ELEMENTS: u64 = 1 << 34;

/// The body grows by at most this much ahead of the bytes actually read, so a small (or
/// compressed) file that declares gigabytes costs no more memory than it holds.
const GROW: usize = 1 << 20;

/// Parses an IDX file of unsigned bytes (type 0x08); gzip input (magic 1f 8b) is inflated as it
/// is read. The payload must be exactly as long as the header says. A format error is
/// [`Error::Data`] (file `"IDX"`); memory the system refuses is [`Error::OutOfMemory`].
pub fn read_idx(bytes: &[u8]) -> Result<Idx> {
    read_idx_from(bytes, "IDX")
}

/// [`read_idx`] from a reader (a file, say): only the body is stored, once. `name` is the file
/// named in errors.
pub fn read_idx_from(r: impl Read, name: &str) -> Result<Idx> {
    let mut r = BufReader::new(r);
    let gzip = r
        .fill_buf()
        .map_err(|e| bad(name, e))?
        .starts_with(&[0x1f, 0x8b]);
    let parsed = if gzip {
        parse(flate2::bufread::MultiGzDecoder::new(r))
    } else {
        parse(r)
    };
    parsed.map_err(|e| match e {
        Fault::Format(detail) => bad(name, detail),
        Fault::Memory(bytes) => Error::OutOfMemory { bytes },
    })
}

fn bad(name: &str, detail: impl core::fmt::Display) -> Error {
    Error::Data {
        file: name.into(),
        detail: std::format!("{detail}"),
    }
}

/// Why a stream is refused.
enum Fault {
    Format(String),
    Memory(usize),
}

impl From<String> for Fault {
    fn from(s: String) -> Self {
        Fault::Format(s)
    }
}

fn io_fault(e: io::Error, at: &str) -> Fault {
    match e.kind() {
        io::ErrorKind::UnexpectedEof => Fault::Format(std::format!("{at}: truncated")),
        _ => Fault::Format(std::format!("{at}: {e}")),
    }
}

fn parse(mut r: impl Read) -> core::result::Result<Idx, Fault> {
    let mut head = [0u8; 4];
    r.read_exact(&mut head)
        .map_err(|e| io_fault(e, "IDX header (4 bytes)"))?;
    if head[0] != 0 || head[1] != 0 {
        return Err(
            std::format!("bad magic {:02x} {:02x}: not an IDX file", head[0], head[1]).into(),
        );
    }
    if head[2] != 0x08 {
        return Err(std::format!(
            "element type 0x{:02x}: only unsigned bytes (0x08) are read",
            head[2]
        )
        .into());
    }
    let nd = head[3] as usize;
    if nd == 0 {
        return Err(String::from("zero dimensions").into());
    }
    let mut raw = [0u8; 4 * 255];
    r.read_exact(&mut raw[..4 * nd])
        .map_err(|e| io_fault(e, &std::format!("header of {nd} dimensions")))?;
    let dims: Vec<usize> = raw[..4 * nd]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let len = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&l| l as u64 <= MAX_ELEMENTS)
        .ok_or_else(|| std::format!("dimensions {dims:?} are too large"))?;
    let data = read_body(&mut r, len).map_err(|f| match f {
        Fault::Format(_) => Fault::Format(std::format!(
            "dimensions {dims:?} need {len} bytes of data: truncated"
        )),
        m => m,
    })?;
    let mut extra = [0u8; 1];
    match r.read(&mut extra) {
        Ok(0) => Ok(Idx { dims, data }),
        Ok(_) => {
            Err(std::format!("dimensions {dims:?} need {len} bytes of data: trailing bytes").into())
        }
        Err(e) => Err(io_fault(e, "after the data")),
    }
}

/// Exactly `len` bytes of `r`, stored as they arrive: the buffer never runs more than [`GROW`]
/// ahead of the data.
fn read_body(r: &mut impl Read, len: usize) -> core::result::Result<Vec<u8>, Fault> {
    let mut data = Vec::new();
    while data.len() < len {
        let want = (len - data.len()).min(data.len().max(GROW));
        data.try_reserve_exact(want)
            .map_err(|_| Fault::Memory(data.len() + want))?;
        let got = r
            .by_ref()
            .take(want as u64)
            .read_to_end(&mut data)
            .map_err(|e| io_fault(e, "data"))?;
        if got < want {
            return Err(Fault::Format(String::new()));
        }
    }
    Ok(data)
}
