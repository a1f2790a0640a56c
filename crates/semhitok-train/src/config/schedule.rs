//! `[schedule]` (length, logging, checkpoints), `[guard]` (blow-up stops) and `[init]`
//! (weights of earlier stages).

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[schedule]`: length, logging, checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Optimizer steps.
    pub steps: u64,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Checkpoint every N optimizer steps (and always at the end).
    pub ckpt_every: u64,
    /// Checkpoints kept (oldest deleted first).
    #[serde(default = "default_keep")]
    pub keep_last: usize,
    /// Validate every N optimizer steps and at the last step (0: off): the tokenizer stages
    /// measure the fixed subset of `[eval]` (`val_images` of `[eval.data]`, else of the held-out
    /// photos) and log a `"kind": "val"` record (`trainer::validate`).
    #[serde(default)]
    pub eval_every: u64,
}

fn default_log_every() -> u64 {
    10
}
fn default_keep() -> usize {
    3
}

/// `[guard]`: stops for runs that blow up without going non-finite (a NaN/Inf loss or gradient
/// always stops the run). A stopped run never commits a checkpoint of the blown-up state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// A step spikes when its loss or gradient norm exceeds `spike_factor` x the median of the
    /// last `spike_window` steps (0: off).
    #[serde(default = "default_spike_factor")]
    pub spike_factor: f64,
    /// Steps in the running median (the guard waits until it holds `spike_window / 4` steps).
    #[serde(default = "default_spike_window")]
    pub spike_window: usize,
    /// Consecutive spiking steps that stop the run. While a spike streak lasts, checkpoints are
    /// held back (written once the streak ends, at the step it ends).
    #[serde(default = "default_spike_patience")]
    pub spike_patience: u32,
    /// Stop when one optimizer step grows the parameters' l2 norm by more than this factor (0:
    /// off). Catches an lr blow-up from the first step, before any history exists.
    #[serde(default = "default_max_weight_growth")]
    pub max_weight_growth: f64,
}

fn default_spike_factor() -> f64 {
    10.0
}
fn default_spike_window() -> usize {
    64
}
fn default_spike_patience() -> u32 {
    3
}
fn default_max_weight_growth() -> f64 {
    1.5
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            spike_factor: default_spike_factor(),
            spike_window: default_spike_window(),
            spike_patience: default_spike_patience(),
            max_weight_growth: default_max_weight_growth(),
        }
    }
}

/// `[init]`: weights taken from earlier stages.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// A run dir or checkpoint of stage `spc` (required by `pre`, `decoder-ft`).
    #[serde(default)]
    pub spc: Option<PathBuf>,
    /// A run dir or checkpoint of stage `pre` (required by `decoder-ft`; for `pre`: the run
    /// to fine-tune, e.g. on COYO after ImageNet).
    #[serde(default)]
    pub pre: Option<PathBuf>,
}
