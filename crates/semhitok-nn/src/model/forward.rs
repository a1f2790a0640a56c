//! The forwards of [`SemHiTok`]: input checks, teacher features, the stage-2 forward, encode,
//! decode and reconstruct.

use crate::error::{Error, Result};
use crate::spc::check_ids;
use crate::teacher::Teacher;
use tch::{Kind, Tensor};

use super::{DecodeMode, Encoded, SemHiTok, Stage2Output};

impl SemHiTok {
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
        self.cfg
            .spc
            .check_teacher(teacher, self.cfg.encoder.image_size)?;
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
                    unified_ids: crate::unified::compose(&sem_ids, None, self.cfg.sghc.m)?,
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
        let sem_ids = crate::unified::semantic_of(&u, m)?;
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
