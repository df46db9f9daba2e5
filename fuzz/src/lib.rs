//! What the fuzz target and the seed generator share: the small models whose checkpoints and
//! weights make the seed corpus (and into which the target loads weights), and the checksum
//! fix-up that lets mutated checkpoints past the CRC.

use dropit::{DropIt, Model, ModelBuilder, Optimizer, Schedule, Shape, Trainer, TrainerConfig};
use safetensors::SafeTensors;

/// The key of the checkpoint's CRC-32 in the safetensors metadata.
pub const KEY_CHECKSUM: &str = "dropit.checksum";

/// An MLP with dropout and DropIT on its middle layer (SGD with momentum).
pub fn mlp() -> Trainer<'static> {
    let mut b = ModelBuilder::new(Shape::new(4, 4, 1));
    let x = b.flatten("flatten", b.input()).unwrap();
    let x = b.linear("fc1", x, 12).unwrap();
    let x = b.relu("relu1", x).unwrap();
    let x = b.dropout("drop", x, 0.25).unwrap();
    let x = b.linear("fc2", x, 8).unwrap();
    let x = b.relu("relu2", x).unwrap();
    let x = b.linear("fc3", x, 3).unwrap();
    let model = b.build(x).unwrap().with_dropit(&DropIt::new(0.5)).unwrap();
    let cfg = TrainerConfig {
        batch: 4,
        optimizer: Optimizer::sgd(0.9, 5e-4),
        schedule: Schedule::cosine(0.05, 100),
        seed: 1,
        label_smoothing: 0.1,
        threads: 1,
        clip_grad_norm: None,
        rebuild_inputs: true,
    };
    Trainer::new(model, cfg).unwrap()
}

/// A CNN with every convolutional layer kind, batch norm (with its step counter), pools, a
/// residual block and an inverted-residual one, the stem frozen, lean DropIT (AdamW).
pub fn cnn() -> Trainer<'static> {
    let mut b = ModelBuilder::new(Shape::new(8, 8, 2));
    let x = b.conv2d("conv1", b.input(), 4, 3, 1, 1).unwrap();
    let x = b.batchnorm2d("bn1", x).unwrap();
    let x = b.relu("relu", x).unwrap();
    let x = b.maxpool2d("pool", x, 2, 2, 0).unwrap();
    let x = b.basic_block("layer1.0", x, 6, 2).unwrap();
    let x = b.inverted_residual("ir", x, 6, 1, 2).unwrap();
    let x = b.depthwise_conv2d("dw", x, 3, 1, 1).unwrap();
    let x = b.relu6("relu6", x).unwrap();
    let x = b.avgpool2d("avg", x, 2, 2).unwrap();
    let x = b.global_avgpool("gap", x).unwrap();
    let x = b.flatten("flat", x).unwrap();
    let x = b.linear("fc", x, 3).unwrap();
    let model = b
        .build(x)
        .unwrap()
        .freeze(2)
        .unwrap()
        .with_dropit(&DropIt::new(0.5).lean(true))
        .unwrap();
    let mut cfg = TrainerConfig::adamw_recipe(2, 50);
    cfg.seed = 2;
    Trainer::new(model, cfg).unwrap()
}

/// A vision transformer (patches, position embedding, attention, layer norm, GELU, dropout).
pub fn vit() -> Trainer<'static> {
    let model = Model::vision_transformer(&dropit::VitConfig {
        input: Shape::new(4, 4, 1),
        classes: 3,
        patch: 2,
        dim: 8,
        depth: 1,
        heads: 2,
        mlp: 12,
        dropout: 0.1,
    })
    .unwrap()
    .with_dropit(&DropIt::new(0.5))
    .unwrap();
    let mut cfg = TrainerConfig::adamw_recipe(2, 50);
    cfg.seed = 3;
    Trainer::new(model, cfg).unwrap()
}

/// The models above, by name.
pub fn trainers() -> [(&'static str, Trainer<'static>); 3] {
    [("mlp", mlp()), ("cnn", cnn()), ("vit", vit())]
}

/// `bytes` with the checkpoint checksum (`dropit.checksum`, added when missing) recomputed as
/// the loader computes it, or `None` where the safetensors header does not parse. Without
/// this, almost every mutation of a checkpoint stops at the CRC.
pub fn fix_checksum(bytes: &[u8]) -> Option<Vec<u8>> {
    let n = usize::try_from(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?)).ok()?;
    let end = n.checked_add(8)?;
    let mut header: serde_json::Value = serde_json::from_slice(bytes.get(8..end)?).ok()?;
    let (_, meta) = SafeTensors::read_metadata(bytes).ok()?;
    let st = SafeTensors::deserialize(bytes).ok()?;
    let mut meta: Vec<(String, String)> = meta
        .metadata()
        .iter()
        .flat_map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())))
        .collect();
    meta.sort();
    let mut tensors = st.tensors();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let mut h = crc32fast::Hasher::new();
    for (name, v) in &tensors {
        h.update(name.as_bytes());
        h.update(&[0]);
        h.update(format!("{:?}", v.dtype()).as_bytes());
        for d in v.shape() {
            h.update(&(*d as u64).to_le_bytes());
        }
        h.update(v.data());
    }
    for (k, v) in meta.iter().filter(|(k, _)| k != KEY_CHECKSUM) {
        h.update(k.as_bytes());
        h.update(&[0]);
        h.update(v.as_bytes());
        h.update(&[0]);
    }
    let sum = format!("{:08x}", h.finalize());
    let obj = header.as_object_mut()?;
    let m = obj
        .entry("__metadata__")
        .or_insert_with(|| serde_json::Value::Object(Default::default()));
    m.as_object_mut()?
        .insert(KEY_CHECKSUM.into(), serde_json::Value::String(sum));
    let json = serde_json::to_vec(&header).ok()?;
    let mut out = Vec::with_capacity(8 + json.len() + bytes.len() - end);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(&bytes[end..]);
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fix-up computes the loader's checksum: a checkpoint whose recorded one is spoiled,
    /// or gone, loads once fixed.
    #[test]
    fn fixed_checksums_load() {
        for (name, t) in trainers() {
            let bytes = t.checkpoint().unwrap();
            let fixed = fix_checksum(&bytes).unwrap();
            assert!(Trainer::from_checkpoint(&fixed).is_ok(), "{name}");
            let text = String::from_utf8_lossy(&bytes).into_owned();
            let at = text.find(KEY_CHECKSUM).unwrap() + KEY_CHECKSUM.len() + 3;
            let mut spoiled = bytes.clone();
            spoiled[at] = if spoiled[at] == b'0' { b'1' } else { b'0' };
            assert!(Trainer::from_checkpoint(&spoiled).is_err(), "{name}");
            let fixed = fix_checksum(&spoiled).unwrap();
            let u = Trainer::from_checkpoint(&fixed).unwrap();
            assert_eq!(u.params(), t.params(), "{name}");
            let weights = t.weights().unwrap();
            let mut v = trainers().into_iter().find(|(n, _)| *n == name).unwrap().1;
            v.load_weights(&fix_checksum(&weights).unwrap()).unwrap();
        }
    }
}
