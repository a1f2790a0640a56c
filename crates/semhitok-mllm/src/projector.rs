//! LLaVA-1.5's `mlp2x_gelu` projector: quantized SemHiTok features -> LLM embedding width.
//!
//! Reference: LLaVA `llava/model/multimodal_projector/builder.py`, `build_vision_projector`:
//! `nn.Sequential(nn.Linear(mm_hidden_size, hidden_size), nn.GELU(), nn.Linear(hidden_size, hidden_size))`,
//! stored under `model.mm_projector.{0,2}.{weight,bias}` (erf GELU).

use crate::error::{Error, Result};
use semhitok_nn::layers::{Linear, LinearInit};
use tch::nn;
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
    fc0: Linear,
    fc2: Linear,
}

impl MlpProjector {
    /// Variables under `vs / "0"` and `vs / "2"` (tch's default init, the matrices and biases
    /// with their [`semhitok_nn::role::Role`]s); pass `vs.root() / "model" / "mm_projector"` to
    /// load a LLaVA checkpoint's projector.
    pub fn new(vs: nn::Path<'_>, cfg: MlpProjectorConfig) -> Self {
        let (m, h) = (cfg.mm_hidden_size, cfg.hidden_size);
        let fc0 = Linear::new(&vs / "0", m, h, true, LinearInit::Default);
        let fc2 = Linear::new(&vs / "2", h, h, true, LinearInit::Default);
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
        let h = self.fc0.forward(feats)?.f_gelu("none")?;
        Ok(self.fc2.forward(&h)?)
    }
}
