//! `[log]`: where a run reports besides `metrics.jsonl`.

use super::default_true;
use serde::{Deserialize, Serialize};

/// `[log]`: what a run writes besides `metrics.jsonl` (rank 0 only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// TensorBoard event files under `RUN/tb/` (train losses, lr, gradient norm, data wait,
    /// validation metrics and grids): `tensorboard --logdir runs/`.
    #[serde(default = "default_true")]
    pub tensorboard: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self { tensorboard: true }
    }
}
