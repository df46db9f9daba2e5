//! The model: layers wired into a graph of tensors, in the order they run.
//!
//! A [`ModelBuilder`] adds layers one by one; each call returns the id of the tensor it produces,
//! so residual connections are written as they are drawn. Shapes are checked as layers are added.

use alloc::format;
use alloc::string::{String, ToString};
use alloc::vec::Vec;

use crate::error::{Result, config_err, shape_err};
use crate::layers::{
    Add, AvgPool2d, BatchNorm2d, Conv2d, Flatten, Gelu, GlobalAvgPool, Layer, LayerNorm, Linear,
    MaxPool2d, Relu,
};
use crate::shape::Shape;

/// A tensor of the model, by id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct T(pub(crate) usize);

/// One layer applied to one or two tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Name, dotted like PyTorch's module paths (`layer2.0.conv1`).
    pub name: String,
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
    pub(crate) nodes: Vec<Node>,
    pub(crate) shapes: Vec<Shape>,
    pub(crate) logits: usize,
    pub(crate) classes: usize,
    pub(crate) frozen: usize,
}

/// Builds a [`Model`] layer by layer.
#[derive(Debug, Clone)]
pub struct ModelBuilder {
    nodes: Vec<Node>,
    shapes: Vec<Shape>,
}

impl ModelBuilder {
    /// A model whose samples have shape `input`.
    pub fn new(input: Shape) -> Self {
        ModelBuilder {
            nodes: Vec::new(),
            shapes: alloc::vec![input],
        }
    }

    /// The input tensor.
    pub fn input(&self) -> T {
        T(0)
    }

    /// The shape of a tensor.
    pub fn shape(&self, t: T) -> Shape {
        self.shapes[t.0]
    }

    fn check(&self, name: &str, t: T) -> Result<Shape> {
        match self.shapes.get(t.0) {
            Some(&s) => Ok(s),
            None => config_err(name, format!("tensor {} does not exist", t.0)),
        }
    }

    /// Applies `layer` to `x`.
    pub fn layer(&mut self, name: &str, layer: Layer, x: T) -> Result<T> {
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

    fn push(&mut self, name: &str, layer: Layer, inputs: [usize; 2], ys: Shape) -> Result<T> {
        let out = self.shapes.len();
        self.shapes.push(ys);
        self.nodes.push(Node {
            name: name.to_string(),
            layer,
            inputs,
            output: out,
        });
        Ok(T(out))
    }

    /// `a + b` (a residual join); the shapes must agree.
    pub fn add(&mut self, name: &str, a: T, b: T) -> Result<T> {
        let (sa, sb) = (self.check(name, a)?, self.check(name, b)?);
        if sa != sb {
            return shape_err(name, format_args!("both inputs {sa}"), sb);
        }
        self.push(name, Layer::Add(Add), [a.0, b.0], sa)
    }

    /// `Linear(in, out)` on the channels of `x`.
    pub fn linear(&mut self, name: &str, x: T, out: usize) -> Result<T> {
        let inp = self.check(name, x)?.c;
        self.layer(name, Layer::Linear(Linear::new(inp, out)), x)
    }

    /// A square convolution without bias.
    pub fn conv2d(
        &mut self,
        name: &str,
        x: T,
        cout: usize,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<T> {
        let cin = self.check(name, x)?.c;
        self.layer(
            name,
            Layer::Conv2d(Conv2d::new(cin, cout, k, stride, pad)),
            x,
        )
    }

    /// `BatchNorm2d` over the channels of `x`.
    pub fn batchnorm2d(&mut self, name: &str, x: T) -> Result<T> {
        let c = self.check(name, x)?.c;
        self.layer(name, Layer::BatchNorm2d(BatchNorm2d::new(c)), x)
    }

    /// `ReLU`.
    pub fn relu(&mut self, name: &str, x: T) -> Result<T> {
        self.layer(name, Layer::Relu(Relu), x)
    }

    /// `MaxPool2d(k, stride, pad)`.
    pub fn maxpool2d(
        &mut self,
        name: &str,
        x: T,
        k: usize,
        stride: usize,
        pad: usize,
    ) -> Result<T> {
        self.layer(name, Layer::MaxPool2d(MaxPool2d::new(k, stride, pad)), x)
    }

    /// `AvgPool2d(k, stride)`.
    pub fn avgpool2d(&mut self, name: &str, x: T, k: usize, stride: usize) -> Result<T> {
        self.layer(name, Layer::AvgPool2d(AvgPool2d::new(k, stride)), x)
    }

    /// Mean over H and W.
    pub fn global_avgpool(&mut self, name: &str, x: T) -> Result<T> {
        self.layer(name, Layer::GlobalAvgPool(GlobalAvgPool), x)
    }

    /// `LayerNorm` over the channels of `x`.
    pub fn layernorm(&mut self, name: &str, x: T) -> Result<T> {
        let c = self.check(name, x)?.c;
        self.layer(name, Layer::LayerNorm(LayerNorm::new(c)), x)
    }

    /// `GELU` (exact, erf form).
    pub fn gelu(&mut self, name: &str, x: T) -> Result<T> {
        self.layer(name, Layer::Gelu(Gelu::default()), x)
    }

    /// `[h, w, c]` → `[1, 1, h·w·c]`.
    pub fn flatten(&mut self, name: &str, x: T) -> Result<T> {
        self.layer(name, Layer::Flatten(Flatten), x)
    }

    /// A ResNet BasicBlock: conv3×3–BN–ReLU–conv3×3–BN, plus the shortcut (identity, or
    /// conv1×1 with the block's stride + BN when the shape changes), add, ReLU.
    pub fn basic_block(&mut self, name: &str, x: T, cout: usize, stride: usize) -> Result<T> {
        let cin = self.check(name, x)?.c;
        let y = self.conv2d(&format!("{name}.conv1"), x, cout, 3, stride, 1)?;
        let y = self.batchnorm2d(&format!("{name}.bn1"), y)?;
        let y = self.relu(&format!("{name}.relu1"), y)?;
        let y = self.conv2d(&format!("{name}.conv2"), y, cout, 3, 1, 1)?;
        let y = self.batchnorm2d(&format!("{name}.bn2"), y)?;
        let short = if stride != 1 || cin != cout {
            let s = self.conv2d(&format!("{name}.downsample.0"), x, cout, 1, stride, 0)?;
            self.batchnorm2d(&format!("{name}.downsample.1"), s)?
        } else {
            x
        };
        let y = self.add(&format!("{name}.add"), y, short)?;
        self.relu(&format!("{name}.relu2"), y)
    }

    /// Finishes the model; `logits` must be a `[1, 1, classes]` tensor.
    pub fn build(self, logits: T) -> Result<Model> {
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
    /// The DESIGN's `mlp`: Linear(784,512)–ReLU–Linear(512,512)–ReLU–Linear(512,10), for 28×28×1.
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

    /// The DESIGN's `cnn` (ResNet-8) for `input` images and `classes` classes: stem
    /// conv3×3(→32)–BN–ReLU, BasicBlocks 32 (s1), 64 (s2), 128 (s2), global average pool,
    /// Linear(128, classes).
    pub fn resnet8(input: Shape, classes: usize) -> Result<Model> {
        let mut b = ModelBuilder::new(input);
        let x = b.conv2d("conv1", b.input(), 32, 3, 1, 1)?;
        let x = b.batchnorm2d("bn1", x)?;
        let x = b.relu("relu", x)?;
        let x = b.basic_block("layer1.0", x, 32, 1)?;
        let x = b.basic_block("layer2.0", x, 64, 2)?;
        let x = b.basic_block("layer3.0", x, 128, 2)?;
        let x = b.global_avgpool("avgpool", x)?;
        let x = b.linear("fc", x, classes)?;
        b.build(x)
    }

    /// [`Model::resnet8`] for Fashion-MNIST (28×28×1, 10 classes).
    pub fn cnn() -> Result<Model> {
        Self::resnet8(Shape::new(28, 28, 1), 10)
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
                format!(
                    "{nodes} of {} nodes leaves nothing to train",
                    self.nodes.len()
                ),
            );
        }
        self.frozen = nodes;
        Ok(self)
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

    /// Mutable access to a layer (to change its save policy before planning).
    pub fn layer_mut(&mut self, node: usize) -> Option<&mut Layer> {
        self.nodes.get_mut(node).map(|n| &mut n.layer)
    }
}
