//! A seeded shuffling batcher: turns u8 images into normalized f32 batches in buffers it
//! reuses, so that after it is made it allocates nothing. It borrows its dataset, checked once,
//! so it cannot be handed another one halfway.

use std::vec::Vec;

use rand_xoshiro::Xoshiro256PlusPlus;
use rand_xoshiro::rand_core::{Rng, SeedableRng};

use super::Dataset;
use crate::error::{Result, config_err, try_reserve, try_vec};

/// Yields `(images, labels)` batches of a dataset in a seeded random order, epoch after epoch.
#[derive(Debug)]
pub struct Batcher<'d> {
    data: &'d Dataset,
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

impl<'d> Batcher<'d> {
    /// Batches of up to `batch` samples; pixel `p` (0..=255) of channel `c` becomes
    /// `(p / 255 − mean[c]) / std[c]`. `mean` and `std` have one entry per channel (or one for all).
    /// An empty or inconsistent dataset ([`Dataset::check`]) is an error; the buffers hold at
    /// most the whole dataset, whatever `batch` says, and are allocated here, fallibly.
    pub fn new(
        data: &'d Dataset,
        batch: usize,
        mean: &[f32],
        std: &[f32],
        seed: u64,
    ) -> Result<Self> {
        data.check()?;
        if data.is_empty() {
            return config_err("dataset", "has no samples");
        }
        if u32::try_from(data.len()).is_err() {
            return config_err("dataset", "more than 2³² samples");
        }
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
        // Capped at the dataset: the images of one batch are never more than all of them.
        let batch = batch.min(data.len());
        let mut order = try_vec(data.len(), 0u32)?;
        order.iter_mut().zip(0u32..).for_each(|(o, i)| *o = i);
        let (mut x, mut y) = (Vec::new(), Vec::new());
        // `check` made sure len × numel fits.
        try_reserve(&mut x, batch * data.shape.numel())?;
        try_reserve(&mut y, batch)?;
        let mut b = Batcher {
            data,
            order,
            pos: 0,
            batch,
            rng: Xoshiro256PlusPlus::seed_from_u64(seed),
            scale: std.iter().map(|s| 1.0 / (255.0 * s)).collect(),
            shift: mean.iter().zip(&std).map(|(m, s)| m / s).collect(),
            x,
            y,
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
    pub fn next_batch(&mut self) -> (&[f32], &[u32]) {
        let data = self.data;
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
        b.order.iter_mut().zip(0u32..).for_each(|(o, i)| *o = i);
        for _ in 0..b.batches_per_epoch() {
            let (x, y) = b.next_batch();
            f(x, y)?;
        }
        Ok(())
    }
}
