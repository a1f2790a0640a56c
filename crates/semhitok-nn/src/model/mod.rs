//! The whole SemHiTok tokenizer (paper Fig. 2): SPC (semantic ids from teacher features), ViT
//! pixel encoder, SGHC (pixel sub-codebook ids), fusion and ViT pixel decoder.
//!
//! The model lives in three VarStores, one per [`Part`], so a trainer can freeze, optimise, save
//! and load each alone, and swap the decoder for a larger one ([`SemHiTok::replace_decoder`]):
//! - `spc`: the SPC (`encode_task_layer.*`, `quantize.*`, `decoder.*`, `decode_task_layer.*`),
//! - `pixel`: the pixel encoder (`encoder.*`) and the SGHC codebook (`quantize.*`),
//! - `decoder`: the pixel decoder (`embed`, `pos_embed`, `blocks.*`, `norm`, `head`).
//!
//! Teacher features come in as an argument (`[B, N, C_t]`, e.g. from a `Teacher`), so the model does
//! not own or depend on the teacher. Stage 2 never changes the semantic path: [`SemHiTok::forward_t`]
//! runs the SPC without gradient and without EMA statistics, so semantic ids depend only on the SPC's
//! variables (tested: bit-identical with and without the pixel branch and across a pixel-branch step).

mod config;
mod forward;

pub use config::{DecodeMode, SemHiTokConfig};

use crate::error::Result;
use crate::role::Role;
use crate::sghc::{Sghc, SghcOutput};
use crate::spc::Spc;
use crate::vit::{VitDecoder, VitDecoderConfig, VitEncoder};
use crate::weights::{load_strict, save_atomic, LoadOptions};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Tensor};

/// The three separately stored parts of the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    /// The stage-1 SPC.
    Spc,
    /// Pixel encoder + SGHC codebook.
    Pixel,
    /// Pixel decoder.
    Decoder,
}

impl Part {
    /// All parts.
    pub const ALL: [Part; 3] = [Part::Spc, Part::Pixel, Part::Decoder];

    /// Name prefix used by [`SemHiTok::named_variables`] (`"spc."`, `"pixel."`, `"decoder."`).
    pub fn prefix(self) -> &'static str {
        match self {
            Part::Spc => "spc.",
            Part::Pixel => "pixel.",
            Part::Decoder => "decoder.",
        }
    }
}

/// What an MLLM consumes from an image (paper Sec. 3.3).
#[derive(Debug)]
pub struct Encoded {
    /// Semantic ids `[B, h, w]` int64 in `0..K_sem`.
    pub semantic_ids: Tensor,
    /// Pixel sub-codebook ids `[B, h, w]` int64 in `0..m`.
    pub pixel_ids: Tensor,
    /// Unified ids `k * m + j` `[B, h, w]` int64 in `0..K_sem * m`.
    pub unified_ids: Tensor,
    /// Quantized features `[B, h*w, D_sem + D_pix]` fp32: `[semantic code | pixel code]`.
    pub features: Tensor,
}

/// Stage-2 forward result.
#[derive(Debug)]
pub struct Stage2Output {
    /// Reconstructed images `[B, 3, H, W]`.
    pub recon: Tensor,
    /// Semantic ids `[B, N]` (computed without gradient).
    pub semantic_ids: Tensor,
    /// Semantic codes `[B, N, D_sem]` (detached).
    pub semantic_codes: Tensor,
    /// SGHC result (pixel ids, unified ids, quantized codes, losses, EMA statistics).
    pub pixel: SghcOutput,
}

/// The SemHiTok tokenizer.
#[derive(Debug)]
pub struct SemHiTok {
    spc_vs: VarStore,
    pixel_vs: VarStore,
    decoder_vs: VarStore,
    spc: Spc,
    encoder: VitEncoder,
    sghc: Sghc,
    decoder: VitDecoder,
    cfg: SemHiTokConfig,
    device: Device,
}

impl SemHiTok {
    /// Builds every part (fresh random weights) on `device`.
    pub fn new(cfg: &SemHiTokConfig, device: Device) -> Result<Self> {
        cfg.validate()?;
        let spc_vs = VarStore::new(device);
        let pixel_vs = VarStore::new(device);
        let decoder_vs = VarStore::new(device);
        let spc = cfg.spc.init(&spc_vs.root())?;
        let encoder = cfg.encoder.init(&(pixel_vs.root() / "encoder"))?;
        let sghc = cfg.sghc.init(&(pixel_vs.root() / "quantize"))?;
        let decoder = cfg.decoder.init(&decoder_vs.root())?;
        Ok(Self {
            spc_vs,
            pixel_vs,
            decoder_vs,
            spc,
            encoder,
            sghc,
            decoder,
            cfg: cfg.clone(),
            device,
        })
    }

    /// The configuration (reflects a replaced decoder).
    pub fn config(&self) -> &SemHiTokConfig {
        &self.cfg
    }
    /// Device of all variables.
    pub fn device(&self) -> Device {
        self.device
    }
    /// The SPC (stage 1: call [`Spc::forward_t`] and [`Spc::ema_update`] directly).
    pub fn spc(&self) -> &Spc {
        &self.spc
    }
    /// The pixel encoder.
    pub fn encoder(&self) -> &VitEncoder {
        &self.encoder
    }
    /// The SGHC quantizer.
    pub fn sghc(&self) -> &Sghc {
        &self.sghc
    }
    /// The pixel decoder (its [`VitDecoder::last_layer_weight`] feeds the GAN adaptive weight).
    pub fn decoder(&self) -> &VitDecoder {
        &self.decoder
    }

    /// The VarStore holding `part`.
    pub fn var_store(&self, part: Part) -> &VarStore {
        match part {
            Part::Spc => &self.spc_vs,
            Part::Pixel => &self.pixel_vs,
            Part::Decoder => &self.decoder_vs,
        }
    }

    /// Mutable VarStore of `part` (e.g. to cast or copy).
    pub fn var_store_mut(&mut self, part: Part) -> &mut VarStore {
        match part {
            Part::Spc => &mut self.spc_vs,
            Part::Pixel => &mut self.pixel_vs,
            Part::Decoder => &mut self.decoder_vs,
        }
    }

    /// Every variable of `part` (trainable or buffer), names prefixed by [`Part::prefix`], sorted.
    pub fn named_variables(&self, part: Part) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = self
            .var_store(part)
            .variables()
            .into_iter()
            .map(|(k, t)| (format!("{}{k}", part.prefix()), t))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// The trainable variables of `part` (those with `requires_grad`), prefixed names, sorted.
    /// EMA codebooks and buffers are never included; a frozen part yields nothing.
    pub fn trainable_variables(&self, part: Part) -> Vec<(String, Tensor)> {
        self.named_variables(part)
            .into_iter()
            .filter(|(_, t)| t.requires_grad())
            .collect()
    }

    /// [`Self::trainable_variables`] with each one's [`Role`] (declared by the layer that created
    /// it), for an optimizer's weight-decay and bf16-copy membership.
    pub fn trainable_with_roles(&self, part: Part) -> Vec<(String, Tensor, Role)> {
        crate::role::trainable(self.var_store(part))
            .into_iter()
            .map(|(k, t, r)| (format!("{}{k}", part.prefix()), t, r))
            .collect()
    }

    /// Stops gradients into `part` (stage 2 freezes [`Part::Spc`]).
    pub fn freeze(&mut self, part: Part) {
        self.var_store_mut(part).freeze();
    }

    /// Re-enables gradients of `part`'s trainable variables.
    pub fn unfreeze(&mut self, part: Part) {
        self.var_store_mut(part).unfreeze();
    }

    /// Saves `part` to a safetensors file (unprefixed names), atomically.
    pub fn save(&self, part: Part, path: &Path) -> Result<()> {
        save_atomic(self.var_store(part), path)
    }

    /// Loads `part` strictly from a safetensors file written by [`SemHiTok::save`].
    pub fn load(&mut self, part: Part, path: &Path) -> Result<()> {
        load_strict(self.var_store_mut(part), path, &LoadOptions::default())
    }

    /// Replaces the pixel decoder by a fresh one (decoder fine-tune stage, e.g.
    /// [`VitDecoderConfig::large_256`]); its input must still match the fusion.
    pub fn replace_decoder(&mut self, cfg: VitDecoderConfig) -> Result<()> {
        let mut full = self.cfg.clone();
        full.decoder = cfg;
        full.validate()?;
        let vs = VarStore::new(self.device);
        let decoder = full.decoder.init(&vs.root())?;
        self.decoder_vs = vs;
        self.decoder = decoder;
        self.cfg = full;
        Ok(())
    }
}
