//! The model's architecture as a checkpoint records it (JSON in the metadata), and its rebuild
//! through [`ModelBuilder`] — so every shape and name is checked again, whatever the file says.

use alloc::string::String;
use alloc::vec::Vec;

use serde::{Deserialize, Serialize};

use crate::error::{Result, ckpt_err};
use crate::layers::Layer;
use crate::model::{Model, ModelBuilder, TensorId};
use crate::shape::Shape;

/// A model, as written: its input, its nodes in execution order, the logits and the frozen
/// prefix. Every layer carries its own settings, DropIT's and lean's included.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Spec {
    input: Shape,
    nodes: Vec<NodeSpec>,
    logits: usize,
    frozen: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct NodeSpec {
    name: String,
    layer: Layer,
    inputs: Vec<usize>,
}

impl Spec {
    pub fn of(model: &Model) -> Self {
        Spec {
            input: model.input_shape(),
            nodes: model
                .nodes
                .iter()
                .map(|n| NodeSpec {
                    name: n.name.clone(),
                    layer: n.layer.clone(),
                    inputs: n.inputs[..n.layer.arity()].to_vec(),
                })
                .collect(),
            logits: model.logits,
            frozen: model.frozen,
        }
    }

    /// Rebuilds the model layer by layer; any inconsistency is an error naming the node.
    pub fn build(self) -> Result<Model> {
        let s = self.input;
        if s.h
            .checked_mul(s.w)
            .and_then(|v| v.checked_mul(s.c))
            .is_none()
        {
            return ckpt_err("model", alloc::format!("input shape {s} overflows"));
        }
        let mut b = ModelBuilder::new(s);
        for n in self.nodes {
            if let Some(crate::InputSave::Sparse(sp)) = n.layer.input_save()
                && !(sp.keep > 0.0 && sp.keep <= 1.0)
            {
                return ckpt_err(
                    &alloc::format!("model node {}", n.name),
                    alloc::format!("DropIT keeps {} of the input, not in (0, 1]", sp.keep),
                );
            }
            let at = |i: usize| n.inputs.get(i).copied().map(TensorId);
            let (arity, two) = (n.layer.arity(), matches!(n.layer, Layer::Add(_)));
            if n.inputs.len() != arity {
                return ckpt_err(
                    &alloc::format!("model node {}", n.name),
                    alloc::format!("{arity} inputs expected, {} given", n.inputs.len()),
                );
            }
            let made = match (two, at(0), at(1)) {
                (true, Some(a), Some(c)) => b.add(&n.name, a, c),
                (false, Some(x), None) => b.layer(&n.name, n.layer, x),
                _ => return ckpt_err(&n.name, "a two-input layer other than Add"),
            };
            made.map_err(|e| crate::Error::Checkpoint {
                what: alloc::format!("model node {}", n.name),
                detail: alloc::format!("{e}"),
            })?;
        }
        let model = b.build(TensorId(self.logits))?;
        if self.frozen > 0 {
            model.freeze(self.frozen)
        } else {
            Ok(model)
        }
    }
}
