//! [`DeviceTrainer`]: the planned step, run as kernel launches and dense products on a
//! [`Backend`].

use std::format;
use std::vec;
use std::vec::Vec;

use dropit_simd::format::{Format, PosForm};

use super::layers::{self, Call};
use super::ops::{self, PackedAt, Work, ptr, run};
use super::{Arg, Backend, Grid};
use crate::error::{Error, Result, config_err, shape_err};
use crate::init::rng;
use crate::layers::Layer;
use crate::model::Model;
use crate::plan::{Plan, plan};
use crate::saved::{InputSave, Positions, Scope};
use crate::trainer::{EvalStats, StepStats, Trainer, TrainerConfig, check_batch, check_predict};

/// The layers a [`DeviceTrainer`] runs.
pub(super) const SUPPORTED: &str = "Linear, Conv2d and depthwise Conv2d (dense or DropIT), \
    BatchNorm2d, ReLU, ReLU6, GELU, LayerNorm, attention, Add, global average pooling, Flatten, \
    positions and token selection";

/// Trains a [`Model`] on a [`Backend`]: the CPU [`Trainer`]'s plan in one device allocation,
/// each step a sequence of kernel launches. Parameters start as the CPU trainer's for the same
/// seed, and a step computes what the CPU's does (the dense products and the atomic sparse
/// weight gradients round differently; the optimizers' updates are bitwise the CPU's).
///
/// Runs the layers of the four reference workloads (`mlp`, `cnn`, `vit`, `mobilenet`) — Linear,
/// Conv2d and depthwise Conv2d (dense, or DropIT with a tensor-wide top-k, f32 or bf16 values,
/// bitmap or u32 positions), BatchNorm2d, ReLU, ReLU6, GELU, LayerNorm, attention, residual
/// adds, global average pooling, positions and token selection —
/// with softmax cross-entropy, SGD or AdamW, gradient clipping and skipped non-finite steps.
/// Every input a backward reads is kept (as with [`TrainerConfig::rebuild_inputs`] off, which
/// the CPU trainer must use to compute the same DropIT gradients). Other layers, and the lean
/// forms of norms, GELU and attention, are refused by [`DeviceTrainer::new`] with an error
/// naming the layer.
pub struct DeviceTrainer<B: Backend> {
    backend: B,
    /// The model as given (what [`DeviceTrainer::to_cpu`] rebuilds).
    model: Model,
    /// The model as planned: DropIT's automatic position form chosen among those the device
    /// packs.
    planned: Model,
    cfg: TrainerConfig,
    plan: Plan,
    work: Work,
    /// Labels (u32), per-row losses (f32) and per-row hits (u32), `batch` each.
    rows: [usize; 3],
    /// The convolutions' geometries, 11 u64 a node.
    geoms: usize,
    /// The layers' own scratch.
    scratch: usize,
    bytes: usize,
    step: u64,
}

impl<B: Backend> core::fmt::Debug for DeviceTrainer<B> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("DeviceTrainer")
            .field("nodes", &self.model.nodes.len())
            .field("batch", &self.cfg.batch)
            .field("device_bytes", &self.bytes)
            .field("step", &self.step)
            .finish()
    }
}

/// Byte offset of a word range's start.
fn at(r: &core::ops::Range<usize>) -> usize {
    8 * r.start
}

/// `model` with every DropIT position form the device cannot pack replaced: `Auto` becomes the
/// smaller of bitmap and u32 positions for the planned batch; errors name the layer whose
/// settings the device does not run.
fn for_device(model: &Model, batch: usize) -> Result<Model> {
    let mut m = model.clone();
    for i in 0..m.nodes.len() {
        let (xs, _) = m.shapes_of(i);
        let node = &mut m.nodes[i];
        layers::check(&node.name, &node.layer)?;
        let Some(InputSave::Sparse(sp)) = node.layer.input_save_mut() else {
            continue;
        };
        if sp.scope != Scope::Tensor {
            return config_err(
                &node.name,
                "DropIT on the device selects over the whole tensor (Scope::Tensor)",
            );
        }
        let (n, k) = (batch * xs.numel(), sp.kept(batch, xs.numel()));
        if sp.positions == Positions::Auto {
            let [bitmap, u32s] = [PosForm::Bitmap, PosForm::U32].map(|p| Format::new(sp.values, p));
            let pick = match bitmap.bytes(n, k) <= u32s.bytes(n, k) {
                true => PosForm::Bitmap,
                false => PosForm::U32,
            };
            sp.positions = Positions::Fixed(pick);
        }
        if let Err(e) = ops::value_code(sp.format(batch, xs.numel())) {
            return config_err(&node.name, format!("{e}"));
        }
    }
    Ok(m)
}

impl<B: Backend> DeviceTrainer<B> {
    /// Plans `model` for `cfg` (as [`Trainer::new`] does, on one worker and keeping every
    /// input a backward reads), makes the one device allocation and writes the initial
    /// parameters — the CPU trainer's for the same seed.
    pub fn new(mut backend: B, model: Model, cfg: TrainerConfig) -> Result<Self> {
        cfg.validate()?;
        model.check_shapes()?;
        let planned = for_device(&model, cfg.batch)?;
        let plan = plan(&planned, cfg.batch, cfg.optimizer.state_slots(), 1, false)?;
        // The select's buffers for the largest packed input (at least the reductions').
        let words = (0..planned.nodes.len())
            .filter(|&i| plan.packed[i].is_some())
            .map(|i| (cfg.batch * planned.shapes_of(i).0.numel()).div_ceil(64))
            .max()
            .unwrap_or(1);
        let tail = 8 * plan.total_words;
        let work = Work::at(tail, words);
        let rows_at = tail + Work::bytes(words);
        let per_row = (4 * cfg.batch).next_multiple_of(8);
        let rows = [0, 1, 2].map(|j| rows_at + j * per_row);
        // The convolutions' geometries (11 counts a node), then the layers' own scratch
        // (columns, attention's probabilities, an unpacked input).
        let geoms = rows[2] + per_row;
        let scratch = geoms + 88 * planned.nodes.len();
        let floats = (0..planned.nodes.len())
            .map(|i| {
                let shapes = planned.shapes_of(i);
                layers::scratch_floats(&planned.nodes[i].layer, cfg.batch, shapes)
            })
            .max()
            .unwrap_or(0);
        // Sizes past usize are refused as memory the device cannot give.
        let bytes = floats
            .checked_mul(4)
            .and_then(|b| scratch.checked_add(b.checked_next_multiple_of(8)?))
            .ok_or(Error::OutOfMemory { bytes: usize::MAX })?;
        backend.allocate(bytes)?;
        let mut t = DeviceTrainer {
            backend,
            model,
            planned,
            cfg,
            plan,
            work,
            rows,
            geoms,
            scratch,
            bytes,
            step: 0,
        };
        let (mut p, mut s) = (vec![0f32; t.param_count()], vec![0f32; t.state_count()]);
        let mut r = rng(t.cfg.seed);
        for (i, n) in t.planned.nodes.iter().enumerate() {
            let (pr, sr) = (t.plan.params[i].clone(), t.plan.state[i].clone());
            n.layer.init(&mut p[pr], &mut s[sr], &mut r);
        }
        t.set_params(&p)?;
        let state = at(&t.plan.regions.state);
        t.backend.write(state, bytemuck::cast_slice(&s))?;
        for (i, node) in t.planned.nodes.iter().enumerate() {
            let (xs, ys) = t.planned.shapes_of(i);
            if let Some(g) = layers::geometry(&node.layer, xs, ys) {
                t.backend
                    .write(t.geoms + 88 * i, bytemuck::cast_slice(&g))?;
            }
        }
        Ok(t)
    }

    /// Bytes of the one device allocation.
    pub fn device_bytes(&self) -> usize {
        self.bytes
    }

    /// Every buffer of the plan, per layer and by category, as [`Trainer::memory_report`]
    /// gives it (the device allocation, [`DeviceTrainer::device_bytes`], is this plan's total
    /// plus the device's own buffers: the select's, the loss's rows, the layers' scratch).
    pub fn memory_report(&self) -> crate::report::MemoryReport {
        crate::report::MemoryReport::new(&self.planned, &self.plan)
    }

    /// The backend.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    fn param_count(&self) -> usize {
        self.plan.params.last().map_or(0, |p| p.end)
    }

    fn state_count(&self) -> usize {
        self.plan.state.last().map_or(0, |s| s.end)
    }

    fn trained(&self) -> usize {
        self.param_count() - self.plan.train_start
    }

    fn read_f32(&self, at: usize, n: usize) -> Result<Vec<f32>> {
        let mut v = vec![0f32; n];
        self.backend.read(at, bytemuck::cast_slice_mut(&mut v))?;
        Ok(v)
    }

    /// Every parameter, laid out as [`Trainer::params`].
    pub fn params(&self) -> Result<Vec<f32>> {
        self.read_f32(at(&self.plan.regions.params), self.param_count())
    }

    /// Sets every parameter (laid out as [`Trainer::params`]).
    pub fn set_params(&mut self, p: &[f32]) -> Result<()> {
        if p.len() != self.param_count() {
            return shape_err(
                "device parameters",
                format!("{} floats", self.param_count()),
                format!("{}", p.len()),
            );
        }
        let at = at(&self.plan.regions.params);
        self.backend.write(at, bytemuck::cast_slice(p))
    }

    /// The gradients of the last step, laid out as [`Trainer::grads`].
    pub fn grads(&self) -> Result<Vec<f32>> {
        self.read_f32(at(&self.plan.regions.grads), self.trained())
    }

    /// A CPU [`Trainer`] in this one's state — parameters, running statistics, optimizer state
    /// and step count — to save a checkpoint from, evaluate on the host, or go on training.
    pub fn to_cpu(&self) -> Result<Trainer<'static>> {
        let mut cpu = Trainer::new(self.model.clone(), self.cfg)?;
        cpu.params_mut().copy_from_slice(&self.params()?);
        let state = self.read_f32(at(&self.plan.regions.state), self.state_count())?;
        cpu.state_mut().copy_from_slice(&state);
        let opt = cpu.optimizer_state_mut();
        opt.copy_from_slice(&self.read_f32(at(&self.plan.regions.opt), opt.len())?);
        cpu.set_steps(self.step);
        Ok(cpu)
    }

    /// Takes a CPU trainer's state (a restored checkpoint, say): the same architecture's
    /// parameters, running statistics, optimizer state and step count.
    pub fn load_cpu(&mut self, cpu: &Trainer<'_>) -> Result<()> {
        if cpu.model().nodes != self.model.nodes || cpu.config().optimizer != self.cfg.optimizer {
            return config_err(
                "loading a CPU trainer onto the device",
                "its model or optimizer differs from this trainer's",
            );
        }
        self.set_params(cpu.params())?;
        let r = &self.plan.regions;
        let (state, opt) = (at(&r.state), at(&r.opt));
        self.backend
            .write(state, bytemuck::cast_slice(cpu.state()))?;
        let o = cpu.optimizer_state();
        self.backend.write(opt, bytemuck::cast_slice(o))?;
        self.step = cpu.steps();
        Ok(())
    }

    /// Tensor `t`'s buffer (byte offset).
    fn tensor(&self, t: usize) -> usize {
        at(&self.plan.tensors[t])
    }

    /// Node `i`'s parameters and their gradients (byte offsets).
    fn param_at(&self, i: usize) -> (usize, usize) {
        let r = &self.plan.regions;
        let p = self.plan.params[i].start;
        let g = p.saturating_sub(self.plan.train_start);
        (at(&r.params) + 4 * p, at(&r.grads) + 4 * g)
    }

    /// Node `i`'s call on `n` samples: its shapes, parameters, saved entries, packed input
    /// and scratch (the tensors are filled in by forward and backward).
    fn call(&self, i: usize, n: usize) -> Call {
        let node = &self.planned.nodes[i];
        let (xs, ys) = self.planned.shapes_of(i);
        let (p, g) = self.param_at(i);
        let mut saved = [0; 4];
        let mut off = at(&self.plan.ctx[i]);
        for (s, e) in saved.iter_mut().zip(&node.layer.needs(n, xs, ys, 1).saved) {
            *s = off;
            off += 8 * e.words();
        }
        let packed = match (node.layer.input_save(), &self.plan.packed[i]) {
            (Some(InputSave::Sparse(sp)), Some(pk)) => Some({
                let p = PackedAt {
                    format: pk.format,
                    n: n * xs.numel(),
                    k: sp.kept(n, xs.numel()),
                    at: at(&pk.words),
                };
                (p, pk.packs)
            }),
            _ => None,
        };
        Call {
            n,
            xs,
            ys,
            p,
            g,
            saved,
            packed,
            scratch: self.scratch,
            state: at(&self.plan.regions.state) + 4 * self.plan.state[i].start,
            geom: self.geoms + 88 * i,
            ..Call::default()
        }
    }

    fn forward(&mut self, x: &[f32], n: usize, train: bool) -> Result<()> {
        let x0 = self.tensor(0);
        self.backend.write(x0, bytemuck::cast_slice(x))?;
        for i in 0..self.planned.nodes.len() {
            let node = &self.planned.nodes[i];
            let y = self.tensor(node.output);
            let c = Call {
                x: match self.plan.inplace[i] {
                    true => y,
                    false => self.tensor(node.inputs[0]),
                },
                x2: match node.layer.arity() {
                    2 => self.tensor(node.inputs[1]),
                    _ => 0,
                },
                y,
                saves: train && i >= self.plan.frozen,
                ..self.call(i, n)
            };
            layers::forward(&mut self.backend, &node.layer, &c, &self.work)?;
        }
        Ok(())
    }

    fn backward(&mut self, n: usize) -> Result<()> {
        let plan = &self.plan;
        for i in (plan.frozen..self.planned.nodes.len()).rev() {
            let node = &self.planned.nodes[i];
            let inplace = plan.inplace_bwd[i];
            if !inplace && plan.grads[node.output].is_empty() {
                continue;
            }
            let grad = |t: usize| Some(at(&plan.grads[t])).filter(|_| !plan.grads[t].is_empty());
            let dx = grad(node.inputs[0]);
            let c = Call {
                x: self.tensor(node.inputs[0]),
                dy: match inplace {
                    true => dx.ok_or_else(|| Error::Gpu("in-place backward without dX".into()))?,
                    false => at(&plan.grads[node.output]),
                },
                dx,
                dx2: (node.layer.arity() == 2)
                    .then(|| grad(node.inputs[1]))
                    .flatten(),
                acc: plan.acc[i],
                ..self.call(i, n)
            };
            layers::backward(&mut self.backend, &node.layer, &c, &self.work)?;
        }
        Ok(())
    }

    /// Softmax cross-entropy of the logits of `n` samples: the mean loss and the hits, and with
    /// `grad` the logits replaced by their gradient.
    fn loss(&mut self, labels: &[u32], grad: bool) -> Result<(f32, usize)> {
        let n = labels.len();
        let [lab, loss, hits] = self.rows;
        self.backend.write(lab, bytemuck::cast_slice(labels))?;
        let classes = self.model.classes;
        let ls = self.cfg.label_smoothing;
        let off = ls / classes as f32;
        let on = 1.0 - ls + off;
        let logits = self.tensor(self.model.logits);
        let b = &mut self.backend;
        let args = [
            ptr(b, logits),
            ptr(b, lab),
            Arg::U64(n as u64),
            Arg::U64(classes as u64),
            Arg::F32(on),
            Arg::F32(off),
            Arg::F32(n as f32),
            Arg::I32(grad as i32),
            ptr(b, loss),
            ptr(b, hits),
        ];
        // n rows of logits, n labels, losses and hits.
        run(b, "softmax_ce", Grid::Items(n), &args)?;
        let mut l = vec![0f32; n];
        let mut h = vec![0u32; n];
        b.read(loss, bytemuck::cast_slice_mut(&mut l))?;
        b.read(hits, bytemuck::cast_slice_mut(&mut h))?;
        let total: f64 = l.iter().map(|&v| v as f64).sum();
        let correct = h.iter().map(|&v| v as usize).sum();
        Ok(((total / n as f64) as f32, correct))
    }

    /// Batch norms' staged statistics into their running ones (`apply`), or only whether they
    /// are all finite.
    fn commit(&mut self, n: usize, apply: bool) -> Result<bool> {
        for i in self.plan.frozen..self.planned.nodes.len() {
            let Layer::BatchNorm2d(bn) = &self.planned.nodes[i].layer else {
                continue;
            };
            let c = self.call(i, n);
            if apply {
                layers::batchnorm_commit(&mut self.backend, bn, &c)?;
            } else if !self
                .read_f32(c.saved[2], 2 * bn.c)?
                .iter()
                .all(|v| v.is_finite())
            {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Forward and backward without an update: the loss, and the gradients left for
    /// [`DeviceTrainer::grads`].
    pub fn loss_and_grads(&mut self, x: &[f32], labels: &[u32]) -> Result<StepStats> {
        let n = check_batch(&self.model, self.plan.batch, x, labels)?;
        self.forward(x, n, true)?;
        if self.planned.logits != self.planned.nodes[self.planned.nodes.len() - 1].output
            || self.plan.grads[self.planned.logits] != self.plan.tensors[self.planned.logits]
        {
            return Err(Error::Gpu(
                "the plan does not take the logits' gradient in place".into(),
            ));
        }
        let (loss, correct) = self.loss(labels, true)?;
        let g = &self.plan.regions.grads;
        let (g, len) = (at(g), 8 * g.len());
        self.backend.zero(g, len)?;
        let lr = self.cfg.schedule.lr(self.step);
        if !loss.is_finite() {
            return Ok(StepStats {
                loss,
                correct,
                lr,
                skipped: true,
                grad_norm: f32::NAN,
            });
        }
        self.backward(n)?;
        let count = self.trained();
        let ss = ops::sum_of_squares(&mut self.backend, g, count, &self.work)?;
        let norm = libm::sqrt(ss);
        // A non-finite gradient, or batch statistics that cannot be committed, skips the step.
        let skipped = !norm.is_finite() || !self.commit(n, false)?;
        if !skipped {
            self.commit(n, true)?;
        }
        Ok(StepStats {
            loss,
            correct,
            lr,
            skipped,
            grad_norm: norm as f32,
        })
    }

    /// One training step on a batch (`x`: `n` samples NHWC, `labels`: `n` class indices), as
    /// [`Trainer::step`]: a non-finite loss or gradient skips the update and says so.
    pub fn step(&mut self, x: &[f32], labels: &[u32]) -> Result<StepStats> {
        let stats = self.loss_and_grads(x, labels)?;
        if stats.skipped {
            return Ok(stats);
        }
        self.step += 1;
        let r = &self.plan.regions;
        let (ts, count) = (self.plan.train_start, self.trained());
        let (p, g, s) = (at(&r.params) + 4 * ts, at(&r.grads), at(&r.opt));
        let b = &mut self.backend;
        let clip = self
            .cfg
            .clip_grad_norm
            .map(|max| max / (stats.grad_norm + 1e-6))
            .filter(|&scale| scale < 1.0);
        if let Some(scale) = clip {
            let args = [ptr(b, g), Arg::U64(count as u64), Arg::F32(scale)];
            run(b, "scale", Grid::Items(count), &args)?;
        }
        let opt = self.cfg.optimizer;
        ops::optimizer_update(b, &opt, (stats.lr, self.step), (p, g, s, count))?;
        Ok(stats)
    }

    /// The logits of a batch (`x`: `n` samples NHWC), with running statistics and nothing
    /// saved for backward, written into `out` (`n × classes`, row by row), as
    /// [`Trainer::predict`].
    pub fn predict(&mut self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let n = check_predict(&self.model, self.plan.batch, x, out)?;
        self.forward(x, n, false)?;
        let logits = self.tensor(self.model.logits);
        self.backend.read(logits, bytemuck::cast_slice_mut(out))
    }

    /// Loss and accuracy on a batch, nothing saved for backward.
    pub fn evaluate(&mut self, x: &[f32], labels: &[u32]) -> Result<EvalStats> {
        let n = check_batch(&self.model, self.plan.batch, x, labels)?;
        self.forward(x, n, false)?;
        let (loss, correct) = self.loss(labels, false)?;
        Ok(EvalStats {
            loss,
            correct,
            samples: n,
        })
    }
}
