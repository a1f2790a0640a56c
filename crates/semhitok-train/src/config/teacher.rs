//! `[teacher]`: the frozen network that supplies the semantic targets.

use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which frozen teacher supplies the semantic targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeacherKind {
    /// EfficientNet-Lite0 (embedded default; weights in `.assets/weights`).
    EfficientnetLite0,
    /// SigLIP-large-patch16-256 (paper, 256 px).
    SiglipLargeP16_256,
    /// SigLIP-so400m-patch14-384 (paper, 384 px).
    SiglipSo400mP14_384,
}

/// `[teacher]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    pub kind: TeacherKind,
    /// Safetensors weights; `None` means random init (benchmarks only: never for real runs).
    #[serde(default)]
    pub weights: Option<PathBuf>,
    /// EfficientNet feature stride (8 or 16); ignored by SigLIP.
    #[serde(default = "default_stride")]
    pub stride: i64,
    /// SigLIP hidden state used as the target (`last` or `penultimate`); ignored by EfficientNet.
    #[serde(default = "default_siglip_layer")]
    pub siglip_layer: semhitok_nn::siglip::SiglipLayer,
}

fn default_stride() -> i64 {
    16
}
fn default_siglip_layer() -> semhitok_nn::siglip::SiglipLayer {
    semhitok_nn::siglip::SiglipLayer::Last
}
