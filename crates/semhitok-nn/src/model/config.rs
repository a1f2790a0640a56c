//! [`SemHiTokConfig`]: the model's sizes (presets, validation) and the [`DecodeMode`] its fusion implies.

use crate::error::{Error, Result};
use crate::fusion::Fusion;
use crate::sghc::SghcConfig;
use crate::spc::SpcConfig;
use crate::vit::{VitConfig, VitDecoderConfig, VitEncoderConfig};
use serde::{Deserialize, Serialize};
use tch::Device;

use super::SemHiTok;

/// SemHiTok configuration (config-as-constructor: [`SemHiTokConfig::init`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SemHiTokConfig {
    /// Stage-1 semantic codebook.
    pub spc: SpcConfig,
    /// Pixel encoder (its `out_dim` is the SGHC's `dim`).
    pub encoder: VitEncoderConfig,
    /// Hierarchical pixel codebook (`k_sem` = the SPC's `codebook_size`).
    pub sghc: SghcConfig,
    /// Fusion before the pixel decoder.
    pub fusion: Fusion,
    /// Pixel decoder (`in_dim` and `groups` must match the fusion).
    pub decoder: VitDecoderConfig,
}

impl SemHiTokConfig {
    /// The paper's 256 px model: SigLIP-L/16 teacher features `[B, 256, 1024]`, SPC K = 16384
    /// D = 32, ViT-B/16 encoder and decoder, SGHC m = 12 D_pix = 8, channel concatenation.
    pub fn paper_256() -> Self {
        let sghc = SghcConfig::paper();
        let spc = SpcConfig::paper_256();
        let fusion = Fusion::ChannelConcat;
        Self {
            encoder: VitEncoderConfig::base_256(sghc.dim),
            decoder: VitDecoderConfig::base_256(fusion.out_dim(spc.code_dim, sghc.dim)),
            spc,
            sghc,
            fusion,
        }
    }

    /// A tiny model for tests and CPU checks: `image_size` px, `patch` px patches, teacher
    /// dimension `teacher_dim`, K = `k_sem`, m = `m`; 2-block 32-wide encoder/decoder.
    pub fn tiny(image_size: i64, patch: i64, teacher_dim: i64, k_sem: i64, m: i64) -> Self {
        let g = image_size / patch.max(1);
        let spc = SpcConfig::tiny(teacher_dim, g * g, k_sem, 8);
        let sghc = SghcConfig {
            k_sem,
            m,
            dim: 4,
            ..SghcConfig::paper()
        };
        let fusion = Fusion::ChannelConcat;
        let vit = VitConfig::custom(32, 2, 2);
        Self {
            encoder: VitEncoderConfig {
                image_size,
                patch_size: patch,
                in_channels: 3,
                vit: vit.clone(),
                out_dim: sghc.dim,
            },
            decoder: VitDecoderConfig {
                image_size,
                patch_size: patch,
                out_channels: 3,
                vit,
                in_dim: fusion.out_dim(spc.code_dim, sghc.dim),
                groups: 1,
            },
            spc,
            sghc,
            fusion,
        }
    }

    /// The same model with another fusion (decoder input adjusted).
    pub fn with_fusion(mut self, fusion: Fusion) -> Self {
        self.fusion = fusion;
        self.decoder.in_dim = fusion.out_dim(self.spc.code_dim, self.sghc.dim);
        self.decoder.groups = fusion.groups();
        self
    }

    /// Checks every part and that the parts fit together.
    pub fn validate(&self) -> Result<()> {
        self.spc.validate()?;
        self.encoder.validate()?;
        self.sghc.validate()?;
        self.decoder.validate()?;
        let g = self.encoder.grid();
        let checks = [
            (
                self.sghc.k_sem == self.spc.codebook_size,
                format!(
                    "sghc.k_sem {} != spc.codebook_size {}",
                    self.sghc.k_sem, self.spc.codebook_size
                ),
            ),
            (
                self.sghc.dim == self.encoder.out_dim,
                format!(
                    "sghc.dim {} != encoder.out_dim {}",
                    self.sghc.dim, self.encoder.out_dim
                ),
            ),
            (
                g * g == self.spc.num_tokens,
                format!(
                    "encoder grid {g}x{g} != spc.num_tokens {}",
                    self.spc.num_tokens
                ),
            ),
            (
                self.decoder.grid() == g && self.decoder.image_size == self.encoder.image_size,
                format!(
                    "decoder {} px / patch {} does not mirror encoder {} px / patch {}",
                    self.decoder.image_size,
                    self.decoder.patch_size,
                    self.encoder.image_size,
                    self.encoder.patch_size
                ),
            ),
            (
                self.decoder.in_dim == self.fusion.out_dim(self.spc.code_dim, self.sghc.dim)
                    && self.decoder.groups == self.fusion.groups(),
                format!(
                    "decoder in_dim {} / groups {} do not match fusion {:?} ({} / {})",
                    self.decoder.in_dim,
                    self.decoder.groups,
                    self.fusion,
                    self.fusion.out_dim(self.spc.code_dim, self.sghc.dim),
                    self.fusion.groups()
                ),
            ),
        ];
        for (ok, msg) in checks {
            if !ok {
                return Err(Error::Config(format!("SemHiTok: {msg}")));
            }
        }
        Ok(())
    }

    /// Builds the model on `device`.
    pub fn init(&self, device: Device) -> Result<SemHiTok> {
        SemHiTok::new(self, device)
    }

    /// What the pixel decoder reads (from the fusion): [`DecodeMode::SemanticOnly`] for the
    /// semantic-only and joint baselines, [`DecodeMode::Hierarchical`] otherwise.
    pub fn decode_mode(&self) -> DecodeMode {
        match self.fusion {
            Fusion::SemanticOnly => DecodeMode::SemanticOnly,
            Fusion::ChannelConcat | Fusion::PixelOnly | Fusion::LengthConcat => {
                DecodeMode::Hierarchical
            }
        }
    }

    /// Width of [`Encoded::features`] / [`SemHiTok::features_of`]: `D_sem + D_pix`
    /// (hierarchical) or `D_sem` (semantic-only).
    pub fn feature_dim(&self) -> i64 {
        match self.decode_mode() {
            DecodeMode::Hierarchical => self.spc.code_dim + self.sghc.dim,
            DecodeMode::SemanticOnly => self.spc.code_dim,
        }
    }
}

/// Which codes a trained model's pixel decoder reads; chosen by the fusion, so a checkpoint or a
/// model folder carries it in its model config. Encode, decode and reconstruct dispatch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DecodeMode {
    /// SGHC (and its fusion ablations): semantic and pixel sub-codes; unified ids `k * m + j`.
    Hierarchical,
    /// Semantic codes only (the semantic-only decoder baseline and the joint "texture
    /// incorporation" baseline). The pixel branch never runs outside training: pixel ids are 0,
    /// unified ids are `k * m` (still in `0..K * m`, and any `j` decodes to the same image),
    /// features are the semantic codes `[B, N, D_sem]`.
    SemanticOnly,
}
