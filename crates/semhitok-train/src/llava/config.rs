//! The LLaVA training config (`run.stage = "llava-pretrain" | "llava-finetune"`): the
//! trainer's sections (`[run]`, `[optim]`, `[schedule]`, `[guard]`, `[dist]`), the language
//! model (`[llm]`), the vision side and prompt layout (`[llava]`) and the data (`[data]`).
//!
//! LLaVA-1.5's recipe (`scripts/v1_5/{pretrain,finetune}.sh` of haotian-liu/LLaVA): stage 1
//! trains only the projector (lr 1e-3, global batch 256, 1 epoch, warmup ratio 0.03, cosine, no
//! weight decay, `plain` template); stage 2 the projector and the LLM (lr 2e-5, global batch 128,
//! `vicuna_v1`), here with `llm.train = "lora"` (r = 128, alpha = 256) as the one-GPU default.

use super::model::VisionFeatures;
use crate::config::{config_error, load_toml, Loaded};
use crate::config::{
    DistConfig, GuardConfig, LlmConfig, LlmTrain, OptimConfig, RunConfig, ScheduleConfig, Stage,
};
use crate::error::Result;
use semhitok_mllm::llava::Template;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// `[llava]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlavaSection {
    /// The SemHiTok model folder (`semhitok export`): the frozen vision tokenizer.
    pub tokenizer: PathBuf,
    /// `quantized` (default) | `semantic_decoder` | `teacher`.
    #[serde(default = "default_features")]
    pub features: VisionFeatures,
    /// `plain` | `vicuna_v1` | `chat` (the LLM's own template).
    pub template: Template,
    /// Projector weights to start from (stage 2 from stage 1: the `mm_projector.safetensors` a
    /// stage-1 run writes, or that run's folder); none: a fresh `nn.Linear` init.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub projector: Option<PathBuf>,
    /// Longest answer of the evaluation after training (`data.eval`).
    #[serde(default = "default_max_new_tokens")]
    pub max_new_tokens: usize,
}

fn default_features() -> VisionFeatures {
    VisionFeatures::Quantized
}
fn default_max_new_tokens() -> usize {
    16
}
fn default_true() -> bool {
    true
}

/// `[data]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlavaDataConfig {
    /// LLaVA JSON (`blip_laion_cc_sbu_558k.json`, `llava_v1_5_mix665k.json`, the Fashion-MNIST
    /// set's `pretrain.json` / `instruct.json`).
    pub json: PathBuf,
    /// Folder the records' `image` paths are relative to (default: the JSON's folder).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_root: Option<PathBuf>,
    /// Sequences per micro-batch on one process.
    pub batch_size: usize,
    /// Use only the first N valid records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// Shuffle each epoch (seeded by `run.seed` and the epoch).
    #[serde(default = "default_true")]
    pub shuffle: bool,
    /// An evaluation JSONL (`{image, question, answer, kind}`) scored after the last step into
    /// `RUN/eval.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval: Option<PathBuf>,
    /// Score only the first N items of `eval`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_limit: Option<usize>,
    /// Answers per batched generation call of the evaluation.
    #[serde(default = "default_eval_batch")]
    pub eval_batch_size: usize,
}

fn default_eval_batch() -> usize {
    32
}

/// A LLaVA training config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlavaConfig {
    pub run: RunConfig,
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub guard: GuardConfig,
    #[serde(default)]
    pub dist: DistConfig,
    pub llm: LlmConfig,
    pub llava: LlavaSection,
    pub data: LlavaDataConfig,
}

impl LlavaConfig {
    /// Read `path` with `overrides`, validated; returns the config and its origin (for errors).
    pub fn load(path: &Path, overrides: &[String]) -> Result<(Self, PathBuf)> {
        let Loaded { config, origin } = load_toml::<LlavaConfig>(path, overrides)?;
        config.validate(&origin)?;
        Ok((config, origin))
    }

    /// Cross-field checks (keys and file named).
    pub fn validate(&self, origin: &Path) -> Result<()> {
        self.llm.validate(origin, "llm")?;
        let train = self.llm.train_spec(origin, "llm")?;
        match self.run.stage {
            Stage::LlavaPretrain if train != LlmTrain::Frozen => {
                return Err(config_error(
                    origin,
                    "llm.train",
                    "stage llava-pretrain trains only the projector: set llm.train = \"frozen\"",
                ))
            }
            Stage::LlavaPretrain | Stage::LlavaFinetune => {}
            s => {
                return Err(config_error(
                    origin,
                    "run.stage",
                    format!(
                        "{} is not a LLaVA stage (llava-pretrain | llava-finetune)",
                        s.as_str()
                    ),
                ))
            }
        }
        if self.data.batch_size < 1 {
            return Err(config_error(origin, "data.batch_size", "must be >= 1"));
        }
        if self.data.eval_batch_size < 1 {
            return Err(config_error(origin, "data.eval_batch_size", "must be >= 1"));
        }
        if self.data.limit == Some(0) {
            return Err(config_error(
                origin,
                "data.limit",
                "must be >= 1 (or left out)",
            ));
        }
        if self.run.stage == Stage::LlavaPretrain && self.llava.template != Template::Plain {
            eprintln!(
                "note: {}: stage llava-pretrain with template {} (LLaVA-1.5 uses plain)",
                origin.display(),
                self.llava.template.as_str()
            );
        }
        let r = &self.optim;
        if !(r.lr.is_finite() && r.lr >= 0.0) {
            return Err(config_error(
                origin,
                "optim.lr",
                format!("{} must be finite and >= 0", r.lr),
            ));
        }
        if self.schedule.steps < 1 || self.schedule.ckpt_every < 1 {
            return Err(config_error(
                origin,
                "schedule",
                "steps and ckpt_every must be >= 1",
            ));
        }
        Ok(())
    }

    /// Where the records' images are.
    pub fn image_root(&self) -> PathBuf {
        self.data.image_root.clone().unwrap_or_else(|| {
            self.data
                .json
                .parent()
                .map(Path::to_path_buf)
                .unwrap_or_default()
        })
    }

    /// The resolved config as TOML (the run directory's `config.toml`).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the config serializes")
    }
}
