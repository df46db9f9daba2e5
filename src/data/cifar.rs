//! CIFAR-10 binary batches: records of one label byte and a 32×32×3 image stored plane by plane
//! (all red, all green, all blue), converted here to channels-last.

use std::vec::Vec;

use super::{Dataset, data_err};
use crate::error::{Result, try_reserve};
use crate::shape::Shape;

const PIXELS: usize = 32 * 32;
const RECORD: usize = 1 + 3 * PIXELS;

/// Parses one CIFAR-10 binary batch file. A format error is [`crate::Error::Data`] (file
/// `"CIFAR-10"`); memory the system refuses is [`crate::Error::OutOfMemory`].
pub fn read_cifar10(bytes: &[u8]) -> Result<Dataset> {
    const NAME: &str = "CIFAR-10";
    if bytes.is_empty() || !bytes.len().is_multiple_of(RECORD) {
        return data_err(
            NAME,
            std::format!(
                "{} bytes is not a whole number of {RECORD}-byte CIFAR-10 records (truncated or not CIFAR-10 binary)",
                bytes.len()
            ),
        );
    }
    let n = bytes.len() / RECORD;
    let (mut images, mut labels) = (Vec::new(), Vec::new());
    try_reserve(&mut images, n * 3 * PIXELS)?;
    try_reserve(&mut labels, n)?;
    for (i, rec) in bytes.chunks_exact(RECORD).enumerate() {
        if rec[0] >= 10 {
            return data_err(
                NAME,
                std::format!("record {i}: label {} is not below 10", rec[0]),
            );
        }
        labels.push(rec[0] as u32);
        let planes = &rec[1..];
        for p in 0..PIXELS {
            images.extend_from_slice(&[planes[p], planes[PIXELS + p], planes[2 * PIXELS + p]]);
        }
    }
    Ok(Dataset {
        images,
        labels,
        shape: Shape::new(32, 32, 3),
        classes: 10,
    })
}
