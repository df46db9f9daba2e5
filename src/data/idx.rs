//! IDX files (the MNIST format), raw or gzip-compressed.

use std::io::Read;
use std::string::String;
use std::vec::Vec;

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

/// Parses an IDX file of unsigned bytes (type 0x08); gzip input (magic 1f 8b) is inflated
/// first. The payload must be exactly as long as the header says.
pub fn read_idx(bytes: &[u8]) -> Result<Idx, String> {
    let inflated;
    let raw = if bytes.starts_with(&[0x1f, 0x8b]) {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(bytes)
            .read_to_end(&mut out)
            .map_err(|e| std::format!("corrupt gzip stream: {e}"))?;
        inflated = out;
        &inflated[..]
    } else {
        bytes
    };
    if raw.len() < 4 {
        return Err(std::format!(
            "{} bytes: too short for an IDX header",
            raw.len()
        ));
    }
    if raw[0] != 0 || raw[1] != 0 {
        return Err(std::format!(
            "bad magic {:02x} {:02x}: not an IDX file",
            raw[0],
            raw[1]
        ));
    }
    if raw[2] != 0x08 {
        return Err(std::format!(
            "element type 0x{:02x}: only unsigned bytes (0x08) are read",
            raw[2]
        ));
    }
    let nd = raw[3] as usize;
    if nd == 0 {
        return Err("zero dimensions".into());
    }
    let head = 4 + 4 * nd;
    if raw.len() < head {
        return Err(std::format!(
            "header of {nd} dimensions truncated at {} bytes",
            raw.len()
        ));
    }
    let dims: Vec<usize> = raw[4..head]
        .chunks_exact(4)
        .map(|d| u32::from_be_bytes([d[0], d[1], d[2], d[3]]) as usize)
        .collect();
    let len = dims
        .iter()
        .try_fold(1usize, |a, &d| a.checked_mul(d))
        .filter(|&l| l as u64 <= MAX_ELEMENTS)
        .ok_or_else(|| std::format!("dimensions {dims:?} are too large"))?;
    let body = &raw[head..];
    if body.len() != len {
        return Err(std::format!(
            "dimensions {dims:?} need {len} bytes of data, found {} ({})",
            body.len(),
            if body.len() < len {
                "truncated"
            } else {
                "trailing bytes"
            }
        ));
    }
    Ok(Idx {
        dims,
        data: body.to_vec(),
    })
}
