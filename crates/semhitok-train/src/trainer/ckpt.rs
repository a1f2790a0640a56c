//! The checkpoint phases of the [`Trainer`]: resume, the tensors of a checkpoint, the checks
//! before it is committed, rank 0's atomic write and the data-parallel barrier.

use super::guard::{nonfinite_state_stop, Guard};
use super::Trainer;
use crate::checkpoint::{self, CkptState};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use tch::{Device, Tensor};

impl Trainer<'_> {
    /// Write the checkpoint of step `done` (atomically; older ones pruned to `keep_last`). In a
    /// data-parallel run rank 0 writes it and every rank then meets at the checkpoint barrier.
    pub(super) fn checkpoint(&mut self, done: u64) -> Result<()> {
        let (tensors, optim_t) = self.checkpoint_tensors()?;
        // Every rank checks (the state is the same on all of them, so all stop together).
        self.check_state(done, &tensors)?;
        // The data positions of every rank, merged, so each rank resumes where it was.
        let data_state = match &self.dist {
            Some(d) => {
                let all = d.gather_json("the data positions", &self.data.state())?;
                self.data.merge_states(&all)?
            }
            None => self.data.state(),
        };
        if self.run.is_some() {
            self.write_checkpoint(done, &tensors, optim_t, data_state)?;
        }
        if let Some(d) = &self.dist {
            d.checkpoint_barrier(done)?;
            if self.run.is_none() {
                self.last_checkpoint = Some(
                    self.run_path
                        .join(checkpoint::CKPT_DIR)
                        .join(checkpoint::step_dir_name(done)),
                );
            }
        }
        Ok(())
    }

    /// The checkpoint's tensors (model, optimizers, weight EMA, task extras) and the AdamW
    /// update counts.
    #[allow(clippy::type_complexity)]
    fn checkpoint_tensors(&self) -> Result<(Vec<(String, Tensor)>, BTreeMap<String, u64>)> {
        let mut tensors: Vec<(String, Tensor)> = self
            .task
            .state()
            .into_iter()
            .map(|(k, v)| (format!("model.{k}"), v))
            .collect();
        tensors.extend(self.opt.state_tensors("optim.gen"));
        let mut optim_t = BTreeMap::from([("gen".to_string(), self.opt.t)]);
        if let Some(d) = self.dopt.as_ref() {
            tensors.extend(d.state_tensors("optim.disc"));
            optim_t.insert("disc".to_string(), d.t);
        }
        if let Some(e) = self.ema.as_ref() {
            tensors.extend(e.state_tensors());
        }
        tensors.extend(
            self.task
                .extra_state()?
                .into_iter()
                .map(|(k, v)| (format!("task.{k}"), v)),
        );
        Ok((tensors, optim_t))
    }

    fn write_checkpoint(
        &mut self,
        done: u64,
        tensors: &[(String, Tensor)],
        optim_t: BTreeMap<String, u64>,
        data_state: serde_json::Value,
    ) -> Result<()> {
        let cfg = self.cfg;
        let state = CkptState {
            format: checkpoint::FORMAT.into(),
            stage: cfg.run.stage,
            step: done,
            seed: cfg.run.seed,
            optim_t,
            data_state,
            tensors_bytes: 0,
            tensors_sha256: String::new(),
            extra: BTreeMap::new(),
        };
        self.last_checkpoint = Some(checkpoint::save(
            &self.run_path,
            state,
            tensors,
            cfg.schedule.keep_last,
        )?);
        Ok(())
    }

    /// Before a checkpoint of step `done` is committed: every floating tensor finite, and the
    /// step's update within `guard.max_weight_growth` (one device reduction, one read-back).
    fn check_state(&self, done: u64, tensors: &[(String, Tensor)]) -> Result<()> {
        let _g = tch::no_grad_guard();
        let after = self.opt.param_norm_sq();
        let dev = after.device();
        let floats: Vec<&(String, Tensor)> = tensors
            .iter()
            .filter(|(_, t)| t.is_floating_point())
            .collect();
        let mut flags: Vec<Tensor> = floats
            .iter()
            .map(|(_, t)| {
                t.isfinite()
                    .logical_not()
                    .any()
                    .to_kind(tch::Kind::Double)
                    .to_device(dev)
                    .reshape([1])
            })
            .collect();
        flags.push(after.reshape([1]));
        let host = Vec::<f64>::try_from(Tensor::f_cat(&flags, 0)?.f_to_device(Device::Cpu)?)?;
        let bad: Vec<String> = floats
            .iter()
            .zip(&host)
            .filter(|(_, &f)| f != 0.0)
            .map(|((n, _), _)| n.clone())
            .collect();
        let last = self.last_checkpoint.as_deref();
        if !bad.is_empty() {
            return Err(nonfinite_state_stop(self.run_dir(), done, &bad, last));
        }
        if let Some(before) = self.guard.norm_sq_before_last_step() {
            if let Some((what, values)) = self.guard.growth(before, host[host.len() - 1]) {
                return Err(Guard::stop(self.run_dir(), done, &what, &values, last));
            }
        }
        Ok(())
    }

    /// Restore model, optimizers, EMA and data position from the newest readable checkpoint
    /// of the run directory (none: start fresh).
    pub(super) fn resume(&mut self) -> Result<()> {
        let cfg = self.cfg;
        let Some(ck) = checkpoint::load_latest(&self.run_path)? else {
            eprintln!(
                "--resume: no checkpoint in {}, starting fresh",
                self.run_path.display()
            );
            // A run that died before its first checkpoint left metrics of steps that will be
            // run again: drop them.
            if let Some(run) = self.run.as_mut() {
                run.truncate_metrics_after(0)?;
            }
            return Ok(());
        };
        if ck.state.stage != cfg.run.stage {
            return Err(Error::ckpt(
                &ck.dir,
                format!(
                    "written by stage `{}`, cannot resume stage `{}`",
                    ck.state.stage.as_str(),
                    cfg.run.stage.as_str()
                ),
            ));
        }
        checkpoint::restore_vars(&ck, "model.", &self.task.state())?;
        let t = |k: &str| ck.state.optim_t.get(k).copied().unwrap_or(0);
        self.opt
            .load_state("optim.gen", t("gen"), &ck.tensors)
            .map_err(|m| Error::ckpt(&ck.dir, m))?;
        if let Some(d) = self.dopt.as_mut() {
            d.load_state("optim.disc", t("disc"), &ck.tensors)
                .map_err(|m| Error::ckpt(&ck.dir, m))?;
        }
        if let Some(e) = self.ema.as_mut() {
            e.load_state(&ck.tensors)
                .map_err(|m| Error::ckpt(&ck.dir, m))?;
        }
        let extra: BTreeMap<String, Tensor> = ck
            .tensors
            .iter()
            .filter_map(|(k, v)| Some((k.strip_prefix("task.")?.to_string(), v.shallow_clone())))
            .collect();
        self.task.restore_extra_state(&extra)?;
        self.data.restore(&ck.state.data_state)?;
        self.start_step = ck.state.step;
        if let Some(run) = self.run.as_mut() {
            run.truncate_metrics_after(self.start_step)?;
        }
        eprintln!(
            "resumed from {} (step {})",
            ck.dir.display(),
            self.start_step
        );
        self.last_checkpoint = Some(ck.dir.clone());
        Ok(())
    }
}
