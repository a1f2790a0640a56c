//! Stopping a run that went non-finite: the diagnostic (error + `nan-diagnostic.json`) names the
//! step, the loss and which part went bad, and the last good checkpoint, which is left untouched.

use crate::error::Error;
use std::collections::BTreeMap;
use std::path::Path;

/// The error (and the diagnostic file in the run directory, when this process owns it) for a
/// non-finite value at `step`.
pub(super) fn nan_stop(
    run_dir: Option<&Path>,
    step: u64,
    loss: f64,
    parts: &BTreeMap<&'static str, f64>,
    last_good: Option<&Path>,
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
    if let Some(dir) = run_dir {
        let p = dir.join("nan-diagnostic.json");
        let _ = std::fs::write(&p, serde_json::to_string_pretty(&diag).unwrap_or_default());
    }
    Error::NonFinite { step, detail }
}
