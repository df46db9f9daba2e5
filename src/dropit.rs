//! The DropIT policy: which Linear/Conv layers keep a sparse copy of their input, and how.

use crate::collections::{self, List, MAX_NODES, MAX_OVERRIDES, Name, Push, msg};

use dropit_simd::format::ValueType;

use crate::error::{Result, config_err};
use crate::model::Model;
use crate::saved::{GradPath, InputSave, Positions, Scope, SparseSave};

/// A layer, by name or by node index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerRef {
    /// The node's name (`layer2.0.conv1`).
    Name(Name),
    /// The node's index in execution order.
    Index(usize),
}

/// DropIT settings for a model: γ (the fraction dropped) for every Linear and Conv2d layer.
#[derive(Debug, Clone, PartialEq)]
pub struct DropIt {
    /// γ for every Linear/Conv2d layer without an override; 0 keeps the layer dense.
    pub gamma: f32,
    /// Per-layer γ; an override also applies to an excluded layer.
    pub overrides: List<(LayerRef, f32), MAX_OVERRIDES>,
    /// Keep the first Linear/Conv2d layer dense (as the paper does).
    pub exclude_first: bool,
    /// Keep the last Linear/Conv2d layer (the head) dense (as the paper does).
    pub exclude_head: bool,
    /// Selection scope.
    pub scope: Scope,
    /// Value type of kept elements.
    pub values: ValueType,
    /// Position form.
    pub positions: Positions,
    /// How grad_W is computed.
    pub path: GradPath,
    /// Also store the other saved tensors lean: batch and layer norm's normalized inputs as
    /// 8-bit codes (see [`DropIt::int8_norms`]), attention's q, k and v as bf16, GELU's
    /// derivative as a one-byte code.
    pub lean: bool,
    /// With `lean`: batch and layer norms keep x̂ as 8-bit codes with one scale per channel
    /// (batch norm) or row (layer norm); without, as bf16. [`DropIt::lean`] turns it on.
    pub int8_norms: bool,
}

impl DropIt {
    /// γ on every Linear/Conv2d layer but the first and the head; tensor-wide top-k, f32
    /// values, the smallest position form, grad_W path chosen per layer.
    pub fn new(gamma: f32) -> Self {
        DropIt {
            gamma,
            overrides: List::new(),
            exclude_first: true,
            exclude_head: true,
            scope: Scope::Tensor,
            values: ValueType::F32,
            positions: Positions::Auto,
            path: GradPath::Auto,
            lean: false,
            int8_norms: false,
        }
    }

    /// No DropIT at all (every layer dense).
    pub fn dense() -> Self {
        Self::new(0.0)
    }

    /// With the lean option; turning it on also keeps DropIT's values as bf16 (the kept
    /// values only feed grad_W, where bf16's rounding is small beside the dropping itself)
    /// and the norms' x̂ as 8-bit codes (`.int8_norms(false)` after it keeps them as bf16).
    pub fn lean(mut self, lean: bool) -> Self {
        self.lean = lean;
        if lean {
            self.values = ValueType::Bf16;
            self.int8_norms = true;
        }
        self
    }

    /// With 8-bit (`true`) or bf16 normalized inputs in the norms when lean (see
    /// [`DropIt::int8_norms`]).
    pub fn int8_norms(mut self, int8: bool) -> Self {
        self.int8_norms = int8;
        self
    }

    /// With another value type.
    pub fn values(mut self, values: ValueType) -> Self {
        self.values = values;
        self
    }

    /// γ for one layer.
    #[cfg(feature = "alloc")]
    pub fn with_override(mut self, layer: LayerRef, gamma: f32) -> Self {
        self.overrides.push((layer, gamma));
        self
    }

    /// γ for one layer; without `alloc`, more than [`MAX_OVERRIDES`] is an error.
    pub fn try_with_override(mut self, layer: LayerRef, gamma: f32) -> Result<Self> {
        self.overrides.push_or((layer, gamma), "DropIT overrides")?;
        Ok(self)
    }

    fn check_gamma(what: &str, g: f32) -> Result<()> {
        if (0.0..1.0).contains(&g) {
            Ok(())
        } else {
            config_err(what, msg!("γ = {g} is not in [0, 1)"))
        }
    }

    /// Sets every Linear/Conv2d layer's input save and the lean flag of every other layer that
    /// has one.
    pub fn apply(&self, model: &mut Model) -> Result<()> {
        Self::check_gamma("DropIT default", self.gamma)?;
        if let Scope::Block(0) = self.scope {
            return config_err("DropIT scope", "a block of 0 elements");
        }
        let weighted: List<usize, MAX_NODES> = collections::collect(
            (0..model.nodes.len()).filter(|&i| model.nodes[i].layer.input_save().is_some()),
            "layers",
        )?;
        let mut gammas: List<Option<f32>, MAX_NODES> =
            collections::filled(model.nodes.len(), None, "layers")?;
        for &i in &weighted {
            let excluded = (self.exclude_first && Some(&i) == weighted.first())
                || (self.exclude_head && Some(&i) == weighted.last());
            gammas[i] = Some(if excluded { 0.0 } else { self.gamma });
        }
        for (r, g) in &self.overrides {
            let i = match r {
                LayerRef::Name(n) => model.find(n),
                LayerRef::Index(i) => Some(*i).filter(|i| *i < model.nodes.len()),
            };
            let Some(i) = i.filter(|i| gammas[*i].is_some()) else {
                return config_err(
                    "DropIT override",
                    msg!("{r:?} is not a Linear or Conv2d layer of the model"),
                );
            };
            Self::check_gamma(&model.nodes[i].name, *g)?;
            gammas[i] = Some(*g);
        }
        for (node, g) in model.nodes.iter_mut().zip(gammas) {
            let save = match g {
                Some(g) if g > 0.0 => InputSave::Sparse(SparseSave {
                    keep: 1.0 - g,
                    scope: self.scope,
                    values: self.values,
                    positions: self.positions,
                    path: self.path,
                }),
                _ => InputSave::Dense,
            };
            match node.layer.input_save_mut() {
                Some(s) => *s = save,
                None => {
                    node.layer.set_lean(self.lean);
                    node.layer.set_int8(self.int8_norms);
                }
            }
        }
        Ok(())
    }
}

impl Model {
    /// This model under a DropIT policy.
    pub fn with_dropit(mut self, d: &DropIt) -> Result<Model> {
        d.apply(&mut self)?;
        Ok(self)
    }
}
