//! Datasets: readers for IDX (raw or gzip) and CIFAR-10 binary files, and a seeded shuffling
//! batcher. A truncated or corrupt file is an [`Error::Data`] naming the
//! file and what was wrong — never a panic and never a silent short read.

mod batcher;
mod cifar;
mod idx;

pub use batcher::Batcher;
pub use cifar::read_cifar10;
pub use idx::{Idx, read_idx};

use std::path::Path;
use std::string::{String, ToString};
use std::vec::Vec;

use crate::error::{Error, Result};
use crate::shape::Shape;

/// Images (u8, NHWC) with their labels.
#[derive(Debug, Clone, PartialEq)]
pub struct Dataset {
    /// `len() × shape.numel()` bytes, sample after sample, channels last.
    pub images: Vec<u8>,
    /// One class index per image.
    pub labels: Vec<u32>,
    /// Shape of one image.
    pub shape: Shape,
    /// Classes (labels are below this).
    pub classes: usize,
}

impl Dataset {
    /// Number of samples.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are no samples.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// The first `n` samples (all if fewer).
    pub fn take(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.images.truncate(n * self.shape.numel());
        self.labels.truncate(n);
        self
    }
}

pub(crate) fn data_err<T>(file: &str, detail: impl core::fmt::Display) -> Result<T> {
    Err(Error::Data {
        file: file.to_string(),
        detail: std::format!("{detail}"),
    })
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).or_else(|e| data_err(&path.display().to_string(), e))
}

/// Fashion-MNIST from `dir` (the four standard files, gzip or raw, as Zalando and the Debian
/// package `dataset-fashion-mnist` name them): `(train, test)`.
pub fn fashion_mnist(dir: &Path) -> Result<(Dataset, Dataset)> {
    let split = |prefix: &str| -> Result<Dataset> {
        let find = |stem: &str| {
            let gz = dir.join(std::format!("{prefix}-{stem}.gz"));
            if gz.exists() {
                gz
            } else {
                dir.join(std::format!("{prefix}-{stem}"))
            }
        };
        idx_pair(&find("images-idx3-ubyte"), &find("labels-idx1-ubyte"), 10)
    };
    Ok((split("train")?, split("t10k")?))
}

/// An IDX image file (`[n, h, w]` or `[n, h, w, c]`) and its IDX label file (`[n]`).
pub fn idx_pair(images: &Path, labels: &Path, classes: usize) -> Result<Dataset> {
    let (iname, lname) = (images.display().to_string(), labels.display().to_string());
    let im = read_idx(&read_file(images)?).or_else(|e| data_err(&iname, e))?;
    let lb = read_idx(&read_file(labels)?).or_else(|e| data_err(&lname, e))?;
    let shape = match im.dims[..] {
        [_, h, w] => Shape::new(h, w, 1),
        [_, h, w, c] => Shape::new(h, w, c),
        _ => {
            return data_err(
                &iname,
                std::format!("images need 3 or 4 dimensions, found {:?}", im.dims),
            );
        }
    };
    if lb.dims.len() != 1 {
        return data_err(
            &lname,
            std::format!("labels need 1 dimension, found {:?}", lb.dims),
        );
    }
    if lb.dims[0] != im.dims[0] {
        return data_err(
            &lname,
            std::format!("{} labels for {} images in {iname}", lb.dims[0], im.dims[0]),
        );
    }
    if let Some((i, &l)) = lb
        .data
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= classes)
    {
        return data_err(
            &lname,
            std::format!("label {l} of sample {i} is not below {classes}"),
        );
    }
    Ok(Dataset {
        images: im.data,
        labels: lb.data.iter().map(|&l| l as u32).collect(),
        shape,
        classes,
    })
}

/// Reads every CIFAR-10 binary batch file given, in order.
pub fn cifar10(files: &[&Path]) -> Result<Dataset> {
    let mut all = Dataset {
        images: Vec::new(),
        labels: Vec::new(),
        shape: Shape::new(32, 32, 3),
        classes: 10,
    };
    for f in files {
        let d = read_cifar10(&read_file(f)?)
            .or_else(|e: String| data_err(&f.display().to_string(), e))?;
        all.images.extend_from_slice(&d.images);
        all.labels.extend_from_slice(&d.labels);
    }
    Ok(all)
}
