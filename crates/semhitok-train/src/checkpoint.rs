//! Atomic checkpoints: `RUN/checkpoints/step-00000100/{tensors.safetensors,state.json}`.
//!
//! A checkpoint is written into `RUN/checkpoints/.tmp-step-…`, fsynced, then renamed into
//! place, so a crash never leaves a half-written `step-…` directory. `state.json` records the
//! byte length and SHA-256 of `tensors.safetensors`: a truncated or corrupted file is detected
//! with an error that says so, and [`load_latest`] then falls back to the previous checkpoint.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// Name of the checkpoint folder inside a run dir.
pub const CKPT_DIR: &str = "checkpoints";
const TENSORS: &str = "tensors.safetensors";
const STATE: &str = "state.json";

/// Everything of a checkpoint except the tensors.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CkptState {
    /// Format tag (`semhitok-train-ckpt/1`).
    pub format: String,
    /// Training stage that wrote it (stored as `spc`, `pre`, `decoder-ft`, `joint`).
    pub stage: crate::config::Stage,
    /// Optimizer steps completed.
    pub step: u64,
    /// Run seed (the per-step RNG is re-seeded from `seed` and `step`, so together they are the
    /// RNG state).
    pub seed: u64,
    /// AdamW update counts, by optimizer name.
    pub optim_t: BTreeMap<String, u64>,
    /// Serialized data-iterator state (semhitok-data), for exact resume.
    pub data_state: serde_json::Value,
    /// Length and SHA-256 of `tensors.safetensors`.
    pub tensors_bytes: u64,
    pub tensors_sha256: String,
    /// Free-form extra values (e.g. LeCam EMA scalars).
    #[serde(default)]
    pub extra: BTreeMap<String, f64>,
}

/// Format tag written into every checkpoint.
pub const FORMAT: &str = "semhitok-train-ckpt/1";

/// A loaded checkpoint.
#[derive(Debug)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub state: CkptState,
    pub tensors: BTreeMap<String, Tensor>,
}

fn sha256_file(path: &Path) -> Result<(u64, String)> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    h.update(&bytes);
    Ok((bytes.len() as u64, hex::encode(h.finalize())))
}

fn fsync_dir(path: &Path) {
    if let Ok(f) = std::fs::File::open(path) {
        let _ = f.sync_all();
    }
}

/// Directory name of the checkpoint at `step`.
pub fn step_dir_name(step: u64) -> String {
    format!("step-{step:08}")
}

/// Write a checkpoint atomically under `run_dir/checkpoints/`, then delete all but the newest
/// `keep_last`. Returns the checkpoint directory.
pub fn save(
    run_dir: &Path,
    mut state: CkptState,
    tensors: &[(String, Tensor)],
    keep_last: usize,
) -> Result<PathBuf> {
    let root = run_dir.join(CKPT_DIR);
    std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
    let name = step_dir_name(state.step);
    let tmp = root.join(format!(".tmp-{name}"));
    if tmp.exists() {
        std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
    // A failed write (disk full, file-size limit) removes its temporary directory, so the
    // space is given back and a resume in place finds the run as it was.
    if let Err(e) = write_tmp(&tmp, &mut state, tensors) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let dst = root.join(&name);
    if dst.exists() {
        std::fs::remove_dir_all(&dst).map_err(|e| Error::io(&dst, e))?;
    }
    std::fs::rename(&tmp, &dst).map_err(|e| Error::io(&dst, e))?;
    fsync_dir(&root);
    let all = list(run_dir)?;
    if all.len() > keep_last {
        for old in &all[..all.len() - keep_last] {
            std::fs::remove_dir_all(old).map_err(|e| Error::io(old, e))?;
        }
    }
    Ok(dst)
}

/// The files of a checkpoint in `tmp` (tensors, then state.json with their length and hash),
/// fsynced.
fn write_tmp(tmp: &Path, state: &mut CkptState, tensors: &[(String, Tensor)]) -> Result<()> {
    let tpath = tmp.join(TENSORS);
    let cpu: Vec<(String, Tensor)> = tensors
        .iter()
        .map(|(n, t)| (n.clone(), t.detach().to_device(Device::Cpu).contiguous()))
        .collect();
    Tensor::write_safetensors(&cpu, &tpath).map_err(|e| Error::ckpt(&tpath, e.to_string()))?;
    if let Ok(f) = std::fs::File::open(&tpath) {
        let _ = f.sync_all();
    }
    let (len, sha) = sha256_file(&tpath)?;
    state.tensors_bytes = len;
    state.tensors_sha256 = sha;
    state.format = FORMAT.into();
    let spath = tmp.join(STATE);
    let json =
        serde_json::to_string_pretty(&state).map_err(|e| Error::ckpt(&spath, e.to_string()))?;
    {
        let mut f = std::fs::File::create(&spath).map_err(|e| Error::io(&spath, e))?;
        f.write_all(json.as_bytes())
            .map_err(|e| Error::io(&spath, e))?;
        f.sync_all().map_err(|e| Error::io(&spath, e))?;
    }
    fsync_dir(&tmp);
    Ok(())
}

/// Remove the temporary directories (`checkpoints/.tmp-*`) that a crash during a checkpoint
/// write left behind; returns what was removed. Called by the trainer once it holds the run
/// directory's lock, before anything is written.
pub fn remove_leftovers(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let root = run_dir.join(CKPT_DIR);
    let mut removed = vec![];
    let Ok(rd) = std::fs::read_dir(&root) else {
        return Ok(removed);
    };
    for e in rd {
        let e = e.map_err(|e| Error::io(&root, e))?;
        if e.file_name().to_string_lossy().starts_with(".tmp-") {
            let p = e.path();
            std::fs::remove_dir_all(&p).map_err(|e| Error::io(&p, e))?;
            removed.push(p);
        }
    }
    Ok(removed)
}

/// Complete checkpoint directories of a run, oldest first (temporary ones are ignored).
pub fn list(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let root = run_dir.join(CKPT_DIR);
    if !root.exists() {
        return Ok(vec![]);
    }
    let mut out: Vec<(u64, PathBuf)> = vec![];
    for e in std::fs::read_dir(&root).map_err(|e| Error::io(&root, e))? {
        let e = e.map_err(|e| Error::io(&root, e))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(n) = name
            .strip_prefix("step-")
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((n, e.path()));
        }
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// Load one checkpoint directory, verifying length and SHA-256 of its tensors.
pub fn load(dir: &Path) -> Result<Checkpoint> {
    let spath = dir.join(STATE);
    let text = std::fs::read_to_string(&spath).map_err(|e| Error::ckpt(&spath, e.to_string()))?;
    let state: CkptState = serde_json::from_str(&text)
        .map_err(|e| Error::ckpt(&spath, format!("malformed state.json: {e}")))?;
    if state.format != FORMAT {
        return Err(Error::ckpt(
            dir,
            format!("format `{}`, expected `{FORMAT}`", state.format),
        ));
    }
    let tpath = dir.join(TENSORS);
    let (len, sha) = sha256_file(&tpath)?;
    if len != state.tensors_bytes {
        return Err(Error::ckpt(
            &tpath,
            format!(
                "{len} bytes, expected {} (truncated or partially written)",
                state.tensors_bytes
            ),
        ));
    }
    if sha != state.tensors_sha256 {
        return Err(Error::ckpt(
            &tpath,
            "SHA-256 mismatch (file corrupted)".to_string(),
        ));
    }
    let tensors = Tensor::read_safetensors(&tpath)
        .map_err(|e| Error::ckpt(&tpath, e.to_string()))?
        .into_iter()
        .collect();
    Ok(Checkpoint {
        dir: dir.to_path_buf(),
        state,
        tensors,
    })
}

/// Load the newest readable checkpoint of a run. An unreadable newer one is reported on stderr
/// (with its error) and skipped; `Ok(None)` if the run has no checkpoint at all; an error if
/// every checkpoint is unreadable.
pub fn load_latest(run_dir: &Path) -> Result<Option<Checkpoint>> {
    let all = list(run_dir)?;
    if all.is_empty() {
        return Ok(None);
    }
    let mut errors = vec![];
    for dir in all.iter().rev() {
        match load(dir) {
            Ok(c) => {
                for e in &errors {
                    eprintln!("warning: skipped unreadable checkpoint: {e}");
                }
                if !errors.is_empty() {
                    eprintln!("warning: falling back to {}", dir.display());
                }
                return Ok(Some(c));
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    Err(Error::ckpt(
        run_dir.join(CKPT_DIR),
        format!("no readable checkpoint:\n  {}", errors.join("\n  ")),
    ))
}

/// Resolve a user path to a checkpoint: a checkpoint dir itself, or a run dir (its latest).
pub fn resolve(path: &Path) -> Result<Checkpoint> {
    if path.join(STATE).exists() {
        return load(path);
    }
    load_latest(path)?.ok_or_else(|| {
        Error::ckpt(
            path,
            "neither a checkpoint directory (state.json) nor a run dir with checkpoints",
        )
    })
}

/// Copy tensors named `{prefix}{name}` from `ck` into same-named VarStore variables
/// (`name` = VarStore key). Every variable must be present with the same shape.
pub fn restore_vars(ck: &Checkpoint, prefix: &str, vars: &BTreeMap<String, Tensor>) -> Result<()> {
    let _g = tch::no_grad_guard();
    let mut missing = vec![];
    for (name, var) in vars {
        let key = format!("{prefix}{name}");
        match ck.tensors.get(&key) {
            None => missing.push(key),
            Some(t) if t.size() != var.size() => {
                return Err(Error::ckpt(
                    &ck.dir,
                    format!(
                        "tensor `{key}`: shape {:?}, model expects {:?} (checkpoint of another config?)",
                        t.size(),
                        var.size()
                    ),
                ))
            }
            Some(t) => {
                let mut v = var.shallow_clone();
                v.copy_(t);
            }
        }
    }
    if !missing.is_empty() {
        let n = missing.len();
        missing.truncate(8);
        return Err(Error::ckpt(
            &ck.dir,
            format!(
                "{n} tensors missing (wrong kind of checkpoint, stage `{}`?), e.g. {missing:?}",
                ck.state.stage.as_str()
            ),
        ));
    }
    Ok(())
}
