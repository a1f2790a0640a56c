//! Models from checkpoints: the parts a later stage starts from (`init.*`) and a trained model
//! with its teacher for evaluation and encode/decode.

use super::build::{build_teacher, teacher_spec};
use crate::checkpoint::{self, Checkpoint};
use crate::config::{Stage, TrainConfig};
use crate::error::{Error, Result};
use semhitok_nn::model::{Part, SemHiTok};
use semhitok_nn::pretrained::{PretrainedConfig, Tokenizer};
use semhitok_nn::teacher::Teacher;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

pub(super) fn state_of(model: &SemHiTok, parts: &[Part]) -> BTreeMap<String, Tensor> {
    parts
        .iter()
        .flat_map(|p| model.named_variables(*p))
        .collect()
}

/// Copy the variables of `parts` from a checkpoint (keys `model.{part}.…`); where the run kept
/// an EMA of its weights (`optim.ema_decay`: keys `ema.{part}.…`), the EMA values replace them.
/// So a model "as trained" is its EMA everywhere: in evaluation, encode/decode, and as the frozen
/// SPC or pixel encoder that a later stage starts from (the semantic ids stay consistent).
/// Returns whether any EMA tensor was used.
pub fn load_parts(model: &SemHiTok, ck: &Checkpoint, parts: &[Part]) -> Result<bool> {
    let vars = state_of(model, parts);
    checkpoint::restore_vars(ck, "model.", &vars)?;
    let _g = tch::no_grad_guard();
    let mut used = false;
    for (k, mut v) in vars {
        if let Some(t) = ck.tensors.get(&format!("ema.{k}")) {
            if t.size() != v.size() {
                return Err(Error::ckpt(
                    &ck.dir,
                    format!(
                        "EMA tensor `ema.{k}`: shape {:?}, model expects {:?}",
                        t.size(),
                        v.size()
                    ),
                ));
            }
            v.copy_(t);
            used = true;
        }
    }
    Ok(used)
}

/// Resolve `init.spc` / `init.pre` (a run dir or a checkpoint dir).
pub fn init_checkpoint(path: &Path, want_stage: &[Stage]) -> Result<Checkpoint> {
    let ck = checkpoint::resolve(path)?;
    if !want_stage.contains(&ck.state.stage) {
        let want: Vec<&str> = want_stage.iter().map(|s| s.as_str()).collect();
        return Err(Error::ckpt(
            &ck.dir,
            format!(
                "is a `{}` checkpoint, expected {}",
                ck.state.stage.as_str(),
                want.join(" or ")
            ),
        ));
    }
    Ok(ck)
}

/// A trained model with its teacher and config, loaded from a checkpoint (or run dir), as the
/// inference API's [`Tokenizer`] (what `semhitok export` writes as a model folder).
pub struct Loaded {
    pub cfg: TrainConfig,
    /// The model with its teacher and preprocessing.
    pub tok: Tokenizer,
    pub checkpoint: PathBuf,
    pub stage: Stage,
    /// Optimizer steps of the checkpoint.
    pub step: u64,
    /// Whether the checkpoint's EMA weights were loaded (runs with `optim.ema_decay`).
    pub ema_used: bool,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("checkpoint", &self.checkpoint)
            .field("stage", &self.stage)
            .finish()
    }
}

/// Load a checkpoint written by `pre`, `decoder-ft` or `joint` (`allow_spc`: also `spc`) with
/// its run's config (`RUN/config.toml`), on `device`.
pub fn load_model(path: &Path, device: Device, allow_spc: bool) -> Result<Loaded> {
    let ck = checkpoint::resolve(path)?;
    let run_dir = ck
        .dir
        .parent()
        .and_then(|p| p.parent())
        .ok_or_else(|| Error::ckpt(&ck.dir, "not inside RUN/checkpoints/"))?;
    let mut cfg = TrainConfig::load(&run_dir.join("config.toml"), &[])?;
    cfg.run.device = if device.is_cuda() {
        crate::config::DeviceKind::Cuda
    } else {
        crate::config::DeviceKind::Cpu
    };
    let stage = ck.state.stage;
    let parts: &[Part] = match stage {
        Stage::Pre | Stage::DecoderFt | Stage::Joint => &Part::ALL,
        Stage::Spc if allow_spc => &[Part::Spc],
        Stage::Spc => {
            return Err(Error::ckpt(
                &ck.dir,
                "is a `spc` checkpoint; this command needs a `pre`, `decoder-ft` or `joint` checkpoint (pixel decoder)",
            ))
        }
        s => {
            return Err(Error::ckpt(
                &ck.dir,
                format!("is a `{}` checkpoint, not a tokenizer's", s.as_str()),
            ))
        }
    };
    let teacher = build_teacher(&cfg, device)?;
    let mut model = SemHiTok::new(&cfg.model, device)?;
    let ema_used = load_parts(&model, &ck, parts)?;
    for p in Part::ALL {
        model.freeze(p);
    }
    let source = serde_json::json!({
        "run": run_dir.display().to_string(),
        "checkpoint": ck.dir.display().to_string(),
        "stage": stage,
        "step": ck.state.step,
        "ema_weights": ema_used,
        "data": cfg.data,
        "teacher_weights": cfg.teacher.weights,
    });
    let pcfg = PretrainedConfig::new(cfg.model.clone(), teacher_spec(&cfg), source);
    let tok = Tokenizer::new(model, teacher, pcfg)?;
    Ok(Loaded {
        cfg,
        tok,
        checkpoint: ck.dir.clone(),
        stage,
        step: ck.state.step,
        ema_used,
    })
}

impl Loaded {
    /// The model.
    pub fn model(&self) -> &SemHiTok {
        self.tok.model()
    }

    /// The frozen teacher.
    pub fn teacher(&self) -> &dyn Teacher {
        self.tok.teacher()
    }

    /// images `[B, 3, S, S]` in [-1, 1] -> reconstructions `[B, 3, S, S]` (no gradient).
    pub fn reconstruct(&self, images: &Tensor) -> Result<Tensor> {
        Ok(self.tok.reconstruct(images)?)
    }

    /// Semantic ids `[B, N]` of images (no gradient).
    pub fn semantic_ids(&self, images: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let feats = self.teacher().features(images)?;
            Ok(self.model().semantic_codes(&feats)?.0)
        })
    }

    /// Mean cosine similarity of the SPC's decoded semantic features to the teacher's.
    pub fn teacher_cosine(&self, images: &Tensor) -> Result<f64> {
        tch::no_grad(|| {
            let feats = self.teacher().features(images)?;
            let (_, codes) = self.model().semantic_codes(&feats)?;
            let rec = self.model().spc().decode(&codes)?;
            Ok(crate::metrics::mean_cosine(&rec, &feats))
        })
    }
}

/// A tokenizer from a model folder (`DIR/config.json`, written by `semhitok export`) or from a
/// training run / checkpoint (converted in memory, as `export` would write it).
pub fn load_tokenizer(path: &Path, device: Device) -> Result<Tokenizer> {
    if path.join(semhitok_nn::pretrained::CONFIG_FILE).is_file() {
        Ok(Tokenizer::from_pretrained(path, device)?)
    } else {
        Ok(load_model(path, device, false)?.tok)
    }
}

/// Quiet helper used by tests: a float tensor's bits as a `Vec<u32>` (exact comparisons).
pub fn f32_bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))
        .unwrap_or_default();
    v.into_iter().map(f32::to_bits).collect()
}
