//! The stage-independent training loop.
//!
//! A stage is a [`Task`]: it names its trainable parameters, its checkpointed state and
//! computes losses. The loop owns everything else: AdamW + warmup/cosine, gradient
//! accumulation and clipping, the discriminator's own optimizer, EMA of weights, bf16 autocast
//! on CUDA, the progress bar, metrics.jsonl, atomic checkpoints, exact resume and the NaN stop.
//!
//! Exact resume: the only randomness inside a step comes from LibTorch's global generator,
//! which is re-seeded from `(seed, step)` at the start of every step, and from the data
//! iterator, whose state is checkpointed. With the model, EMA and optimizer tensors restored
//! bit for bit, a resumed CPU run recomputes exactly the losses of the uninterrupted run.

use crate::checkpoint::{self, CkptState};
use crate::config::{DeviceKind, TrainConfig};
use crate::error::{Error, Result};
use crate::optim::{lr_at, AdamW, Ema, Param};
use crate::rundir::RunDir;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Tensor};

/// Losses of one micro-batch.
#[derive(Debug)]
pub struct LossOut {
    /// The scalar that is back-propagated.
    pub total: Tensor,
    /// Named components (detached scalars), logged to metrics.jsonl.
    pub parts: Vec<(&'static str, Tensor)>,
    /// (real, reconstruction) detached, for the discriminator step; `None` without a GAN.
    pub disc_inputs: Option<(Tensor, Tensor)>,
}

/// A source of training batches with a serializable position.
pub trait Batches {
    /// Next batch of images `[B, 3, H, W]` in [-1, 1] on `device`.
    fn next_batch(&mut self, device: Device) -> Result<Tensor>;
    /// The iterator state (JSON) after the batches returned so far.
    fn state(&self) -> serde_json::Value;
    /// Continue from a state produced by [`Batches::state`].
    fn restore(&mut self, state: &serde_json::Value) -> Result<()>;
}

/// One training stage.
pub trait Task {
    /// Parameters of the generator-side optimizer (sorted by name, stable across runs).
    fn params(&self) -> Vec<Param>;
    /// Parameters of the discriminator optimizer (empty: no discriminator).
    fn disc_params(&self) -> Vec<Param> {
        vec![]
    }
    /// Every tensor that defines the model state (trainable, frozen and buffers such as EMA
    /// codebooks and discriminator weights), by name. Checkpointed under `model.`.
    fn state(&self) -> BTreeMap<String, Tensor>;
    /// Forward + losses on one micro-batch at optimizer step `step`.
    fn loss(&mut self, images: &Tensor, step: u64) -> Result<LossOut>;
    /// Discriminator loss on one (real, fake) pair at `step` (`None`: no discriminator update).
    fn disc_loss(&mut self, _real: &Tensor, _fake: &Tensor, _step: u64) -> Result<Option<Tensor>> {
        Ok(None)
    }
    /// Called after each optimizer step (e.g. codebook EMA bookkeeping).
    fn after_step(&mut self, _step: u64) -> Result<()> {
        Ok(())
    }
}

/// Options of one `train` call that are not part of the config.
#[derive(Debug, Clone, Default)]
pub struct TrainOptions {
    /// Continue from the newest readable checkpoint of `run.out_dir`.
    pub resume: bool,
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

/// Phase timer of [`TrainOptions::profile`]: `lap(name)` waits for the device and charges the
/// time since the previous lap to `name`. Does nothing when off.
struct Phases {
    on: bool,
    device: Device,
    last: Instant,
    acc: BTreeMap<&'static str, f64>,
}

impl Phases {
    fn new(on: bool, device: Device) -> Self {
        Self {
            on,
            device,
            last: Instant::now(),
            acc: BTreeMap::new(),
        }
    }

    fn lap(&mut self, name: &'static str) {
        if !self.on {
            return;
        }
        cuda_sync(self.device);
        *self.acc.entry(name).or_insert(0.0) += self.last.elapsed().as_secs_f64();
        self.last = Instant::now();
    }
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

/// bf16 autocast on CUDA (tch's `autocast` uses LibTorch's default fp16 dtype; this sets the
/// CUDA autocast dtype to bf16 first). Runs `f` unchanged on CPU or when `enabled` is false.
pub fn with_autocast<T>(device: Device, enabled: bool, f: impl FnOnce() -> T) -> T {
    if !enabled || !device.is_cuda() {
        return f();
    }
    crate::amp::set_cuda_autocast_bf16();
    tch::autocast(true, f)
}

/// Wait for the work queued on `device` (no-op on CPU).
pub(crate) fn cuda_sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Call the CUDA runtime's `cudaProfilerStart` / `cudaProfilerStop` (looked up in the process:
/// LibTorch's CUDA library loads the runtime), so `ncu --profile-from-start off` profiles a range.
fn cuda_profiler(sym: &str) -> Result<()> {
    let name = std::ffi::CString::new(sym).map_err(|e| Error::Input(e.to_string()))?;
    // SAFETY: dlsym on the global scope with a valid C string; the symbol, when found, is the
    // CUDA runtime's `cudaError_t f(void)`, called with no arguments.
    unsafe {
        let f = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
        if f.is_null() {
            return Err(Error::Input(format!(
                "{sym} not found: the CUDA runtime is not loaded in this process"
            )));
        }
        let f: extern "C" fn() -> i32 = std::mem::transmute(f);
        let rc = f();
        if rc != 0 {
            return Err(Error::Input(format!("{sym} returned CUDA error {rc}")));
        }
    }
    Ok(())
}

fn scalar(t: &Tensor) -> f64 {
    t.detach().to_device(Device::Cpu).double_value(&[])
}

/// Run (or resume) the training described by `cfg` on `task` with batches from `data`.
pub fn train(
    cfg: &TrainConfig,
    task: &mut dyn Task,
    data: &mut dyn Batches,
    opts: &TrainOptions,
) -> Result<TrainReport> {
    let device = cfg.run.device.device();
    if cfg.run.device == DeviceKind::Cuda && !tch::Cuda::is_available() {
        return Err(Error::Input(
            "run.device = \"cuda\" but LibTorch sees no CUDA device".into(),
        ));
    }
    let amp = cfg.run.bf16_autocast();
    let mut run = RunDir::create(cfg, &opts.command_line, opts.resume)?;
    let mut opt = if cfg.run.bf16_copy() {
        AdamW::with_bf16_copy(task.params(), &cfg.optim)
    } else {
        AdamW::new(task.params(), &cfg.optim)
    };
    let dparams = task.disc_params();
    let mut dopt = if dparams.is_empty() {
        None
    } else {
        let mut oc = cfg.optim.clone();
        oc.lr = cfg.disc.lr;
        oc.betas = cfg.disc.betas;
        Some(AdamW::new(dparams, &oc))
    };
    let mut ema = cfg.optim.ema_decay.map(|d| Ema::for_optimizer(d, &opt));

    let mut start_step = 0u64;
    let mut last_checkpoint = None;
    if opts.resume {
        if let Some(ck) = checkpoint::load_latest(&run.path)? {
            if ck.state.stage != cfg.run.stage.as_str() {
                return Err(Error::ckpt(
                    &ck.dir,
                    format!(
                        "written by stage `{}`, cannot resume stage `{}`",
                        ck.state.stage,
                        cfg.run.stage.as_str()
                    ),
                ));
            }
            checkpoint::restore_vars(&ck, "model.", &task.state())?;
            let t = |k: &str| ck.state.optim_t.get(k).copied().unwrap_or(0);
            opt.load_state("optim.gen", t("gen"), &ck.tensors)
                .map_err(|m| Error::ckpt(&ck.dir, m))?;
            if let Some(d) = dopt.as_mut() {
                d.load_state("optim.disc", t("disc"), &ck.tensors)
                    .map_err(|m| Error::ckpt(&ck.dir, m))?;
            }
            if let Some(e) = ema.as_mut() {
                e.load_state(&ck.tensors)
                    .map_err(|m| Error::ckpt(&ck.dir, m))?;
            }
            data.restore(&ck.state.data_state)?;
            start_step = ck.state.step;
            run.truncate_metrics_after(start_step)?;
            eprintln!("resumed from {} (step {start_step})", ck.dir.display());
            last_checkpoint = Some(ck.dir.clone());
        } else {
            eprintln!(
                "--resume: no checkpoint in {}, starting fresh",
                run.path.display()
            );
        }
    }

    let total = cfg.schedule.steps;
    let end = opts.stop_after.map_or(total, |s| s.min(total));
    let pb = progress_bar(start_step, total, opts.quiet);
    // The bar draws only on a terminal; into a log (CI, `> file`), a plain line every 30 s instead.
    let plain_lines = !opts.quiet && !std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (t_run, mut t_line) = (Instant::now(), Instant::now());
    let accum = cfg.optim.accum_steps;
    let bs = cfg.data.batch_size as f64;
    let mut losses = vec![];
    let mut t_last = Instant::now();
    let mut imgs_since = 0f64;
    let mut img_per_s = 0f64;

    let mut ph = Phases::new(opts.profile, device);
    for step in start_step..end {
        let profiled = device.is_cuda() && opts.cuda_profile_step == Some(step - start_step);
        if profiled {
            cuda_sync(device);
            cuda_profiler("cudaProfilerStart")?;
        }
        ph.lap("other");
        tch::manual_seed(step_seed(cfg.run.seed, step));
        let lr = lr_at(
            step,
            cfg.optim.lr,
            cfg.optim.warmup_steps,
            total,
            cfg.optim.min_lr_ratio,
        );
        opt.zero_grad();
        let mut loss_sum = 0f64;
        let mut parts_sum: BTreeMap<&'static str, f64> = BTreeMap::new();
        let mut disc_pairs = vec![];
        // Per micro-batch: part names and [total, parts...] as 1-element device tensors.
        let mut pending: Vec<(Vec<&'static str>, Vec<Tensor>)> = vec![];
        for _ in 0..accum {
            let images = data.next_batch(device)?;
            ph.lap("data");
            // Forward and backward with the bf16 working copy of the weights when there is one;
            // the variables point back at the f32 masters afterwards, also on an error.
            opt.enter_bf16()?;
            let fwd_bwd = (|| -> Result<LossOut> {
                let out = with_autocast(device, amp, || task.loss(&images, step))?;
                ph.lap("forward");
                // Backward first; the losses are read back after the last micro-batch together
                // with the gradient norm (one device-to-host sync per step). A non-finite value
                // still stops the run before any optimizer step.
                (&out.total / accum as f64).backward();
                ph.lap("backward");
                Ok(out)
            })();
            opt.exit_bf16()?;
            let out = fwd_bwd?;
            let total = out.total.detach();
            let vals: Vec<Tensor> = std::iter::once(&total)
                .chain(out.parts.iter().map(|(_, t)| t))
                .map(|t| t.detach().to_kind(tch::Kind::Double).reshape([1]))
                .collect();
            pending.push((out.parts.iter().map(|(n, _)| *n).collect::<Vec<_>>(), vals));
            if let Some(p) = out.disc_inputs {
                disc_pairs.push(p);
            }
        }
        let norm_sq = opt.grad_norm_sq();
        let flat: Vec<Tensor> = pending
            .iter()
            .flat_map(|(_, v)| v.iter().map(|t| t.to_device(norm_sq.device())))
            .chain(std::iter::once(norm_sq.reshape([1])))
            .collect();
        let host = Vec::<f64>::try_from(Tensor::f_cat(&flat, 0)?.f_to_device(Device::Cpu)?)?;
        let grad_norm = host[host.len() - 1].sqrt();
        let mut at = 0;
        for (names, v) in &pending {
            let l = host[at];
            let mut parts = BTreeMap::new();
            for (n, &x) in names.iter().zip(&host[at + 1..at + v.len()]) {
                parts.insert(*n, x);
                *parts_sum.entry(n).or_insert(0.0) += x / accum as f64;
            }
            at += v.len();
            if !l.is_finite() {
                return Err(nan_stop(&run, step, l, &parts, last_checkpoint.as_deref()));
            }
            loss_sum += l / accum as f64;
        }
        opt.clip_to(grad_norm, cfg.optim.grad_clip);
        ph.lap("clip");
        if !grad_norm.is_finite() {
            let mut parts = BTreeMap::new();
            parts.insert("grad_norm", grad_norm);
            return Err(nan_stop(
                &run,
                step,
                loss_sum,
                &parts,
                last_checkpoint.as_deref(),
            ));
        }
        opt.step(lr);
        if let Some(e) = ema.as_mut() {
            e.update();
        }
        ph.lap("optimizer");
        // Discriminator: its own optimizer on detached (real, fake) pairs.
        let mut d_loss = None;
        if let Some(d) = dopt.as_mut() {
            d.zero_grad();
            let mut any = false;
            let mut dl_sum = 0f64;
            for (real, fake) in &disc_pairs {
                let dl = with_autocast(device, amp, || task.disc_loss(real, fake, step))?;
                if let Some(dl) = dl {
                    let v = scalar(&dl);
                    if !v.is_finite() {
                        let mut parts = BTreeMap::new();
                        parts.insert("disc_loss", v);
                        return Err(nan_stop(&run, step, v, &parts, last_checkpoint.as_deref()));
                    }
                    dl_sum += v / disc_pairs.len() as f64;
                    (dl / disc_pairs.len() as f64).backward();
                    any = true;
                }
            }
            if any {
                d.clip_grad_norm(cfg.optim.grad_clip);
                let dlr = lr_at(
                    step,
                    cfg.disc.lr,
                    cfg.optim.warmup_steps,
                    total,
                    cfg.optim.min_lr_ratio,
                );
                d.step(dlr);
                d_loss = Some(dl_sum);
            }
            d.zero_grad();
        }
        ph.lap("discriminator");
        task.after_step(step)?;
        ph.lap("after_step");
        if profiled {
            cuda_sync(device);
            cuda_profiler("cudaProfilerStop")?;
        }
        losses.push((step, loss_sum));
        let done = step + 1;

        imgs_since += bs * accum as f64;
        let dt = t_last.elapsed().as_secs_f64();
        if dt > 0.5 || done == end {
            img_per_s = imgs_since / dt.max(1e-9);
            imgs_since = 0.0;
            t_last = Instant::now();
        }
        pb.set_position(done);
        pb.set_message(format!(
            "loss {loss_sum:.4} lr {lr:.2e} {img_per_s:.1} img/s"
        ));
        if plain_lines && (t_line.elapsed().as_secs() >= 30 || done == end) {
            t_line = Instant::now();
            let per_step = t_run.elapsed().as_secs_f64() / (done - start_step).max(1) as f64;
            eprintln!(
                "step {done}/{total} loss {loss_sum:.4} lr {lr:.2e} {img_per_s:.1} img/s ETA {:.0} s",
                per_step * end.saturating_sub(done) as f64
            );
        }
        if done % cfg.schedule.log_every == 0 || done == total || done == end {
            let mut rec = serde_json::json!({
                "step": done,
                "loss": loss_sum,
                "lr": lr,
                "grad_norm": grad_norm,
                "img_per_s": img_per_s,
            });
            for (k, v) in &parts_sum {
                rec[*k] = serde_json::json!(v);
            }
            if let Some(d) = d_loss {
                rec["disc_loss"] = serde_json::json!(d);
            }
            run.log(&rec)?;
        }
        if done % cfg.schedule.ckpt_every == 0 || done == total {
            let mut tensors: Vec<(String, Tensor)> = task
                .state()
                .into_iter()
                .map(|(k, v)| (format!("model.{k}"), v))
                .collect();
            tensors.extend(opt.state_tensors("optim.gen"));
            let mut optim_t = BTreeMap::new();
            optim_t.insert("gen".to_string(), opt.t);
            if let Some(d) = dopt.as_ref() {
                tensors.extend(d.state_tensors("optim.disc"));
                optim_t.insert("disc".to_string(), d.t);
            }
            if let Some(e) = ema.as_ref() {
                tensors.extend(e.state_tensors());
            }
            let state = CkptState {
                format: checkpoint::FORMAT.into(),
                stage: cfg.run.stage.as_str().into(),
                step: done,
                seed: cfg.run.seed,
                optim_t,
                data_state: data.state(),
                tensors_bytes: 0,
                tensors_sha256: String::new(),
                extra: BTreeMap::new(),
            };
            last_checkpoint = Some(checkpoint::save(
                &run.path,
                state,
                &tensors,
                cfg.schedule.keep_last,
            )?);
        }
    }
    pb.finish_and_clear();
    Ok(TrainReport {
        losses,
        steps_done: end.max(start_step),
        last_checkpoint,
        start_step,
        run_dir: run.path.clone(),
        phases: ph.acc,
    })
}

fn nan_stop(
    run: &RunDir,
    step: u64,
    loss: f64,
    parts: &BTreeMap<&'static str, f64>,
    last_good: Option<&std::path::Path>,
) -> Error {
    let parts_s: Vec<String> = parts.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let last = last_good.map_or("none".to_string(), |p| p.display().to_string());
    let detail = format!(
        "loss={loss}; parts: [{}]; last good checkpoint (untouched): {last}; \
         try a lower optim.lr, optim.grad_clip > 0, or run.precision = \"f32\"",
        parts_s.join(", ")
    );
    let diag = serde_json::json!({
        "step": step,
        "loss": loss.to_string(),
        "parts": parts.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        "last_good_checkpoint": last,
    });
    let p = run.path.join("nan-diagnostic.json");
    let _ = std::fs::write(&p, serde_json::to_string_pretty(&diag).unwrap_or_default());
    Error::NonFinite { step, detail }
}

fn progress_bar(start: u64, total: u64, quiet: bool) -> indicatif::ProgressBar {
    if quiet {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new(total);
    pb.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg} ETA {eta}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    pb.set_position(start);
    pb
}
