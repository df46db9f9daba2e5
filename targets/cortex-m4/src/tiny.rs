//! The configuration the firmware and the desktop share: the CNN of `examples/tiny_finetune`
//! and the fine-tuning recipe. (Included by the build script too, which pre-trains it.)

use dropit::{Model, ModelBuilder, Shape};

/// Fashion-MNIST normalization (the README's reference workloads).
pub const MEAN: f32 = 0.2860;
/// See [`MEAN`].
pub const STD: f32 = 0.3530;
/// Pixels per image.
pub const PIXELS: usize = 28 * 28;
/// Fine-tuning batch.
pub const BATCH: usize = 8;
/// Images fine-tuned on (bundled training images 6 000.., after the pre-training ones).
pub const TUNE: usize = 3072;
/// Held-out images (the first of the bundled test set).
pub const TEST: usize = 1024;
/// Fine-tuning learning rate (SGD recipe otherwise, cosine over one pass).
pub const LR: f32 = 0.02;
/// DropIT γ of the fine-tuned conv (lean: bf16 values, 8-bit batch norm x̂).
pub const GAMMA: f32 = 0.9;
/// Pre-training on the desktop: images, batch.
pub const PRETRAIN: (usize, usize) = (6000, 32);
/// The first fine-tuned layer: everything before it is frozen.
pub const FIRST_TUNED: &str = "block2.conv";

/// stem 3×3/2 → 8, block 3×3/2 → 16, block 3×3 → 24 (fine-tuned), global pool, Linear(24, 10).
pub fn tiny() -> dropit::Result<Model> {
    let mut b = ModelBuilder::new(Shape::new(28, 28, 1));
    let x = b.conv2d("stem", b.input(), 8, 3, 2, 1)?;
    let x = b.batchnorm2d("stem.bn", x)?;
    let x = b.relu("stem.relu", x)?;
    let x = b.conv2d("block1.conv", x, 16, 3, 2, 1)?;
    let x = b.batchnorm2d("block1.bn", x)?;
    let x = b.relu("block1.relu", x)?;
    let x = b.conv2d("block2.conv", x, 24, 3, 1, 1)?;
    let x = b.batchnorm2d("block2.bn", x)?;
    let x = b.relu("block2.relu", x)?;
    let x = b.global_avgpool("pool", x)?;
    let x = b.linear("head", x, 10)?;
    b.build(x)
}
