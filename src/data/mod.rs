//! Datasets: readers for IDX (raw or gzip) and CIFAR-10 binary files, and a seeded shuffling
//! batcher. A truncated or corrupt file is an [`Error::Data`] naming the
//! file and what was wrong — never a panic and never a silent short read.

mod batcher;
mod cifar;
mod idx;

pub use batcher::Batcher;
pub use cifar::read_cifar10;
pub use idx::{Idx, read_idx, read_idx_from};

use std::path::Path;
use std::string::ToString;
use std::vec::Vec;

use crate::error::{Error, Result, try_reserve};
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

    /// Checks that the fields agree: a non-empty image shape, `len() × shape.numel()` image
    /// bytes, every label below `classes`. (The readers' datasets always pass; the batcher
    /// checks a dataset built by hand before reading it.)
    pub fn check(&self) -> Result<()> {
        let per = self.shape.checked_numel().filter(|&p| p > 0);
        let Some(bytes) = per.and_then(|p| p.checked_mul(self.len())) else {
            return data_err(
                "dataset",
                std::format!("image shape {} is empty or too large", self.shape),
            );
        };
        if self.images.len() != bytes {
            return data_err(
                "dataset",
                std::format!(
                    "{} labels of {} images need {bytes} image bytes, found {}",
                    self.len(),
                    self.shape,
                    self.images.len()
                ),
            );
        }
        if let Some((i, &l)) = self
            .labels
            .iter()
            .enumerate()
            .find(|(_, l)| **l as usize >= self.classes)
        {
            return data_err(
                "dataset",
                std::format!("label {l} of sample {i} is not below {}", self.classes),
            );
        }
        Ok(())
    }

    /// The first `n` samples (all if fewer).
    pub fn take(mut self, n: usize) -> Self {
        let n = n.min(self.len());
        self.images
            .truncate(n.saturating_mul(self.shape.checked_numel().unwrap_or(usize::MAX)));
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
    let name = path.display().to_string();
    let mut f = std::fs::File::open(path).or_else(|e| data_err(&name, e))?;
    let mut bytes = Vec::new();
    // The file's own length, reserved fallibly: a file larger than memory is an error.
    let len = f.metadata().map_or(0, |m| m.len());
    try_reserve(&mut bytes, usize::try_from(len).unwrap_or(usize::MAX))?;
    std::io::Read::read_to_end(&mut f, &mut bytes).or_else(|e| data_err(&name, e))?;
    Ok(bytes)
}

fn read_idx_file(path: &Path) -> Result<Idx> {
    let name = path.display().to_string();
    let f = std::fs::File::open(path).or_else(|e| data_err(&name, e))?;
    read_idx_from(f, &name)
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
    let im = read_idx_file(images)?;
    let lb = read_idx_file(labels)?;
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
    let mut labels = Vec::new();
    try_reserve(&mut labels, lb.data.len())?;
    labels.extend(lb.data.iter().map(|&l| l as u32));
    Ok(Dataset {
        images: im.data,
        labels,
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
        let d = read_cifar10(&read_file(f)?).map_err(|e| match e {
            Error::Data { detail, .. } => Error::Data {
                file: f.display().to_string(),
                detail,
            },
            e => e,
        })?;
        try_reserve(&mut all.images, d.images.len())?;
        try_reserve(&mut all.labels, d.labels.len())?;
        all.images.extend_from_slice(&d.images);
        all.labels.extend_from_slice(&d.labels);
    }
    Ok(all)
}
