//! `[run]` (identity, stage, device, precision) and `[dist]` (data-parallel training).

use super::{default_true, Stage};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    pub fn device(self) -> tch::Device {
        match self {
            DeviceKind::Cpu => tch::Device::Cpu,
            // LOCAL_RANK in a distributed run (crate::dist), else 0.
            DeviceKind::Cuda => tch::Device::Cuda(crate::dist::cuda_index()),
        }
    }
}

/// Numeric precision of forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 everywhere (CPU default; needed for bit-exact resume tests).
    F32,
    /// bf16 autocast on CUDA (fp32 master weights and optimizer); ignored on CPU.
    Bf16,
}

/// `[run]`: identity, stage, device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Human-readable run name (also the default run-dir name).
    pub name: String,
    /// The run directory (checkpoints, metrics.jsonl, config.toml, run.json).
    pub out_dir: PathBuf,
    pub stage: Stage,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_device")]
    pub device: DeviceKind,
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// With `precision = "bf16"` on CUDA: keep one flat bf16 copy of the trained matrices,
    /// refreshed once per forward, instead of letting autocast cast each weight forward and each
    /// gradient back (same values; see `optim::Bf16Copy`). `false`: plain autocast.
    #[serde(default = "default_true")]
    pub bf16_weight_copy: bool,
    /// Intra-op CPU threads of LibTorch. 0 (the default): automatic, see
    /// [`RunConfig::torch_threads`].
    #[serde(default)]
    pub threads: usize,
}

impl RunConfig {
    /// Forward passes run under bf16 autocast (`precision = "bf16"` on CUDA; CPU runs f32).
    pub fn bf16_autocast(&self) -> bool {
        self.precision == Precision::Bf16 && self.device == DeviceKind::Cuda
    }

    /// The trainer computes from the flat bf16 weight copy ([`Self::bf16_autocast`] and
    /// `bf16_weight_copy`).
    pub fn bf16_copy(&self) -> bool {
        self.bf16_autocast() && self.bf16_weight_copy
    }

    /// LibTorch's intra-op threads for this run: `threads` when set; else 1 on CUDA (the
    /// trainer's CPU-side tensor work there is a few copies per step, and the cores belong to the
    /// data loader's decoding threads: LibTorch's default of one OpenMP thread per core competed
    /// with them, and `pre` at paper size on webdataset shards ran at 436 img/s with 20 ms of data
    /// wait per step against 515 img/s and 7 ms with one thread, H200 host with 16 cores,
    /// docs/benchmarks/data.md); `None` on the CPU (LibTorch's default: the model runs there).
    pub fn torch_threads(&self) -> Option<usize> {
        match (self.threads, self.device) {
            (0, DeviceKind::Cuda) => Some(1),
            (0, DeviceKind::Cpu) => None,
            (n, _) => Some(n),
        }
    }

    /// Sets LibTorch's intra-op threads to [`Self::torch_threads`] (process-wide; call once at
    /// the start of a run).
    pub fn apply_threads(&self) {
        if let Some(n) = self.torch_threads() {
            tch::set_num_threads(n as i32);
        }
    }
}

fn default_device() -> DeviceKind {
    DeviceKind::Cpu
}
fn default_precision() -> Precision {
    Precision::F32
}

// --- [dist]: data-parallel training (crate::dist) -------------------------------------------

/// c10d backend of a distributed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistBackend {
    /// NCCL on CUDA, Gloo on CPU.
    #[default]
    Auto,
    Nccl,
    Gloo,
}

/// `[dist]`: only read when a launcher (torchrun, srun, `cargo xtask train --gpus N`) set
/// `WORLD_SIZE`; `data.batch_size` is then per rank, and the global batch is
/// `batch_size x world size x optim.accum_steps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistConfig {
    #[serde(default)]
    pub backend: DistBackend,
    /// Limit of the rendezvous and of each collective: a rank waiting longer on a dead or stuck
    /// peer stops with an error naming the collective, its rank and the step.
    #[serde(default = "default_dist_timeout")]
    pub timeout_s: f64,
    /// Limit of the start-up: every rank launched and connected to the rendezvous store.
    #[serde(default = "default_dist_timeout")]
    pub rendezvous_timeout_s: f64,
    /// Limit of the barrier where the other ranks wait while rank 0 writes a checkpoint.
    #[serde(default = "default_dist_ckpt_timeout")]
    pub checkpoint_timeout_s: f64,
    /// Generator gradients all-reduced in buckets of at most this many MiB (0: one collective).
    #[serde(default)]
    pub bucket_mb: f64,
    /// Launch each bucket from the backward pass as soon as its gradients exist (needs bucket_mb > 0).
    #[serde(default)]
    pub overlap: bool,
}

fn default_dist_timeout() -> f64 {
    600.0
}
fn default_dist_ckpt_timeout() -> f64 {
    1800.0
}

impl Default for DistConfig {
    fn default() -> Self {
        Self {
            backend: DistBackend::Auto,
            timeout_s: default_dist_timeout(),
            rendezvous_timeout_s: default_dist_timeout(),
            checkpoint_timeout_s: default_dist_ckpt_timeout(),
            bucket_mb: 0.0,
            overlap: false,
        }
    }
}
