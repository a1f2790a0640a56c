//! The generator side of one optimizer step of the [`Trainer`]: `accum` micro-batches of
//! forward + backward, the data-parallel gradient average, one device-to-host read-back of the
//! losses and the gradient norm, the NaN stop, the blow-up guard, clipping, AdamW and the weight
//! EMA.

use super::guard::{Guard, Verdict};
use super::{with_autocast, Batch, LossOut, Trainer};
use crate::dist::Dist;
use crate::error::Result;
use crate::optim::lr_at;
use std::collections::{BTreeMap, BTreeSet};
use tch::{Device, Tensor};

/// What one generator step produced.
pub(super) struct StepOut {
    /// Total loss averaged over the micro-batches.
    pub(super) loss: f64,
    /// Loss components averaged over the micro-batches.
    pub(super) parts: BTreeMap<&'static str, f64>,
    /// Gradient norm before clipping.
    pub(super) grad_norm: f64,
    pub(super) lr: f64,
    /// (real, fake) pairs of the micro-batches, for the discriminator.
    pub(super) disc_pairs: Vec<(Tensor, Tensor)>,
    /// Seconds this step waited for its batches (loader + host-to-device copy).
    pub(super) data_s: f64,
    /// Samples in this step's micro-batches, over every rank.
    pub(super) samples: f64,
    /// Real tokens (attention-mask count) of this step's token batches, over every rank
    /// (`None`: image batches).
    pub(super) tokens: Option<f64>,
}

impl Trainer<'_> {
    /// One generator-side optimizer step: `accum` micro-batches of forward + backward, one
    /// device-to-host read-back of the losses and the gradient norm, the NaN stop, clipping,
    /// AdamW and the weight EMA.
    pub(super) fn gen_step(&mut self, step: u64) -> Result<StepOut> {
        let cfg = self.cfg;
        let (device, amp) = (self.device, self.amp);
        let lr = lr_at(
            step,
            cfg.optim.lr,
            cfg.optim.warmup_steps,
            cfg.schedule.steps,
            cfg.optim.min_lr_ratio,
        );
        let accum = cfg.optim.accum_steps;
        self.opt.zero_grad();
        if let (Some(d), None) = (&self.dist, &self.reducer) {
            self.reducer = d.grad_reducer("generator gradients", &mut self.opt)?;
            if let (Some(r), true) = (&self.reducer, d.is_main()) {
                eprintln!(
                    "data-parallel: generator gradients in {} buckets{}",
                    r.n_buckets(),
                    if d.overlap() {
                        ", launched during the backward pass"
                    } else {
                        ""
                    }
                );
            }
        }
        // Overlap: the last micro-batch's backward launches the buckets (the earlier ones only
        // accumulate), when every gradient is still its view of the flat buffer.
        let bucketed = self.reducer.is_some() && self.opt.grads_for_reduce().len() == 1;
        let overlap = bucketed && self.dist.as_ref().is_some_and(Dist::overlap);
        // The overlap reducer's hooks read the f32 gradient views during backward.
        self.opt.set_bf16_grads(!overlap);
        let mut disc_pairs = vec![];
        // Per micro-batch: part names and [total, parts...] as 1-element device tensors.
        let mut pending: Vec<(Vec<&'static str>, Vec<Tensor>)> = vec![];
        let mut data_s = 0.0;
        let mut samples = 0usize;
        // Real tokens of the token batches, summed on the device (read back with the losses).
        let mut tokens: Option<Tensor> = None;
        for micro in 0..accum {
            let t_data = std::time::Instant::now();
            let batch = self.data.next_batch(device)?;
            data_s += t_data.elapsed().as_secs_f64();
            samples += batch.len();
            if let Batch::Tokens(tb) = &batch {
                tb.check()?;
                let n = tb.n_tokens()?.to_kind(tch::Kind::Double);
                tokens = Some(match tokens {
                    Some(t) => t + n,
                    None => n,
                });
            }
            // A data-parallel token batch: the loss is a mean over this rank's loss tokens;
            // weighted by its share of the global batch's, the average over ranks is the mean over
            // all of them, as one process with the whole batch computes it.
            let weight = match (&self.dist, &batch) {
                (Some(d), Batch::Tokens(tb)) => Some(d.token_weight(tb)?),
                _ => None,
            };
            self.phases.lap("data");
            // Forward and backward with the bf16 working copy of the weights when there is one;
            // the variables point back at the f32 masters afterwards, also on an error.
            self.opt.enter_bf16()?;
            let (task, phases) = (&mut *self.task, &mut self.phases);
            let arm = self
                .reducer
                .as_ref()
                .filter(|_| overlap && micro + 1 == accum);
            let fwd_bwd = (|| -> Result<(LossOut, Tensor)> {
                let out = with_autocast(device, amp, || task.loss(&batch, step))?;
                phases.lap("forward");
                if let Some(r) = arm {
                    r.arm();
                }
                let total = match &weight {
                    Some(w) => out.total.f_mul(w)?,
                    None => out.total.shallow_clone(),
                };
                // Backward first; the losses are read back after the last micro-batch together
                // with the gradient norm (one device-to-host sync per step). A non-finite value
                // still stops the run before any optimizer step.
                (&total / accum as f64).backward();
                phases.lap("backward");
                Ok((out, total))
            })();
            self.opt.exit_bf16()?;
            let (out, total) = fwd_bwd?;
            let total = total.detach();
            let vals: Vec<Tensor> = std::iter::once(&total)
                .chain(out.parts.iter().map(|(_, t)| t))
                .map(|t| t.detach().to_kind(tch::Kind::Double).reshape([1]))
                .collect();
            pending.push((out.parts.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vals));
            if let Some(p) = out.disc_inputs {
                disc_pairs.push(p);
            }
        }
        if let Some(d) = &self.dist {
            // Clipping, the norm and AdamW below all see the averaged gradient.
            match self.reducer.as_ref().filter(|_| bucketed) {
                Some(r) => {
                    let completed = r.finish()?;
                    if overlap && !self.order_learned {
                        d.learn_order(r, &completed)?;
                        self.order_learned = true;
                        if d.is_main() {
                            eprintln!(
                                "data-parallel: {} of {} buckets were complete before the end of \
                                 the backward pass; launch order {completed:?} (then the rest)",
                                completed.len(),
                                r.n_buckets()
                            );
                        }
                    }
                }
                None => d.average_grads("generator gradients", &mut self.opt)?,
            }
            self.phases.lap("all_reduce");
        }
        let norm_sq = self.opt.grad_norm_sq();
        // ||theta||^2 before this step's update, for the weight-growth guard (same read-back;
        // identical on every rank, as the parameters are).
        let param_sq = self.opt.param_norm_sq().to_device(norm_sq.device());
        let vals: Vec<Tensor> = pending
            .iter()
            .flat_map(|(_, v)| v.iter().map(|t| t.to_device(norm_sq.device())))
            .collect();
        let mut vals = Tensor::f_cat(&vals, 0)?;
        if let Some(d) = &self.dist {
            d.average("the step's losses", &mut vals)?;
        }
        let mut flat = vec![vals];
        if let Some(t) = &tokens {
            let mut t = t.to_device(norm_sq.device()).reshape([1]);
            if let Some(d) = &self.dist {
                // The mean over ranks; times the world size below: the sum.
                d.average("the step's token count", &mut t)?;
            }
            flat.push(t);
        }
        flat.extend([norm_sq.reshape([1]), param_sq.reshape([1])]);
        let host = Vec::<f64>::try_from(Tensor::f_cat(&flat, 0)?.f_to_device(Device::Cpu)?)?;
        let grad_norm = host[host.len() - 2].sqrt();
        let param_norm_sq = host[host.len() - 1];
        let world = self.dist.as_ref().map_or(1, Dist::world_size) as f64;
        let tokens = tokens.map(|_| host[host.len() - 3] * world);
        let (mut loss, mut parts_sum) = (0f64, BTreeMap::new());
        let mut at = 0;
        for (names, v) in &pending {
            let l = host[at];
            let mut parts = BTreeMap::new();
            for (n, &x) in names.iter().zip(&host[at + 1..at + v.len()]) {
                parts.insert(*n, x);
                *parts_sum.entry(*n).or_insert(0.0) += x / accum as f64;
            }
            at += v.len();
            if !l.is_finite() || parts.values().any(|x| !x.is_finite()) {
                return Err(self.nan_stop(step + 1, l, &parts));
            }
            loss += l / accum as f64;
        }
        self.opt.clip_to(grad_norm, cfg.optim.grad_clip);
        self.phases.lap("clip");
        if !grad_norm.is_finite() {
            let parts = BTreeMap::from([("grad_norm", grad_norm)]);
            return Err(self.nan_stop(step + 1, loss, &parts));
        }
        let names: BTreeSet<&'static str> = parts_sum.keys().copied().collect();
        if let Verdict::Stop(what, values) =
            self.guard.observe(loss, grad_norm, names, param_norm_sq)
        {
            let last = self.last_checkpoint.as_deref();
            return Err(Guard::stop(self.run_dir(), step + 1, &what, &values, last));
        }
        self.opt.step(lr);
        if let Some(e) = self.ema.as_mut() {
            e.update();
        }
        self.phases.lap("optimizer");
        Ok(StepOut {
            loss,
            parts: parts_sum,
            grad_norm,
            lr,
            disc_pairs,
            data_s,
            samples: samples as f64 * world,
            tokens,
        })
    }
}
