//! The HF `SiglipVisionConfig` (config.json) and which hidden state a teacher returns.

use super::SiglipVisionModel;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn;
use tch::Tensor;

/// Activation of the MLPs, spelled as HF's `hidden_act`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HiddenAct {
    /// `gelu_pytorch_tanh`: GELU with the tanh approximation (SigLIP's).
    #[serde(rename = "gelu_pytorch_tanh")]
    GeluPytorchTanh,
    /// `gelu`: exact (erf) GELU.
    #[serde(rename = "gelu")]
    Gelu,
}

impl HiddenAct {
    pub(super) fn apply(self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self {
            HiddenAct::GeluPytorchTanh => xs.f_gelu("tanh")?,
            HiddenAct::Gelu => xs.f_gelu("none")?,
        })
    }
}

/// `SiglipVisionConfig` with HF's field names and HF's defaults (those of google/siglip-base-patch16-224),
/// so both a `SiglipVisionModel` config.json and the `vision_config` of a full SigLIP config.json parse.
// https://github.com/huggingface/transformers/blob/main/src/transformers/models/siglip/configuration_siglip.py
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SiglipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: HiddenAct,
    pub layer_norm_eps: f64,
    /// Whether the checkpoint has the attention-pooling `head.*` tensors.
    pub vision_use_head: bool,
}

impl Default for SiglipVisionConfig {
    fn default() -> Self {
        Self {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 16,
            hidden_act: HiddenAct::GeluPytorchTanh,
            layer_norm_eps: 1e-6,
            vision_use_head: true,
        }
    }
}

impl SiglipVisionConfig {
    /// google/siglip-large-patch16-256 (the paper's teacher): 1024-d, 24 layers, 16 x 16 grid at 256 px.
    pub fn siglip_large_patch16_256() -> Self {
        Self {
            hidden_size: 1024,
            intermediate_size: 4096,
            num_hidden_layers: 24,
            num_attention_heads: 16,
            image_size: 256,
            patch_size: 16,
            ..Self::default()
        }
    }

    /// google/siglip-so400m-patch14-384: 1152-d, 27 layers, 27 x 27 grid at 384 px.
    pub fn siglip_so400m_patch14_384() -> Self {
        Self {
            hidden_size: 1152,
            intermediate_size: 4304,
            num_hidden_layers: 27,
            num_attention_heads: 16,
            image_size: 384,
            patch_size: 14,
            ..Self::default()
        }
    }

    /// Parse an HF config.json: either a `SiglipVisionModel` config or a full `SiglipModel` config
    /// (its `vision_config` is used).
    pub fn from_json_str(json: &str) -> std::result::Result<Self, serde_json::Error> {
        let v: serde_json::Value = serde_json::from_str(json)?;
        match v.get("vision_config") {
            Some(vc) => serde_json::from_value(vc.clone()),
            None => serde_json::from_value(v),
        }
    }

    /// [`Self::from_json_str`] on a file, errors naming the file.
    pub fn from_json_file(path: &Path) -> Result<Self> {
        let s = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let cfg = Self::from_json_str(&s).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            msg: format!("not a SigLIP vision config: {e}"),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sizes that the model cannot work with are a [`Error::Config`].
    pub fn validate(&self) -> Result<()> {
        let pos = [
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_channels", self.num_channels),
            ("image_size", self.image_size),
            ("patch_size", self.patch_size),
        ];
        if let Some((k, v)) = pos.iter().find(|(_, v)| *v <= 0) {
            return Err(Error::Config(format!("siglip {k} = {v} must be positive")));
        }
        if self.hidden_size % self.num_attention_heads != 0 {
            return Err(Error::Config(format!(
                "siglip hidden_size {} is not divisible by num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            )));
        }
        if self.image_size % self.patch_size != 0 {
            return Err(Error::Config(format!(
                "siglip image_size {} is not a multiple of patch_size {}",
                self.image_size, self.patch_size
            )));
        }
        Ok(())
    }

    /// Create the variables under `vs` (HF names) and return the model.
    pub fn init(&self, vs: nn::Path<'_>) -> Result<SiglipVisionModel> {
        SiglipVisionModel::new(self, vs)
    }
}

/// Which hidden state a teacher returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SiglipLayer {
    /// `last_hidden_state`: output of the last layer after `post_layernorm`.
    Last,
    /// `hidden_states[-2]`: output of the second-to-last layer, without `post_layernorm` (LLaVA's choice).
    Penultimate,
}
