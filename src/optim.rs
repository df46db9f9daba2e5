//! Optimizers (SGD with momentum / Nesterov / weight decay, AdamW) and learning-rate schedules.
//! Both update the whole flat parameter region in place, with state in the arena.

/// An optimizer and its hyper-parameters (the learning rate comes from a [`Schedule`]).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Optimizer {
    /// PyTorch's SGD: `g += wd·p; buf = μ·buf + g; p -= lr·(nesterov ? g + μ·buf : buf)`.
    Sgd {
        /// Momentum μ (0 for none).
        momentum: f32,
        /// Nesterov momentum.
        nesterov: bool,
        /// L2 weight decay, added to the gradient.
        weight_decay: f32,
    },
    /// AdamW (decoupled weight decay), with bias correction.
    AdamW {
        /// First-moment decay.
        beta1: f32,
        /// Second-moment decay.
        beta2: f32,
        /// Added to the denominator.
        eps: f32,
        /// Decoupled weight decay: `p -= lr·wd·p`.
        weight_decay: f32,
    },
}

impl Optimizer {
    /// SGD with momentum and weight decay.
    pub fn sgd(momentum: f32, weight_decay: f32) -> Self {
        Optimizer::Sgd {
            momentum,
            nesterov: false,
            weight_decay,
        }
    }

    /// AdamW with PyTorch's defaults (β = 0.9, 0.999; ε = 1e-8).
    pub fn adamw(weight_decay: f32) -> Self {
        Optimizer::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay,
        }
    }

    /// Floats of state per parameter.
    pub fn state_slots(&self) -> usize {
        match self {
            Optimizer::Sgd { momentum, .. } if *momentum == 0.0 => 0,
            Optimizer::Sgd { .. } => 1,
            Optimizer::AdamW { .. } => 2,
        }
    }

    /// One update at step `t` (counted from 1) with learning rate `lr`; `state` holds
    /// [`Optimizer::state_slots`] arrays as long as `p`, one after the other (shorter: the
    /// optimizer's state is cut to it).
    pub fn update(&self, lr: f32, t: u64, p: &mut [f32], g: &[f32], state: &mut [f32]) {
        let (m, v) = state.split_at_mut(p.len().min(state.len()));
        self.update_slots(lr, t, p, g, m, v);
    }

    /// AdamW's bias corrections at step `t`: `1 − β₁ᵗ` and `1 − β₂ᵗ`.
    pub fn bias_corrections(beta1: f32, beta2: f32, t: u64) -> (f32, f32) {
        (
            1.0 - libm::powf(beta1, t as f32),
            1.0 - libm::powf(beta2, t as f32),
        )
    }

    /// [`Optimizer::update`] shared out among `threads` workers, each a range of the parameters
    /// with their gradients and state (elementwise, so the bits are those of one call); each
    /// gradient is first scaled by `clip` where given (clipping by the global norm).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn update_split(
        &self,
        lr: f32,
        t: u64,
        p: &mut [f32],
        g: &mut [f32],
        state: &mut [f32],
        clip: Option<f32>,
        threads: usize,
    ) -> crate::error::Result<()> {
        let n = p.len();
        let (per, _) = crate::layers::par::split(n, threads);
        let (m, v) = state.split_at_mut(n.min(state.len()));
        let empty = || core::iter::repeat_with(|| &mut [][..]);
        let ms = m.chunks_mut(per).chain(empty());
        let vs = v.chunks_mut(per).chain(empty());
        let parts = p.chunks_mut(per).zip(g.chunks_mut(per)).zip(ms.zip(vs));
        crate::layers::par::each(parts, |((p, g), (m, v))| {
            if let Some(scale) = clip {
                g.iter_mut().for_each(|v| *v *= scale);
            }
            self.update_slots(lr, t, p, g, m, v);
            Ok(())
        })
    }

    /// The update on one range: `m` the momentum buffer (SGD) or first moment (AdamW), `v` the
    /// second moment (AdamW); empty where the optimizer keeps none.
    fn update_slots(
        &self,
        lr: f32,
        t: u64,
        p: &mut [f32],
        g: &[f32],
        m: &mut [f32],
        v: &mut [f32],
    ) {
        match *self {
            Optimizer::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                if momentum == 0.0 {
                    for (p, &g) in p.iter_mut().zip(g) {
                        *p -= lr * (g + weight_decay * *p);
                    }
                    return;
                }
                for ((p, &g), b) in p.iter_mut().zip(g).zip(m.iter_mut()) {
                    let g = g + weight_decay * *p;
                    *b = momentum * *b + g;
                    *p -= lr * if nesterov { g + momentum * *b } else { *b };
                }
            }
            Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let (c1, c2) = Self::bias_corrections(beta1, beta2, t);
                for (((p, &g), m), v) in p.iter_mut().zip(g).zip(m.iter_mut()).zip(v.iter_mut()) {
                    *p -= lr * weight_decay * *p;
                    *m = beta1 * *m + (1.0 - beta1) * g;
                    *v = beta2 * *v + (1.0 - beta2) * g * g;
                    *p -= lr * (*m / c1) / (libm::sqrtf(*v / c2) + eps);
                }
            }
        }
    }
}

/// How the learning rate decays after warmup.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Decay {
    /// Constant.
    Constant,
    /// Cosine from the base rate to `min_lr` over `total` steps (warmup included).
    Cosine {
        /// Steps of the whole run.
        total: u64,
        /// Rate at the end.
        min_lr: f32,
    },
    /// Multiply by `gamma` every `every` steps.
    Step {
        /// Period in steps.
        every: u64,
        /// Factor.
        gamma: f32,
    },
}

/// A learning-rate schedule: linear warmup, then a decay.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Schedule {
    /// Rate after warmup.
    pub base_lr: f32,
    /// Steps of linear warmup from base_lr / warmup.
    pub warmup: u64,
    /// Decay after warmup.
    pub decay: Decay,
}

impl Schedule {
    /// A constant rate.
    pub fn constant(lr: f32) -> Self {
        Schedule {
            base_lr: lr,
            warmup: 0,
            decay: Decay::Constant,
        }
    }

    /// Cosine decay to zero over `total` steps, no warmup.
    pub fn cosine(lr: f32, total: u64) -> Self {
        Schedule {
            base_lr: lr,
            warmup: 0,
            decay: Decay::Cosine { total, min_lr: 0.0 },
        }
    }

    /// The rate for step `step` (counted from 0).
    pub fn lr(&self, step: u64) -> f32 {
        if step < self.warmup {
            return self.base_lr * (step + 1) as f32 / self.warmup as f32;
        }
        let s = step - self.warmup;
        match self.decay {
            Decay::Constant => self.base_lr,
            Decay::Cosine { total, min_lr } => {
                let span = total.saturating_sub(self.warmup).max(1);
                let frac = (s.min(span)) as f64 / span as f64;
                min_lr
                    + (self.base_lr - min_lr)
                        * (0.5 * (1.0 + libm::cos(core::f64::consts::PI * frac))) as f32
            }
            Decay::Step { every, gamma } => {
                self.base_lr * libm::powf(gamma, (s / every.max(1)) as f32)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedules() {
        let s = Schedule {
            base_lr: 1.0,
            warmup: 4,
            decay: Decay::Cosine {
                total: 104,
                min_lr: 0.0,
            },
        };
        assert_eq!(s.lr(0), 0.25);
        assert_eq!(s.lr(3), 1.0);
        assert!((s.lr(54) - 0.5).abs() < 1e-6);
        assert!(s.lr(104).abs() < 1e-6);
        let st = Schedule {
            base_lr: 1.0,
            warmup: 0,
            decay: Decay::Step {
                every: 10,
                gamma: 0.1,
            },
        };
        assert_eq!((st.lr(9), st.lr(10)), (1.0, 0.1));
    }

    #[test]
    fn sgd_matches_pytorch_formula() {
        let o = Optimizer::Sgd {
            momentum: 0.9,
            nesterov: true,
            weight_decay: 0.1,
        };
        let (mut p, g, mut b) = ([1.0f32], [0.5f32], [0.0f32]);
        o.update(0.1, 1, &mut p, &g, &mut b);
        // g' = 0.6; buf = 0.6; nesterov step = 0.6 + 0.54 = 1.14
        assert!((b[0] - 0.6).abs() < 1e-7 && (p[0] - (1.0 - 0.114)).abs() < 1e-7);
    }

    /// Shared out among 1–4 workers (a range each), the update has the bits of one call, for
    /// each optimizer, with and without clipping, on lengths that split unevenly.
    #[test]
    fn split_updates_are_the_single_one() {
        let opts = [
            Optimizer::sgd(0.0, 0.01),
            Optimizer::sgd(0.9, 5e-4),
            Optimizer::Sgd {
                momentum: 0.9,
                nesterov: true,
                weight_decay: 0.1,
            },
            Optimizer::adamw(0.05),
        ];
        let val = |i: usize, k: usize| ((i * k % 97) as f32 - 48.0) / 17.0;
        for opt in opts {
            for n in [1, 7, 1001] {
                for clip in [None, Some(0.25)] {
                    let slots = opt.state_slots();
                    let p0: std::vec::Vec<f32> = (0..n).map(|i| val(i, 31)).collect();
                    let g0: std::vec::Vec<f32> = (0..n).map(|i| val(i, 57)).collect();
                    let s0: std::vec::Vec<f32> = (0..slots * n).map(|i| val(i, 13).abs()).collect();
                    let (mut p, mut g, mut s) = (p0.clone(), g0.clone(), s0.clone());
                    if let Some(c) = clip {
                        g.iter_mut().for_each(|v| *v *= c);
                    }
                    opt.update(0.1, 3, &mut p, &g, &mut s);
                    for threads in 1..=4 {
                        let (mut q, mut h, mut t) = (p0.clone(), g0.clone(), s0.clone());
                        opt.update_split(0.1, 3, &mut q, &mut h, &mut t, clip, threads)
                            .unwrap();
                        let bits =
                            |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<std::vec::Vec<_>>();
                        assert!(
                            bits(&q) == bits(&p) && bits(&t) == bits(&s),
                            "{opt:?} n {n} clip {clip:?} threads {threads}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn adamw_first_step_is_lr_sized() {
        let o = Optimizer::adamw(0.0);
        let (mut p, g, mut s) = ([1.0f32], [3.0f32], [0.0f32; 2]);
        o.update(0.01, 1, &mut p, &g, &mut s);
        assert!((p[0] - 0.99).abs() < 1e-6);
    }
}
