//! Fine-tuning on a microcontroller with no allocator: the part of the firmware that does not
//! touch the hardware, so that the desktop runs exactly the same code (`tests/host.rs`).
#![no_std]
// dropit's errors carry their text inline without a heap (larger than clippy's default).
#![allow(clippy::result_large_err)]

pub mod tiny;

use dropit::{DropIt, Model, Trainer, TrainerConfig};
use tiny::{BATCH, FIRST_TUNED, GAMMA, LR, MEAN, PIXELS, STD, TUNE};

/// Images (u8, 28×28) and their labels.
#[derive(Clone, Copy)]
pub struct Samples<'a> {
    /// `len × 784` pixels.
    pub images: &'a [u8],
    /// One label per image.
    pub labels: &'a [u8],
}

impl Samples<'_> {
    /// Images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Batch `b` (of [`BATCH`], the last one shorter) normalized into `x`; its labels into `y`.
    /// Returns the number of samples.
    fn batch(&self, b: usize, x: &mut [f32], y: &mut [u32; BATCH]) -> usize {
        let (from, to) = (b * BATCH, ((b + 1) * BATCH).min(self.len()));
        let (scale, shift) = (1.0 / (255.0 * STD), MEAN / STD);
        for (i, s) in (from..to).enumerate() {
            let img = &self.images[s * PIXELS..][..PIXELS];
            for (o, &p) in x[i * PIXELS..][..PIXELS].iter_mut().zip(img) {
                *o = p as f32 * scale - shift;
            }
            y[i] = self.labels[s] as u32;
        }
        to - from
    }

    fn batches(&self) -> usize {
        self.len().div_ceil(BATCH)
    }
}

/// Accuracy and mean loss.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eval {
    /// Correct predictions.
    pub correct: usize,
    /// Samples.
    pub samples: usize,
    /// Mean loss.
    pub loss: f32,
}

impl Eval {
    /// Accuracy in percent.
    pub fn percent(&self) -> f32 {
        100.0 * self.correct as f32 / self.samples.max(1) as f32
    }
}

/// The fine-tuning model: [`tiny::tiny`], frozen up to [`FIRST_TUNED`], DropIT γ on the tuned
/// conv, lean. Never inlined: building a model moves its fixed-capacity lists several times,
/// and inlined into [`trainer`] those copies' stack would add to the planner's (together more
/// than the Cortex-M4's 64 KB of stack).
#[inline(never)]
pub fn model() -> dropit::Result<Model> {
    let m = tiny::tiny()?;
    let frozen = m.find(FIRST_TUNED).unwrap_or(0);
    m.freeze(frozen)?
        .with_dropit(&DropIt::new(GAMMA).lean(true))
}

/// The recipe: SGD with momentum, cosine over one pass of [`TUNE`] images.
pub fn config() -> TrainerConfig {
    let mut cfg = TrainerConfig::sgd_recipe(BATCH, TUNE.div_ceil(BATCH) as u64);
    cfg.schedule.base_lr = LR;
    cfg
}

/// A trainer in `arena`, with the pre-trained parameters and running statistics of the
/// safetensors checkpoint `weights` (read in place: no heap).
pub fn trainer<'a>(arena: &'a mut [u8], weights: &[u8]) -> dropit::Result<Trainer<'a>> {
    let mut t = Trainer::with_arena(model()?, config(), arena)?;
    t.load_weights(weights)?;
    Ok(t)
}

/// Evaluates every sample; `x` holds one normalized batch.
pub fn evaluate(t: &mut Trainer<'_>, data: Samples<'_>, x: &mut [f32]) -> dropit::Result<Eval> {
    let (mut correct, mut loss) = (0, 0.0f64);
    let mut y = [0u32; BATCH];
    for b in 0..data.batches() {
        let n = data.batch(b, x, &mut y);
        let e = t.evaluate(&x[..n * PIXELS], &y[..n])?;
        correct += e.correct;
        loss += e.loss as f64 * n as f64;
    }
    Ok(Eval {
        correct,
        samples: data.len(),
        loss: (loss / data.len().max(1) as f64) as f32,
    })
}

/// One pass over `data` in order; `step(i, loss)` after each step (the firmware counts
/// instructions there). Returns the last loss.
pub fn fine_tune(
    t: &mut Trainer<'_>,
    data: Samples<'_>,
    x: &mut [f32],
    mut step: impl FnMut(usize, f32),
) -> dropit::Result<f32> {
    let mut y = [0u32; BATCH];
    let mut last = f32::NAN;
    for b in 0..data.batches() {
        let n = data.batch(b, x, &mut y);
        last = t.step(&x[..n * PIXELS], &y[..n])?.loss;
        step(b, last);
    }
    Ok(last)
}
