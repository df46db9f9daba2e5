//! The training state as named tensors in PyTorch's names and layouts, and back.

use alloc::borrow::Cow;
use alloc::string::String;
use alloc::vec::Vec;

use safetensors::{Dtype, View};

use crate::error::{Result, ckpt_err};
use crate::layers::ParamDecl;
use crate::optim::Optimizer;
use crate::trainer::Trainer;

/// One tensor to write.
pub(crate) struct Tensor {
    pub name: String,
    pub dtype: Dtype,
    pub shape: Vec<usize>,
    pub bytes: Vec<u8>,
}

impl View for &Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// PyTorch's names for the optimizer's state slots.
pub(crate) fn slot_names(o: &Optimizer) -> &'static [&'static str] {
    match o.state_slots() {
        0 => &[],
        1 => &["momentum_buffer"],
        _ => &["exp_avg", "exp_avg_sq"],
    }
}

/// Where one declared tensor lives: a run of our floats, in the parameters (trained) or the
/// running statistics.
pub(crate) struct Place {
    pub node: usize,
    pub name: String,
    pub decl: ParamDecl,
    /// Offset into `params()` (trained) or `state()`.
    pub at: usize,
}

/// Every declared parameter and running statistic of the trainer's model, in node order.
pub(crate) fn places(t: &Trainer<'_>) -> Vec<Place> {
    let nodes = t.model().nodes();
    t.declared()
        .map(|(node, decl, at)| Place {
            node,
            name: alloc::format!("{}.{}", nodes[node].name, decl.name),
            decl,
            at,
        })
        .collect()
}

/// `ours` in PyTorch's order, as little-endian bytes.
fn to_torch(decl: &ParamDecl, ours: &[f32]) -> Vec<u8> {
    let mut t = alloc::vec![0f32; ours.len()];
    for (i, &v) in ours.iter().enumerate() {
        t[decl.layout.torch_index(i)] = v;
    }
    t.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// The trainer's whole state as tensors: parameters and running statistics, PyTorch's int64
/// step counters, and (with `optimizer`) the optimizer's state as `optim.{name}.{slot}`.
pub(crate) fn collect(t: &Trainer<'_>, optimizer: bool) -> Vec<Tensor> {
    let (params, state, opt) = (t.params(), t.state(), t.optimizer_state());
    let frozen = t.model().frozen();
    let (ts, n) = (t.train_start(), t.trained_count());
    let slots = slot_names(&t.config().optimizer);
    let mut out = Vec::new();
    for p in places(t) {
        let len = p.decl.len();
        let src = if p.decl.trained { params } else { state };
        let shape = p.decl.torch_shape.to_vec();
        out.push(Tensor {
            name: p.name.clone(),
            dtype: Dtype::F32,
            shape: shape.clone(),
            bytes: to_torch(&p.decl, &src[p.at..p.at + len]),
        });
        if !(optimizer && p.decl.trained && p.node >= frozen) {
            continue;
        }
        for (k, slot) in slots.iter().enumerate() {
            let from = k * n + p.at - ts;
            out.push(Tensor {
                name: alloc::format!("optim.{}.{slot}", p.name),
                dtype: Dtype::F32,
                shape: shape.clone(),
                bytes: to_torch(&p.decl, &opt[from..from + len]),
            });
        }
    }
    for node in t.model().nodes() {
        for c in node.layer.counters() {
            out.push(Tensor {
                name: alloc::format!("{}.{c}", node.name),
                dtype: Dtype::I64,
                shape: Vec::new(),
                bytes: (t.steps() as i64).to_le_bytes().to_vec(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Checks a tensor of the file against what it must be: F32 of PyTorch's shape.
pub(crate) fn check(
    name: &str,
    dtype: Dtype,
    shape: &[usize],
    data: &[u8],
    want: &ParamDecl,
) -> Result<()> {
    if dtype != Dtype::F32 {
        return ckpt_err(name, alloc::format!("dtype {dtype:?}, expected F32"));
    }
    if shape != want.torch_shape.as_slice() {
        return ckpt_err(
            name,
            alloc::format!(
                "shape {shape:?}, expected {:?}",
                want.torch_shape.as_slice()
            ),
        );
    }
    // The file's own offsets were checked against its shape by the parser; this holds the
    // two together for the copy.
    if Some(data.len()) != want.len_checked().and_then(|l| l.checked_mul(4)) {
        return ckpt_err(
            name,
            alloc::format!("{} bytes for shape {shape:?}", data.len()),
        );
    }
    Ok(())
}
