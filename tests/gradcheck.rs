//! Every layer's backward against finite differences of the loss.
mod common;

use common::gradcheck;
use dropit::layers::{Conv2d, Layer, Linear};
use dropit::{Model, ModelBuilder, Shape};
use proptest::prelude::*;

/// `input → [conv] → layer under test → flatten → Linear(classes)`: the conv in front makes
/// the tested layer's input gradient matter.
fn around(
    input: Shape,
    f: impl FnOnce(&mut ModelBuilder, dropit::TensorId) -> dropit::TensorId,
) -> Model {
    let mut b = ModelBuilder::new(input);
    let x = b.conv2d("pre", b.input(), 3, 3, 1, 1).unwrap();
    let x = f(&mut b, x);
    let x = b.flatten("flat", x).unwrap();
    let x = b.linear("head", x, 4).unwrap();
    b.build(x).unwrap()
}

#[test]
fn linear_relu_flatten() {
    let mut b = ModelBuilder::new(Shape::new(2, 3, 2));
    let x = b.flatten("flat", b.input()).unwrap();
    let x = b.linear("fc1", x, 7).unwrap();
    let x = b.relu("relu", x).unwrap();
    let x = b
        .layer("fc2", Layer::Linear(Linear::new(7, 5).no_bias()), x)
        .unwrap();
    let x = b.linear("fc3", x, 3).unwrap();
    gradcheck(b.build(x).unwrap(), 4, 0.0, 20, 1);
}

#[test]
fn linear_over_tokens_with_label_smoothing() {
    // Linear applies to every position of [h, w, c].
    let mut b = ModelBuilder::new(Shape::new(1, 3, 4));
    let x = b.linear("tok", b.input(), 5).unwrap();
    let x = b.flatten("flat", x).unwrap();
    let x = b.linear("head", x, 3).unwrap();
    gradcheck(b.build(x).unwrap(), 3, 0.1, 20, 2);
}

#[test]
fn batchnorm() {
    let m = around(Shape::new(4, 4, 2), |b, x| b.batchnorm2d("bn", x).unwrap());
    gradcheck(m, 3, 0.0, 20, 3);
}

#[test]
fn pooling() {
    let m = around(Shape::new(5, 5, 2), |b, x| {
        b.maxpool2d("max", x, 3, 2, 1).unwrap()
    });
    gradcheck(m, 2, 0.0, 20, 4);
    let m = around(Shape::new(6, 6, 2), |b, x| {
        b.avgpool2d("avg", x, 2, 2).unwrap()
    });
    gradcheck(m, 2, 0.0, 20, 5);
    let mut b = ModelBuilder::new(Shape::new(4, 3, 2));
    let x = b.conv2d("pre", b.input(), 3, 3, 1, 1).unwrap();
    let x = b.global_avgpool("gap", x).unwrap();
    let x = b.linear("head", x, 3).unwrap();
    gradcheck(b.build(x).unwrap(), 2, 0.0, 20, 6);
}

#[test]
fn residual_blocks() {
    for (cout, stride) in [(3, 1), (5, 2), (5, 1)] {
        let m = around(Shape::new(6, 6, 1), |b, x| {
            b.basic_block("block", x, cout, stride).unwrap()
        });
        gradcheck(m, 3, 0.0, 12, 7 + cout as u64);
    }
}

/// Convolutions wide enough for the direct kernels on AVX2 / AVX-512 (32 channels in and out:
/// forward, weight gradient and input gradient all direct; the strided one direct forward and
/// weight gradient, im2col input gradient).
#[test]
fn direct_convolutions() {
    let mut b = ModelBuilder::new(Shape::new(5, 5, 2));
    let x = b.conv2d("pre", b.input(), 32, 3, 1, 1).unwrap();
    let x = b.conv2d("mid", x, 32, 3, 1, 1).unwrap();
    let x = b.relu("relu", x).unwrap();
    let x = b.conv2d("down", x, 32, 3, 2, 1).unwrap();
    let x = b.flatten("flat", x).unwrap();
    let x = b.linear("head", x, 3).unwrap();
    gradcheck(b.build(x).unwrap(), 2, 0.0, 24, 31);
}

#[test]
fn cnn_probe() {
    // The full ResNet-8 on a smaller image: a few parameters of every layer.
    gradcheck(
        Model::resnet8(Shape::new(12, 12, 1), 10).unwrap(),
        3,
        0.0,
        3,
        11,
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn conv_geometry(h in 1usize..7, w in 1usize..7, cin in 1usize..4, cout in 1usize..4,
                     kh in 1usize..4, kw in 1usize..4, sh in 1usize..4, sw in 1usize..4,
                     ph in 0usize..3, pw in 0usize..3, bias: bool, seed in 0u64..100) {
        let mut conv = Conv2d::new(cin, cout, 1, 1, 0);
        conv.k = (kh, kw);
        conv.stride = (sh, sw);
        conv.pad = (ph, pw);
        conv.bias = bias;
        let mut b = ModelBuilder::new(Shape::new(h, w, cin));
        let x = b.linear("pre", b.input(), cin).unwrap();
        let Ok(x) = b.layer("conv", Layer::Conv2d(conv), x) else { return Ok(()) };
        let x = b.flatten("flat", x).unwrap();
        let x = b.linear("head", x, 3).unwrap();
        gradcheck(b.build(x).unwrap(), 2, 0.0, 15, seed);
    }
}

/// Tokens `[1, 5, 6]` → Linear → (layer under test) → Linear → flatten → head.
fn tokens(f: impl FnOnce(&mut ModelBuilder, dropit::TensorId) -> dropit::TensorId) -> Model {
    let mut b = ModelBuilder::new(Shape::new(1, 5, 6));
    let x = b.linear("in", b.input(), 8).unwrap();
    let x = f(&mut b, x);
    let x = b.linear("out", x, 3).unwrap();
    let x = b.flatten("flat", x).unwrap();
    let x = b.linear("head", x, 4).unwrap();
    b.build(x).unwrap()
}

#[test]
fn layernorm_and_gelu() {
    gradcheck(tokens(|b, x| b.layernorm("ln", x).unwrap()), 3, 0.0, 20, 31);
    gradcheck(tokens(|b, x| b.gelu("gelu", x).unwrap()), 3, 0.0, 20, 32);
    let tanh = tokens(|b, x| {
        b.layer(
            "gelu",
            Layer::Gelu(dropit::layers::Gelu {
                tanh: true,
                lean: false,
            }),
            x,
        )
        .unwrap()
    });
    gradcheck(tanh, 3, 0.0, 20, 33);
    // Pre-norm block shape: LN → Linear → GELU → Linear, plus the residual.
    let block = tokens(|b, x| {
        let h = b.layernorm("ln", x).unwrap();
        let h = b.linear("fc1", h, 16).unwrap();
        let h = b.gelu("gelu", h).unwrap();
        let h = b.linear("fc2", h, 8).unwrap();
        b.add("res", x, h).unwrap()
    });
    gradcheck(block, 3, 0.0, 12, 34);
}

#[test]
fn attention() {
    // qkv Linear(8, 24) → 2-head attention → proj: the qkv weights see attention's dx.
    gradcheck(
        tokens(|b, x| b.attention("attn", x, 2).unwrap()),
        3,
        0.0,
        24,
        35,
    );
    // Four heads of two channels.
    let four = tokens(|b, x| {
        let qkv = b.linear("qkv", x, 24).unwrap();
        let a = dropit::layers::Attention::new(8, 4);
        b.layer("sdpa", Layer::Attention(a), qkv).unwrap()
    });
    gradcheck(four, 2, 0.0, 24, 36);
}

#[test]
fn tokens_dropout_and_select() {
    // Patches → cls + positions → select a token: the cls and position parameters get
    // gradients only through the selected tokens, via the Linear in between.
    for index in [0, 3] {
        let mut b = ModelBuilder::new(Shape::new(2, 2, 3));
        let x = b.patch_embed("patch", b.input(), 6, 1).unwrap();
        let x = b.pos_embed("pos", x).unwrap();
        let x = b.linear("mix", x, 6).unwrap();
        let x = b.select_token("sel", x, index).unwrap();
        let x = b.linear("head", x, 3).unwrap();
        gradcheck(b.build(x).unwrap(), 3, 0.0, 30, 37 + index as u64);
    }
    let drop = tokens(|b, x| {
        let x = b.gelu("gelu", x).unwrap();
        b.dropout("drop", x, 0.3).unwrap()
    });
    gradcheck(drop, 3, 0.0, 20, 40);
    // Followed by a layer that holds nothing, GELU and dropout run in place.
    let inplace = tokens(|b, x| {
        let x = b.gelu("gelu", x).unwrap();
        let x = b.dropout("drop", x, 0.5).unwrap();
        b.layernorm("ln", x).unwrap()
    });
    gradcheck(inplace, 3, 0.0, 20, 42);
}

#[test]
fn vit_probe() {
    // A small ViT (2 blocks, 2 heads, dropout on): a few parameters of every layer.
    let cfg = dropit::VitConfig {
        input: Shape::new(8, 8, 1),
        classes: 5,
        patch: 4,
        dim: 8,
        depth: 2,
        heads: 2,
        mlp: 16,
        dropout: 0.1,
    };
    gradcheck(Model::vision_transformer(&cfg).unwrap(), 3, 0.0, 4, 41);
}
