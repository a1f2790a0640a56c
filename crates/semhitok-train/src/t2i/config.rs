//! The text-to-image training config (`run.stage = "t2i"`): `[run]`, `[llm]`, `[t2i]`,
//! `[data]`, `[optim]`, `[schedule]`, optional `[guard]` and `[dist]`. Strict TOML (unknown
//! keys are errors), `--set key=value` overrides, every error names the key and the file.

use crate::config::{
    config_error, load_toml, DistConfig, GuardConfig, LlmConfig, LlmTrain, LoopConfig, OptimConfig,
    RunConfig, ScheduleConfig, Stage,
};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Names of the classes a label stands for (fills `{class}` of `t2i.caption_template`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClassNames {
    /// `semhitok_data::FASHION_MNIST_CLASSES`.
    FashionMnist,
}

impl ClassNames {
    /// The class names, index = label.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            ClassNames::FashionMnist => &semhitok_data::FASHION_MNIST_CLASSES,
        }
    }
}

/// `[t2i]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct T2iSection {
    /// The SemHiTok model folder the ids come from (its decoder turns generated ids into
    /// images; K, m and the grid must match the token shards).
    pub tokenizer: PathBuf,
    /// Probability that a sample's caption is replaced by the unconditional (empty) caption
    /// (the paper: 0.1), keyed on (run.seed, epoch, sample index).
    #[serde(default = "default_cfg_dropout")]
    pub cfg_dropout: f64,
    /// Caption from the label: `{class}` is replaced by the class name (`t2i.classes`), e.g.
    /// `"a photo of a {class}"`. Unset: the captions stored in the token shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption_template: Option<String>,
    /// Class names of the labels (with `caption_template`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub classes: Option<ClassNames>,
    /// New vocabulary rows ~ N(mean, s * cov) of the old rows (`LlamaModel::extend_vocab`).
    #[serde(default = "default_cov_scale")]
    pub new_rows_cov_scale: f64,
}

fn default_cfg_dropout() -> f64 {
    0.1
}
fn default_cov_scale() -> f64 {
    1.0
}

/// `[data]`: token shards of `semhitok tokenize` (docs/tokens-format.md).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct T2iData {
    /// The `semhitok tokenize` output folder (meta.json, shard-*.safetensors/json,
    /// complete.json).
    pub tokens: PathBuf,
    /// Sequences per micro-batch (right padded to the longest, with a mask).
    pub batch_size: usize,
}

/// The whole text-to-image config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct T2iConfig {
    pub run: RunConfig,
    pub llm: LlmConfig,
    pub t2i: T2iSection,
    pub data: T2iData,
    pub optim: OptimConfig,
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub guard: GuardConfig,
    #[serde(default)]
    pub dist: DistConfig,
    /// Where the config came from (error messages).
    #[serde(skip)]
    pub origin: PathBuf,
}

/// Embedded presets (`configs/` holds the paper-scale file).
pub const PRESETS: &[(&str, &str)] = &[
    (
        "fmnist-smollm2",
        include_str!("../../../../configs/t2i-fmnist-smollm2.toml"),
    ),
    (
        "tiny-cpu",
        include_str!("../../../../configs/t2i-tiny-cpu.toml"),
    ),
];

impl T2iConfig {
    /// Read `path` with `overrides`, strictly, and validate.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let l = load_toml::<T2iConfig>(path, overrides)?;
        let mut c = l.config;
        c.origin = l.origin;
        c.validate()?;
        Ok(c)
    }

    /// A preset by name (see [`PRESETS`]) with `overrides`.
    pub fn preset(name: &str, overrides: &[String]) -> Result<Self> {
        let text = PRESETS
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, t)| *t)
            .ok_or_else(|| {
                crate::Error::Input(format!(
                    "unknown t2i preset `{name}` (have: {})",
                    PRESETS.iter().map(|p| p.0).collect::<Vec<_>>().join(", ")
                ))
            })?;
        let l = crate::config::from_toml_str::<T2iConfig>(
            text,
            Path::new(&format!("preset:{name}")),
            overrides,
        )?;
        let mut c = l.config;
        c.origin = l.origin;
        c.validate()?;
        Ok(c)
    }

    /// Cross-field checks; errors name the key.
    pub fn validate(&self) -> Result<()> {
        let o = &self.origin;
        let bad = |k: &str, m: String| Err(config_error(o, k, m));
        if self.run.stage != Stage::T2i {
            return bad(
                "run.stage",
                format!(
                    "\"{}\": a text-to-image config has run.stage = \"t2i\"",
                    self.run.stage.as_str()
                ),
            );
        }
        self.llm.validate(o, "llm")?;
        if self.llm.train_spec(o, "llm")? != LlmTrain::Full {
            return bad(
                "llm.train",
                "text-to-image trains the new vocabulary rows with the whole LLM: \"full\"".into(),
            );
        }
        let t = &self.t2i;
        if !(0.0..=1.0).contains(&t.cfg_dropout) {
            return bad(
                "t2i.cfg_dropout",
                format!("{} is not in [0, 1]", t.cfg_dropout),
            );
        }
        if !(t.new_rows_cov_scale.is_finite() && t.new_rows_cov_scale >= 0.0) {
            return bad(
                "t2i.new_rows_cov_scale",
                format!("{} must be finite and >= 0", t.new_rows_cov_scale),
            );
        }
        match (&t.caption_template, t.classes) {
            (Some(tpl), Some(_)) if !tpl.contains("{class}") => {
                return bad(
                    "t2i.caption_template",
                    format!("\"{tpl}\" has no {{class}}"),
                )
            }
            (Some(_), None) => {
                return bad(
                    "t2i.classes",
                    "required with t2i.caption_template (e.g. \"fashion-mnist\")".into(),
                )
            }
            _ => {}
        }
        if self.data.batch_size < 1 {
            return bad("data.batch_size", "must be >= 1".into());
        }
        let op = &self.optim;
        let finite_pos = |k: &str, v: f64| {
            if v.is_finite() && v >= 0.0 {
                Ok(())
            } else {
                bad(k, format!("{v} must be finite and >= 0"))
            }
        };
        finite_pos("optim.lr", op.lr)?;
        finite_pos("optim.eps", op.eps)?;
        finite_pos("optim.weight_decay", op.weight_decay)?;
        finite_pos("optim.grad_clip", op.grad_clip)?;
        for (i, b) in op.betas.iter().enumerate() {
            if !(b.is_finite() && (0.0..1.0).contains(b)) {
                return bad(
                    &format!("optim.betas[{i}]"),
                    format!("{b} is not in [0, 1)"),
                );
            }
        }
        if !(op.min_lr_ratio.is_finite() && (0.0..=1.0).contains(&op.min_lr_ratio)) {
            return bad(
                "optim.min_lr_ratio",
                format!("{} is not in [0, 1]", op.min_lr_ratio),
            );
        }
        if op.accum_steps < 1 {
            return bad("optim.accum_steps", "must be >= 1".into());
        }
        if self.schedule.steps < 1 || self.schedule.ckpt_every < 1 {
            return bad("schedule", "steps and ckpt_every must be >= 1".into());
        }
        Ok(())
    }

    /// `llm.weights`, `t2i.tokenizer` and `data.tokens` exist (errors name key and path).
    pub fn check_paths(&self) -> Result<()> {
        self.llm.check_weights(&self.origin, "llm")?;
        for (k, p) in [
            ("t2i.tokenizer", &self.t2i.tokenizer),
            ("data.tokens", &self.data.tokens),
        ] {
            if !p.exists() {
                return Err(config_error(
                    &self.origin,
                    k,
                    format!("{} does not exist", p.display()),
                ));
            }
        }
        Ok(())
    }

    /// The resolved config as TOML (written into the run directory).
    pub fn to_toml(&self) -> String {
        toml::to_string(self).unwrap_or_else(|e| format!("# could not serialise: {e}\n"))
    }

    /// What the training loop reads.
    pub fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            run: self.run.clone(),
            optim: self.optim.clone(),
            schedule: self.schedule.clone(),
            guard: self.guard.clone(),
            dist: self.dist.clone(),
            disc: None,
            batch_size: self.data.batch_size,
            log: crate::config::LogConfig::default(),
            config_toml: self.to_toml(),
        }
    }
}
