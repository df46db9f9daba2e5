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

    /// One update at step `t` (counted from 1) with learning rate `lr`.
    pub(crate) fn update(&self, lr: f32, t: u64, p: &mut [f32], g: &[f32], state: &mut [f32]) {
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
                for ((p, &g), b) in p.iter_mut().zip(g).zip(state.iter_mut()) {
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
                let (m, v) = state.split_at_mut(p.len());
                let c1 = 1.0 - libm::powf(beta1, t as f32);
                let c2 = 1.0 - libm::powf(beta2, t as f32);
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

    #[test]
    fn adamw_first_step_is_lr_sized() {
        let o = Optimizer::adamw(0.0);
        let (mut p, g, mut s) = ([1.0f32], [3.0f32], [0.0f32; 2]);
        o.update(0.01, 1, &mut p, &g, &mut s);
        assert!((p[0] - 0.99).abs() < 1e-6);
    }
}
