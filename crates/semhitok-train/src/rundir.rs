//! The run directory: resolved config, provenance and metrics.
//!
//! Before the first step [`RunDir::create`] writes `config.toml` (the config after `--set`
//! overrides) and `run.json` (git revision, command line, stage, start time). Metrics are
//! appended to `metrics.jsonl`, one JSON object per logged step.

use crate::config::TrainConfig;
use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

/// An open run directory.
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    metrics: std::fs::File,
}

/// The git revision of the checkout containing `start` (read from `.git` directly: this crate
/// spawns no processes). `SEMHITOK_GIT_REV` overrides it. "unknown" outside a checkout.
pub fn git_rev(start: &Path) -> String {
    if let Ok(r) = std::env::var("SEMHITOK_GIT_REV") {
        return r;
    }
    let mut dir = start.canonicalize().unwrap_or_else(|_| start.to_path_buf());
    loop {
        let git = dir.join(".git");
        if git.is_dir() {
            return read_head(&git).unwrap_or_else(|| "unknown".into());
        }
        if !dir.pop() {
            return "unknown".into();
        }
    }
}

fn read_head(git: &Path) -> Option<String> {
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(r) = head.strip_prefix("ref: ") else {
        return Some(head.to_string());
    };
    if let Ok(s) = std::fs::read_to_string(git.join(r)) {
        return Some(s.trim().to_string());
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
    packed
        .lines()
        .find_map(|l| l.strip_suffix(r).map(|h| h.trim().to_string()))
}

impl RunDir {
    /// Create (or reopen, when resuming) `cfg.run.out_dir`, write `config.toml` and `run.json`.
    pub fn create(cfg: &TrainConfig, command_line: &[String], resuming: bool) -> Result<Self> {
        let path = cfg.run.out_dir.clone();
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        let cfg_path = path.join("config.toml");
        let text = format!(
            "# resolved config of run `{}` (stage {}), written before the first step\n{}",
            cfg.run.name,
            cfg.run.stage.as_str(),
            cfg.to_toml()
        );
        std::fs::write(&cfg_path, text).map_err(|e| Error::io(&cfg_path, e))?;
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        let info = serde_json::json!({
            "name": cfg.run.name,
            "stage": cfg.run.stage.as_str(),
            "git_rev": git_rev(&cwd),
            "command_line": command_line,
            "resumed": resuming,
            "started_unix_s": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            "torch_threads": tch::get_num_threads(),
        });
        let run_json = path.join(if resuming {
            "run.resume.json"
        } else {
            "run.json"
        });
        std::fs::write(
            &run_json,
            serde_json::to_string_pretty(&info).unwrap_or_default(),
        )
        .map_err(|e| Error::io(&run_json, e))?;
        let mpath = path.join("metrics.jsonl");
        let metrics = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&mpath)
            .map_err(|e| Error::io(&mpath, e))?;
        Ok(Self { path, metrics })
    }

    /// Append one metrics record.
    pub fn log(&mut self, record: &serde_json::Value) -> Result<()> {
        let mpath = self.path.join("metrics.jsonl");
        writeln!(self.metrics, "{record}").map_err(|e| Error::io(&mpath, e))
    }

    /// Drop metrics records with `step > last_step` (used on resume, so a resumed run's
    /// metrics.jsonl has no duplicated steps).
    pub fn truncate_metrics_after(&mut self, last_step: u64) -> Result<()> {
        let mpath = self.path.join("metrics.jsonl");
        let text = std::fs::read_to_string(&mpath).unwrap_or_default();
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| {
                serde_json::from_str::<serde_json::Value>(l)
                    .ok()
                    .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                    .is_some_and(|s| s <= last_step)
            })
            .collect();
        let mut out = kept.join("\n");
        if !out.is_empty() {
            out.push('\n');
        }
        std::fs::write(&mpath, out).map_err(|e| Error::io(&mpath, e))?;
        self.metrics = std::fs::OpenOptions::new()
            .append(true)
            .open(&mpath)
            .map_err(|e| Error::io(&mpath, e))?;
        Ok(())
    }
}

/// Read a run's metrics.jsonl (skipping malformed lines).
pub fn read_metrics(run_dir: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run_dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}
