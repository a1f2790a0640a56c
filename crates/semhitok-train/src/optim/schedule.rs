//! The learning-rate schedule: linear warmup, then cosine.

/// Learning rate at optimizer step `step` (0-based): linear warmup from 0 over `warmup` steps,
/// then cosine from `base` down to `base * min_ratio` at `total` steps.
pub fn lr_at(step: u64, base: f64, warmup: u64, total: u64, min_ratio: f64) -> f64 {
    if warmup > 0 && step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let span = total.saturating_sub(warmup).max(1) as f64;
    let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
    let cos = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    base * (min_ratio + (1.0 - min_ratio) * cos)
}
