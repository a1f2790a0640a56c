//! Stopping a run that went bad, before its state reaches a checkpoint.
//!
//! * Non-finite: a NaN/Inf loss, loss part or gradient norm stops the run at once
//!   ([`nan_stop`]); before a checkpoint is committed every floating tensor of it is checked
//!   finite on the device (one reduction per tensor, one read-back) by the trainer.
//! * Finite blow-ups ([`Guard`], `[guard]` in the config): a step whose loss or gradient norm
//!   exceeds `spike_factor` x the running median for `spike_patience` consecutive steps, or one
//!   optimizer step that grows the parameters' l2 norm by more than `max_weight_growth`. While a
//!   spike streak lasts, checkpoints are held back, so the last committed checkpoint predates it.
//!
//! Steps are numbered as metrics.jsonl numbers them (1-based: step N is the N-th optimizer step).
//! Each stop writes `RUN/nan-diagnostic.json` (what went bad, the values, the last good
//! checkpoint, which is left untouched) and returns the error.

use crate::config::GuardConfig;
use crate::error::Error;
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// Writes the diagnostic file and returns the detail line of the error.
fn diagnose(
    run_dir: Option<&Path>,
    step: u64,
    what: &str,
    values: &BTreeMap<String, String>,
    last_good: Option<&Path>,
) -> String {
    let vals: Vec<String> = values.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let last = last_good.map_or("none".to_string(), |p| p.display().to_string());
    let detail = format!(
        "{what}; values: [{}]; last good checkpoint (untouched): {last}; \
         try a lower optim.lr, optim.grad_clip > 0, or run.precision = \"f32\"",
        vals.join(", ")
    );
    let diag = serde_json::json!({
        "step": step,
        "what": what,
        "values": values,
        "last_good_checkpoint": last,
    });
    // Only the process that owns the run directory (rank 0) writes the file.
    if let Some(dir) = run_dir {
        let p = dir.join("nan-diagnostic.json");
        let _ = std::fs::write(&p, serde_json::to_string_pretty(&diag).unwrap_or_default());
    }
    detail
}

/// The error (and the diagnostic file) for a non-finite loss at metrics step `step`.
pub(super) fn nan_stop(
    run_dir: Option<&Path>,
    step: u64,
    loss: f64,
    parts: &BTreeMap<&'static str, f64>,
    last_good: Option<&Path>,
) -> Error {
    let mut values: BTreeMap<String, String> = parts
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    values.insert("loss".into(), loss.to_string());
    let bad: Vec<&String> = values
        .iter()
        .filter(|(_, v)| v.parse::<f64>().is_ok_and(|x| !x.is_finite()))
        .map(|(k, _)| k)
        .collect();
    let what = format!("non-finite {bad:?}");
    let detail = diagnose(run_dir, step, &what, &values, last_good);
    Error::NonFinite { step, detail }
}

/// The error for checkpoint tensors that are not finite (named, at most 8 listed).
pub(super) fn nonfinite_state_stop(
    run_dir: Option<&Path>,
    step: u64,
    names: &[String],
    last_good: Option<&Path>,
) -> Error {
    let shown: Vec<&String> = names.iter().take(8).collect();
    let what = format!(
        "{} checkpoint tensors are not finite (the checkpoint was not written), e.g. {shown:?}",
        names.len()
    );
    let detail = diagnose(run_dir, step, &what, &BTreeMap::new(), last_good);
    Error::NonFinite { step, detail }
}

/// What [`Guard::observe`] decided about a step.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Verdict {
    Fine,
    /// Inside a spike streak: hold checkpoints back.
    Spiking,
    /// Stop: what went wrong and the values.
    Stop(String, BTreeMap<String, String>),
}

/// Running statistics for the finite blow-up checks of `[guard]`.
#[derive(Debug)]
pub(super) struct Guard {
    cfg: GuardConfig,
    losses: VecDeque<f64>,
    norms: VecDeque<f64>,
    /// The loss parts of the steps in the window: a change (the GAN switching on) restarts it.
    parts: BTreeSet<&'static str>,
    streak: u32,
    /// ||theta||^2 before the previous optimizer step.
    prev_norm_sq: Option<f64>,
}

fn median(v: &VecDeque<f64>) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().collect();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

impl Guard {
    pub(super) fn new(cfg: &GuardConfig) -> Self {
        Self {
            cfg: cfg.clone(),
            losses: VecDeque::new(),
            norms: VecDeque::new(),
            parts: BTreeSet::new(),
            streak: 0,
            prev_norm_sq: None,
        }
    }

    /// ||theta||^2 before the newest observed optimizer step.
    pub(super) fn norm_sq_before_last_step(&self) -> Option<f64> {
        self.prev_norm_sq
    }

    /// Whether a spike streak is in progress (checkpoints are held back).
    pub(super) fn spiking(&self) -> bool {
        self.streak > 0
    }

    /// The growth check of the optimizer step that took ||theta||^2 from `before` to `after`.
    pub(super) fn growth(
        &self,
        before: f64,
        after: f64,
    ) -> Option<(String, BTreeMap<String, String>)> {
        let g = self.cfg.max_weight_growth;
        if g == 0.0 || before <= 0.0 {
            return None;
        }
        let ratio = (after / before).sqrt();
        if ratio.is_finite() && ratio <= g {
            return None;
        }
        let values = BTreeMap::from([
            ("param_norm_before".to_string(), before.sqrt().to_string()),
            ("param_norm_after".to_string(), after.sqrt().to_string()),
        ]);
        Some((
            format!(
                "one optimizer step grew the parameters' l2 norm {ratio:.3e}x \
                 (guard.max_weight_growth = {g})"
            ),
            values,
        ))
    }

    /// One step's loss, gradient norm, loss-part names and ||theta||^2 before its optimizer
    /// step (= after the previous one, whose growth is checked here).
    pub(super) fn observe(
        &mut self,
        loss: f64,
        grad_norm: f64,
        parts: BTreeSet<&'static str>,
        norm_sq_before: f64,
    ) -> Verdict {
        if let Some(prev) = self.prev_norm_sq.replace(norm_sq_before) {
            if let Some((what, values)) = self.growth(prev, norm_sq_before) {
                return Verdict::Stop(format!("the previous step: {what}"), values);
            }
        }
        if self.cfg.spike_factor == 0.0 {
            return Verdict::Fine;
        }
        if parts != self.parts {
            self.losses.clear();
            self.norms.clear();
            self.streak = 0;
            self.parts = parts;
        }
        let min_history = (self.cfg.spike_window / 4).max(2);
        let mut spike = vec![];
        if self.losses.len() >= min_history {
            let f = self.cfg.spike_factor;
            let (ml, mn) = (median(&self.losses), median(&self.norms));
            if loss.abs() > f * ml.abs() {
                spike.push(("loss", loss, ml));
            }
            if grad_norm > f * mn {
                spike.push(("grad_norm", grad_norm, mn));
            }
        }
        if spike.is_empty() {
            self.streak = 0;
            for (q, v) in [(&mut self.losses, loss), (&mut self.norms, grad_norm)] {
                q.push_back(v);
                if q.len() > self.cfg.spike_window {
                    q.pop_front();
                }
            }
            return Verdict::Fine;
        }
        // Spiking steps stay out of the median, so a persisting blow-up cannot become normal.
        self.streak += 1;
        if self.streak < self.cfg.spike_patience {
            return Verdict::Spiking;
        }
        let mut values = BTreeMap::new();
        for (k, v, m) in &spike {
            values.insert(k.to_string(), v.to_string());
            values.insert(format!("{k}_running_median"), m.to_string());
        }
        let names: Vec<&str> = spike.iter().map(|s| s.0).collect();
        Verdict::Stop(
            format!(
                "{names:?} above {} x the running median for {} consecutive steps",
                self.cfg.spike_factor, self.streak
            ),
            values,
        )
    }

    /// The error (and diagnostic file) of a [`Verdict::Stop`] at metrics step `step`.
    pub(super) fn stop(
        run_dir: Option<&Path>,
        step: u64,
        what: &str,
        values: &BTreeMap<String, String>,
        last_good: Option<&Path>,
    ) -> Error {
        let detail = diagnose(run_dir, step, what, values, last_good);
        Error::Diverged { step, detail }
    }
}
