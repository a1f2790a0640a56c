//! `[optim]`: the generator side's AdamW and learning-rate schedule.

use serde::{Deserialize, Serialize};

/// `[optim]`: AdamW + schedule for the generator side.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    /// Final lr as a fraction of `lr` at the end of the cosine.
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Max global grad norm (0: no clipping).
    #[serde(default)]
    pub grad_clip: f64,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub accum_steps: u64,
    /// Decay of the EMA of trainable weights (`None`: no EMA).
    #[serde(default)]
    pub ema_decay: Option<f64>,
}

fn default_eps() -> f64 {
    1e-8
}
fn one() -> u64 {
    1
}
