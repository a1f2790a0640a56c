//! Training configs: TOML files in `configs/`, parsed strictly, plus `--set key.path=value`
//! overrides.
//!
//! Every struct denies unknown fields, so a misspelled key is an error that names the dotted
//! key and the file (or the `--set` override it came from). Defaults live in exactly one place:
//! the `#[serde(default = ..)]` functions below; presets state everything else explicitly.

mod data;
mod eval;
mod llm;
mod load;
mod log;
mod loss;
mod optim;
mod run;
mod schedule;
mod stage;
mod teacher;
mod validate;

pub use crate::trainer::{DiscOptim, LoopConfig};
pub use data::{DataConfig, DataKind, TrainTransform};
pub use eval::{default_fid_weights, EvalConfig, EvalDataConfig};
pub use llm::{LlmConfig, LlmDtype, LlmTrain, LlmTrainMode};
pub use load::{
    config_error, from_toml_str, from_value, load_toml, origin_of, parse_override, peek_stage,
    peek_stage_str, Loaded,
};
pub use log::LogConfig;
pub use loss::{DiscConfig, GanLoss, LossConfig, PerceptualKind, RecLoss};
pub use optim::OptimConfig;
pub use run::{DeviceKind, DistBackend, DistConfig, Precision, RunConfig};
pub use schedule::{GuardConfig, InitConfig, ScheduleConfig};
pub use stage::{ConfigKind, Stage};
pub use teacher::{TeacherConfig, TeacherKind};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The model config (semhitok-nn's, strict as well). `sghc.k_sem`, `encoder.out_dim`,
/// `decoder.in_dim` and `decoder.groups` are derived (from `spc.codebook_size`, `sghc.dim` and
/// `fusion`) when the config is loaded, so `--set model.fusion=pixel_only` or
/// `--set model.spc.codebook_size=512` are single switches. A config may leave them out; one
/// that states them must state the derived values (a conflict is an error naming both).
pub type ModelConfig = semhitok_nn::model::SemHiTokConfig;

/// The whole training config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub run: RunConfig,
    /// The model (semhitok-nn's config, strict as well).
    pub model: ModelConfig,
    pub teacher: TeacherConfig,
    pub data: DataConfig,
    pub optim: OptimConfig,
    #[serde(default)]
    pub loss: LossConfig,
    #[serde(default)]
    pub disc: DiscConfig,
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub init: InitConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub guard: GuardConfig,
    /// Where it was read from (the file, plus the `--set` overrides), for error messages; empty
    /// for configs built in code.
    #[serde(skip)]
    pub origin: PathBuf,
    #[serde(default)]
    pub dist: DistConfig,
    #[serde(default)]
    pub log: LogConfig,
}

fn default_true() -> bool {
    true
}

fn one_f() -> f64 {
    1.0
}

impl TrainConfig {
    /// Read `path`, apply `overrides` (`key.path=value`), and parse strictly.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path, overrides)
    }

    /// Parse TOML text (`file` is only used in error messages). A config of a non-tokenizer
    /// stage (`run.stage = "llava-pretrain"`, ...) is refused first, naming `run.stage` and the
    /// config type it needs.
    pub fn from_toml_str(text: &str, file: &Path, overrides: &[String]) -> Result<Self> {
        // (When the stage cannot be read, the full parse below names the problem.)
        if let Ok(stage) = load::peek_stage_str(text, file, overrides) {
            if !stage.is_tokenizer() {
                return Err(not_a_tokenizer_stage(
                    &load::origin_of(file, overrides),
                    stage,
                ));
            }
        }
        let (Loaded { mut config, origin }, stated) =
            load::from_toml_str_with::<Self, _>(text, file, overrides, take_derived)?;
        config.resolve();
        config.check_derived(&stated, &origin)?;
        config.validate(&origin)?;
        config.origin = origin;
        Ok(config)
    }

    /// The file (and overrides) this config came from, for error messages (`config` when it
    /// was built in code).
    pub fn origin(&self) -> PathBuf {
        if self.origin.as_os_str().is_empty() {
            PathBuf::from("config")
        } else {
            self.origin.clone()
        }
    }

    /// A config error naming `key` and the file this config came from.
    pub fn error(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::Config {
            file: self.origin(),
            key: key.into(),
            msg: msg.into(),
        }
    }

    /// The weight paths no builder checks by key exist (`init.*`, the LPIPS trunk, the
    /// EfficientNet perceptual weights): checked
    /// before anything is built, each failure naming its key, the path and the config file.
    /// (The data paths are checked by the data streams, `teacher.weights` by the teacher
    /// factory, each naming key and file the same way.) Paths are relative to the current
    /// directory.
    pub fn check_paths(&self) -> Result<()> {
        let exists = |key: &str, p: &Path| -> Result<()> {
            if p.exists() {
                Ok(())
            } else {
                Err(self.error(key, format!("{} does not exist", p.display())))
            }
        };
        if let Some(p) = &self.init.spc {
            exists("init.spc", p)?;
        }
        if let Some(p) = &self.init.pre {
            exists("init.pre", p)?;
        }
        if let Some(p) = &self.loss.lpips_vgg16 {
            exists("loss.lpips_vgg16", p)?;
        }
        if self.loss.perceptual == PerceptualKind::Effnet && self.loss.perceptual_weight != 0.0 {
            exists("loss.effnet_weights", &self.loss.effnet_weights)?;
        }
        Ok(())
    }

    /// Fill the derived model fields (see [`ModelConfig`]).
    fn resolve(&mut self) {
        let m = &mut self.model;
        m.sghc.k_sem = m.spc.codebook_size;
        m.encoder.out_dim = m.sghc.dim;
        let fusion = m.fusion;
        *m = m.clone().with_fusion(fusion);
    }

    /// The derived model fields the file (or an override) stated anyway must equal what
    /// [`Self::resolve`] derived: a conflict is an error naming the key and both values.
    fn check_derived(&self, stated: &[(&'static str, toml::Value)], origin: &Path) -> Result<()> {
        for (key, value) in stated {
            let (derived, from) = match *key {
                "model.sghc.k_sem" => (self.model.sghc.k_sem, "model.spc.codebook_size"),
                "model.encoder.out_dim" => (self.model.encoder.out_dim, "model.sghc.dim"),
                "model.decoder.in_dim" => (
                    self.model.decoder.in_dim,
                    "model.fusion, model.spc.code_dim and model.sghc.dim",
                ),
                _ => (self.model.decoder.groups, "model.fusion"),
            };
            if value.as_integer() != Some(derived) {
                return Err(load::config_error(
                    origin,
                    key,
                    format!(
                        "{key} = {value} conflicts with {derived}, derived from {from}: \
                         drop {key} (it is derived)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The resolved config as TOML (written into the run dir before the first step).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# serialisation failed: {e}\n"))
    }

    /// What the training loop reads of this config.
    pub fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            run: self.run.clone(),
            optim: self.optim.clone(),
            schedule: self.schedule.clone(),
            guard: self.guard.clone(),
            dist: self.dist.clone(),
            disc: Some(DiscOptim {
                lr: self.disc.lr,
                betas: self.disc.betas,
            }),
            batch_size: self.data.batch_size as usize,
            log: self.log.clone(),
            config_toml: self.to_toml(),
        }
    }
}

/// The model fields [`TrainConfig::resolve`] derives (dotted keys).
const DERIVED: [&str; 4] = [
    "model.sghc.k_sem",
    "model.encoder.out_dim",
    "model.decoder.in_dim",
    "model.decoder.groups",
];

/// Takes the [`DERIVED`] keys out of a config's TOML value (returning the stated ones) and
/// puts a placeholder where their table exists, so the strict parse does not need them;
/// [`TrainConfig::resolve`] then fills them.
fn take_derived(v: &mut toml::Value) -> Vec<(&'static str, toml::Value)> {
    let mut stated = Vec::new();
    for key in DERIVED {
        let mut parts: Vec<&str> = key.split('.').collect();
        let Some(leaf) = parts.pop() else { continue };
        let mut cur = Some(&mut *v);
        for p in parts {
            cur = cur
                .and_then(|c| c.as_table_mut())
                .and_then(|t| t.get_mut(p));
        }
        if let Some(table) = cur.and_then(|c| c.as_table_mut()) {
            if let Some(value) = table.insert(leaf.to_string(), toml::Value::Integer(1)) {
                stated.push((key, value));
            }
        }
    }
    stated
}

/// The error of a tokenizer [`TrainConfig`] given a stage that another config type describes.
fn not_a_tokenizer_stage(file: &Path, stage: Stage) -> Error {
    let what = match stage.config_kind() {
        ConfigKind::Tokenizer => "a tokenizer stage",
        ConfigKind::Llava => {
            "a LLaVA stage: its config is the LLaVA training config (`semhitok_train::llava`, \
             sections [run], [llm], ...), not the tokenizer's TrainConfig"
        }
        ConfigKind::T2i => {
            "the text-to-image stage: its config is the T2I training config \
             (`semhitok_train::t2i`, sections [run], [llm], ...), not the tokenizer's TrainConfig"
        }
    };
    load::config_error(
        file,
        "run.stage",
        format!(
            "`{}` is {what}; `semhitok train --config FILE` reads the right type from run.stage \
             (the tokenizer stages are spc, pre, decoder-ft, joint)",
            stage.as_str()
        ),
    )
}
