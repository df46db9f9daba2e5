//! A seeded shuffling batcher: turns u8 images into normalized f32 batches in buffers it
//! reuses, so that after the first batch it allocates nothing.

use std::vec::Vec;

use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{Rng, SeedableRng};

use super::Dataset;
use crate::error::{Result, config_err};

/// Yields `(images, labels)` batches of a dataset in a seeded random order, epoch after epoch.
#[derive(Debug)]
pub struct Batcher {
    order: Vec<u32>,
    pos: usize,
    batch: usize,
    rng: Xoshiro256PlusPlus,
    scale: Vec<f32>,
    shift: Vec<f32>,
    x: Vec<f32>,
    y: Vec<u32>,
    epoch: usize,
}

impl Batcher {
    /// Batches of up to `batch` samples; pixel `p` (0..=255) of channel `c` becomes
    /// `(p / 255 − mean[c]) / std[c]`. `mean` and `std` have one entry per channel (or one for all).
    pub fn new(data: &Dataset, batch: usize, mean: &[f32], std: &[f32], seed: u64) -> Result<Self> {
        let c = data.shape.c;
        if batch == 0 {
            return config_err("batch size", "must be at least 1");
        }
        let per_channel = |v: &[f32], what: &str| -> Result<Vec<f32>> {
            match v.len() {
                1 => Ok(std::vec![v[0]; c]),
                l if l == c => Ok(v.to_vec()),
                l => config_err(what, std::format!("{l} values for {c} channels")),
            }
        };
        let (mean, std) = (
            per_channel(mean, "normalization mean")?,
            per_channel(std, "normalization std")?,
        );
        if std.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return config_err("normalization std", "must be positive and finite");
        }
        if mean.iter().any(|m| !m.is_finite()) {
            return config_err("normalization mean", "must be finite");
        }
        let mut b = Batcher {
            order: (0..data.len() as u32).collect(),
            pos: 0,
            batch,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            scale: std.iter().map(|s| 1.0 / (255.0 * s)).collect(),
            shift: mean.iter().zip(&std).map(|(m, s)| m / s).collect(),
            x: Vec::with_capacity(batch * data.shape.numel()),
            y: Vec::with_capacity(batch),
            epoch: 0,
        };
        b.shuffle();
        Ok(b)
    }

    fn shuffle(&mut self) {
        // Fisher–Yates with the batcher's own generator: the same seed, the same order.
        for i in (1..self.order.len()).rev() {
            let j = (self.rng.next_u64() % (i as u64 + 1)) as usize;
            self.order.swap(i, j);
        }
    }

    /// Completed passes over the data.
    pub fn epoch(&self) -> usize {
        self.epoch
    }

    /// Batches per epoch (the last one may be smaller).
    pub fn batches_per_epoch(&self) -> usize {
        self.order.len().div_ceil(self.batch)
    }

    /// The next batch; at the end of an epoch the order is reshuffled.
    pub fn next_batch(&mut self, data: &Dataset) -> (&[f32], &[u32]) {
        if self.pos >= self.order.len() {
            self.pos = 0;
            self.epoch += 1;
            self.shuffle();
        }
        let end = (self.pos + self.batch).min(self.order.len());
        let (per, c) = (data.shape.numel(), data.shape.c);
        self.x.clear();
        self.y.clear();
        for &i in &self.order[self.pos..end] {
            let img = &data.images[i as usize * per..][..per];
            self.x.extend(
                img.iter()
                    .enumerate()
                    .map(|(j, &p)| p as f32 * self.scale[j % c] - self.shift[j % c]),
            );
            self.y.push(data.labels[i as usize]);
        }
        self.pos = end;
        (&self.x, &self.y)
    }

    /// Every sample once, in order, in batches (for evaluation): calls `f(images, labels)`.
    pub fn in_order(
        data: &Dataset,
        batch: usize,
        mean: &[f32],
        std: &[f32],
        mut f: impl FnMut(&[f32], &[u32]) -> Result<()>,
    ) -> Result<()> {
        let mut b = Batcher::new(data, batch, mean, std, 0)?;
        b.order = (0..data.len() as u32).collect();
        for _ in 0..b.batches_per_epoch() {
            let (x, y) = b.next_batch(data);
            f(x, y)?;
        }
        Ok(())
    }
}
