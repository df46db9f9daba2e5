//! The model: layers wired into a graph of tensors, in the order they run.
//!
//! A [`ModelBuilder`] adds layers one by one; each call returns the id of the tensor it produces,
//! so residual connections are written as they are drawn. Shapes are checked as layers are added.

use crate::collections::msg;
use crate::collections::{List, MAX_NODES, MAX_TENSORS, Name, Push, name as layer_name};

use crate::arena::MAX_TENSOR_ELEMS;
use crate::error::{Result, config_err, shape_err};
use crate::layers::{
    Add, Attention, AvgPool2d, BatchNorm2d, Conv2d, DepthwiseConv2d, Dropout, Flatten, Gelu,
    GlobalAvgPool, Layer, LayerNorm, Linear, MaxPool2d, PosEmbed, Relu, Relu6, TokenSelect,
};
use crate::shape::Shape;

/// `s` if it is non-empty and small enough to plan, else an error naming the layer and `what`.
fn checked_shape(name: &str, what: &str, s: Shape) -> Result<Shape> {
    match s.checked_numel() {
        Some(0) => shape_err(name, format_args!("a non-empty {what}"), s),
        Some(e) if e <= MAX_TENSOR_ELEMS => Ok(s),
        _ => shape_err(
            name,
            format_args!("an {what} of at most {MAX_TENSOR_ELEMS} elements"),
            s,
        ),
    }
}

/// Whether layer `name` is `prefix` or under it (`prefix.…`).
fn is_under(name: &str, prefix: &str) -> bool {
    name.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('.'))
}

/// A tensor of the model being built, by id: what each [`ModelBuilder`] call returns and takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TensorId(pub(crate) usize);

/// One layer applied to one or two tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Name, dotted like PyTorch's module paths (`layer2.0.conv1`).
    pub name: Name,
    /// The layer.
    pub layer: Layer,
    /// Input tensors (the second only for [`Add`]).
    pub inputs: [usize; 2],
    /// Output tensor.
    pub output: usize,
}

/// A model: nodes in execution order and the shape of every tensor (tensor 0 is the input).
#[derive(Debug, Clone, PartialEq)]
pub struct Model {
    pub(crate) nodes: List<Node, MAX_NODES>,
    pub(crate) shapes: List<Shape, MAX_TENSORS>,
    pub(crate) logits: usize,
    pub(crate) classes: usize,
    pub(crate) frozen: usize,
}

/// Builds a [`Model`] layer by layer.
#[derive(Debug, Clone)]
pub struct ModelBuilder {
    nodes: List<Node, MAX_NODES>,
    shapes: List<Shape, MAX_TENSORS>,
}

impl ModelBuilder {
    /// A model whose samples have shape `input`.
    pub fn new(input: Shape) -> Self {
        ModelBuilder {
            nodes: List::new(),
            shapes: core::iter::once(input).collect(),
        }
    }

    /// The input tensor.
    pub fn input(&self) -> TensorId {
        TensorId(0)
    }

    /// The shape of a tensor, or `None` for a tensor this builder did not make.
    pub fn shape(&self, t: TensorId) -> Option<Shape> {
        self.shapes.get(t.0).copied()
    }

    /// The shape of an existing, non-empty tensor.
    fn check(&self, name: &str, t: TensorId) -> Result<Shape> {
        match self.shapes.get(t.0) {
            Some(&s) => checked_shape(name, "input", s),
            None => config_err(name, msg!("tensor {} does not exist", t.0)),
        }
    }

    /// Applies `layer` to `x` (any layer type, or a [`Layer`]).
    pub fn layer(&mut self, name: &str, layer: impl Into<Layer>, x: TensorId) -> Result<TensorId> {
        let layer = layer.into();
        if layer.arity() != 1 {
            return config_err(name, "a two-input layer needs `add`");
        }
        let xs = self.check(name, x)?;
        if self.nodes.iter().any(|n| n.name == name) {
            return config_err(name, "a layer of that name already exists");
        }
        let ys = layer.out_shape(name, xs)?;
        self.push(name, layer, [x.0, usize::MAX], ys)
    }

    fn push(
        &mut self,
        name: &str,
        layer: Layer,
        inputs: [usize; 2],
        ys: Shape,
    ) -> Result<TensorId> {
        checked_shape(name, "output", ys)?;
        let counts = layer.params();
        if counts
            .iter()
            .try_fold(0usize, |a, p| {
                p.len_checked().and_then(|l| a.checked_add(l))
            })
            .is_none_or(|total| total > MAX_TENSOR_ELEMS)
        {
            return config_err(name, "parameters too many to address");
        }
        let out = self.shapes.len();
        let node = Node {
            name: layer_name(name)?,
            layer,
            inputs,
            output: out,
        };
        // Nodes first: both lists have room for one more, or neither changes.
        self.nodes.push_or(node, "layers")?;
        if let Err(e) = self.shapes.push_or(ys, "tensors") {
            self.nodes.pop();
            return Err(e);
        }
        Ok(TensorId(out))
    }

    /// `a + b` (a residual join); the shapes must agree.
    pub fn add(&mut self, name: &str, a: TensorId, b: TensorId) -> Result<TensorId> {
        if a == b {
            return config_err(name, "adds a tensor to itself; scale it instead");
        }
        let (sa, sb) = (self.check(name, a)?, self.check(name, b)?);
        if sa != sb {
            return shape_err(name, format_args!("both inputs {sa}"), sb);
        }
        self.push(name, Layer::Add(Add), [a.0, b.0], sa)
    }

    /// `Linear(in, out)` on the channels of `x`.
    pub fn linear(&mut self, name: &str, x: TensorId, out: usize) -> Result<TensorId> {
        let inp = self.check(name, x)?.c;
        self.layer(name, Linear::new(inp, out), x)
    }

    /// A square convolution without bias.
    pub fn conv2d(
        &mut self,
        name: &str,
        x: TensorId,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<TensorId> {
        let cin = self.check(name, x)?.c;
        self.layer(name, Conv2d::new(cin, cout, k, stride, pad), x)
    }

    /// `BatchNorm2d` over the channels of `x`.
    pub fn batchnorm2d(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        let c = self.check(name, x)?.c;
        self.layer(name, BatchNorm2d::new(c), x)
    }

    /// `ReLU`.
    pub fn relu(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        self.layer(name, Relu, x)
    }

    /// `MaxPool2d(k, stride, pad)`.
    pub fn maxpool2d(
        &mut self,
        name: &str,
        x: TensorId,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<TensorId> {
        self.layer(name, MaxPool2d::new(k, stride, pad), x)
    }

    /// `AvgPool2d(k, stride)`.
    pub fn avgpool2d(
        &mut self,
        name: &str,
        x: TensorId,
        k: usize,
        stride: usize,
    ) -> Result<TensorId> {
        self.layer(name, AvgPool2d::new(k, stride), x)
    }

    /// Mean over H and W.
    pub fn global_avgpool(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        self.layer(name, GlobalAvgPool, x)
    }

    /// `LayerNorm` over the channels of `x`.
    pub fn layernorm(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        let c = self.check(name, x)?.c;
        self.layer(name, LayerNorm::new(c), x)
    }

    /// `GELU` (exact, erf form).
    pub fn gelu(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        self.layer(name, Gelu::default(), x)
    }

    /// `Dropout(p)` (the identity in evaluation).
    pub fn dropout(&mut self, name: &str, x: TensorId, p: f32) -> Result<TensorId> {
        self.layer(name, Dropout { p }, x)
    }

    /// Patch embedding: a `patch × patch` convolution with stride `patch` and a bias, to `dim`
    /// channels — one `dim`-wide embedding per patch.
    pub fn patch_embed(
        &mut self,
        name: &str,
        x: TensorId,
        dim: usize,
        patch: usize,
    ) -> Result<TensorId> {
        let cin = self.check(name, x)?.c;
        let conv = Conv2d::new(cin, dim, patch, patch, 0).with_bias();
        self.layer(name, conv, x)
    }

    /// Patches `[h, w, D]` → tokens `[1, h·w + 1, D]`: a learned cls token first, learned
    /// positions added.
    pub fn pos_embed(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        let s = self.check(name, x)?;
        self.layer(name, PosEmbed::new(s.c, s.rows()), x)
    }

    /// Token `index` of `x` as `[1, 1, D]` (0: the cls token).
    pub fn select_token(&mut self, name: &str, x: TensorId, index: usize) -> Result<TensorId> {
        self.layer(name, TokenSelect { index }, x)
    }

    /// Multi-head self-attention with `heads` heads on tokens `x` of width D, as timm writes
    /// it: `{name}.qkv` Linear(D, 3D) → `{name}.sdpa` (scaled dot-product attention) →
    /// `{name}.proj` Linear(D, D).
    pub fn attention(&mut self, name: &str, x: TensorId, heads: usize) -> Result<TensorId> {
        let d = self.check_heads(name, x, heads)?;
        let qkv = self.linear(&msg!("{name}.qkv"), x, 3 * d)?;
        let a = self.layer(&msg!("{name}.sdpa"), Attention::new(d, heads), qkv)?;
        self.linear(&msg!("{name}.proj"), a, d)
    }

    /// A pre-norm transformer block: `x + attn(norm1(x))`, then `x + mlp(norm2(x))` with
    /// mlp = Linear(D, `mlp`)–GELU–Linear(`mlp`, D); dropout `drop` after the attention's
    /// projection and after each Linear of the MLP (0: none).
    pub fn transformer_block(
        &mut self,
        name: &str,
        x: TensorId,
        heads: usize,
        mlp: usize,
        drop: f32,
    ) -> Result<TensorId> {
        let d = self.check_heads(name, x, heads)?;
        if mlp == 0 || !(0.0..1.0).contains(&drop) {
            return config_err(
                name,
                msg!("MLP width {mlp} must be ≥ 1 and dropout {drop} in [0, 1)"),
            );
        }
        let h = self.layernorm(&msg!("{name}.norm1"), x)?;
        let h = self.attention(&msg!("{name}.attn"), h, heads)?;
        let h = self.maybe_dropout(&msg!("{name}.attn.drop"), h, drop)?;
        let x = self.add(&msg!("{name}.add1"), x, h)?;
        let h = self.layernorm(&msg!("{name}.norm2"), x)?;
        let h = self.linear(&msg!("{name}.mlp.fc1"), h, mlp)?;
        let h = self.gelu(&msg!("{name}.mlp.act"), h)?;
        let h = self.maybe_dropout(&msg!("{name}.mlp.drop1"), h, drop)?;
        let h = self.linear(&msg!("{name}.mlp.fc2"), h, d)?;
        let h = self.maybe_dropout(&msg!("{name}.mlp.drop2"), h, drop)?;
        self.add(&msg!("{name}.add2"), x, h)
    }

    /// The width of `x`, once it is known to split into `heads` heads (checked before any layer
    /// is added, so a refused call leaves the builder as it was).
    fn check_heads(&self, name: &str, x: TensorId, heads: usize) -> Result<usize> {
        let s = self.check(name, x)?;
        Layer::from(Attention::new(s.c, heads)).out_shape(name, Shape::new(s.h, s.w, 3 * s.c))?;
        Ok(s.c)
    }

    fn maybe_dropout(&mut self, name: &str, x: TensorId, p: f32) -> Result<TensorId> {
        if p == 0.0 {
            Ok(x)
        } else {
            self.dropout(name, x, p)
        }
    }

    /// `[h, w, c]` → `[1, 1, h·w·c]`.
    pub fn flatten(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        self.layer(name, Flatten, x)
    }

    /// A ResNet BasicBlock: conv3×3–BN–ReLU–conv3×3–BN, plus the shortcut (identity, or
    /// conv1×1 with the block's stride + BN when the shape changes), add, ReLU.
    pub fn basic_block(
        &mut self,
        name: &str,
        x: TensorId,
        cout: usize,
        stride: usize,
    ) -> Result<TensorId> {
        let cin = self.check(name, x)?.c;
        let y = self.conv2d(&msg!("{name}.conv1"), x, cout, 3, stride, 1)?;
        let y = self.batchnorm2d(&msg!("{name}.bn1"), y)?;
        let y = self.relu(&msg!("{name}.relu1"), y)?;
        let y = self.conv2d(&msg!("{name}.conv2"), y, cout, 3, 1, 1)?;
        let y = self.batchnorm2d(&msg!("{name}.bn2"), y)?;
        let short = if stride != 1 || cin != cout {
            let s = self.conv2d(&msg!("{name}.downsample.0"), x, cout, 1, stride, 0)?;
            self.batchnorm2d(&msg!("{name}.downsample.1"), s)?
        } else {
            x
        };
        let y = self.add(&msg!("{name}.add"), y, short)?;
        self.relu(&msg!("{name}.relu2"), y)
    }

    /// `ReLU6`.
    pub fn relu6(&mut self, name: &str, x: TensorId) -> Result<TensorId> {
        self.layer(name, Relu6, x)
    }

    /// A depthwise `k×k` convolution (groups = channels) without bias.
    pub fn depthwise_conv2d(
        &mut self,
        name: &str,
        x: TensorId,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<TensorId> {
        let c = self.check(name, x)?.c;
        self.layer(name, DepthwiseConv2d::new(c, k, stride, pad), x)
    }

    /// A MobileNetV2 inverted-residual block, named as torchvision's: `{name}.conv.0`
    /// expand 1×1 (to `expand`× the input channels; left out when `expand` is 1)–BN–ReLU6,
    /// `{name}.conv.1` depthwise 3×3 with the block's stride–BN–ReLU6, `{name}.conv.2` project
    /// 1×1 to `cout`, `{name}.conv.3` BN; plus the input (`{name}.add`) when stride is 1 and
    /// the channels match.
    pub fn inverted_residual(
        &mut self,
        name: &str,
        x: TensorId,
        cout: usize,
        stride: usize,
        expand: usize,
    ) -> Result<TensorId> {
        let cin = self.check(name, x)?.c;
        if expand == 0 || stride == 0 || cout == 0 {
            return config_err(
                name,
                msg!("expansion {expand}, stride {stride} and width {cout} must be ≥ 1"),
            );
        }
        let mut h = x;
        let mut at = 0;
        if expand != 1 {
            h = self.conv2d(&msg!("{name}.conv.0.0"), h, cin * expand, 1, 1, 0)?;
            h = self.batchnorm2d(&msg!("{name}.conv.0.1"), h)?;
            h = self.relu6(&msg!("{name}.conv.0.2"), h)?;
            at = 1;
        }
        h = self.depthwise_conv2d(&msg!("{name}.conv.{at}.0"), h, 3, stride, 1)?;
        h = self.batchnorm2d(&msg!("{name}.conv.{at}.1"), h)?;
        h = self.relu6(&msg!("{name}.conv.{at}.2"), h)?;
        h = self.conv2d(&msg!("{name}.conv.{}", at + 1), h, cout, 1, 1, 0)?;
        h = self.batchnorm2d(&msg!("{name}.conv.{}", at + 2), h)?;
        if stride == 1 && cin == cout {
            h = self.add(&msg!("{name}.add"), x, h)?;
        }
        Ok(h)
    }

    /// Finishes the model; `logits` must be a `[1, 1, classes]` tensor.
    pub fn build(self, logits: TensorId) -> Result<Model> {
        let s = self.check("model output", logits)?;
        if s.h != 1 || s.w != 1 || s.c < 2 {
            return shape_err("model output", "logits [1, 1, classes ≥ 2]", s);
        }
        if self.nodes.is_empty() {
            return config_err("model", "no layers");
        }
        Ok(Model {
            nodes: self.nodes,
            shapes: self.shapes,
            logits: logits.0,
            classes: s.c,
            frozen: 0,
        })
    }
}

impl Model {
    /// The reference `mlp` (README, *Reference workloads*): Linear(784,512)–ReLU–Linear(512,512)–ReLU–Linear(512,10), for 28×28×1.
    pub fn mlp() -> Result<Model> {
        let mut b = ModelBuilder::new(Shape::new(28, 28, 1));
        let x = b.flatten("flatten", b.input())?;
        let x = b.linear("fc1", x, 512)?;
        let x = b.relu("relu1", x)?;
        let x = b.linear("fc2", x, 512)?;
        let x = b.relu("relu2", x)?;
        let x = b.linear("fc3", x, 10)?;
        b.build(x)
    }

    /// The reference `cnn` (ResNet-8) for `input` images and `classes` classes: stem
    /// conv3×3(→32)–BN–ReLU, BasicBlocks 32 (s1), 64 (s2), 128 (s2), global average pool,
    /// Linear(128, classes).
    pub fn resnet8(input: Shape, classes: usize) -> Result<Model> {
        Self::resnet8_widths(input, classes, [32, 64, 128])
    }

    /// [`Model::resnet8`] with other stage widths (the stem has the first stage's width).
    pub fn resnet8_widths(input: Shape, classes: usize, widths: [usize; 3]) -> Result<Model> {
        let mut b = ModelBuilder::new(input);
        let x = b.conv2d("conv1", b.input(), widths[0], 3, 1, 1)?;
        let x = b.batchnorm2d("bn1", x)?;
        let x = b.relu("relu", x)?;
        let x = b.basic_block("layer1.0", x, widths[0], 1)?;
        let x = b.basic_block("layer2.0", x, widths[1], 2)?;
        let x = b.basic_block("layer3.0", x, widths[2], 2)?;
        let x = b.global_avgpool("avgpool", x)?;
        let x = b.linear("fc", x, classes)?;
        b.build(x)
    }

    /// [`Model::resnet8`] for Fashion-MNIST (28×28×1, 10 classes).
    pub fn cnn() -> Result<Model> {
        Self::resnet8(Shape::new(28, 28, 1), 10)
    }

    /// The reference `vit` for Fashion-MNIST: patch embedding Conv(1→96, k4, s4) → 49 tokens +
    /// cls token + learned positions; 4 pre-norm blocks (3 heads, MLP 384); final LayerNorm;
    /// head Linear(96, 10) on the cls token.
    pub fn vit() -> Result<Model> {
        Self::vision_transformer(&VitConfig::default())
    }

    /// A ViT of any size. The final LayerNorm is applied to the cls token alone: it normalizes
    /// each token on its own, so this equals normalizing all tokens and then selecting.
    pub fn vision_transformer(c: &VitConfig) -> Result<Model> {
        if c.patch == 0 || !c.input.h.is_multiple_of(c.patch) || !c.input.w.is_multiple_of(c.patch)
        {
            return shape_err(
                "patch_embed.proj",
                format_args!("image sides multiples of the patch ({})", c.patch),
                c.input,
            );
        }
        let mut b = ModelBuilder::new(c.input);
        let x = b.patch_embed("patch_embed.proj", b.input(), c.dim, c.patch)?;
        let mut x = b.pos_embed("pos_embed", x)?;
        for i in 0..c.depth {
            x = b.transformer_block(&msg!("blocks.{i}"), x, c.heads, c.mlp, c.dropout)?;
        }
        let x = b.select_token("cls", x, 0)?;
        let x = b.layernorm("norm", x)?;
        let x = b.linear("head", x, c.classes)?;
        b.build(x)
    }

    /// The reference `mobilenet`, a MobileNetV2-style network for 28×28×1 Fashion-MNIST: stem
    /// conv3×3/2 (→16)–BN–ReLU6; four inverted-residual blocks of expansion 4, widths 16, 24,
    /// 32, 48, strides 1, 2, 1, 2; global average pool; Linear(48, 10). Names follow
    /// torchvision's `mobilenet_v2` (`features.N…`, `classifier`).
    pub fn mobilenet() -> Result<Model> {
        let mut b = ModelBuilder::new(Shape::new(28, 28, 1));
        let x = b.conv2d("features.0.0", b.input(), 16, 3, 2, 1)?;
        let x = b.batchnorm2d("features.0.1", x)?;
        let mut x = b.relu6("features.0.2", x)?;
        for (i, (width, stride)) in [(16, 1), (24, 2), (32, 1), (48, 2)].into_iter().enumerate() {
            x = b.inverted_residual(&msg!("features.{}", i + 1), x, width, stride, 4)?;
        }
        let x = b.global_avgpool("avgpool", x)?;
        let x = b.linear("classifier", x, 10)?;
        b.build(x)
    }

    /// The nodes in execution order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Shape of one input sample.
    pub fn input_shape(&self) -> Shape {
        self.shapes[0]
    }

    /// Output classes.
    pub fn classes(&self) -> usize {
        self.classes
    }

    /// Shape of a node's output.
    pub fn output_shape(&self, node: usize) -> Shape {
        self.shapes[self.nodes[node].output]
    }

    /// (input, output) shapes of one sample at a node.
    pub fn shapes_of(&self, node: usize) -> (Shape, Shape) {
        let n = &self.nodes[node];
        (self.shapes[n.inputs[0]], self.shapes[n.output])
    }

    /// Freezes the first `nodes` nodes for fine-tuning: they run forward only (batch norm on its
    /// running statistics), keep nothing for backward, and have no gradients or optimizer state.
    pub fn freeze(mut self, nodes: usize) -> Result<Model> {
        if nodes >= self.nodes.len() {
            return config_err(
                "freeze",
                msg!(
                    "{nodes} of {} nodes leaves nothing to train",
                    self.nodes.len()
                ),
            );
        }
        self.frozen = nodes;
        Ok(self)
    }

    /// Freezes every node up to and including the last one named `name` or under it
    /// (`name.…`): `freeze_until("layer1")` freezes the stem and the first stage of a ResNet.
    /// As with [`Model::freeze`], frozen nodes run forward only, keep nothing for backward and
    /// have no gradients or optimizer state.
    pub fn freeze_until(self, name: &str) -> Result<Model> {
        match self.nodes.iter().rposition(|n| is_under(&n.name, name)) {
            Some(last) => self.freeze(last + 1),
            None => config_err("freeze", msg!("no layer is named {name:?} or under it")),
        }
    }

    /// Freezes exactly the named layers (each entry a name, or a prefix `name` standing for
    /// it and everything under it). They must be the leading run of the execution order —
    /// what the planner can freeze — and an error names the first layer that breaks the run.
    pub fn freeze_layers(self, names: &[&str]) -> Result<Model> {
        let hit = |n: &Node| names.iter().any(|p| is_under(&n.name, p));
        let count = self.nodes.iter().filter(|n| hit(n)).count();
        if let Some(gap) = self.nodes[..count].iter().find(|n| !hit(n)) {
            return config_err(
                "freeze",
                msg!(
                    "frozen layers must lead the model; {} runs before a frozen layer but is not frozen",
                    gap.name
                ),
            );
        }
        if count == 0 {
            return config_err("freeze", msg!("none of {names:?} names a layer"));
        }
        self.freeze(count)
    }

    /// Nodes frozen by [`Model::freeze`].
    pub fn frozen(&self) -> usize {
        self.frozen
    }

    /// Trained parameters in all.
    pub fn param_count(&self) -> usize {
        self.nodes.iter().map(|n| n.layer.param_count()).sum()
    }

    /// The node index of a layer by name.
    pub fn find(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Mutable access to a layer (to change its save policy before planning). A change of its
    /// shapes is caught when the model is handed to a trainer ([`Model::check_shapes`]).
    pub fn layer_mut(&mut self, node: usize) -> Option<&mut Layer> {
        self.nodes.get_mut(node).map(|n| &mut n.layer)
    }

    /// Every node's output shape, computed again from its input: an error names the first node
    /// whose layer no longer fits the shapes it was built with (after [`Model::layer_mut`]).
    pub fn check_shapes(&self) -> Result<()> {
        for n in &self.nodes {
            let x = self.shapes[n.inputs[0]];
            let y = n.layer.out_shape(&n.name, x)?;
            if y != self.shapes[n.output] {
                return shape_err(
                    &n.name,
                    format_args!("output {} (as built)", self.shapes[n.output]),
                    y,
                );
            }
        }
        Ok(())
    }
}

/// The size of a [`Model::vision_transformer`]; the default is the reference `vit`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VitConfig {
    /// Input image shape.
    pub input: Shape,
    /// Classes.
    pub classes: usize,
    /// Patch side (the image sides must be multiples).
    pub patch: usize,
    /// Width D.
    pub dim: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads (D must be a multiple).
    pub heads: usize,
    /// Hidden width of each block's MLP.
    pub mlp: usize,
    /// Dropout after the attention and in the MLP (0: none).
    pub dropout: f32,
}

impl Default for VitConfig {
    fn default() -> Self {
        VitConfig {
            input: Shape::new(28, 28, 1),
            classes: 10,
            patch: 4,
            dim: 96,
            depth: 4,
            heads: 3,
            mlp: 384,
            dropout: 0.0,
        }
    }
}
