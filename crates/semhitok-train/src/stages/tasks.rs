//! The stages as [`Task`]s: [`SpcTask`] (stage 1) and [`PixelTask`] (`pre`, `decoder-ft`,
//! `joint`).

use super::build::Perceptual;
use super::model_io::state_of;
use crate::config::Stage;
use crate::dist::Dist;
use crate::error::Result;
use crate::gan::Gan;
use crate::optim::Param;
use crate::trainer::{Batch, LossOut, Task, ValCodes, ValOut};
use semhitok_nn::losses::PixelLoss;
use semhitok_nn::model::{DecodeMode, Part, SemHiTok};
use semhitok_nn::quantizer::CodeStats;
use semhitok_nn::teacher::Teacher;
use std::collections::BTreeMap;
use tch::Tensor;

fn params_of(model: &SemHiTok, parts: &[Part]) -> Vec<Param> {
    let mut v: Vec<Param> = parts
        .iter()
        .flat_map(|p| model.trainable_with_roles(*p))
        .map(|(name, var, role)| Param { name, var, role })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// Checkpoint name of the SPC's pending k-means vectors (see [`Task::extra_state`]).
const KMEANS_PENDING: &str = "spc.kmeans_pending";

fn spc_extra_state(model: &SemHiTok) -> Result<Vec<(String, Tensor)>> {
    Ok(model
        .spc()
        .kmeans_pending()?
        .map(|t| (KMEANS_PENDING.to_string(), t))
        .into_iter()
        .collect())
}

fn spc_restore_extra(model: &SemHiTok, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
    if let Some(t) = tensors.get(KMEANS_PENDING) {
        model.spc().set_kmeans_pending(t)?;
    }
    Ok(())
}

/// One EMA step from this step's statistics, summed over the data-parallel ranks first.
fn ema_step(
    dist: Option<&Dist>,
    what: &str,
    stats: Option<CodeStats>,
    update: impl FnOnce(&CodeStats) -> semhitok_nn::Result<()>,
) -> Result<()> {
    if let Some(mut s) = stats {
        if let Some(d) = dist {
            d.sum_code_stats(what, &mut s)?;
        }
        update(&s)?;
    }
    Ok(())
}

fn merge_stats(acc: &mut Option<CodeStats>, s: Option<CodeStats>) -> Result<()> {
    if let Some(s) = s {
        match acc {
            Some(a) => a.merge(&s)?,
            None => *acc = Some(s),
        }
    }
    Ok(())
}

/// The semantic ids `[B, N]` of a validation batch with `model`'s codebook sizes (no pixel ids).
fn semantic_codes(model: &SemHiTok, ids: Tensor) -> ValCodes {
    let c = model.config();
    ValCodes {
        semantic: ids,
        pixel: None,
        k: c.spc.codebook_size as usize,
        m: c.sghc.m as usize,
    }
}

/// Stage 1: SPC.
pub struct SpcTask {
    pub model: SemHiTok,
    pub teacher: Box<dyn Teacher>,
    pub(super) semantic_weight: f64,
    pub(super) pending: Option<CodeStats>,
    pub(super) dist: Option<Dist>,
}

impl std::fmt::Debug for SpcTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpcTask").finish()
    }
}

impl Task for SpcTask {
    fn params(&self) -> Vec<Param> {
        params_of(&self.model, &[Part::Spc])
    }
    fn state(&self) -> BTreeMap<String, Tensor> {
        state_of(&self.model, &[Part::Spc])
    }
    fn loss(&mut self, batch: &Batch, _step: u64) -> Result<LossOut> {
        let images = batch.images()?;
        let feats = self.teacher.features(images)?;
        let out = self.model.spc().forward_t(&feats, true)?;
        merge_stats(&mut self.pending, out.stats)?;
        let total = &out.loss_cos * self.semantic_weight + &out.loss_commit;
        Ok(LossOut {
            parts: vec![
                ("cos", out.loss_cos.detach()),
                ("commit", out.loss_commit.detach()),
            ],
            total,
            disc_inputs: None,
        })
    }
    fn extra_state(&self) -> Result<Vec<(String, Tensor)>> {
        spc_extra_state(&self.model)
    }
    fn restore_extra_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        spc_restore_extra(&self.model, tensors)
    }
    fn validate(&mut self, images: &Tensor) -> Result<Option<ValOut>> {
        tch::no_grad(|| {
            let feats = self.teacher.features(images)?;
            let out = self.model.spc().forward_t(&feats, false)?;
            Ok(Some(ValOut {
                recon: None,
                teacher_cosine: Some(crate::metrics::mean_cosine(&out.recon, &feats)),
                codes: Some(semantic_codes(&self.model, out.ids)),
            }))
        })
    }
    fn attach_dist(&mut self, dist: &Dist) {
        self.model
            .spc()
            .set_process_group(dist.process_group().clone());
        self.dist = Some(dist.clone());
    }
    fn after_step(&mut self, _step: u64) -> Result<()> {
        let spc = self.model.spc();
        ema_step(
            self.dist.as_ref(),
            "SPC codebook statistics",
            self.pending.take(),
            |s| spc.ema_update(s),
        )
    }
}

/// Stages 2 (`pre`), `decoder-ft` and `joint`: pixel reconstruction.
pub struct PixelTask {
    pub model: SemHiTok,
    pub teacher: Box<dyn Teacher>,
    pub(super) stage: Stage,
    pub(super) rec: PixelLoss,
    pub(super) rec_weight: f64,
    pub(super) semantic_weight: f64,
    pub(super) trained: Vec<Part>,
    /// Perceptual loss network and its weight (`loss.perceptual`, `loss.perceptual_weight`).
    pub(super) perceptual: Option<(Perceptual, f64)>,
    pub(super) pending_sghc: Option<CodeStats>,
    pub(super) pending_spc: Option<CodeStats>,
    /// PatchGAN and its losses (`[disc]`, `None` when disabled).
    pub(super) gan: Option<Gan>,
    pub(super) dist: Option<Dist>,
}

impl std::fmt::Debug for PixelTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PixelTask")
            .field("stage", &self.stage)
            .finish()
    }
}

impl Task for PixelTask {
    fn params(&self) -> Vec<Param> {
        params_of(&self.model, &self.trained)
    }
    fn disc_params(&self) -> Vec<Param> {
        self.gan.as_ref().map(Gan::params).unwrap_or_default()
    }
    fn state(&self) -> BTreeMap<String, Tensor> {
        let mut s = state_of(&self.model, &Part::ALL);
        if let Some(g) = &self.gan {
            s.extend(g.state());
        }
        s
    }
    fn loss(&mut self, batch: &Batch, step: u64) -> Result<LossOut> {
        let images = batch.images()?;
        let feats = self.teacher.features(images)?;
        let mut parts = vec![];
        let (recon, total) = if self.stage == Stage::Joint {
            // One codebook, semantic + pixel losses together (MUSE-VL-style texture incorporation).
            let out = self.model.spc().forward_t(&feats, true)?;
            merge_stats(&mut self.pending_spc, out.stats)?;
            let recon = self.model.decoder().forward(&out.quantized)?;
            parts.push(("cos", out.loss_cos.detach()));
            parts.push(("commit", out.loss_commit.detach()));
            let t = &out.loss_cos * self.semantic_weight + &out.loss_commit;
            (recon, t)
        } else {
            let out = self.model.forward_t(images, &feats, true)?;
            merge_stats(&mut self.pending_sghc, out.pixel.stats)?;
            parts.push(("codebook", out.pixel.loss_codebook.detach()));
            parts.push(("commit", out.pixel.loss_commit.detach()));
            let t = &out.pixel.loss_codebook + &out.pixel.loss_commit;
            (out.recon, t)
        };
        let rec = self.rec.compute(&recon, images)?;
        parts.push(("rec", rec.detach()));
        // taming's `nll_loss`: what the adaptive GAN weight balances against.
        let mut nll = rec * self.rec_weight;
        if let Some((net, w)) = &self.perceptual {
            let p = net.forward(&recon, images)?.mean(tch::Kind::Float);
            parts.push(("perceptual", p.detach()));
            nll += p * *w;
        }
        let mut disc_inputs = None;
        if let Some(gan) = self.gan.as_ref().filter(|g| g.active(step)) {
            let g = gan.generator(&recon, &nll, self.model.decoder().last_layer_weight())?;
            parts.push(("gan_g", g.g_loss));
            parts.push(("gan_w", g.weight));
            nll += g.loss;
            disc_inputs = Some((images.detach(), recon.detach()));
        }
        Ok(LossOut {
            total: total + nll,
            parts,
            disc_inputs,
        })
    }
    fn disc_loss(&mut self, real: &Tensor, fake: &Tensor, step: u64) -> Result<Option<Tensor>> {
        match self.gan.as_mut() {
            Some(g) if g.active(step) => Ok(Some(g.discriminator(real, fake)?)),
            _ => Ok(None),
        }
    }
    fn extra_state(&self) -> Result<Vec<(String, Tensor)>> {
        if self.stage == Stage::Joint {
            spc_extra_state(&self.model)
        } else {
            Ok(vec![])
        }
    }
    fn restore_extra_state(&mut self, tensors: &BTreeMap<String, Tensor>) -> Result<()> {
        spc_restore_extra(&self.model, tensors)
    }
    fn validate(&mut self, images: &Tensor) -> Result<Option<ValOut>> {
        tch::no_grad(|| {
            let feats = self.teacher.features(images)?;
            if self.stage == Stage::Joint {
                // The trained SPC decodes pixels from its semantic codes.
                let out = self.model.spc().forward_t(&feats, false)?;
                let recon = self.model.decoder().forward(&out.quantized)?;
                return Ok(Some(ValOut {
                    recon: Some(recon.clamp(-1.0, 1.0)),
                    teacher_cosine: Some(crate::metrics::mean_cosine(&out.recon, &feats)),
                    codes: Some(semantic_codes(&self.model, out.ids)),
                }));
            }
            let (enc, recon) = self.model.encode_reconstruct(images, &feats)?;
            let b = images.size()[0];
            let mut codes = semantic_codes(&self.model, enc.semantic_ids.reshape([b, -1]));
            if self.model.decode_mode() == DecodeMode::Hierarchical {
                codes.pixel = Some(enc.pixel_ids.reshape([b, -1]));
            }
            Ok(Some(ValOut {
                recon: Some(recon.clamp(-1.0, 1.0)),
                teacher_cosine: None,
                codes: Some(codes),
            }))
        })
    }
    fn attach_dist(&mut self, dist: &Dist) {
        self.model
            .spc()
            .set_process_group(dist.process_group().clone());
        self.dist = Some(dist.clone());
    }
    fn after_step(&mut self, _step: u64) -> Result<()> {
        let (sghc, spc) = (self.model.sghc(), self.model.spc());
        let d = self.dist.as_ref();
        ema_step(
            d,
            "SGHC codebook statistics",
            self.pending_sghc.take(),
            |s| sghc.ema_update(s),
        )?;
        ema_step(d, "SPC codebook statistics", self.pending_spc.take(), |s| {
            spc.ema_update(s)
        })
    }
}
