//! [`LoopConfig`]: everything the [`Trainer`](super::Trainer) reads, independent of the task.
//! The tokenizer's [`TrainConfig::loop_config`](crate::config::TrainConfig::loop_config) makes
//! one; the LLaVA and text-to-image configs make their own from the same section types.

use crate::config::{DistConfig, GuardConfig, LogConfig, OptimConfig, RunConfig, ScheduleConfig};

/// The discriminator optimizer's own settings (AdamW otherwise as `optim`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DiscOptim {
    pub lr: f64,
    pub betas: [f64; 2],
}

/// What the training loop reads of a config.
#[derive(Debug, Clone)]
pub struct LoopConfig {
    /// Name, run directory, stage (written into checkpoints, checked on resume), seed, device,
    /// precision, bf16 weight copy.
    pub run: RunConfig,
    /// AdamW of the trained parameters, warmup, clipping, accumulation, weight EMA.
    pub optim: OptimConfig,
    /// Steps, logging, validation and checkpoint cadence.
    pub schedule: ScheduleConfig,
    pub guard: GuardConfig,
    /// Timeouts and backend of a data-parallel run (read by [`crate::dist::Dist::from_env`]).
    pub dist: DistConfig,
    /// The discriminator's optimizer; required when the task has discriminator parameters.
    pub disc: Option<DiscOptim>,
    /// Samples per micro-batch on one rank (run.json's data-parallel record and the start
    /// message; the throughput figures count the batches' real sizes).
    pub batch_size: usize,
    /// TensorBoard event files (`[log]`).
    pub log: LogConfig,
    /// The resolved config as TOML, written into the run directory as `config.toml` (so
    /// `semhitok train --resume RUN_DIR` can read it back).
    pub config_toml: String,
}
