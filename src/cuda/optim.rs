//! The optimizers' updates on the GPU, bitwise the CPU's [`Optimizer::update`].

use std::format;

use cudarc::driver::{CudaSlice, PushKernelArg};

use super::{Gpu, launched, per_item};
use crate::error::{Error, Result};
use crate::optim::Optimizer;

impl Gpu {
    /// One update at step `t` (from 1) with learning rate `lr` of the parameters `p` from
    /// their gradients `g`; `state` holds [`Optimizer::state_slots`] arrays as long as `p`,
    /// one after the other, as on the CPU — whose bits this gives.
    pub fn optimizer_update(
        &self,
        opt: &Optimizer,
        (lr, t): (f32, u64),
        p: &mut CudaSlice<f32>,
        g: &CudaSlice<f32>,
        state: &mut CudaSlice<f32>,
    ) -> Result<()> {
        let n = p.len();
        let slots = opt.state_slots();
        if g.len() != n || state.len() < slots * n {
            return Err(Error::Gpu(format!(
                "optimizer: {n} parameters, {} gradients, {} state floats ({slots} per parameter)",
                g.len(),
                state.len()
            )));
        }
        let n64 = n as u64;
        match *opt {
            Optimizer::Sgd {
                momentum,
                nesterov,
                weight_decay,
            } => {
                let f = self.kernel("sgd_update")?;
                let nesterov = nesterov as i32;
                let mut b = self.stream.launch_builder(&f);
                b.arg(p).arg(g).arg(state).arg(&n64).arg(&lr);
                b.arg(&momentum).arg(&weight_decay).arg(&nesterov);
                // SAFETY: p and g hold n floats, state at least n where momentum is used (it
                // is not read without: `state_slots` is 0 then); thread i touches element i.
                launched("sgd_update", unsafe { b.launch(per_item(n)) }.map(|_| ()))
            }
            Optimizer::AdamW {
                beta1,
                beta2,
                eps,
                weight_decay,
            } => {
                let (c1, c2) = Optimizer::bias_corrections(beta1, beta2, t);
                let (mut m, mut v) = state.split_at_mut(n);
                let f = self.kernel("adamw_update")?;
                let mut b = self.stream.launch_builder(&f);
                b.arg(p).arg(g).arg(&mut m).arg(&mut v).arg(&n64).arg(&lr);
                b.arg(&beta1)
                    .arg(&beta2)
                    .arg(&eps)
                    .arg(&weight_decay)
                    .arg(&c1)
                    .arg(&c2);
                // SAFETY: p, g, m and v hold n floats each (state 2n, checked above); thread
                // i touches element i.
                launched("adamw_update", unsafe { b.launch(per_item(n)) }.map(|_| ()))
            }
        }
    }
}
