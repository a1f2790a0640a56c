//! The discriminator phase of the [`Trainer`]: its own AdamW step on the (real, fake) pairs of
//! the generator step, gradients averaged over the ranks in a data-parallel run.

use super::guard::nan_stop;
use super::{scalar, with_autocast, Trainer};
use crate::error::Result;
use crate::optim::lr_at;
use std::collections::BTreeMap;
use tch::{Device, Tensor};

impl Trainer<'_> {
    /// The discriminator's step on the detached (real, fake) pairs of this step's micro-batches.
    /// Returns its mean loss, or `None` when it did not update (no discriminator, or not active
    /// yet at `step`).
    pub(super) fn disc_step(
        &mut self,
        step: u64,
        pairs: &[(Tensor, Tensor)],
    ) -> Result<Option<f64>> {
        let cfg = self.cfg;
        let (device, amp) = (self.device, self.amp);
        let Some(d) = self.dopt.as_mut() else {
            self.phases.lap("discriminator");
            return Ok(None);
        };
        d.zero_grad();
        let mut d_loss = None;
        let mut dl_sum = 0f64;
        for (real, fake) in pairs {
            let dl = with_autocast(device, amp, || self.task.disc_loss(real, fake, step))?;
            if let Some(dl) = dl {
                let v = scalar(&dl);
                if !v.is_finite() {
                    let parts = BTreeMap::from([("disc_loss", v)]);
                    let run = self.run.as_ref().map(|r| r.path.as_path());
                    return Err(nan_stop(
                        run,
                        step + 1,
                        v,
                        &parts,
                        self.last_checkpoint.as_deref(),
                    ));
                }
                dl_sum += v / pairs.len() as f64;
                (dl / pairs.len() as f64).backward();
                d_loss = Some(dl_sum);
            }
        }
        if let (Some(dl), Some(dist)) = (d_loss.as_mut(), self.dist.as_ref()) {
            dist.average_grads("discriminator gradients", d)?;
            let mut t = Tensor::from_slice(&[*dl]).to_device(device);
            dist.average("the discriminator loss", &mut t)?;
            *dl = t.f_to_device(Device::Cpu)?.double_value(&[0]);
        }
        if d_loss.is_some() {
            d.clip_grad_norm(cfg.optim.grad_clip);
            let dlr = lr_at(
                step,
                cfg.disc.map_or(cfg.optim.lr, |c| c.lr),
                cfg.optim.warmup_steps,
                cfg.schedule.steps,
                cfg.optim.min_lr_ratio,
            );
            d.step(dlr);
        }
        d.zero_grad();
        self.phases.lap("discriminator");
        Ok(d_loss)
    }
}
