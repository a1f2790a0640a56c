//! Decoder hyper-parameters, resolved from a Hugging Face `config.json` (or GGUF metadata).
//!
//! References: transformers `models/llama/configuration_llama.py`,
//! `models/qwen2/configuration_qwen2.py` and `modeling_rope_utils.py` (`_compute_llama3_parameters`).
//! Two tiers as in candle's `llama.rs`: [`HfConfig`] mirrors the loose JSON (optional fields,
//! transformers 4's `rope_theta`/`rope_scaling` and transformers 5's `rope_parameters`);
//! [`LlamaConfig`] is the checked, resolved form the model is built from.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

/// Which Hugging Face model class the weights come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// `LlamaForCausalLM`: Llama 2/3, Vicuna, SmolLM2 (optional `attention_bias`, `mlp_bias`).
    Llama,
    /// `Qwen2ForCausalLM`: Qwen2 / Qwen2.5 (biases on q, k, v; none on o).
    Qwen2,
}

/// How rotary frequencies are rescaled for long contexts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum RopeScaling {
    /// Plain RoPE: `inv_freq[i] = theta^(-2i/d)`.
    Default,
    /// Llama 3.1's wavelength-dependent scaling (`rope_type = "llama3"`).
    Llama3 {
        /// Divisor of the low frequencies.
        factor: f64,
        /// Wavelengths above `original_max_position_embeddings / low_freq_factor` are divided by `factor`.
        low_freq_factor: f64,
        /// Wavelengths below `original_max_position_embeddings / high_freq_factor` are kept.
        high_freq_factor: f64,
        /// Context length the model was pre-trained with.
        original_max_position_embeddings: f64,
    },
}

/// The resolved decoder config. Build with [`LlamaConfig::from_hf_file`] / [`LlamaConfig::from_hf`],
/// or from GGUF metadata ([`crate::gguf::load`]); [`LlamaConfig::validate`] is run by both.
#[derive(Debug, Clone, PartialEq)]
pub struct LlamaConfig {
    /// Model class (fixes which projections carry biases).
    pub arch: Arch,
    /// Rows of the token embedding and the output head.
    pub vocab_size: i64,
    /// Residual width.
    pub hidden_size: i64,
    /// SwiGLU inner width.
    pub intermediate_size: i64,
    /// Decoder layers.
    pub num_hidden_layers: i64,
    /// Query heads.
    pub num_attention_heads: i64,
    /// Key/value heads (GQA: divides `num_attention_heads`).
    pub num_key_value_heads: i64,
    /// Per-head width.
    pub head_dim: i64,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// RoPE rescaling.
    pub rope_scaling: RopeScaling,
    /// Longest context the model supports (bounds the KV cache).
    pub max_position_embeddings: i64,
    /// `lm_head.weight` is the token embedding.
    pub tie_word_embeddings: bool,
    /// Biases on q_proj, k_proj, v_proj.
    pub qkv_bias: bool,
    /// Bias on o_proj.
    pub o_bias: bool,
    /// Biases on gate/up/down_proj.
    pub mlp_bias: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens (generation stops at any).
    pub eos_token_ids: Vec<u32>,
}

/// The `config.json` fields a Llama/Qwen2 checkpoint uses (others are ignored: HF configs carry
/// many training-only keys).
#[derive(Debug, Clone, Deserialize)]
pub struct HfConfig {
    /// e.g. `["LlamaForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `llama` or `qwen2`.
    #[serde(default)]
    pub model_type: Option<String>,
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    #[serde(default)]
    pub num_key_value_heads: Option<i64>,
    #[serde(default)]
    pub head_dim: Option<i64>,
    #[serde(default)]
    pub hidden_act: Option<String>,
    #[serde(default)]
    pub rms_norm_eps: Option<f64>,
    #[serde(default)]
    pub rope_theta: Option<f64>,
    /// transformers 4 (`{"rope_type"|"type": "llama3", "factor": ..}`).
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
    /// transformers 5 (`{"rope_type": .., "rope_theta": .., ..}`).
    #[serde(default)]
    pub rope_parameters: Option<serde_json::Value>,
    #[serde(default)]
    pub max_position_embeddings: Option<i64>,
    #[serde(default)]
    pub tie_word_embeddings: Option<bool>,
    #[serde(default)]
    pub attention_bias: Option<bool>,
    #[serde(default)]
    pub mlp_bias: Option<bool>,
    #[serde(default)]
    pub use_sliding_window: Option<bool>,
    #[serde(default)]
    pub bos_token_id: Option<serde_json::Value>,
    #[serde(default)]
    pub eos_token_id: Option<serde_json::Value>,
}

fn cfg_err(origin: &str, msg: impl std::fmt::Display) -> Error {
    Error::Config(format!("{origin}: {msg}"))
}

fn ids_of(v: &Option<serde_json::Value>, origin: &str, key: &str) -> Result<Vec<u32>> {
    match v {
        None | Some(serde_json::Value::Null) => Ok(vec![]),
        Some(serde_json::Value::Number(n)) => n
            .as_u64()
            .map(|x| vec![x as u32])
            .ok_or_else(|| cfg_err(origin, format!("{key} = {n} is not a token id"))),
        Some(serde_json::Value::Array(a)) => a
            .iter()
            .map(|x| {
                x.as_u64()
                    .map(|x| x as u32)
                    .ok_or_else(|| cfg_err(origin, format!("{key} holds {x}, not a token id")))
            })
            .collect(),
        Some(other) => Err(cfg_err(
            origin,
            format!("{key} = {other} is not a token id"),
        )),
    }
}

fn rope_of(v: &serde_json::Value, origin: &str) -> Result<(Option<f64>, RopeScaling)> {
    let theta = v.get("rope_theta").and_then(|x| x.as_f64());
    let ty = v
        .get("rope_type")
        .or_else(|| v.get("type"))
        .and_then(|x| x.as_str())
        .unwrap_or("default");
    let num = |k: &str| -> Result<f64> {
        v.get(k)
            .and_then(|x| x.as_f64())
            .ok_or_else(|| cfg_err(origin, format!("rope scaling {ty:?} needs a number `{k}`")))
    };
    let scaling = match ty {
        "default" => RopeScaling::Default,
        "llama3" => RopeScaling::Llama3 {
            factor: num("factor")?,
            low_freq_factor: num("low_freq_factor")?,
            high_freq_factor: num("high_freq_factor")?,
            original_max_position_embeddings: num("original_max_position_embeddings")?,
        },
        other => {
            return Err(cfg_err(
                origin,
                format!("rope_type {other:?} is not supported (default, llama3)"),
            ))
        }
    };
    Ok((theta, scaling))
}

impl LlamaConfig {
    /// A tiny Llama shape for tests, examples and smoke runs (random weights): 2 layers, width 32,
    /// SwiGLU 64, 4 query / 2 key-value heads of 8, tied head, 256 positions, bos 1, eos 2.
    /// Adjust fields with struct update syntax (`LlamaConfig { tie_word_embeddings: false,
    /// ..LlamaConfig::tiny(400) }`).
    pub fn tiny(vocab_size: i64) -> Self {
        Self {
            arch: Arch::Llama,
            vocab_size,
            hidden_size: 32,
            intermediate_size: 64,
            num_hidden_layers: 2,
            num_attention_heads: 4,
            num_key_value_heads: 2,
            head_dim: 8,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::Default,
            max_position_embeddings: 256,
            tie_word_embeddings: true,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
        }
    }

    /// Read and resolve `config.json`.
    pub fn from_hf_file(path: &Path) -> Result<Self> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| cfg_err(&origin, e))?;
        let raw: HfConfig = serde_json::from_str(&text).map_err(|e| cfg_err(&origin, e))?;
        Self::from_hf(&raw, &origin)
    }

    /// Resolve a parsed `config.json`; `origin` names the file in errors.
    pub fn from_hf(raw: &HfConfig, origin: &str) -> Result<Self> {
        let arch_name = raw.architectures.first().map(String::as_str);
        let arch = match (arch_name, raw.model_type.as_deref()) {
            (Some("LlamaForCausalLM"), _) | (None, Some("llama")) => Arch::Llama,
            (Some("Qwen2ForCausalLM"), _) | (None, Some("qwen2")) => Arch::Qwen2,
            (a, t) => {
                return Err(cfg_err(
                    origin,
                    format!(
                        "architecture {a:?} / model_type {t:?} is not supported \
                         (LlamaForCausalLM, Qwen2ForCausalLM)"
                    ),
                ))
            }
        };
        if let Some(act) = raw.hidden_act.as_deref() {
            if act != "silu" {
                return Err(cfg_err(
                    origin,
                    format!("hidden_act {act:?}: only silu (SwiGLU) is supported"),
                ));
            }
        }
        if raw.use_sliding_window == Some(true) {
            return Err(cfg_err(
                origin,
                "use_sliding_window = true is not supported",
            ));
        }
        let mut theta = raw.rope_theta;
        let mut scaling = RopeScaling::Default;
        for v in [&raw.rope_scaling, &raw.rope_parameters]
            .into_iter()
            .flatten()
        {
            if v.is_null() {
                continue;
            }
            let (t, s) = rope_of(v, origin)?;
            theta = theta.or(t);
            if s != RopeScaling::Default {
                scaling = s;
            }
        }
        let attention_bias = raw.attention_bias.unwrap_or(false);
        let (qkv_bias, o_bias) = match arch {
            Arch::Llama => (attention_bias, attention_bias),
            Arch::Qwen2 => (true, false),
        };
        let cfg = Self {
            arch,
            vocab_size: raw.vocab_size,
            hidden_size: raw.hidden_size,
            intermediate_size: raw.intermediate_size,
            num_hidden_layers: raw.num_hidden_layers,
            num_attention_heads: raw.num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(raw.num_attention_heads),
            head_dim: raw
                .head_dim
                .unwrap_or(raw.hidden_size / raw.num_attention_heads.max(1)),
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-6),
            rope_theta: theta.unwrap_or(10_000.0),
            rope_scaling: scaling,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            qkv_bias,
            o_bias,
            mlp_bias: matches!(arch, Arch::Llama) && raw.mlp_bias.unwrap_or(false),
            bos_token_id: ids_of(&raw.bos_token_id, origin, "bos_token_id")?
                .first()
                .copied(),
            eos_token_ids: ids_of(&raw.eos_token_id, origin, "eos_token_id")?,
        };
        cfg.validate(origin)?;
        Ok(cfg)
    }

    /// Every size positive, heads divisible, head_dim even.
    pub fn validate(&self, origin: &str) -> Result<()> {
        for (k, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v < 1 {
                return Err(cfg_err(origin, format!("{k} = {v} must be >= 1")));
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return Err(cfg_err(
                origin,
                format!(
                    "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                    self.num_attention_heads, self.num_key_value_heads
                ),
            ));
        }
        if self.head_dim % 2 != 0 {
            return Err(cfg_err(
                origin,
                format!("head_dim {} must be even", self.head_dim),
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite())
            || !(self.rope_theta > 0.0 && self.rope_theta.is_finite())
        {
            return Err(cfg_err(
                origin,
                format!(
                    "rms_norm_eps {} and rope_theta {} must be finite and > 0",
                    self.rms_norm_eps, self.rope_theta
                ),
            ));
        }
        Ok(())
    }

    /// A Llama-2-7B-shaped config (32 layers, d 4096, ffn 11008, 32 heads, vocab 32000), for
    /// random-weight benchmarks.
    pub fn llama2_7b_shape() -> Self {
        Self {
            arch: Arch::Llama,
            vocab_size: 32000,
            hidden_size: 4096,
            intermediate_size: 11008,
            num_hidden_layers: 32,
            num_attention_heads: 32,
            num_key_value_heads: 32,
            head_dim: 128,
            rms_norm_eps: 1e-5,
            rope_theta: 10_000.0,
            rope_scaling: RopeScaling::Default,
            max_position_embeddings: 4096,
            tie_word_embeddings: false,
            qkv_bias: false,
            o_bias: false,
            mlp_bias: false,
            bos_token_id: Some(1),
            eos_token_ids: vec![2],
        }
    }

    /// Weights (parameters) of the decoder.
    pub fn n_params(&self) -> i64 {
        let h = self.hidden_size;
        let q = self.num_attention_heads * self.head_dim;
        let kv = self.num_key_value_heads * self.head_dim;
        let per_layer = h * q * 2 + h * kv * 2 + 3 * h * self.intermediate_size + 2 * h;
        let emb = self.vocab_size * h;
        emb * if self.tie_word_embeddings { 1 } else { 2 } + h + per_layer * self.num_hidden_layers
    }
}
