//! The stage-independent training loop, as the [`Trainer`] struct.
//!
//! A stage is a [`Task`]: it names its trainable parameters, its checkpointed state and
//! computes losses on the [`Batch`]es (images, or [`TokenBatch`]es for the LLM stages) that a
//! [`Batches`] source yields. What the loop reads of a config is a [`LoopConfig`]. The trainer owns everything else, one method per phase:
//! [`Trainer::new`] (run directory, optimizers, resume), `gen_step` (micro-batches, gradient
//! accumulation, the one device-to-host read-back, the NaN stop, clipping, AdamW + EMA),
//! `disc_step` (the discriminator's own optimizer), `log` (metrics.jsonl), `checkpoint`
//! (atomic checkpoints) and [`Trainer::run`], which strings them together with the progress
//! display and the profiler range.
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
mod task;

pub use batch::{Batch, TokenBatch, IGNORE_INDEX, IMAGE_TOKEN_INDEX};
pub(crate) use device::cuda_sync;
pub use device::with_autocast;
pub use loop_config::{DiscOptim, LoopConfig};
pub use task::{Batches, LossOut, Task};

use crate::checkpoint;
use crate::config::DeviceKind;
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::optim::{lr_at, AdamW, Ema};
use crate::rundir::{RunDir, RunStart};
use device::cuda_profiler;
use guard::{nan_stop, Guard, Verdict};
use progress::{Phases, Progress};
use semhitok_sys::GradReducer;
use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
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

/// What one generator step produced.
struct StepOut {
    /// Total loss averaged over the micro-batches.
    loss: f64,
    /// Loss components averaged over the micro-batches.
    parts: BTreeMap<&'static str, f64>,
    /// Gradient norm before clipping.
    grad_norm: f64,
    lr: f64,
    /// (real, fake) pairs of the micro-batches, for the discriminator.
    disc_pairs: Vec<(Tensor, Tensor)>,
    /// Seconds this step waited for its batches (loader + host-to-device copy).
    data_s: f64,
    /// Samples in this step's micro-batches, over every rank.
    samples: f64,
    /// Real tokens (attention-mask count) of this step's token batches, over every rank
    /// (`None`: image batches).
    tokens: Option<f64>,
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
        };
        if opts.resume {
            t.resume()?;
        }
        t.sync_start()?;
        Ok(t)
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

    /// One generator-side optimizer step: `accum` micro-batches of forward + backward, one
    /// device-to-host read-back of the losses and the gradient norm, the NaN stop, clipping,
    /// AdamW and the weight EMA.
    fn gen_step(&mut self, step: u64) -> Result<StepOut> {
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
