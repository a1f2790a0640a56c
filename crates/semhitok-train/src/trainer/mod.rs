//! The stage-independent training loop, as the [`Trainer`] struct.
//!
//! A stage is a [`Task`]: it names its trainable parameters, its checkpointed state and
//! computes losses on the [`Batch`]es (images, or [`TokenBatch`]es for the LLM stages) that a
//! [`Batches`] source yields. What the loop reads of a config is a [`LoopConfig`]. The trainer owns everything else, one method per phase:
//! [`Trainer::new`] (run directory, optimizers, resume, the TensorBoard file), `gen_step`
//! (`step.rs`: micro-batches, gradient accumulation, the one device-to-host read-back, the NaN
//! stop, clipping, AdamW + EMA), `disc_step` (the discriminator's own optimizer), `log`
//! (metrics.jsonl and TensorBoard scalars, `tensorboard.rs`), `validate` (`validate.rs`: the
//! fixed held-out set every `schedule.eval_every` steps), `checkpoint` (atomic checkpoints) and
//! [`Trainer::run`], which strings them together with the progress display and the profiler
//! range.
//!
//! Data-parallel runs ([`TrainOptions::dist`], see [`crate::dist`]) plug in at the same places:
//! `new` (rank 0's state broadcast), `gen_step` / `disc_step` (gradients averaged before the norm
//! and clipping, losses averaged for logging), `log` and `checkpoint` (rank 0 only; the others
//! wait at a barrier). Rank 0 alone opens the run directory. Without `dist`, or with a world size
//! of 1, the run is exactly the single-process one.
//!
//! Exact resume: the only randomness inside a step comes from LibTorch's global generator,
//! which is re-seeded from `(seed, step)` at the start of every step, and from the data
//! iterator, whose state is checkpointed. With the model, EMA and optimizer tensors restored
//! bit for bit, a resumed CPU run recomputes exactly the losses of the uninterrupted run.

mod batch;
mod ckpt;
mod device;
mod disc;
mod guard;
mod loop_config;
mod progress;
mod step;
mod task;
mod tensorboard;
mod validate;

pub use batch::{Batch, TokenBatch, IGNORE_INDEX, IMAGE_TOKEN_INDEX};
pub(crate) use device::cuda_sync;
pub use device::with_autocast;
pub use loop_config::{DiscOptim, LoopConfig};
pub use task::{Batches, LossOut, Task, ValCodes, ValOut};
pub use tensorboard::{crc32c, masked_crc32c, TbWriter};
pub use validate::{Measured, Validation};

use crate::checkpoint;
use crate::config::DeviceKind;
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::optim::{AdamW, Ema};
use crate::rundir::{RunDir, RunStart};
use device::cuda_profiler;
use guard::{nan_stop, Guard};
use progress::{Phases, Progress};
use semhitok_sys::GradReducer;
use std::collections::BTreeMap;
use std::path::PathBuf;
use step::StepOut;
use tch::{Device, Tensor};

/// Options of one `train` call that are not part of the config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the newest readable checkpoint of `run.out_dir` (none there: start fresh).
    pub resume: bool,
    /// Without `resume`: delete a run that `run.out_dir` already holds instead of refusing.
    pub overwrite: bool,
    /// The command line (written into run.json).
    pub command_line: Vec<String>,
    /// Stop (as if interrupted) once this many optimizer steps are done (tests).
    pub stop_after: Option<u64>,
    /// No progress bar.
    pub quiet: bool,
    /// Time the phases of every step (data, forward, backward, clip, optimizer, discriminator,
    /// after-step), synchronising CUDA at each boundary; totals in [`TrainReport::phases`]. Slows
    /// the run down (no overlap across phases): for `semhitok bench --profile`, not for training.
    pub profile: bool,
    /// On CUDA, run this step of the call (0 = the first one it runs) between `cudaProfilerStart` and
    /// `cudaProfilerStop`, synchronised, for `ncu --profile-from-start off` (per-kernel times of
    /// one steady-state step: pick 1 or later to leave out the optimizer's one-off set-up).
    pub cuda_profile_step: Option<u64>,
    /// Data-parallel process group (`None`: a single process).
    pub dist: Option<Dist>,
}

/// What a `train` call did.
#[derive(Debug, Clone)]
pub struct TrainReport {
    /// Step index and total loss (summed over micro-batches, averaged) of every step run by
    /// this call.
    pub losses: Vec<(u64, f64)>,
    /// Optimizer steps completed in total (including those before a resume).
    pub steps_done: u64,
    /// The newest checkpoint written or resumed from.
    pub last_checkpoint: Option<PathBuf>,
    /// Step the call started from (0, or the resumed checkpoint's step).
    pub start_step: u64,
    pub run_dir: PathBuf,
    /// Seconds per step phase summed over the run (only with [`TrainOptions::profile`]).
    pub phases: BTreeMap<&'static str, f64>,
}

/// One training run of one stage: the task, its data, the optimizers and the run directory.
pub struct Trainer<'a> {
    cfg: &'a LoopConfig,
    task: &'a mut dyn Task,
    data: &'a mut dyn Batches,
    opts: &'a TrainOptions,
    device: Device,
    /// bf16 autocast of the forward passes (CUDA with `precision = "bf16"`).
    amp: bool,
    /// The run directory: opened (locked, written) by rank 0 only.
    run: Option<RunDir>,
    run_path: PathBuf,
    dist: Option<Dist>,
    opt: AdamW,
    /// The discriminator's optimizer (`None`: the task has no discriminator).
    dopt: Option<AdamW>,
    ema: Option<Ema>,
    start_step: u64,
    last_checkpoint: Option<PathBuf>,
    phases: Phases,
    losses: Vec<(u64, f64)>,
    /// The finite blow-up checks (`[guard]`).
    guard: Guard,
    /// A checkpoint was due during a spike streak and is written once the streak ends.
    ckpt_held: bool,
    /// The bucketed reducer of the generator's gradients (`dist.bucket_mb > 0`, built once the
    /// gradients live in the optimizer's flat buffer) and whether its launch order was learned.
    reducer: Option<GradReducer>,
    order_learned: bool,
    /// The fixed validation set (`schedule.eval_every`; only rank 0 measures).
    val: Option<&'a Validation>,
    /// TensorBoard event file (`log.tensorboard`, rank 0).
    tb: Option<TbWriter>,
}

impl std::fmt::Debug for Trainer<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("run", &self.run_path)
            .field("start_step", &self.start_step)
            .finish()
    }
}

/// Run (or resume) the training described by `cfg` on `task` with batches from `data`.
pub fn train(
    cfg: &LoopConfig,
    task: &mut dyn Task,
    data: &mut dyn Batches,
    opts: &TrainOptions,
) -> Result<TrainReport> {
    Trainer::new(cfg, task, data, opts)?.run()
}

/// [`train`] with validation every `schedule.eval_every` steps on `val` (`None`: none; the
/// steps are then skipped with one log line).
pub fn train_validated(
    cfg: &LoopConfig,
    task: &mut dyn Task,
    data: &mut dyn Batches,
    opts: &TrainOptions,
    val: Option<&Validation>,
) -> Result<TrainReport> {
    Trainer::new(cfg, task, data, opts)?
        .with_validation(val)
        .run()
}

fn step_seed(seed: u64, step: u64) -> i64 {
    // splitmix64 of (seed, step): decorrelated per-step seeds, stable across runs.
    let mut z = seed
        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
        .wrapping_add(step.wrapping_add(1).wrapping_mul(0xBF58_476D_1CE4_E5B9));
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    (z ^ (z >> 31)) as i64 & i64::MAX
}

/// The per-step seed of `rank`: rank 0 (and a single process) keeps the run's seed, the other
/// ranks get decorrelated ones (their dropout masks differ, as their data does).
fn rank_seed(seed: u64, rank: usize) -> u64 {
    seed.wrapping_add((rank as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
}

fn scalar(t: &Tensor) -> f64 {
    t.detach().to_device(Device::Cpu).double_value(&[])
}

impl<'a> Trainer<'a> {
    /// Open the run directory, build the optimizers (and the weight EMA) over the task's
    /// parameters, and resume from the newest checkpoint when `opts.resume` is set.
    pub fn new(
        cfg: &'a LoopConfig,
        task: &'a mut dyn Task,
        data: &'a mut dyn Batches,
        opts: &'a TrainOptions,
    ) -> Result<Self> {
        let device = cfg.run.device.device();
        if cfg.run.device == DeviceKind::Cuda && !tch::Cuda::is_available() {
            return Err(Error::Input(
                "run.device = \"cuda\" but LibTorch sees no CUDA device".into(),
            ));
        }
        let start = match (opts.resume, opts.overwrite) {
            (true, _) => RunStart::Resume,
            (false, true) => RunStart::Overwrite,
            (false, false) => RunStart::Fresh,
        };
        let dist = opts.dist.clone();
        let main = dist.as_ref().is_none_or(Dist::is_main);
        let run = if main {
            Some(RunDir::create(cfg, &opts.command_line, start)?)
        } else {
            None
        };
        if let Some(d) = &dist {
            task.attach_dist(d);
        }
        // Under the run's lock (rank 0): what a crash during a checkpoint write left behind goes
        // first.
        if let Some(run) = &run {
            for p in checkpoint::remove_leftovers(&run.path)? {
                eprintln!("removed an interrupted checkpoint write: {}", p.display());
            }
        }
        let opt = if cfg.run.bf16_copy() {
            AdamW::with_bf16_copy(task.params(), &cfg.optim)
        } else {
            AdamW::new(task.params(), &cfg.optim)
        };
        let dparams = task.disc_params();
        let dopt = if dparams.is_empty() {
            None
        } else {
            let disc = cfg.disc.ok_or_else(|| {
                Error::Input(
                    "the task has discriminator parameters but its LoopConfig has no `disc` \
                     optimizer settings"
                        .into(),
                )
            })?;
            let mut oc = cfg.optim.clone();
            oc.lr = disc.lr;
            oc.betas = disc.betas;
            Some(AdamW::new(dparams, &oc))
        };
        let ema = cfg.optim.ema_decay.map(|d| Ema::for_optimizer(d, &opt));
        let mut t = Self {
            cfg,
            task,
            data,
            opts,
            device,
            amp: cfg.run.bf16_autocast(),
            run,
            run_path: cfg.run.out_dir.clone(),
            dist,
            opt,
            dopt,
            ema,
            start_step: 0,
            last_checkpoint: None,
            phases: Phases::new(opts.profile, device),
            losses: vec![],
            guard: Guard::new(&cfg.guard),
            ckpt_held: false,
            reducer: None,
            order_learned: false,
            val: None,
            tb: None,
        };
        if opts.resume {
            t.resume()?;
        }
        t.sync_start()?;
        if let (Some(run), true) = (&t.run, cfg.log.tensorboard) {
            // TensorBoard drops the events at and after a SessionLog START's step: those of
            // the interrupted run after its checkpoint, which this run logs again.
            let resumed = (t.start_step > 0).then_some(t.start_step + 1);
            t.tb = Some(TbWriter::create(&run.path.join("tb"), resumed)?);
        }
        Ok(t)
    }

    /// Validate on `val` every `schedule.eval_every` steps (rank 0 measures; give every rank
    /// the same config, the other ranks wait at the validation barrier).
    pub fn with_validation(mut self, val: Option<&'a Validation>) -> Self {
        self.val = val;
        self
    }

    /// Data-parallel start: every rank resumed the same step, and holds rank 0's model state
    /// (trained and frozen parts, buffers, discriminator) and weight EMA.
    fn sync_start(&mut self) -> Result<()> {
        let Some(d) = &self.dist else {
            return Ok(());
        };
        d.check_same("the resumed step", self.start_step)?;
        let mut tensors: Vec<(String, Tensor)> = self.task.state().into_iter().collect();
        if let Some(e) = &self.ema {
            tensors.extend(e.state_tensors());
        }
        d.broadcast_from_main(&tensors)?;
        if let Some(run) = &self.run {
            run.record_data_parallel(
                d.world_size(),
                d.process_group().backend().as_str(),
                self.cfg.batch_size as i64,
                self.cfg.optim.accum_steps,
            )?;
        }
        if d.is_main() {
            eprintln!(
                "data-parallel: {} ranks ({}), {} samples per step ({} per rank x {} accumulation)",
                d.world_size(),
                d.process_group().backend(),
                self.cfg.batch_size as u64 * d.world_size() as u64 * self.cfg.optim.accum_steps,
                self.cfg.batch_size,
                self.cfg.optim.accum_steps
            );
        }
        Ok(())
    }

    /// Train from the start (or resumed) step to the end of the schedule (or `stop_after`).
    pub fn run(mut self) -> Result<TrainReport> {
        let total = self.cfg.schedule.steps;
        let end = self.opts.stop_after.map_or(total, |s| s.min(total));
        let mut progress = Progress::new(self.start_step, total, self.opts.quiet);
        let seed = rank_seed(self.cfg.run.seed, self.dist.as_ref().map_or(0, Dist::rank));
        let main = self.run.is_some();
        let every = self.cfg.schedule.eval_every;
        if every > 0 && main && self.val.is_none() {
            eprintln!(
                "schedule.eval_every = {every}, but this run has no validation set: validation \
                 skipped"
            );
        }
        for step in self.start_step..end {
            let profiled = self.device.is_cuda()
                && self.opts.cuda_profile_step == Some(step - self.start_step);
            if profiled {
                cuda_sync(self.device);
                cuda_profiler("cudaProfilerStart")?;
            }
            self.phases.lap("other");
            if let Some(d) = &self.dist {
                d.set_step(step);
            }
            tch::manual_seed(step_seed(seed, step));
            let out = self.gen_step(step)?;
            let d_loss = self.disc_step(step, &out.disc_pairs)?;
            self.task.after_step(step)?;
            self.phases.lap("after_step");
            if profiled {
                cuda_sync(self.device);
                cuda_profiler("cudaProfilerStop")?;
            }
            self.losses.push((step, out.loss));
            let done = step + 1;
            progress.step_done(
                done,
                end,
                out.samples,
                out.tokens,
                out.loss,
                out.lr,
                out.data_s,
            );
            let s = &self.cfg.schedule;
            if main && (done % s.log_every == 0 || done == total || done == end) {
                self.log(done, &out, d_loss, &progress)?;
            }
            if every > 0 && (done % every == 0 || done == total) {
                if let Some(line) = self.validate(done)? {
                    progress.line(&line);
                }
            }
            if done % s.ckpt_every == 0 || done == total || self.ckpt_held {
                if self.guard.spiking() && done != total {
                    if !self.ckpt_held {
                        eprintln!(
                            "warning: step {done}: loss/gradient spike, checkpoint held back \
                             until the spike ends (guard.spike_patience = {})",
                            self.cfg.guard.spike_patience
                        );
                    }
                    self.ckpt_held = true;
                } else {
                    if self.guard.spiking() {
                        eprintln!("warning: step {done}: the schedule ends inside a spike streak");
                    }
                    self.checkpoint(done)?;
                    self.ckpt_held = false;
                }
            }
        }
        progress.finish();
        Ok(TrainReport {
            losses: self.losses,
            steps_done: end.max(self.start_step),
            last_checkpoint: self.last_checkpoint,
            start_step: self.start_step,
            run_dir: self.run_path.clone(),
            phases: self.phases.acc,
        })
    }

    /// One metrics.jsonl record for step `done` (1-based): throughput as `img_per_s` for image
    /// batches, `samples_per_s` and `tok_per_s` for token batches.
    fn log(
        &mut self,
        done: u64,
        out: &StepOut,
        d_loss: Option<f64>,
        progress: &Progress,
    ) -> Result<()> {
        let mut rec = serde_json::json!({
            "step": done,
            "loss": out.loss,
            "lr": out.lr,
            "grad_norm": out.grad_norm,
        });
        match progress.tok_per_s {
            None => rec["img_per_s"] = serde_json::json!(progress.samples_per_s),
            Some(t) => {
                rec["samples_per_s"] = serde_json::json!(progress.samples_per_s);
                rec["tok_per_s"] = serde_json::json!(t);
            }
        }
        rec["data_s"] = serde_json::json!(out.data_s);
        for (k, v) in &out.parts {
            rec[*k] = serde_json::json!(v);
        }
        if let Some(d) = d_loss {
            rec["disc_loss"] = serde_json::json!(d);
        }
        if let Some(tb) = self.tb.as_mut() {
            let scalars: Vec<(String, f64)> = rec
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| k.as_str() != "step")
                .filter_map(|(k, v)| Some((format!("train/{k}"), v.as_f64()?)))
                .collect();
            tb.scalars(done, &scalars)?;
            tb.flush()?;
        }
        match self.run.as_mut() {
            Some(run) => run.log(&rec),
            None => Ok(()),
        }
    }

    /// The run directory when this process owns it (rank 0, or a single process).
    fn run_dir(&self) -> Option<&std::path::Path> {
        self.run.as_ref().map(|r| r.path.as_path())
    }

    fn nan_stop(&self, step: u64, loss: f64, parts: &BTreeMap<&'static str, f64>) -> Error {
        nan_stop(
            self.run.as_ref().map(|r| r.path.as_path()),
            step,
            loss,
            parts,
            self.last_checkpoint.as_deref(),
        )
    }
}
