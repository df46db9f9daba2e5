//! Plan + model + optimizer: `step()`, `evaluate()`, `memory_report()`.

use crate::collections::msg;
#[cfg(feature = "alloc")]
use dropit_simd::format::ValueType;

use crate::arena::{Storage, borrow_words, carve, f32s, f32s_mut};
#[cfg(feature = "alloc")]
use crate::dropit::DropIt;
#[cfg(feature = "alloc")]
use crate::error::try_vec;
use crate::error::{Error, Result, config_err, shape_err};
use crate::init::rng;
use crate::layers::contract::{Input, Mode, Saved, SavedMut};
use crate::layers::loss::softmax_cross_entropy;
use crate::layers::par::MAX_THREADS;
use crate::layers::{Bwd, Fwd, Needs, PackedMutRef, Rebuilder};
use crate::model::Model;
use crate::optim::{Optimizer, Schedule};
use crate::plan::{Plan, plan};
use crate::rebuild::MAX_CHAIN;
use crate::report::MemoryReport;
use crate::shape::Shape;
use core::ops::Range;
use heapless::Vec as HVec;

/// How to train.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct TrainerConfig {
    /// Largest batch a step takes (the plan is sized for it).
    pub batch: usize,
    /// The optimizer.
    pub optimizer: Optimizer,
    /// The learning-rate schedule.
    pub schedule: Schedule,
    /// Seed of the parameter initialisation.
    pub seed: u64,
    /// Label smoothing ε of the loss.
    pub label_smoothing: f32,
    /// Worker threads (1 = run on the caller's thread).
    pub threads: usize,
    /// Clip the gradients' total L2 norm to this before each update, as PyTorch's
    /// `clip_grad_norm_(max_norm)`: every gradient is scaled by `max / (norm + 1e-6)` when that
    /// is below 1. `None` (the default) leaves them as they are.
    #[serde(default)]
    pub clip_grad_norm: Option<f32>,
    /// Rebuild, in backward, a layer input that can be rebuilt from what another layer keeps
    /// anyway (a norm's x̂, GELU's input) instead of keeping it, wherever the plan gets smaller
    /// (README, *Keep only what cannot be rebuilt*). On by default; from an f32 context the
    /// results are bitwise those without it, except that a DropIT layer whose input is rebuilt
    /// computes its weight gradient exactly.
    #[serde(default = "yes")]
    pub rebuild_inputs: bool,
}

fn yes() -> bool {
    true
}

impl TrainerConfig {
    /// The reference SGD recipe (README, *Reference workloads*): momentum 0.9, lr 0.05, weight decay 5e-4, cosine over
    /// `total_steps`.
    pub fn sgd_recipe(batch: usize, total_steps: u64) -> Self {
        TrainerConfig {
            batch,
            optimizer: Optimizer::sgd(0.9, 5e-4),
            schedule: Schedule::cosine(0.05, total_steps),
            seed: 0,
            label_smoothing: 0.0,
            threads: 1,
            clip_grad_norm: None,
            rebuild_inputs: true,
        }
    }

    /// The reference transformer recipe: AdamW, lr 1e-3, weight decay 0.05, cosine over
    /// `total_steps`.
    pub fn adamw_recipe(batch: usize, total_steps: u64) -> Self {
        TrainerConfig {
            optimizer: Optimizer::adamw(0.05),
            schedule: Schedule::cosine(1e-3, total_steps),
            ..Self::sgd_recipe(batch, total_steps)
        }
    }
}

impl TrainerConfig {
    /// Checks every setting the way PyTorch's optimizers do: a finite, non-negative learning
    /// rate (and decay floor), momentum and Adam's betas in [0, 1), a positive finite eps, a
    /// finite non-negative weight decay, label smoothing in [0, 1), at least one sample and one
    /// thread. The error names the setting and the value.
    pub fn validate(&self) -> Result<()> {
        use crate::optim::{Decay, Optimizer};
        let bad =
            |what: &str, v: f32, rule: &str| config_err::<()>(what, msg!("{v} is not {rule}"));
        let unit = |what: &str, v: f32| match (0.0..1.0).contains(&v) {
            true => Ok(()),
            false => bad(what, v, "in [0, 1)"),
        };
        let nonneg = |what: &str, v: f32| match v.is_finite() && v >= 0.0 {
            true => Ok(()),
            false => bad(what, v, "finite and ≥ 0"),
        };
        match self.optimizer {
            Optimizer::Sgd {
                momentum,
                weight_decay,
                ..
            } => {
                unit("SGD momentum", momentum)?;
                nonneg("SGD weight decay", weight_decay)?;
            }
            Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                unit("AdamW beta1", beta1)?;
                unit("AdamW beta2", beta2)?;
                if !(eps.is_finite() && eps > 0.0) {
                    bad("AdamW eps", eps, "finite and > 0")?;
                }
                nonneg("AdamW weight decay", weight_decay)?;
            }
        }
        nonneg("learning rate", self.schedule.base_lr)?;
        match self.schedule.decay {
            Decay::Constant => {}
            Decay::Cosine { min_lr, .. } => nonneg("cosine schedule's final rate", min_lr)?,
            Decay::Step { every, gamma } => {
                nonneg("step schedule's factor", gamma)?;
                if every == 0 {
                    return config_err("step schedule's period", "0 steps");
                }
            }
        }
        unit("label smoothing", self.label_smoothing)?;
        if let Some(m) = self.clip_grad_norm
            && !(m.is_finite() && m > 0.0)
        {
            bad("gradient clipping norm", m, "finite and > 0")?;
        }
        if self.batch == 0 {
            return config_err("batch size", "must be at least 1");
        }
        if self.threads == 0 || self.threads > MAX_THREADS {
            return config_err(
                "threads",
                msg!("{} is not in 1..={MAX_THREADS}", self.threads),
            );
        }
        Ok(())
    }
}

/// What one training step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Mean loss of the batch.
    pub loss: f32,
    /// Samples whose arg-max was the label.
    pub correct: usize,
    /// Learning rate used.
    pub lr: f32,
    /// The loss or a gradient was not finite: no update was made.
    pub skipped: bool,
    /// The gradients' total L2 norm before any clipping (not finite when skipped for it).
    pub grad_norm: f32,
}

/// Loss and accuracy over evaluated batches.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct EvalStats {
    /// Mean loss.
    pub loss: f32,
    /// Samples whose arg-max was the label.
    pub correct: usize,
    /// Samples evaluated.
    pub samples: usize,
}

/// Trains a model in one planned block of memory; steps allocate nothing.
pub struct Trainer<'a> {
    model: Model,
    cfg: TrainerConfig,
    plan: Plan,
    arena: Storage<'a>,
    step: u64,
    /// The trainer's own workers (built once, so steps start no threads).
    #[cfg(feature = "parallel")]
    pool: Option<rayon::ThreadPool>,
    /// Workers of `pool` that have exited (dropping the trainer waits for all of them).
    #[cfg(feature = "parallel")]
    exited: alloc::sync::Arc<core::sync::atomic::AtomicUsize>,
    /// Wall time per node, forward and backward, while [`Trainer::time_layers`] is on.
    #[cfg(feature = "std")]
    times: Option<alloc::vec::Vec<[core::time::Duration; 2]>>,
}

#[cfg(feature = "alloc")]
impl Trainer<'static> {
    /// Bytes a trainer holds beyond its arena (the plan's tables, the model's names, worker
    /// handles), at most: the measured peak of training is the arena plus at most this.
    pub const BOOKKEEPING_MAX: usize = 64 * 1024;

    /// γ values tried by [`Trainer::with_budget`], least dropping first.
    pub const BUDGET_GAMMAS: [f32; 7] = [0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95];

    /// Fits training in `budget` bytes: tries γ from [`Trainer::BUDGET_GAMMAS`] in order, and
    /// for each γ the formats from exact to lean (f32 kept values; bf16 kept values; lean with
    /// bf16 norms; lean, whose norms keep 8-bit x̂), on top of `base`'s other settings, and
    /// builds the first plan
    /// whose arena plus [`Trainer::BOOKKEEPING_MAX`] fits. Returns the trainer and the policy
    /// chosen, or [`Error::BudgetTooSmall`] with the smallest plan's size.
    pub fn with_budget(
        model: Model,
        cfg: TrainerConfig,
        base: &DropIt,
        budget: usize,
    ) -> Result<(Self, DropIt)> {
        let mut needed = usize::MAX;
        for gamma in Self::BUDGET_GAMMAS {
            for (values, lean, int8_norms) in [
                (ValueType::F32, false, false),
                (ValueType::Bf16, false, false),
                (ValueType::Bf16, true, false),
                (ValueType::Bf16, true, true),
            ] {
                let policy = DropIt {
                    gamma,
                    values,
                    lean,
                    int8_norms,
                    ..base.clone()
                };
                let candidate = model.clone().with_dropit(&policy)?;
                let bytes =
                    Self::plan_bytes(&candidate, &cfg)?.saturating_add(Self::BOOKKEEPING_MAX);
                if bytes <= budget {
                    return Ok((Self::new(candidate, cfg)?, policy));
                }
                needed = needed.min(bytes);
            }
        }
        Err(Error::BudgetTooSmall { needed })
    }

    /// Plans `model` and allocates its arena (the only allocation of its working memory). An
    /// arena the system cannot give is an error, not an abort.
    pub fn new(model: Model, cfg: TrainerConfig) -> Result<Self> {
        let plan = Self::checked_plan(&model, &cfg)?;
        let words = try_vec(plan.total_words, 0u64)?;
        Self::finish(model, cfg, plan, Storage::Owned(words))
    }
}

impl<'a> Trainer<'a> {
    /// Plans `model` inside a caller-provided buffer, so that training needs no allocator at all
    /// for its working memory. [`Trainer::plan_bytes`] tells how large the buffer must be.
    pub fn with_arena(model: Model, cfg: TrainerConfig, buf: &'a mut [u8]) -> Result<Self> {
        let plan = Self::checked_plan(&model, &cfg)?;
        let words = borrow_words(buf, plan.total_words)?;
        words.fill(0);
        Self::finish(model, cfg, plan, Storage::Borrowed(words))
    }

    /// Bytes of arena `model` needs under `cfg` (8 more cover aligning a borrowed buffer).
    pub fn plan_bytes(model: &Model, cfg: &TrainerConfig) -> Result<usize> {
        Ok(Self::checked_plan(model, cfg)?.total_words * 8)
    }

    fn checked_plan(model: &Model, cfg: &TrainerConfig) -> Result<Plan> {
        cfg.validate()?;
        model.check_shapes()?;
        if cfg.threads > 1 && !cfg!(feature = "parallel") {
            return config_err("threads", "more than one needs the `parallel` feature");
        }
        plan(
            model,
            cfg.batch,
            cfg.optimizer.state_slots(),
            cfg.threads,
            cfg.rebuild_inputs,
        )
    }

    fn finish(
        model: Model,
        cfg: TrainerConfig,
        plan: Plan,
        mut arena: Storage<'a>,
    ) -> Result<Self> {
        let mut r = rng(cfg.seed);
        let w = arena.words();
        let [p, s] = carve(w, [plan.regions.params.clone(), plan.regions.state.clone()])?;
        let (p, s) = (f32s_mut(p), f32s_mut(s));
        for (i, n) in model.nodes.iter().enumerate() {
            n.layer.init(
                &mut p[plan.params[i].clone()],
                &mut s[plan.state[i].clone()],
                &mut r,
            );
        }
        #[cfg(feature = "parallel")]
        let exited = alloc::sync::Arc::new(core::sync::atomic::AtomicUsize::new(0));
        #[cfg(feature = "parallel")]
        let pool = match cfg.threads {
            1 => None,
            t => Some(
                rayon::ThreadPoolBuilder::new()
                    .num_threads(t)
                    .exit_handler({
                        let exited = exited.clone();
                        move |_| {
                            exited.fetch_add(1, core::sync::atomic::Ordering::Release);
                        }
                    })
                    .build()
                    .map_err(|e| Error::Config {
                        what: "threads".into(),
                        detail: msg!("cannot start {t} workers: {e}"),
                    })?,
            ),
        };
        #[cfg(feature = "parallel")]
        if let Some(p) = &pool {
            // Workers set up their queues on first use: do it now, not in the first step.
            use rayon::prelude::*;
            p.broadcast(|_| ());
            p.install(|| [0u8; MAX_THREADS * 4].par_iter_mut().for_each(|b| *b = 1));
        }
        Ok(Trainer {
            model,
            cfg,
            plan,
            arena,
            step: 0,
            #[cfg(feature = "parallel")]
            pool,
            #[cfg(feature = "parallel")]
            exited,
            #[cfg(feature = "std")]
            times: None,
        })
    }

    /// Starts (from zero) or stops timing each layer's forward and backward calls, for
    /// [`Trainer::layer_times`]. Off by default: timing reads the clock twice per layer call.
    #[cfg(feature = "std")]
    pub fn time_layers(&mut self, on: bool) {
        self.times =
            on.then(|| alloc::vec![[core::time::Duration::ZERO; 2]; self.model.nodes.len()]);
    }

    /// Wall time spent in each node's forward and backward calls (in the order of
    /// [`Model::nodes`]) since [`Trainer::time_layers`] turned timing on; `None` when off.
    #[cfg(feature = "std")]
    pub fn layer_times(&self) -> Option<&[[core::time::Duration; 2]]> {
        self.times.as_deref()
    }

    /// The model.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// How it trains.
    pub fn config(&self) -> &TrainerConfig {
        &self.cfg
    }

    /// Sets the step count (a restored checkpoint's): the schedule and AdamW's bias
    /// correction continue from it.
    #[cfg(feature = "alloc")]
    pub(crate) fn set_steps(&mut self, step: u64) {
        self.step = step;
    }

    /// The optimizer state: for each state slot in turn (SGD: momentum; AdamW: first, then
    /// second moment), one float per trained parameter, laid out as [`Trainer::grads`].
    #[cfg(feature = "alloc")]
    pub(crate) fn optimizer_state(&self) -> &[f32] {
        let r = &self.plan.regions.opt;
        let n = self.trained_count() * self.cfg.optimizer.state_slots();
        &f32s(&self.arena.words_ref()[r.clone()])[..n]
    }

    /// The same, writable.
    #[cfg(feature = "alloc")]
    pub(crate) fn optimizer_state_mut(&mut self) -> &mut [f32] {
        let r = self.plan.regions.opt.clone();
        let n = self.trained_count() * self.cfg.optimizer.state_slots();
        &mut f32s_mut(&mut self.arena.words()[r])[..n]
    }

    /// Trained parameters (those from [`Trainer::param_range`] of the first unfrozen node on).
    #[cfg(feature = "alloc")]
    pub(crate) fn trained_count(&self) -> usize {
        self.plan.params.last().map_or(0, |p| p.end) - self.plan.train_start
    }

    /// First trained parameter.
    #[cfg(feature = "alloc")]
    pub(crate) fn train_start(&self) -> usize {
        self.plan.train_start
    }

    /// Bytes of the arena.
    pub fn arena_bytes(&self) -> usize {
        self.plan.total_words * 8
    }

    /// All parameters, node by node (each node's slice is [`Trainer::param_range`]).
    pub fn params(&self) -> &[f32] {
        let r = &self.plan.regions.params;
        &f32s(&self.arena.words_ref()[r.clone()])[..self.plan.params.last().map_or(0, |p| p.end)]
    }

    /// All parameters, writable (for loading weights or probing gradients).
    pub fn params_mut(&mut self) -> &mut [f32] {
        let r = self.plan.regions.params.clone();
        let end = self.plan.params.last().map_or(0, |p| p.end);
        &mut f32s_mut(&mut self.arena.words()[r])[..end]
    }

    /// Gradients of the last step, laid out as [`Trainer::params`] from the first trained
    /// parameter on (all of them unless the model has frozen nodes).
    pub fn grads(&self) -> &[f32] {
        let r = &self.plan.regions.grads;
        let end = self.plan.params.last().map_or(0, |p| p.end);
        &f32s(&self.arena.words_ref()[r.clone()])[..end - self.plan.train_start]
    }

    /// Copies the parameters and running statistics of a trainer of the same architecture (to
    /// fine-tune a model trained elsewhere, say, in a trainer of another arena or batch size).
    pub fn copy_weights_from(&mut self, other: &Trainer<'_>) -> Result<()> {
        let (p, s) = (&self.plan, &other.plan);
        let counts = |pl: &Plan| {
            (
                pl.params.last().map_or(0, |r| r.end),
                pl.state.last().map_or(0, |r| r.end),
            )
        };
        if p.params != s.params || p.state != s.state {
            return shape_err(
                "copy_weights_from",
                format_args!("(parameters, running statistics) {:?}", counts(p)),
                format_args!("{:?} laid out differently", counts(s)),
            );
        }
        let (np, ns) = counts(p);
        let (src, dst) = (other.arena.words_ref(), &mut *self.arena.words());
        let pairs = [
            (&p.regions.params, &s.regions.params, np),
            (&p.regions.state, &s.regions.state, ns),
        ];
        for (d, from, n) in pairs {
            f32s_mut(&mut dst[d.clone()])[..n].copy_from_slice(&f32s(&src[from.clone()])[..n]);
        }
        Ok(())
    }

    /// All running statistics, node by node (each node's slice is [`Trainer::state_range`]).
    pub fn state(&self) -> &[f32] {
        let r = &self.plan.regions.state;
        &f32s(&self.arena.words_ref()[r.clone()])[..self.plan.state.last().map_or(0, |s| s.end)]
    }

    /// All running statistics, writable.
    pub fn state_mut(&mut self) -> &mut [f32] {
        let r = self.plan.regions.state.clone();
        let end = self.plan.state.last().map_or(0, |s| s.end);
        &mut f32s_mut(&mut self.arena.words()[r])[..end]
    }

    /// Where node `node`'s running statistics lie in [`Trainer::state`].
    pub fn state_range(&self, node: usize) -> core::ops::Range<usize> {
        self.plan.state[node].clone()
    }

    /// Every declared parameter and running statistic, in node order: `(node, declaration,
    /// offset into params() (trained) or state())`.
    pub(crate) fn declared(
        &self,
    ) -> impl Iterator<Item = (usize, crate::layers::contract::ParamDecl, usize)> + '_ {
        self.model
            .nodes
            .iter()
            .enumerate()
            .flat_map(move |(i, node)| {
                let (mut p, mut s) = (self.param_range(i).start, self.state_range(i).start);
                node.layer.params().into_iter().map(move |decl| {
                    let at = if decl.trained { &mut p } else { &mut s };
                    let here = *at;
                    *at += decl.len();
                    (i, decl, here)
                })
            })
    }

    /// Where node `node`'s parameters lie in [`Trainer::params`].
    pub fn param_range(&self, node: usize) -> core::ops::Range<usize> {
        self.plan.params[node].clone()
    }

    fn check_batch(&self, x: &[f32], labels: &[u32]) -> Result<usize> {
        check_batch(&self.model, self.plan.batch, x, labels)
    }

    fn forward(&mut self, x: &[f32], n: usize, train: bool) -> Result<()> {
        let plan = &self.plan;
        let w = self.arena.words();
        f32s_mut(&mut w[plan.tensors[0].clone()])[..x.len()].copy_from_slice(x);
        for (i, node) in self.model.nodes.iter().enumerate() {
            let mode = match (i < plan.frozen, train) {
                (true, _) => Mode::Frozen,
                (false, true) => Mode::Train,
                (false, false) => Mode::Eval,
            };
            let inplace = plan.inplace[i];
            let two = node.layer.arity() == 2;
            let tensors = [
                (!inplace).then(|| plan.tensors[node.inputs[0]].clone()),
                two.then(|| plan.tensors[node.inputs[1]].clone()),
                Some(plan.tensors[node.output].clone()),
                None,
            ];
            let call = Call::new(&self.model, plan, i, n, self.cfg.threads);
            let v = call.carve(w, tensors, plan.regions.state.clone(), Default::default())?;
            let [x, x2, y, _] = v.tensors;
            let pk = plan.packed[i].as_ref();
            let mut f = Fwd {
                n,
                x_shape: call.xs,
                y_shape: call.ys,
                mode,
                x: match x {
                    Some(x) => Input::Buf(&f32s(x)[..call.x_len()]),
                    None => Input::InPlace,
                },
                x2: x2.map(|x2| &f32s(x2)[..call.x_len()]),
                y: &mut f32s_mut(y.unwrap_or_default())[..call.y_len()],
                p: &f32s(v.params)[plan.params[i].clone()],
                state: &mut f32s_mut(v.aux)[plan.state[i].clone()],
                saved: SavedMut::split(v.ctx, &call.needs.saved)?,
                scratch: v.scratch,
                threads: self.cfg.threads,
                seed: step_seed(self.cfg.seed, self.step, i),
                packed: pk.map(|p| PackedMutRef {
                    words: v.packed,
                    format: p.format,
                    packs: p.packs,
                }),
            };
            #[cfg(feature = "std")]
            let start = self.times.is_some().then(std::time::Instant::now);
            node.layer.forward(&mut f)?;
            #[cfg(feature = "std")]
            if let (Some(t), Some(start)) = (self.times.as_mut(), start) {
                t[i][0] += start.elapsed();
            }
        }
        Ok(())
    }

    fn backward(&mut self, n: usize) -> Result<()> {
        let plan = &self.plan;
        let w = self.arena.words();
        let trained = self.model.nodes.len() - plan.frozen;
        for (i, node) in self.model.nodes.iter().enumerate().rev().take(trained) {
            let inplace = plan.inplace_bwd[i];
            if !inplace && plan.grads[node.output].is_empty() {
                // No gradient is of use here (no parameters up the graph): nothing to do.
                continue;
            }
            let grad = |t: usize| Some(plan.grads[t].clone()).filter(|r| !r.is_empty());
            let call = Call::new(&self.model, plan, i, n, self.cfg.threads);
            let rebuilt = plan.rebuilt[i].as_ref();
            // The nodes that rebuild the input, and their declarations (their saved contexts
            // are carved with this node's views).
            let links: HVec<(usize, Needs), MAX_CHAIN> = rebuilt
                .map(|r| {
                    r.chain
                        .iter()
                        .map(|&c| {
                            (
                                c,
                                Call::new(&self.model, plan, c, n, self.cfg.threads).needs,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default();
            let held = call.needs.holds_input;
            let tensors = [
                match rebuilt {
                    Some(r) => r.words.clone(),
                    None => held.then(|| plan.tensors[node.inputs[0]].clone()),
                },
                (!inplace).then(|| plan.grads[node.output].clone()),
                grad(node.inputs[0]),
                (node.layer.arity() == 2)
                    .then(|| grad(node.inputs[1]))
                    .flatten(),
            ];
            let chain_ctx =
                core::array::from_fn(|j| links.get(j).map_or(0..0, |(c, _)| plan.ctx[*c].clone()));
            let v = call.carve(w, tensors, plan.regions.grads.clone(), chain_ctx)?;
            let [x, dy, dx, dx2] = v.tensors;
            let params: &[u64] = v.params;
            let rebuilder = Rebuilder {
                links: links
                    .iter()
                    .zip(v.chain)
                    .map(|((c, needs), ctx)| {
                        let p = &f32s(params)[plan.params[*c].clone()];
                        Ok((
                            &self.model.nodes[*c].layer,
                            p,
                            Saved::split(ctx, &needs.saved)?,
                        ))
                    })
                    .collect::<Result<_>>()?,
            };
            let x = x.map(|x| &mut f32s_mut(x)[..call.x_len()]);
            // Rebuilt whole into its planned buffer, or piece by piece by the layer.
            let pieces = match (rebuilt, x) {
                (Some(_), Some(x)) => {
                    rebuilder.fill_all(x, n, self.cfg.threads)?;
                    (None, Some(&*x))
                }
                (Some(_), None) => (Some(&rebuilder), None),
                (None, x) => (None, x.map(|x| &*x)),
            };
            let (ts, pr) = (plan.train_start, plan.params[i].clone());
            let mut b = Bwd {
                n,
                x_shape: call.xs,
                y_shape: call.ys,
                x: pieces.1,
                rebuild: pieces.0,
                dy: match dy {
                    Some(dy) => Input::Buf(&f32s(dy)[..call.y_len()]),
                    None => Input::InPlace,
                },
                dx: dx.map(|dx| &mut f32s_mut(dx)[..call.x_len()]),
                dx2: dx2.map(|dx| &mut f32s_mut(dx)[..call.x_len()]),
                acc: plan.acc[i][0],
                acc2: plan.acc[i][1],
                p: &f32s(params)[pr.clone()],
                g: &mut f32s_mut(v.aux)[pr.start - ts..pr.end - ts],
                saved: Saved::split(v.ctx, &call.needs.saved)?,
                scratch: v.scratch,
                threads: self.cfg.threads,
                packed: plan.packed[i].as_ref().map(|p| (&*v.packed, p.format)),
            };
            #[cfg(feature = "std")]
            let start = self.times.is_some().then(std::time::Instant::now);
            node.layer.backward(&mut b)?;
            #[cfg(feature = "std")]
            if let (Some(t), Some(start)) = (self.times.as_mut(), start) {
                t[i][1] += start.elapsed();
            }
        }
        Ok(())
    }

    fn logits(&mut self, n: usize) -> &mut [f32] {
        let r = self.plan.tensors[self.model.logits].clone();
        &mut f32s_mut(&mut self.arena.words()[r])[..n * self.model.classes]
    }

    /// Forward and backward without an update: returns the loss and leaves the gradients in
    /// [`Trainer::grads`]. Batch-norm layers use batch statistics, as in a step, and move their
    /// running statistics only when the loss and every gradient are finite (else `skipped`).
    pub fn loss_and_grads(&mut self, x: &[f32], labels: &[u32]) -> Result<StepStats> {
        self.with_workers(|t| t.loss_and_grads_here(x, labels))
    }

    /// Runs `f` on one of the trainer's workers (or right here with one thread). With several
    /// threads, a second worker polls for work while `f` runs rather than sleeping between the
    /// layers' parallel regions (waking a sleeping thread costs tens of microseconds a region).
    ///
    /// With `threads > 1`, each [`Trainer::step`] called from outside hands one job to the
    /// worker pool, and rayon's job queue allocates a small block every 63 such hand-overs; a
    /// training loop run inside `with_workers` hands over nothing and allocates nothing.
    ///
    /// ```
    /// # use dropit::{Model, Trainer, TrainerConfig};
    /// let mut cfg = TrainerConfig::sgd_recipe(4, 100);
    /// cfg.threads = 2;
    /// let mut t = Trainer::new(Model::mlp()?, cfg)?;
    /// let (x, y) = (vec![0.1f32; 4 * 784], [1u32, 2, 3, 4]);
    /// t.with_workers(|t| (0..3).try_for_each(|_| t.step(&x, &y).map(drop)))?;
    /// # Ok::<(), dropit::Error>(())
    /// ```
    pub fn with_workers<R: Send>(&mut self, f: impl FnOnce(&mut Self) -> R + Send) -> R {
        Self::workers_for(self, |t| Some(t), f)
    }

    /// [`Trainer::with_workers`] for a value `c` that may hold a trainer (`get` finds it):
    /// `f(c)` runs on that trainer's workers, or right here.
    #[cfg_attr(not(feature = "parallel"), allow(unused_variables))]
    pub(crate) fn workers_for<C: Send + ?Sized, R: Send>(
        c: &mut C,
        get: fn(&mut C) -> Option<&mut Self>,
        f: impl FnOnce(&mut C) -> R + Send,
    ) -> R {
        #[cfg(feature = "parallel")]
        if let Some(t) = get(c)
            && let Some(pool) = t.pool.take()
        {
            let awake = t.cfg.threads > 1;
            let r = pool.install(|| crate::layers::par::with_helper(awake, || f(&mut *c)));
            if let Some(t) = get(c) {
                t.pool = Some(pool);
            }
            return r;
        }
        f(c)
    }

    fn loss_and_grads_here(&mut self, x: &[f32], labels: &[u32]) -> Result<StepStats> {
        let n = self.check_batch(x, labels)?;
        self.forward(x, n, true)?;
        let (classes, ls) = (self.model.classes, self.cfg.label_smoothing);
        let out = softmax_cross_entropy(self.logits(n), labels, classes, ls, true);
        let g = self.plan.regions.grads.clone();
        let g = &mut self.arena.words()[g];
        let chunk = crate::layers::par::elem_chunk(g.len(), self.cfg.threads);
        crate::layers::par::each(g.chunks_mut(chunk), |c| {
            c.fill(0);
            Ok(())
        })?;
        let lr = self.cfg.schedule.lr(self.step);
        if !out.loss.is_finite() {
            return Ok(StepStats {
                loss: out.loss,
                correct: out.correct,
                lr,
                skipped: true,
                grad_norm: f32::NAN,
            });
        }
        self.backward(n)?;
        // The norm in f64 cannot overflow, so it is finite exactly when every gradient is.
        let norm = libm::sqrt(dropit_simd::reduce::sum_of_squares(self.grads()));
        // A non-finite gradient (from a finite loss), or staged state that cannot be committed
        // (a batch norm variance that overflowed), is skipped like a non-finite loss.
        let skipped = !norm.is_finite() || !self.commit(n, false)?;
        if !skipped {
            self.commit(n, true)?;
        }
        Ok(StepStats {
            loss: out.loss,
            correct: out.correct,
            lr,
            skipped,
            grad_norm: norm as f32,
        })
    }

    /// The accepted step's staged state (batch norm's running statistics) into place; with
    /// `apply` false, only whether every layer can commit.
    fn commit(&mut self, n: usize, apply: bool) -> Result<bool> {
        let plan = &self.plan;
        let w = self.arena.words();
        for (i, node) in self.model.nodes.iter().enumerate().skip(plan.frozen) {
            let call = Call::new(&self.model, plan, i, n, self.cfg.threads);
            let v = call.carve(
                w,
                [None, None, None, None],
                plan.regions.state.clone(),
                Default::default(),
            )?;
            let saved = Saved::split(v.ctx, &call.needs.saved)?;
            if !apply {
                if !node.layer.can_commit(&saved) {
                    return Ok(false);
                }
                continue;
            }
            let state = &mut f32s_mut(v.aux)[plan.state[i].clone()];
            node.layer.commit(state, &saved)?;
        }
        Ok(true)
    }

    /// One training step on a batch (`x`: `n` samples NHWC, `labels`: `n` class indices).
    /// A non-finite loss or gradient skips the step and says so: parameters, optimizer state,
    /// running statistics and the step count are untouched.
    pub fn step(&mut self, x: &[f32], labels: &[u32]) -> Result<StepStats> {
        let stats = self.loss_and_grads(x, labels)?;
        if stats.skipped {
            return Ok(stats);
        }
        self.step += 1;
        self.with_workers(|t| t.update(&stats))?;
        Ok(stats)
    }

    /// The optimizer's update after an accepted step, shared out among the workers.
    fn update(&mut self, stats: &StepStats) -> Result<()> {
        let r = &self.plan.regions;
        let [p, g, s] = carve(
            self.arena.words(),
            [r.params.clone(), r.grads.clone(), r.opt.clone()],
        )?;
        let (np, ts) = (
            self.plan.params.last().map_or(0, |p| p.end),
            self.plan.train_start,
        );
        let slots = self.cfg.optimizer.state_slots();
        let s = &mut f32s_mut(s)[..slots * (np - ts)];
        let (p, g) = (&mut f32s_mut(p)[ts..np], &mut f32s_mut(g)[..np - ts]);
        let clip = self
            .cfg
            .clip_grad_norm
            .map(|max| max / (stats.grad_norm + 1e-6))
            .filter(|&scale| scale < 1.0);
        let (opt, threads) = (self.cfg.optimizer, self.cfg.threads);
        opt.update_split(stats.lr, self.step, p, g, s, clip, threads)
    }

    /// Loss and accuracy on a batch, with running statistics and nothing saved for backward.
    pub fn evaluate(&mut self, x: &[f32], labels: &[u32]) -> Result<EvalStats> {
        self.with_workers(|t| t.evaluate_here(x, labels))
    }

    fn evaluate_here(&mut self, x: &[f32], labels: &[u32]) -> Result<EvalStats> {
        let n = self.check_batch(x, labels)?;
        self.forward(x, n, false)?;
        let (classes, ls) = (self.model.classes, self.cfg.label_smoothing);
        let out = softmax_cross_entropy(self.logits(n), labels, classes, ls, false);
        Ok(EvalStats {
            loss: out.loss,
            correct: out.correct,
            samples: n,
        })
    }

    /// The logits of a batch (`x`: `n` samples NHWC), with running statistics and nothing saved
    /// for backward, written into `out` (`n × classes`, row by row).
    pub fn predict(&mut self, x: &[f32], out: &mut [f32]) -> Result<()> {
        self.with_workers(|t| t.predict_here(x, out))
    }

    fn predict_here(&mut self, x: &[f32], out: &mut [f32]) -> Result<()> {
        let n = check_predict(&self.model, self.plan.batch, x, out)?;
        self.forward(x, n, false)?;
        out.copy_from_slice(self.logits(n));
        Ok(())
    }

    /// Every buffer of the plan: per layer, and totals by category.
    pub fn memory_report(&self) -> MemoryReport {
        MemoryReport::new(&self.model, &self.plan)
    }
}

/// Dropping a trainer with workers waits (up to a second) until they have exited, so that
/// nothing of it runs — or allocates, or frees — after it is gone.
#[cfg(feature = "parallel")]
impl Drop for Trainer<'_> {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        let workers = pool.current_num_threads();
        drop(pool);
        let start = std::time::Instant::now();
        while self.exited.load(core::sync::atomic::Ordering::Acquire) < workers
            && start.elapsed() < core::time::Duration::from_secs(1)
        {
            std::thread::yield_now();
        }
    }
}

/// The samples of a batch for a model planned for `batch`: 1 to `batch` labels, as many
/// inputs, every label a class — or an error saying which is wrong.
pub(crate) fn check_batch(model: &Model, batch: usize, x: &[f32], labels: &[u32]) -> Result<usize> {
    let n = labels.len();
    if n == 0 || n > batch {
        return Err(Error::Batch {
            given: n,
            planned: batch,
        });
    }
    let per = model.input_shape().numel();
    if x.len() != n * per {
        return shape_err(
            "input batch",
            msg!(
                "{n} samples of {} = {} floats",
                model.input_shape(),
                n * per
            ),
            msg!("{} floats", x.len()),
        );
    }
    if let Some((index, &label)) = labels
        .iter()
        .enumerate()
        .find(|(_, l)| **l as usize >= model.classes)
    {
        return Err(Error::Label {
            index,
            label,
            classes: model.classes,
        });
    }
    Ok(n)
}

/// The samples of a batch to predict, and that `out` holds their logits.
pub(crate) fn check_predict(model: &Model, batch: usize, x: &[f32], out: &[f32]) -> Result<usize> {
    let per = model.input_shape().numel();
    let n = x.len() / per.max(1);
    if n == 0 || n > batch || n * per != x.len() {
        return shape_err(
            "predict: input batch",
            msg!(
                "1 to {batch} samples of {} ({per} floats each)",
                model.input_shape()
            ),
            msg!("{} floats", x.len()),
        );
    }
    let classes = model.classes;
    if out.len() != n * classes {
        return shape_err(
            "predict: logits",
            msg!("{n} × {classes} = {} floats", n * classes),
            msg!("{} floats", out.len()),
        );
    }
    Ok(n)
}

/// One node's call, forward or backward, on `n` samples: its shapes and its declaration for
/// `n` (the saved entries are split for the samples at hand, inside the planned context).
struct Call<'p> {
    xs: Shape,
    ys: Shape,
    n: usize,
    needs: Needs,
    plan: &'p Plan,
    node: usize,
}

/// A node's disjoint views of the arena for one call.
struct Views<'w> {
    /// Up to four tensors (forward: x, x2, y; backward: x, dy, dx, dx2).
    tensors: [Option<&'w mut [u64]>; 4],
    params: &'w mut [u64],
    /// Running statistics (forward) or gradients (backward).
    aux: &'w mut [u64],
    ctx: &'w mut [u64],
    scratch: &'w mut [u64],
    packed: &'w mut [u64],
    /// The saved contexts of the nodes that rebuild the input (backward).
    chain: [&'w mut [u64]; MAX_CHAIN],
}

impl<'p> Call<'p> {
    fn new(model: &Model, plan: &'p Plan, node: usize, n: usize, threads: usize) -> Self {
        let (xs, ys) = model.shapes_of(node);
        let needs = if node < plan.frozen {
            Needs::none()
        } else {
            let needs = model.nodes[node].layer.needs(n, xs, ys, threads);
            crate::plan::as_planned(plan, node, needs)
        };
        Call {
            xs,
            ys,
            n,
            needs,
            plan,
            node,
        }
    }

    fn x_len(&self) -> usize {
        self.n * self.xs.numel()
    }

    fn y_len(&self) -> usize {
        self.n * self.ys.numel()
    }

    /// The one carve of a node's regions, shared by forward and backward.
    fn carve<'w>(
        &self,
        w: &'w mut [u64],
        tensors: [Option<Range<usize>>; 4],
        aux: Range<usize>,
        chain: [Range<usize>; MAX_CHAIN],
    ) -> Result<Views<'w>> {
        let (plan, i) = (self.plan, self.node);
        let ctx = plan.ctx[i].clone();
        if self.needs.saved_words() > ctx.len() {
            return config_err(
                "saved context",
                msg!("node {i} declares more than was planned"),
            );
        }
        let some = tensors.each_ref().map(Option::is_some);
        let [t0, t1, t2, t3] = tensors.map(Option::unwrap_or_default);
        let [c0, c1, c2, c3] = chain;
        let [
            t0,
            t1,
            t2,
            t3,
            params,
            aux,
            ctx,
            scratch,
            packed,
            c0,
            c1,
            c2,
            c3,
        ] = carve(
            w,
            [
                t0,
                t1,
                t2,
                t3,
                plan.regions.params.clone(),
                aux,
                ctx,
                plan.regions.scratch.clone(),
                plan.packed[i].as_ref().map_or(0..0, |p| p.words.clone()),
                c0,
                c1,
                c2,
                c3,
            ],
        )?;
        let mut on = some.into_iter();
        let ts = [t0, t1, t2, t3].map(|t| on.next().unwrap_or(false).then_some(t));
        Ok(Views {
            tensors: ts,
            params,
            aux,
            ctx,
            scratch,
            packed,
            chain: [c0, c1, c2, c3],
        })
    }
}

/// The randomness of node `node` in step `step` (dropout masks): distinct per node and step,
/// and the same when a step is repeated.
fn step_seed(seed: u64, step: u64, node: usize) -> u64 {
    let mut r =
        rng(seed ^ step.rotate_left(32) ^ (node as u64).wrapping_mul(0xA24B_AED4_963E_E407));
    rand_xoshiro::rand_core::Rng::next_u64(&mut r)
}
