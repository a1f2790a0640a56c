//! LLaVA-1.5's `mlp2x_gelu` projector: quantized SemHiTok features -> LLM embedding width.
//!
//! Reference: LLaVA `llava/model/multimodal_projector/builder.py`, `build_vision_projector`:
//! `nn.Sequential(nn.Linear(mm_hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))`,
//! stored under `model.mm_projector.{0,2}.{weight,bias}` (erf GELU).

use crate::error::{Error, Result};
use tch::nn::{self, Module};
use tch::Tensor;

/// Projector dims.
#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MlpProjectorConfig {
    /// Width of the visual features (SemHiTok: D_sem + D_pix of the concatenated codes).
    pub mm_hidden_size: i64,
    /// LLM hidden size.
    pub hidden_size: i64,
}

/// `Linear -> GELU -> Linear`.
#[derive(Debug)]
pub struct MlpProjector {
    cfg: MlpProjectorConfig,
    fc0: nn::Linear,
    fc2: nn::Linear,
}

impl MlpProjector {
    /// Variables under `vs / "0"` and `vs / "2"`; pass `vs.root() / "model" / "mm_projector"` to
    /// load a LLaVA checkpoint's projector.
    pub fn new(vs: nn::Path<'_>, cfg: MlpProjectorConfig) -> Self {
        let fc0 = nn::linear(
            &vs / "0",
            cfg.mm_hidden_size,
            cfg.hidden_size,
            Default::default(),
        );
        let fc2 = nn::linear(
            &vs / "2",
            cfg.hidden_size,
            cfg.hidden_size,
            Default::default(),
        );
        Self { cfg, fc0, fc2 }
    }
    /// feats: [B, N, mm_hidden_size] -> [B, N, hidden_size] (visual tokens for the LLM).
    pub fn forward(&self, feats: &Tensor) -> Result<Tensor> {
        let s = feats.size();
        if s.len() != 3 || s[2] != self.cfg.mm_hidden_size {
            return Err(Error::Shape {
                what: "projector input",
                expected: format!("[B, N, {}]", self.cfg.mm_hidden_size),
                got: s,
            });
        }
        Ok(self.fc2.forward(&self.fc0.forward(feats).f_gelu("none")?))
    }
}
