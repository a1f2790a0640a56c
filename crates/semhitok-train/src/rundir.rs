//! The run directory: resolved config, provenance and metrics.
//!
//! Before the first step [`RunDir::create`] writes `config.toml` (the config after `--set`
//! overrides) and `run.json` (git revision, command line, stage, start time). Metrics are
//! appended to `metrics.jsonl`, one JSON object per logged step.
//!
//! Ownership: a run holds an exclusive advisory lock (`flock`) on `RUN/.lock` for its lifetime,
//! with its pid in the file; a second process on the same directory fails at once naming the
//! directory and the holder's pid. The kernel drops the lock when its process dies, so a stale
//! lock of a killed run is taken over without any clean-up. A fresh run ([`RunStart::Fresh`])
//! into a directory that already holds a run (metrics or checkpoints) is an error unless
//! [`RunStart::Overwrite`] is asked for, which deletes the old run's files first (stated on
//! stderr); [`RunStart::Resume`] continues it, or starts it when there is nothing to resume.

use crate::error::{Error, Result};
use crate::trainer::LoopConfig;
use std::io::Write;
use std::path::{Path, PathBuf};

/// An open run directory.
#[derive(Debug)]
pub struct RunDir {
    pub path: PathBuf,
    metrics: std::fs::File,
    /// The open `.lock` file; its `flock` is held until this is dropped.
    _lock: std::fs::File,
}

/// How a run treats what its directory already holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RunStart {
    /// Start a new run; an existing run in the directory is an error.
    #[default]
    Fresh,
    /// Continue the run from its newest checkpoint, or start it when there is none
    /// (`--resume`, `--resume auto`: what requeued cluster jobs need).
    Resume,
    /// Start a new run, deleting the files of the one the directory holds.
    Overwrite,
}

/// Take the exclusive lock on `dir/.lock` (non-blocking) and write our pid into it.
fn lock(dir: &Path) -> Result<std::fs::File> {
    use std::os::unix::io::AsRawFd;
    let p = dir.join(".lock");
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&p)
        .map_err(|e| Error::io(&p, e))?;
    // SAFETY: flock on a file descriptor we own and keep open for the lock's lifetime.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let holder = std::fs::read_to_string(&p).unwrap_or_default();
        return Err(Error::Input(format!(
            "run directory {} is in use by another process (pid {}); wait for it or pick another run.out_dir",
            dir.display(),
            holder.trim()
        )));
    }
    use std::io::Seek;
    f.set_len(0).map_err(|e| Error::io(&p, e))?;
    f.rewind().map_err(|e| Error::io(&p, e))?;
    write!(f, "{}", std::process::id()).map_err(|e| Error::io(&p, e))?;
    f.flush().map_err(|e| Error::io(&p, e))?;
    Ok(f)
}

/// Whether `dir` holds (part of) a run: logged metrics or a checkpoint folder with entries.
fn holds_run(dir: &Path) -> bool {
    let metrics = std::fs::metadata(dir.join("metrics.jsonl")).is_ok_and(|m| m.len() > 0);
    let ckpts = std::fs::read_dir(dir.join(crate::checkpoint::CKPT_DIR))
        .is_ok_and(|mut d| d.next().is_some());
    metrics || ckpts
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
    /// Create (or reopen, when resuming) `cfg.run.out_dir`, take its lock, apply the
    /// [`RunStart`] rule, and write `config.toml` and `run.json`.
    pub fn create(cfg: &LoopConfig, command_line: &[String], start: RunStart) -> Result<Self> {
        let path = cfg.run.out_dir.clone();
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
        let lock = lock(&path)?;
        let resuming = start == RunStart::Resume;
        if !resuming && holds_run(&path) {
            if start == RunStart::Fresh {
                return Err(Error::Input(format!(
                    "{} already holds a run (metrics.jsonl / checkpoints): continue it with \
                     --resume auto, replace it with --overwrite, or set another run.out_dir",
                    path.display()
                )));
            }
            eprintln!(
                "--overwrite: deleting the previous run in {}",
                path.display()
            );
            for e in std::fs::read_dir(&path).map_err(|e| Error::io(&path, e))? {
                let e = e.map_err(|e| Error::io(&path, e))?;
                let p = e.path();
                if p.file_name().is_some_and(|n| n == ".lock") {
                    continue;
                }
                let r = if p.is_dir() {
                    std::fs::remove_dir_all(&p)
                } else {
                    std::fs::remove_file(&p)
                };
                r.map_err(|e| Error::io(&p, e))?;
            }
        }
        let cfg_path = path.join("config.toml");
        let text = format!(
            "# resolved config of run `{}` (stage {}), written before the first step\n{}",
            cfg.run.name,
            cfg.run.stage.as_str(),
            cfg.config_toml
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
        Ok(Self {
            path,
            metrics,
            _lock: lock,
        })
    }

    /// State the data-parallel layout in the run directory: a closing comment in `config.toml`
    /// and `dist.json` (world size, backend, per-rank batch, accumulation, global batch).
    pub fn record_data_parallel(
        &self,
        world_size: usize,
        backend: &str,
        batch_per_rank: i64,
        accum_steps: u64,
    ) -> Result<()> {
        let global = batch_per_rank as u64 * world_size as u64 * accum_steps;
        let cfg_path = self.path.join("config.toml");
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&cfg_path)
            .map_err(|e| Error::io(&cfg_path, e))?;
        writeln!(
            f,
            "\n# data-parallel ({backend}): {world_size} ranks x data.batch_size {batch_per_rank} x \
             optim.accum_steps {accum_steps} = global batch {global}"
        )
        .map_err(|e| Error::io(&cfg_path, e))?;
        let p = self.path.join("dist.json");
        let info = serde_json::json!({
            "world_size": world_size,
            "backend": backend,
            "batch_per_rank": batch_per_rank,
            "accum_steps": accum_steps,
            "global_batch": global,
        });
        std::fs::write(&p, serde_json::to_string_pretty(&info).unwrap_or_default())
            .map_err(|e| Error::io(&p, e))
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
