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

use crate::error::{Error, Result};
use crate::fusion::Fusion;
use crate::role::Role;
use crate::sghc::{Sghc, SghcConfig, SghcOutput};
use crate::spc::{check_ids, Spc, SpcConfig};
use crate::teacher::Teacher;
use crate::vit::{VitConfig, VitDecoder, VitDecoderConfig, VitEncoder, VitEncoderConfig};
use crate::weights::{load_strict, save_atomic, LoadOptions};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

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

    fn check_images(&self, images: &Tensor) -> Result<i64> {
        let s = self.cfg.encoder.image_size;
        match images.size().as_slice() {
            &[b, 3, h, w] if h == s && w == s && images.is_floating_point() => Ok(b),
            _ => Err(Error::shape(
                "SemHiTok images (float, in [-1, 1])",
                format!("[B, 3, {s}, {s}]"),
                images,
            )),
        }
    }

    fn check_teacher(&self, b: i64, feats: &Tensor) -> Result<()> {
        let c = &self.cfg.spc;
        if feats.size() != [b, c.num_tokens, c.teacher_dim] {
            return Err(Error::shape(
                "SemHiTok teacher features",
                format!(
                    "[{b}, {}, {}] (batch of the images)",
                    c.num_tokens, c.teacher_dim
                ),
                feats,
            ));
        }
        Ok(())
    }

    /// Teacher features for `images` `[B, 3, S, S]` in [-1, 1] from any [`Teacher`], checked against
    /// the SPC's `teacher_dim` and token count (an error names both sides when they differ).
    pub fn teacher_features(&self, teacher: &dyn Teacher, images: &Tensor) -> Result<Tensor> {
        let b = self.check_images(images)?;
        let c = &self.cfg.spc;
        let s = self.cfg.encoder.image_size;
        let (gh, gw) = teacher.grid(s, s);
        if teacher.dim() != c.teacher_dim || gh * gw != c.num_tokens {
            return Err(Error::Config(format!(
                "teacher {} gives {gh}x{gw} tokens of dim {} at {s} px; the SPC expects {} tokens of dim {}",
                teacher.name(),
                teacher.dim(),
                c.num_tokens,
                c.teacher_dim
            )));
        }
        let feats = teacher.features(images)?;
        self.check_teacher(b, &feats)?;
        Ok(feats)
    }

    /// Semantic ids `[B, N]` and codes `[B, N, D_sem]` from teacher features, without gradient.
    pub fn semantic_codes(&self, teacher_feats: &Tensor) -> Result<(Tensor, Tensor)> {
        tch::no_grad(|| {
            let codes = self.spc.quantize(teacher_feats)?;
            Ok((codes.ids, codes.quantized.f_detach()?))
        })
    }

    /// Stage-2 forward (the pixel branch learns, the SPC never changes).
    ///
    /// images: `[B, 3, S, S]` in [-1, 1], teacher_feats: `[B, N, C_t]` -> [`Stage2Output`]
    /// (recon `[B, 3, S, S]`, ids `[B, N]`, SGHC losses; EMA statistics when `train` and EMA is on).
    pub fn forward_t(
        &self,
        images: &Tensor,
        teacher_feats: &Tensor,
        train: bool,
    ) -> Result<Stage2Output> {
        let b = self.check_images(images)?;
        self.check_teacher(b, teacher_feats)?;
        let (semantic_ids, semantic_codes) = self.semantic_codes(teacher_feats)?;
        let z = self.encoder.forward(images)?;
        let pixel = self.sghc.forward_t(&z, &semantic_ids, train)?;
        let fused = self.cfg.fusion.fuse(&semantic_codes, &pixel.quantized)?;
        let recon = self.decoder.forward(&fused)?;
        Ok(Stage2Output {
            recon,
            semantic_ids,
            semantic_codes,
            pixel,
        })
    }

    /// Tokenize: images `[B, 3, S, S]` + teacher features `[B, N, C_t]` -> [`Encoded`] (ids `[B, h, w]`,
    /// features `[B, N, D_sem + D_pix]`). No gradient.
    pub fn encode(&self, images: &Tensor, teacher_feats: &Tensor) -> Result<Encoded> {
        let b = self.check_images(images)?;
        self.check_teacher(b, teacher_feats)?;
        let g = self.cfg.encoder.grid();
        tch::no_grad(|| {
            let (sem_ids, sem_codes) = self.semantic_codes(teacher_feats)?;
            if self.decode_mode() == DecodeMode::SemanticOnly {
                let sem_ids = sem_ids.f_reshape([b, g, g])?;
                return Ok(Encoded {
                    pixel_ids: sem_ids.f_zeros_like()?,
                    unified_ids: sem_ids.f_mul_scalar(self.cfg.sghc.m)?,
                    semantic_ids: sem_ids,
                    features: sem_codes.f_to_kind(Kind::Float)?,
                });
            }
            let z = self.encoder.forward(images)?;
            let pix = self.sghc.forward_t(&z, &sem_ids, false)?;
            let features = Tensor::f_cat(
                &[
                    sem_codes.f_to_kind(Kind::Float)?,
                    pix.quantized.f_detach()?.f_to_kind(Kind::Float)?,
                ],
                -1,
            )?;
            Ok(Encoded {
                semantic_ids: sem_ids.f_reshape([b, g, g])?,
                pixel_ids: pix.sub_ids.f_reshape([b, g, g])?,
                unified_ids: pix.unified.f_reshape([b, g, g])?,
                features,
            })
        })
    }

    /// [`Self::encode`] and [`Self::reconstruct`] from one forward (what evaluation needs): the
    /// same ids, features and reconstructions, bit for bit, as the two calls. No gradient.
    pub fn encode_reconstruct(
        &self,
        images: &Tensor,
        teacher_feats: &Tensor,
    ) -> Result<(Encoded, Tensor)> {
        tch::no_grad(|| match self.decode_mode() {
            DecodeMode::SemanticOnly => {
                let enc = self.encode(images, teacher_feats)?;
                let recon = self.decode_codes(&enc.features, None)?;
                Ok((enc, recon))
            }
            DecodeMode::Hierarchical => {
                let b = images.size()[0];
                let g = self.cfg.encoder.grid();
                let out = self.forward_t(images, teacher_feats, false)?;
                let features = Tensor::f_cat(
                    &[
                        out.semantic_codes.f_to_kind(Kind::Float)?,
                        out.pixel.quantized.f_detach()?.f_to_kind(Kind::Float)?,
                    ],
                    -1,
                )?;
                let enc = Encoded {
                    semantic_ids: out.semantic_ids.f_reshape([b, g, g])?,
                    pixel_ids: out.pixel.sub_ids.f_reshape([b, g, g])?,
                    unified_ids: out.pixel.unified.f_reshape([b, g, g])?,
                    features,
                };
                Ok((enc, out.recon))
            }
        })
    }

    /// Quantized features `[B, N, D]` of unified ids `[B, h, w]` (what [`Encoded::features`] holds;
    /// `D` = [`SemHiTokConfig::feature_dim`]).
    pub fn features_of(&self, unified: &Tensor) -> Result<Tensor> {
        let (sem, pix) = self.codes_of(unified)?;
        match pix {
            Some(pix) => Ok(Tensor::f_cat(&[sem, pix], -1)?),
            None => Ok(sem),
        }
    }

    /// The model's [`DecodeMode`].
    pub fn decode_mode(&self) -> DecodeMode {
        self.cfg.decode_mode()
    }

    /// Semantic codes `[B, N, D_sem]` and (hierarchical mode) pixel codes `[B, N, D_pix]` of
    /// unified ids `[B, h, w]`.
    fn codes_of(&self, unified: &Tensor) -> Result<(Tensor, Option<Tensor>)> {
        let g = self.cfg.encoder.grid();
        let b = match unified.size().as_slice() {
            &[b, h, w] if h == g && w == g && !unified.is_floating_point() => b,
            _ => {
                return Err(Error::shape(
                    "unified ids (int64)",
                    format!("[B, {g}, {g}]"),
                    unified,
                ))
            }
        };
        let m = self.cfg.sghc.m;
        check_ids("unified ids", unified, self.cfg.sghc.vocab_size())?;
        let u = unified
            .f_to_kind(Kind::Int64)?
            .f_to_device(self.device)?
            .f_reshape([b, g * g])?;
        let sem_ids = u.f_div_scalar_mode(m, "floor")?;
        let sem = self.spc.lookup(&sem_ids)?.f_to_kind(Kind::Float)?;
        let pix = match self.decode_mode() {
            DecodeMode::Hierarchical => Some(self.sghc.lookup_unified(&u)?),
            DecodeMode::SemanticOnly => None,
        };
        Ok((sem, pix))
    }

    /// The pixel decoder on semantic codes `[B, N, D_sem]` and (hierarchical) pixel codes.
    fn decode_codes(&self, sem: &Tensor, pix: Option<&Tensor>) -> Result<Tensor> {
        match pix {
            Some(pix) => self.decoder.forward(&self.cfg.fusion.fuse(sem, pix)?),
            None => self.decoder.forward(sem),
        }
    }

    /// Detokenize: unified ids `[B, h, w]` (int64 in `0..K_sem * m`) -> images `[B, 3, S, S]`.
    /// Out-of-range ids and a wrong grid are errors. No gradient.
    pub fn decode(&self, unified: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let (sem, pix) = self.codes_of(unified)?;
            self.decode_codes(&sem, pix.as_ref())
        })
    }

    /// `decode(encode(images))` without gradient: images `[B, 3, S, S]` -> `[B, 3, S, S]`. In
    /// [`DecodeMode::SemanticOnly`] the pixel branch does not run.
    pub fn reconstruct(&self, images: &Tensor, teacher_feats: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| match self.decode_mode() {
            DecodeMode::Hierarchical => self
                .forward_t(images, teacher_feats, false)
                .map(|o| o.recon),
            DecodeMode::SemanticOnly => {
                let b = self.check_images(images)?;
                self.check_teacher(b, teacher_feats)?;
                let (_, sem) = self.semantic_codes(teacher_feats)?;
                self.decode_codes(&sem, None)
            }
        })
    }
}
