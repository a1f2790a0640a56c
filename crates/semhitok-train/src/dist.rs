//! Data-parallel training over PyTorch's c10d (semhitok-sys's [`ProcessGroup`]: NCCL on CUDA,
//! Gloo on CPU), with torchrun's environment. [`Dist`] is what the `Trainer` calls at its named
//! places:
//!
//! | where | what |
//! |---|---|
//! | `Trainer::new` | rank 0's model state and weight EMA broadcast to every rank; the resumed step checked equal on all ranks |
//! | `gen_step` | the flat gradient buffer all-reduced (average) before the norm, clipping and AdamW, as one collective or in `dist.bucket_mb` buckets, launched during the backward pass with `dist.overlap` ([`GradReducer`]); the logged losses averaged |
//! | `disc_step` | the discriminator's gradients likewise; its logged loss averaged |
//! | `gen_step`, token batches | each rank's token-mean loss weighted by its share of the global batch's loss tokens ([`Dist::token_weight`]): the step optimizes the mean over every token, as one process with the whole batch |
//! | `Task::after_step` | EMA codebook statistics (`CodeStats`, plain sums) all-reduced (sum) before the one EMA update |
//! | SPC k-means init | all-gathered encoder outputs, k-means on rank 0, codes broadcast (semhitok-nn) |
//! | `checkpoint` | rank 0 writes (atomically), every rank then meets at a barrier with the longer `dist.checkpoint_timeout_s` |
//!
//! Only rank 0 opens the run directory (its lock, config, metrics, checkpoints); the other ranks
//! read checkpoints from it on resume (so multi-node resume needs the run directory on a shared
//! filesystem).
//!
//! Deliberately per rank, as in the reference recipe (LlamaGen's `vq_train.py` wraps the
//! PatchGAN in plain DDP, no `SyncBatchNorm`): the PatchGAN's
//! BatchNorm batch statistics (each rank normalises its own B/W images; the discriminator always
//! runs in train mode, so the running statistics, rank 0's in the checkpoint, never enter a
//! step) and the adaptive GAN weight (each rank's own gradient-norm ratio, as taming's
//! `autograd.grad` on the local loss). With the discriminator active, W x B/W is therefore the
//! reference's W-GPU recipe with B/W per GPU, not one process with batch B; without it (or before
//! `disc.start_step`) it is one process with batch B up to float summation order.
//!
//! Token batches (LLaVA, T2I): every rank's token-mean loss is weighted by its share of the
//! global batch's loss tokens ([`Dist::token_weight`]), so the step's loss and gradient are the
//! mean over all the global batch's tokens, as one process with the whole batch computes them.
//! Gradient accumulation keeps the trainer's rule (the mean of the micro-batch means).

use crate::config::{DeviceKind, DistBackend, DistConfig};
use crate::error::{Error, Result};
use crate::optim::AdamW;
use crate::trainer::TokenBatch;
use semhitok_nn::quantizer::CodeStats;
use semhitok_sys::{bucket_starts, Backend, DistEnv, GradReducer, ProcessGroup, ReduceOp};
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tch::{Kind, Tensor};

/// This process's CUDA device index: `LOCAL_RANK` once a process group is up, else 0.
static CUDA_INDEX: OnceLock<usize> = OnceLock::new();

/// The CUDA device index this process trains on (`LOCAL_RANK` in a distributed run).
pub fn cuda_index() -> usize {
    CUDA_INDEX.get().copied().unwrap_or(0)
}

/// A data-parallel run's process group and limits. Cheap to clone (shared group).
#[derive(Debug, Clone)]
pub struct Dist {
    pg: Arc<ProcessGroup>,
    checkpoint_timeout: Duration,
    /// `dist.bucket_mb` in bytes (0: one collective for the flat buffer).
    bucket_bytes: u64,
    overlap: bool,
}

impl Dist {
    /// The group of the launcher's environment (torchrun / SLURM / `cargo xtask train --gpus N`);
    /// `Ok(None)` when no launcher set `WORLD_SIZE` (a plain run, exactly the non-distributed
    /// trainer). Sets this process's CUDA device to `LOCAL_RANK`.
    pub fn from_env(cfg: &DistConfig, device: DeviceKind) -> Result<Option<Self>> {
        let Some(env) = DistEnv::from_env()? else {
            return Ok(None);
        };
        Self::new(&env, cfg, device).map(Some)
    }

    /// The group of `env` (see [`Dist::from_env`]).
    pub fn new(env: &DistEnv, cfg: &DistConfig, device: DeviceKind) -> Result<Self> {
        let backend = match cfg.backend {
            DistBackend::Auto => Backend::default_for(device == DeviceKind::Cuda),
            DistBackend::Nccl => Backend::Nccl,
            DistBackend::Gloo => Backend::Gloo,
        };
        if !(cfg.bucket_mb.is_finite() && (0.0..=1e6).contains(&cfg.bucket_mb)) {
            return Err(Error::Input(format!(
                "dist.bucket_mb = {}: expected a size in MiB in [0, 1e6] (0: one collective)",
                cfg.bucket_mb
            )));
        }
        if cfg.overlap && cfg.bucket_mb == 0.0 {
            return Err(Error::Input(
                "dist.overlap = true needs dist.bucket_mb > 0 (e.g. 25, DDP's default): a single \
                 bucket is only complete at the end of the backward pass"
                    .into(),
            ));
        }
        if backend == Backend::Nccl && device != DeviceKind::Cuda {
            return Err(Error::Input(
                "dist.backend = \"nccl\" needs run.device = \"cuda\" (use gloo on CPU)".into(),
            ));
        }
        // The CUDA device: cuda:LOCAL_RANK when the process sees the host's GPUs, cuda:0 when it
        // sees only its own (CUDA_VISIBLE_DEVICES per rank, `srun --gpus-per-task 1`).
        let mut env = env.clone();
        if device == DeviceKind::Cuda {
            let n = tch::Cuda::device_count() as usize;
            env.local_rank = match n {
                1 => 0,
                _ if env.local_rank < n => env.local_rank,
                _ => {
                    return Err(Error::Input(format!(
                        "LOCAL_RANK {} but LibTorch sees {n} CUDA device(s)",
                        env.local_rank
                    )))
                }
            };
        }
        let _ = CUDA_INDEX.set(env.local_rank);
        let pg = ProcessGroup::with_timeouts(
            &env,
            backend,
            secs(cfg.rendezvous_timeout_s),
            secs(cfg.timeout_s),
        )?;
        Ok(Self {
            pg: Arc::new(pg),
            checkpoint_timeout: secs(cfg.checkpoint_timeout_s),
            bucket_bytes: (cfg.bucket_mb * 1024.0 * 1024.0) as u64,
            overlap: cfg.overlap,
        })
    }

    /// The process group (for parts outside the trainer, e.g. the SPC's k-means init).
    pub fn process_group(&self) -> &Arc<ProcessGroup> {
        &self.pg
    }
    pub fn rank(&self) -> usize {
        self.pg.rank()
    }
    pub fn world_size(&self) -> usize {
        self.pg.world_size()
    }
    /// Rank 0: the one that writes the run directory.
    pub fn is_main(&self) -> bool {
        self.pg.is_main()
    }
    /// The step named by errors of later collectives.
    pub(crate) fn set_step(&self, step: u64) {
        self.pg.set_step(step);
    }

    /// Overwrite each tensor with rank 0's values (one broadcast per tensor, in the given order,
    /// which must be the same on every rank: names sorted).
    pub(crate) fn broadcast_from_main(&self, tensors: &[(String, Tensor)]) -> Result<()> {
        let _g = tch::no_grad_guard();
        for (name, t) in tensors {
            // NCCL takes CUDA tensors only; host-side state (the LeCam EMAs `disc.lecam`, f64 on
            // the CPU) travels through a device copy. Gloo takes either.
            let staged = collective_device(self.pg.backend(), t.device());
            if let Some(dev) = staged {
                let mut c = t.f_to_device(dev)?.f_contiguous()?;
                self.pg.broadcast(name, &mut c, 0)?;
                t.shallow_clone().f_copy_(&c)?;
            } else if t.is_contiguous() {
                self.pg.broadcast(name, &mut t.shallow_clone(), 0)?;
            } else {
                let mut c = t.contiguous();
                self.pg.broadcast(name, &mut c, 0)?;
                t.shallow_clone().f_copy_(&c)?;
            }
        }
        Ok(())
    }

    /// Average the optimizer's gradients over the ranks, in place (one collective for the flat
    /// buffer).
    pub(crate) fn average_grads(&self, what: &str, opt: &mut AdamW) -> Result<()> {
        let _g = tch::no_grad_guard();
        for mut g in opt.grads_for_reduce() {
            self.pg.all_reduce(what, &mut g, ReduceOp::Avg)?;
        }
        Ok(())
    }

    /// Whether the generator's buckets are launched from the backward pass (`dist.overlap`).
    pub(crate) fn overlap(&self) -> bool {
        self.overlap
    }

    /// The bucketed reducer of the optimizer's flat gradient buffer (`dist.bucket_mb > 0`), once
    /// every gradient lives in that buffer (from the second step on: gradients exist only after
    /// a backward). `None`: reduce with [`Dist::average_grads`] (one collective). The buckets
    /// follow the buffer's layout; their launch order starts as the reverse of it (gradients
    /// come roughly in reverse forward order) and is then learned ([`Dist::learn_order`]).
    pub(crate) fn grad_reducer(&self, what: &str, opt: &mut AdamW) -> Result<Option<GradReducer>> {
        if self.bucket_bytes == 0 {
            return Ok(None);
        }
        let grads = opt.grads_for_reduce();
        let [flat] = grads.as_slice() else {
            return Ok(None);
        };
        let Some(views) = opt.views_into(flat) else {
            return Ok(None);
        };
        let elt = flat.kind().elt_size_in_bytes() as i64;
        let base = flat.data_ptr() as i64;
        let params: Vec<(Tensor, i64)> = opt
            .params()
            .iter()
            .zip(&views)
            .map(|(p, v)| (p.var.shallow_clone(), (v.data_ptr() as i64 - base) / elt))
            .collect();
        let layout: Vec<(i64, i64)> = params
            .iter()
            .map(|(v, off)| (*off, v.numel() as i64))
            .collect();
        let starts = bucket_starts(&layout, self.bucket_bytes as i64 / elt);
        let r = GradReducer::new(self.pg.clone(), what, flat, &params, &starts, ReduceOp::Avg)?;
        let reverse: Vec<i64> = (0..starts.len() as i64).rev().collect();
        r.set_order(&reverse)?;
        Ok(Some(r))
    }

    /// After the first overlapped step: launch the buckets from now on in the order they became
    /// complete on rank 0 (then the ones that did not), the same order on every rank.
    pub(crate) fn learn_order(&self, r: &GradReducer, completed: &[i64]) -> Result<()> {
        let mut order = completed.to_vec();
        let mut rest: Vec<i64> = (0..r.n_buckets() as i64)
            .rev()
            .filter(|b| !completed.contains(b))
            .collect();
        order.append(&mut rest);
        let mut t = Tensor::from_slice(&order);
        if self.pg.backend() == Backend::Nccl {
            t = t.to_device(tch::Device::Cuda(cuda_index()));
        }
        self.pg
            .broadcast("the gradient buckets' order", &mut t, 0)?;
        r.set_order(&Vec::<i64>::try_from(t.to_device(tch::Device::Cpu))?)?;
        Ok(())
    }

    /// The weight of this rank's token-mean loss in a data-parallel step: `world * n / N` with
    /// `n` its loss tokens ([`TokenBatch::n_loss_tokens`]) and `N` those of every rank (one
    /// all-reduce of a scalar; no host sync). The ranks' average of `weight * mean` is then the
    /// mean over all `N` tokens, as one process with the whole batch computes it; the gradient
    /// likewise. A 0-d f32 tensor on the batch's device (exactly 1 at world size 1).
    pub(crate) fn token_weight(&self, tb: &TokenBatch) -> Result<Tensor> {
        let _g = tch::no_grad_guard();
        let n = tb.n_loss_tokens()?.f_to_kind(Kind::Double)?;
        let mut all = n.f_reshape([1])?.f_mul_scalar(1.0)?; // a new tensor
        self.pg
            .all_reduce("the micro-batch's loss tokens", &mut all, ReduceOp::Sum)?;
        let w = n
            .f_mul_scalar(self.world_size() as f64)?
            .f_div(&all.f_reshape([])?.f_clamp_min(1.0)?)?;
        Ok(w.f_to_kind(Kind::Float)?)
    }

    /// Sum EMA codebook statistics over the ranks (they are plain sums: the result is the
    /// statistics of the global batch).
    pub fn sum_code_stats(&self, what: &str, stats: &mut CodeStats) -> Result<()> {
        let _g = tch::no_grad_guard();
        for t in [&mut stats.counts, &mut stats.sums] {
            if !t.is_contiguous() {
                *t = t.contiguous();
            }
            self.pg.all_reduce(what, t, ReduceOp::Sum)?;
        }
        Ok(())
    }

    /// Average a device tensor of values (losses to log) over the ranks, in place.
    pub(crate) fn average(&self, what: &str, t: &mut Tensor) -> Result<()> {
        self.pg.all_reduce(what, t, ReduceOp::Avg)?;
        Ok(())
    }

    /// Error unless `value` is the same on every rank (e.g. the resumed step).
    pub(crate) fn check_same(&self, what: &str, value: u64) -> Result<()> {
        let t = Tensor::from_slice(&[value as i64]).to_kind(Kind::Int64);
        let t = match self.pg.backend() {
            Backend::Nccl => t.to_device(tch::Device::Cuda(cuda_index())),
            Backend::Gloo => t,
        };
        let all = Vec::<i64>::try_from(self.pg.all_gather(what, &t)?.to_device(tch::Device::Cpu))?;
        if all.iter().any(|&v| v != value as i64) {
            return Err(Error::Input(format!(
                "{what} differs across ranks: {all:?} (rank {} has {value})",
                self.rank()
            )));
        }
        Ok(())
    }

    /// Every rank's JSON value, in rank order (the data positions of a checkpoint): lengths are
    /// all-gathered, then the UTF-8 bytes padded to the longest.
    pub(crate) fn gather_json(
        &self,
        what: &str,
        value: &serde_json::Value,
    ) -> Result<Vec<serde_json::Value>> {
        let bytes = serde_json::to_vec(value).map_err(|e| Error::Input(format!("{what}: {e}")))?;
        let dev = match self.pg.backend() {
            Backend::Nccl => tch::Device::Cuda(cuda_index()),
            Backend::Gloo => tch::Device::Cpu,
        };
        let len = Tensor::from_slice(&[bytes.len() as i64]).to_device(dev);
        let lens =
            Vec::<i64>::try_from(self.pg.all_gather(what, &len)?.to_device(tch::Device::Cpu))?;
        let max = lens.iter().copied().max().unwrap_or(0).max(1) as usize;
        let mut padded = bytes.clone();
        padded.resize(max, 0);
        let t = Tensor::from_slice(&padded).to_device(dev);
        let all = Vec::<u8>::try_from(self.pg.all_gather(what, &t)?.to_device(tch::Device::Cpu))?;
        lens.iter()
            .enumerate()
            .map(|(r, &n)| {
                serde_json::from_slice(&all[r * max..r * max + n as usize])
                    .map_err(|e| Error::Input(format!("{what} of rank {r}: {e}")))
            })
            .collect()
    }

    /// Every rank waits here while rank 0 writes a checkpoint (the longer limit
    /// `dist.checkpoint_timeout_s`).
    pub(crate) fn checkpoint_barrier(&self, step: u64) -> Result<()> {
        self.pg.barrier_with_timeout(
            &format!("the checkpoint of step {step}"),
            self.checkpoint_timeout,
        )?;
        Ok(())
    }

    /// Every rank waits here while rank 0 validates (the limit of the checkpoint barrier).
    pub(crate) fn validation_barrier(&self, step: u64) -> Result<()> {
        self.pg.barrier_with_timeout(
            &format!("the validation of step {step}"),
            self.checkpoint_timeout,
        )?;
        Ok(())
    }
}

fn secs(s: f64) -> Duration {
    Duration::from_secs_f64(s.max(0.001))
}

/// The images of rank `rank` of `world` in a global batch of `world * per_rank` images starting
/// at global image index `start`: `[start + rank * per_rank, start + (rank + 1) * per_rank)`. So
/// `world` ranks with per-rank batch `B / world` see, together and in rank order, exactly the
/// images one rank with batch `B` sees, and the data position (global images consumed) does not
/// depend on the world size.
pub fn shard_range(start: u64, rank: usize, world: usize, per_rank: u64) -> std::ops::Range<u64> {
    debug_assert!(rank < world.max(1));
    let a = start + rank as u64 * per_rank;
    a..a + per_rank
}

/// The device a tensor on `device` must be copied to for a collective of `backend`, or `None`
/// when the backend takes it where it is: NCCL needs CUDA tensors (a CPU tensor goes to this
/// rank's GPU, `LOCAL_RANK`); Gloo takes CPU and CUDA tensors.
pub(crate) fn collective_device(backend: Backend, device: tch::Device) -> Option<tch::Device> {
    match (backend, device) {
        (Backend::Nccl, tch::Device::Cpu) => Some(tch::Device::Cuda(cuda_index())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nccl_collectives_stage_host_tensors_on_the_gpu_and_gloo_takes_them_as_they_are() {
        // The H200 run of 2026-12-02 (session 4) stopped at `broadcast of disc.lecam`: "Tensors
        // must be CUDA and dense" (the LeCam EMAs live on the CPU).
        assert!(matches!(
            collective_device(Backend::Nccl, tch::Device::Cpu),
            Some(tch::Device::Cuda(_))
        ));
        assert_eq!(collective_device(Backend::Nccl, tch::Device::Cuda(0)), None);
        assert_eq!(collective_device(Backend::Gloo, tch::Device::Cpu), None);
        assert_eq!(collective_device(Backend::Gloo, tch::Device::Cuda(0)), None);
    }
}
