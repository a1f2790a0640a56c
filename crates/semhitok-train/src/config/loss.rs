//! `[loss]` (weights of the loss terms) and `[disc]` (the PatchGAN discriminator and its AdamW).

use super::one_f;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Pixel reconstruction loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecLoss {
    L1,
    L2,
}

/// Perceptual loss network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PerceptualKind {
    None,
    /// LPIPS v0.1 with the VGG16 trunk: the trunk from `loss.lpips_vgg16` (a torchvision `vgg16`
    /// state dict as safetensors; not shipped offline), the heads from
    /// `.assets/weights/lpips_vgg.safetensors`.
    LpipsVgg,
    /// Feature-matching on the EfficientNet-Lite0 trunk (embedded default).
    Effnet,
}

/// `[loss]`: weights of the loss terms (paper Eq. 5 for the pixel side).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    #[serde(default = "default_rec")]
    pub rec: RecLoss,
    #[serde(default = "one_f")]
    pub rec_weight: f64,
    #[serde(default = "default_perc")]
    pub perceptual: PerceptualKind,
    #[serde(default)]
    pub perceptual_weight: f64,
    /// VGG16 trunk for `perceptual = "lpips-vgg"` (torchvision `vgg16` state dict, safetensors).
    #[serde(default)]
    pub lpips_vgg16: Option<PathBuf>,
    /// LPIPS v0.1 linear heads (relative paths: from the current directory).
    #[serde(default = "default_lpips_heads")]
    pub lpips_heads: PathBuf,
    /// EfficientNet-Lite0 weights of `perceptual = "effnet"` (relative paths: from the current
    /// directory; the default is where `cargo xtask assets` puts them).
    #[serde(default = "default_effnet_weights")]
    pub effnet_weights: PathBuf,
    /// Removed key (it was parsed but never read): a config that still sets it is refused,
    /// naming the keys that hold the commitment weights (`model.spc.commit_beta`,
    /// `model.sghc.beta`). Never serialized.
    #[serde(default, skip_serializing)]
    pub commit_weight: Option<serde::de::IgnoredAny>,
    /// Weight of the semantic (cosine) loss in `spc` and `joint`.
    #[serde(default = "one_f")]
    pub semantic_weight: f64,
}

fn default_rec() -> RecLoss {
    RecLoss::L2
}
fn default_perc() -> PerceptualKind {
    PerceptualKind::None
}
fn default_lpips_heads() -> PathBuf {
    PathBuf::from(crate::stages::LPIPS_HEADS)
}
fn default_effnet_weights() -> PathBuf {
    PathBuf::from(crate::stages::EFFNET_WEIGHTS)
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            rec: default_rec(),
            rec_weight: 1.0,
            perceptual: default_perc(),
            perceptual_weight: 0.0,
            lpips_vgg16: None,
            lpips_heads: default_lpips_heads(),
            effnet_weights: default_effnet_weights(),
            commit_weight: None,
            semantic_weight: 1.0,
        }
    }
}

/// GAN generator/discriminator loss form (semhitok-nn's: `hinge` or `non-saturating`).
pub use semhitok_nn::discriminator::GanLoss;

/// `[disc]`: PatchGAN discriminator with its own AdamW.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscConfig {
    #[serde(default)]
    pub enabled: bool,
    /// First optimizer step with the adversarial terms on.
    #[serde(default)]
    pub start_step: u64,
    #[serde(default = "default_disc_lr")]
    pub lr: f64,
    #[serde(default = "default_disc_betas")]
    pub betas: [f64; 2],
    /// Generator adversarial weight.
    #[serde(default = "default_gan_w")]
    pub weight: f64,
    #[serde(default = "default_gan_loss")]
    pub loss: GanLoss,
    /// Scale the adversarial term by the VQGAN adaptive weight (grad-norm ratio at the last
    /// decoder layer).
    #[serde(default)]
    pub adaptive_weight: bool,
    /// LeCam regularisation weight (0: off; IBQ uses 0.05).
    #[serde(default)]
    pub lecam_weight: f64,
    /// Decay of LeCam's logit EMAs (IBQ: 0.999).
    #[serde(default = "default_lecam_decay")]
    pub lecam_decay: f64,
    /// Base channels of the PatchGAN.
    #[serde(default = "default_ndf")]
    pub ndf: i64,
    #[serde(default = "default_disc_layers")]
    pub n_layers: i64,
}

fn default_disc_lr() -> f64 {
    1e-4
}
fn default_disc_betas() -> [f64; 2] {
    [0.5, 0.9]
}
fn default_gan_w() -> f64 {
    0.5
}
fn default_gan_loss() -> GanLoss {
    GanLoss::Hinge
}
fn default_lecam_decay() -> f64 {
    0.999
}
fn default_ndf() -> i64 {
    64
}
fn default_disc_layers() -> i64 {
    3
}

impl Default for DiscConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            start_step: 0,
            lr: default_disc_lr(),
            betas: default_disc_betas(),
            weight: default_gan_w(),
            loss: default_gan_loss(),
            adaptive_weight: false,
            lecam_weight: 0.0,
            lecam_decay: default_lecam_decay(),
            ndf: default_ndf(),
            n_layers: default_disc_layers(),
        }
    }
}
