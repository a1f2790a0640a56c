//! `[llm]`: the language model of the LLaVA and text-to-image configs (which weights, in which
//! dtype, what of it trains, how long its sequences may be).

use super::load::config_error;
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Storage dtype of the LLM's weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmDtype {
    F32,
    Bf16,
}

impl LlmDtype {
    pub fn kind(self) -> tch::Kind {
        match self {
            LlmDtype::F32 => tch::Kind::Float,
            LlmDtype::Bf16 => tch::Kind::BFloat16,
        }
    }
}

/// `llm.train` as written in the file; [`LlmConfig::train_spec`] is the typed whole.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LlmTrainMode {
    /// No LLM parameter trains.
    Frozen,
    /// Every LLM weight trains.
    Full,
    /// LoRA adapters (`lora_r`, `lora_alpha`) on q, k, v, o, gate, up, down of every layer.
    Lora,
}

/// What of the LLM trains, with the LoRA settings when there are some.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LlmTrain {
    Frozen,
    Full,
    /// Rank `r`, scale `alpha / r` (PEFT's convention).
    Lora {
        r: i64,
        alpha: f64,
    },
}

/// `[llm]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    /// A GGUF file or a Hugging Face folder (`config.json` + safetensors + tokenizer).
    pub weights: PathBuf,
    /// Weight dtype (`f32` | `bf16`).
    #[serde(default = "default_dtype")]
    pub dtype: LlmDtype,
    /// `frozen` | `full` | `lora` (then `lora_r` and `lora_alpha` are required).
    pub train: LlmTrainMode,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_r: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lora_alpha: Option<f64>,
    /// Longest training sequence in tokens (text + image positions); longer ones are cut.
    #[serde(default = "default_max_seq_len")]
    pub max_seq_len: i64,
}

fn default_dtype() -> LlmDtype {
    LlmDtype::F32
}
/// LLaVA-1.5's `model_max_length`.
fn default_max_seq_len() -> i64 {
    2048
}

impl LlmConfig {
    /// Cross-field checks; errors name `{section}.<key>` (`section` is where this table sits,
    /// e.g. `llm`) and `origin` (the config file, plus overrides).
    pub fn validate(&self, origin: &Path, section: &str) -> Result<()> {
        self.train_spec(origin, section)?;
        if self.weights.as_os_str().is_empty() {
            return Err(config_error(
                origin,
                &format!("{section}.weights"),
                "empty path",
            ));
        }
        if self.max_seq_len < 1 {
            return Err(config_error(
                origin,
                &format!("{section}.max_seq_len"),
                format!("{} must be >= 1", self.max_seq_len),
            ));
        }
        Ok(())
    }

    /// `train` with its LoRA settings, checked: `lora_r` >= 1 and `lora_alpha` finite and > 0
    /// with `train = "lora"`, neither of them otherwise.
    pub fn train_spec(&self, origin: &Path, section: &str) -> Result<LlmTrain> {
        let key = |k: &str| format!("{section}.{k}");
        match self.train {
            LlmTrainMode::Lora => {
                let r = self.lora_r.ok_or_else(|| {
                    config_error(origin, &key("lora_r"), "required with train = \"lora\"")
                })?;
                let alpha = self.lora_alpha.ok_or_else(|| {
                    config_error(origin, &key("lora_alpha"), "required with train = \"lora\"")
                })?;
                if r < 1 {
                    return Err(config_error(
                        origin,
                        &key("lora_r"),
                        format!("{r} must be >= 1"),
                    ));
                }
                if !(alpha.is_finite() && alpha > 0.0) {
                    return Err(config_error(
                        origin,
                        &key("lora_alpha"),
                        format!("{alpha} must be finite and > 0"),
                    ));
                }
                Ok(LlmTrain::Lora { r, alpha })
            }
            mode => {
                for (k, set) in [
                    ("lora_r", self.lora_r.is_some()),
                    ("lora_alpha", self.lora_alpha.is_some()),
                ] {
                    if set {
                        return Err(config_error(
                            origin,
                            &key(k),
                            format!(
                                "only used with train = \"lora\" (train = \"{}\")",
                                mode.as_str()
                            ),
                        ));
                    }
                }
                Ok(if mode == LlmTrainMode::Full {
                    LlmTrain::Full
                } else {
                    LlmTrain::Frozen
                })
            }
        }
    }

    /// `weights` exists (a file or a folder), else an error naming `{section}.weights`, the
    /// path and `origin`. Relative paths are from the current directory.
    pub fn check_weights(&self, origin: &Path, section: &str) -> Result<()> {
        if self.weights.exists() {
            Ok(())
        } else {
            Err(config_error(
                origin,
                &format!("{section}.weights"),
                format!(
                    "{} does not exist (a GGUF file or a Hugging Face folder)",
                    self.weights.display()
                ),
            ))
        }
    }
}

impl LlmTrainMode {
    pub fn as_str(self) -> &'static str {
        match self {
            LlmTrainMode::Frozen => "frozen",
            LlmTrainMode::Full => "full",
            LlmTrainMode::Lora => "lora",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::load::from_toml_str;
    use super::*;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Wrap {
        llm: LlmConfig,
    }

    fn parse(body: &str, set: &[&str]) -> Result<LlmConfig> {
        let set: Vec<String> = set.iter().map(|s| s.to_string()).collect();
        let l = from_toml_str::<Wrap>(&format!("[llm]\n{body}"), Path::new("x.toml"), &set)?;
        l.config.llm.validate(&l.origin, "llm")?;
        Ok(l.config.llm)
    }

    #[test]
    fn parses_each_train_mode() {
        let c = parse("weights = \"m.gguf\"\ntrain = \"frozen\"\n", &[]).unwrap();
        assert_eq!(c.dtype, LlmDtype::F32);
        assert_eq!(c.max_seq_len, 2048);
        assert_eq!(
            c.train_spec(Path::new("x"), "llm").unwrap(),
            LlmTrain::Frozen
        );
        let c = parse(
            "weights = \"hf/\"\ndtype = \"bf16\"\ntrain = \"full\"\nmax_seq_len = 512\n",
            &[],
        )
        .unwrap();
        assert_eq!((c.dtype, c.max_seq_len), (LlmDtype::Bf16, 512));
        assert_eq!(c.train_spec(Path::new("x"), "llm").unwrap(), LlmTrain::Full);
        let c = parse(
            "weights = \"m\"\ntrain = \"lora\"\nlora_r = 8\nlora_alpha = 16.0\n",
            &[],
        )
        .unwrap();
        assert_eq!(
            c.train_spec(Path::new("x"), "llm").unwrap(),
            LlmTrain::Lora { r: 8, alpha: 16.0 }
        );
        let c = parse(
            "weights = \"m\"\ntrain = \"frozen\"\n",
            &["llm.train=\"full\""],
        )
        .unwrap();
        assert_eq!(c.train, LlmTrainMode::Full);
    }

    #[test]
    fn errors_name_the_key() {
        let cases: [(&str, &str); 8] = [
            (
                "weights = \"m\"\ntrain = \"lora\"\nlora_alpha = 16\n",
                "llm.lora_r",
            ),
            (
                "weights = \"m\"\ntrain = \"lora\"\nlora_r = 8\n",
                "llm.lora_alpha",
            ),
            (
                "weights = \"m\"\ntrain = \"lora\"\nlora_r = 0\nlora_alpha = 1\n",
                "llm.lora_r",
            ),
            (
                "weights = \"m\"\ntrain = \"lora\"\nlora_r = 4\nlora_alpha = -1\n",
                "llm.lora_alpha",
            ),
            (
                "weights = \"m\"\ntrain = \"full\"\nlora_r = 8\n",
                "llm.lora_r",
            ),
            ("weights = \"m\"\ntrain = \"partial\"\n", "llm.train"),
            (
                "weights = \"m\"\ntrain = \"full\"\ndtype = \"f16\"\n",
                "llm.dtype",
            ),
            (
                "weights = \"m\"\ntrain = \"full\"\nmax_seq_len = 0\n",
                "llm.max_seq_len",
            ),
        ];
        for (body, key) in cases {
            let e = parse(body, &[]).unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("x.toml"), "{body}: {e}");
        }
        let e = parse("weights = \"m\"\ntrain = \"full\"\nrank = 3\n", &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("rank") && e.contains("x.toml"), "{e}");
        let e = parse("train = \"full\"\n", &[]).unwrap_err().to_string();
        assert!(e.contains("weights"), "{e}");
    }

    #[test]
    fn missing_weights_name_key_and_path() {
        let c = parse(
            "weights = \"/nonexistent/llm.gguf\"\ntrain = \"full\"\n",
            &[],
        )
        .unwrap();
        let e = c
            .check_weights(Path::new("x.toml"), "llm")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("llm.weights") && e.contains("/nonexistent/llm.gguf"),
            "{e}"
        );
    }
}
