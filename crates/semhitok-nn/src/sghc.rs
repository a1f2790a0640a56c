//! SGHC, the Semantic-Guided Hierarchical Codebook (SemHiTok paper Sec. 3.2, stage 2): a pixel
//! codebook `[K_sem, m, D_pix]` where each patch is quantized only inside the sub-codebook of its
//! semantic id. The `m` candidates of every token are gathered (`[M, m, D_pix]`), so no
//! `N x (K_sem * m)` distance matrix ever exists. Unified id `u = k * m + j`.
//!
//! Losses follow LlamaGen's `VectorQuantizer` (FoundationVision/LlamaGen `tokenizer/tokenizer_image/vq_model.py`):
//! `codebook = mse(zq, sg[z])`, `commit = beta * mse(sg[zq], z)`, optional l2 normalization of `z`
//! and the codes before the distance (LlamaGen's `codebook_l2_norm`); with the EMA option the
//! codebook is not trainable, the codebook loss is zero and [`Sghc::ema_update`] moves the codes.
//! Distances run in fp32 with autocast off. CPU reference: `semhitok_quant::sghc_nearest`.

use crate::error::{Error, Result};
use crate::quantizer::{
    l2_normalize, nearest_l2, straight_through, without_autocast, CodeStats, EmaCodebook,
    EmaSettings,
};
use crate::role::Role;
use crate::spc::check_ids;
use crate::weights::check_finite;
use serde::{Deserialize, Serialize};
use std::sync::Mutex;
use tch::nn;
use tch::{Kind, Tensor};

/// How the pixel codebook learns.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CodebookUpdate {
    /// Trainable codebook with the codebook loss (LlamaGen; the default).
    Loss,
    /// EMA of assigned inputs (non-trainable codebook, zero codebook loss).
    Ema(EmaSettings),
}

/// SGHC configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SghcConfig {
    /// Semantic codebook size K_sem (= the SPC's K).
    pub k_sem: i64,
    /// Sub-codebook size m (paper: 12).
    pub m: i64,
    /// Pixel code dimension D_pix.
    pub dim: i64,
    /// Commitment weight beta (LlamaGen: 0.25).
    pub beta: f64,
    /// l2-normalize inputs and codes before the distance (LlamaGen: true).
    pub l2_norm: bool,
    /// Gradient (codebook loss) or EMA codebook.
    pub update: CodebookUpdate,
}

impl SghcConfig {
    /// The paper's SGHC: K_sem = 16384, m = 12 (196,608 unified codes), D_pix = 8 (LlamaGen's code
    /// dimension; the paper does not state it), beta 0.25, l2-normalized, codebook loss.
    pub fn paper() -> Self {
        Self {
            k_sem: 16384,
            m: 12,
            dim: 8,
            beta: 0.25,
            l2_norm: true,
            update: CodebookUpdate::Loss,
        }
    }

    /// Unified vocabulary size `K_sem * m`.
    pub fn vocab_size(&self) -> i64 {
        self.k_sem * self.m
    }

    /// Checks sizes.
    pub fn validate(&self) -> Result<()> {
        if self.k_sem <= 0 || self.m <= 0 || self.dim <= 0 {
            return Err(Error::Config(format!(
                "SGHC k_sem {}, m {}, dim {} must be positive",
                self.k_sem, self.m, self.dim
            )));
        }
        if self
            .k_sem
            .checked_mul(self.m)
            .is_none_or(|v| v > i64::from(u32::MAX))
        {
            return Err(Error::Config(format!(
                "SGHC vocabulary k_sem * m = {} * {} does not fit u32 ids",
                self.k_sem, self.m
            )));
        }
        if !(self.beta >= 0.0 && self.beta.is_finite()) {
            return Err(Error::Config(format!(
                "SGHC beta {} must be finite and >= 0",
                self.beta
            )));
        }
        Ok(())
    }

    /// Builds the quantizer under `p` (`embedding [K_sem, m, D]`, plus `cluster_size`, `embed_avg` for EMA).
    pub fn init(&self, p: &nn::Path<'_>) -> Result<Sghc> {
        self.validate()?;
        let shape = [self.k_sem, self.m, self.dim];
        let bound = 1.0 / self.vocab_size() as f64;
        let codebook = match self.update {
            // A trained codebook: plain f32, never decayed.
            CodebookUpdate::Loss => {
                Role::Plain
                    .on(p)
                    .f_uniform("embedding", &shape, -bound, bound)?
            }
            CodebookUpdate::Ema(_) => p.f_zeros_no_train("embedding", &shape)?,
        };
        tch::no_grad(|| -> Result<()> {
            let init = Tensor::f_rand(shape, (Kind::Float, codebook.device()))?
                .f_mul_scalar(2.0 * bound)?;
            let init = init.f_sub_scalar(bound)?;
            let init = if self.l2_norm {
                l2_normalize(&init)?
            } else {
                init
            };
            codebook.shallow_clone().f_copy_(&init)?;
            Ok(())
        })?;
        let ema = match self.update {
            CodebookUpdate::Loss => None,
            CodebookUpdate::Ema(s) => {
                Some(Mutex::new(EmaCodebook::new(p, &codebook, s, self.l2_norm)?))
            }
        };
        Ok(Sghc {
            codebook,
            ema,
            cfg: self.clone(),
        })
    }
}

/// SGHC forward result.
#[derive(Debug)]
pub struct SghcOutput {
    /// Sub-codebook ids j `[B, N]` int64 in `0..m`.
    pub sub_ids: Tensor,
    /// Unified ids `k * m + j` `[B, N]` int64.
    pub unified: Tensor,
    /// Quantized pixel codes `[B, N, D_pix]` fp32 (straight-through).
    pub quantized: Tensor,
    /// The quantizer input `[B, N, D_pix]` fp32 (l2-normalized when configured).
    pub z: Tensor,
    /// `mse(zq, sg[z])` (zero with EMA), scalar.
    pub loss_codebook: Tensor,
    /// `beta * mse(sg[zq], z)`, scalar.
    pub loss_commit: Tensor,
    /// Statistics over the `K_sem * m` unified codes (training with EMA only).
    pub stats: Option<CodeStats>,
}

/// The sub-codebook search of every token: z `[M, D]` (fp32), codes `[K_sem, m, D]` (fp32,
/// normalized when configured), sem `[M]` int64 in `0..K_sem` -> (j `[M]` int64 in `0..m`,
/// zq `[M, D]` = the chosen codes, differentiable with respect to `codes`). On CUDA (unless
/// `SEMHITOK_FUSED_SEARCH=0`) one kernel (`crate::cuda::sghc`) and a lookup by unified id;
/// elsewhere, or if the kernel cannot run (a warning once), [`search_gather`].
pub fn search(z: &Tensor, codes: &Tensor, sem: &Tensor) -> Result<(Tensor, Tensor)> {
    if z.device().is_cuda() && crate::cuda::nearest::enabled() {
        match search_fused(z, codes, sem) {
            Ok(r) => return Ok(r),
            Err(e) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!("warning: fused SGHC search unavailable ({e}); using the gather path")
                });
            }
        }
    }
    search_gather(z, codes, sem)
}

/// [`search`] by the fused CUDA kernel; `Err` where it cannot run.
pub fn search_fused(z: &Tensor, codes: &Tensor, sem: &Tensor) -> Result<(Tensor, Tensor)> {
    let (ks, m, d) = codes.size3()?;
    let flat = codes.f_reshape([ks * m, d])?;
    let j = crate::cuda::sghc::sghc_nearest_fused(&z.f_detach()?, &flat.f_detach()?, sem, m)
        .map_err(|e| Error::Cuda(e.0))?;
    let zq = flat.f_index_select(0, &crate::unified::compose(sem, Some(&j), m)?)?;
    Ok((j, zq))
}

/// [`search`] by gathering every token's `m` candidates (`[M, m, D]`), any device.
pub fn search_gather(z: &Tensor, codes: &Tensor, sem: &Tensor) -> Result<(Tensor, Tensor)> {
    let (mm, d) = z.size2()?;
    let cand = codes.f_index_select(0, sem)?; // [M, m, D]
    let dist = z
        .f_unsqueeze(1)?
        .f_sub(&cand)?
        .f_pow_tensor_scalar(2)?
        .f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?; // [M, m]
    let j = dist.f_argmin(-1, false)?; // [M]
    let zq = cand
        .f_gather(
            1,
            &j.f_view([mm, 1, 1])?.f_expand([mm, 1, d], false)?,
            false,
        )?
        .f_squeeze_dim(1)?; // [M, D]
    Ok((j, zq))
}

/// The hierarchical pixel quantizer.
#[derive(Debug)]
pub struct Sghc {
    codebook: Tensor,
    ema: Option<Mutex<EmaCodebook>>,
    cfg: SghcConfig,
}

impl Sghc {
    /// The configuration it was built from.
    pub fn config(&self) -> &SghcConfig {
        &self.cfg
    }

    /// The raw pixel codebook variable `[K_sem, m, D_pix]` (normalized on use when `l2_norm`).
    pub fn codebook(&self) -> &Tensor {
        &self.codebook
    }

    fn codes(&self) -> Result<Tensor> {
        let c = self.codebook.f_to_kind(Kind::Float)?;
        if self.cfg.l2_norm {
            l2_normalize(&c)
        } else {
            Ok(c)
        }
    }

    /// Quantizes pixel features `z [B, N, D_pix]` inside the sub-codebooks of `sem_ids [B, N]`.
    /// `train` returns EMA statistics when the EMA option is on. NaN/Inf in `z` is an error.
    pub fn forward_t(&self, z: &Tensor, sem_ids: &Tensor, train: bool) -> Result<SghcOutput> {
        let c = &self.cfg;
        let (b, n) = match z.size().as_slice() {
            &[b, n, d] if d == c.dim && z.is_floating_point() => (b, n),
            _ => {
                return Err(Error::shape(
                    "SGHC input features (float)",
                    format!("[B, N, {}]", c.dim),
                    z,
                ))
            }
        };
        if sem_ids.size() != [b, n] {
            return Err(Error::shape(
                "SGHC semantic ids",
                format!("[{b}, {n}] (one per token)"),
                sem_ids,
            ));
        }
        check_finite("SGHC quantizer input", z)?;
        check_ids("SGHC semantic ids", sem_ids, c.k_sem)?;
        let mm = b * n;
        without_autocast(|| -> Result<SghcOutput> {
            let mut zf = z.f_to_kind(Kind::Float)?.f_reshape([mm, c.dim])?;
            if c.l2_norm {
                zf = l2_normalize(&zf)?;
            }
            let sem = sem_ids.f_reshape([mm])?;
            let codes = self.codes()?;
            let (j, zq) = if c.k_sem == 1 {
                // One sub-codebook is one flat codebook (a plain VQ, e.g. the pixel-only
                // baseline): the nearest-code search over `[m, D]` (fused on CUDA), without the
                // `[M, m, D]` gather, whose backward would scatter M * m rows into the codebook.
                let codes = codes.f_reshape([c.m, c.dim])?;
                let j = nearest_l2(&zf.f_detach()?, &codes)?; // [M]
                let zq = codes.f_index_select(0, &j)?; // [M, D]
                (j, zq)
            } else {
                search(&zf, &codes, &sem)?
            };
            let unified = crate::unified::compose(&sem, Some(&j), c.m)?;
            let loss_codebook = match c.update {
                CodebookUpdate::Loss => zq.f_mse_loss(&zf.f_detach()?, tch::Reduction::Mean)?,
                CodebookUpdate::Ema(_) => Tensor::f_zeros([], (Kind::Float, zf.device()))?,
            };
            let loss_commit = zq
                .f_detach()?
                .f_mse_loss(&zf, tch::Reduction::Mean)?
                .f_mul_scalar(c.beta)?;
            let stats = match (&self.ema, train) {
                (Some(_), true) => {
                    Some(CodeStats::from_assignments(c.vocab_size(), &zf, &unified)?)
                }
                _ => None,
            };
            let q = straight_through(&zf, &zq)?;
            Ok(SghcOutput {
                sub_ids: j.f_reshape([b, n])?,
                unified: unified.f_reshape([b, n])?,
                quantized: q.f_reshape([b, n, c.dim])?,
                z: zf.f_reshape([b, n, c.dim])?,
                loss_codebook,
                loss_commit,
                stats,
            })
        })
    }

    /// One EMA step from (all-reduced) statistics over the unified codes; an error without the EMA option.
    pub fn ema_update(&self, stats: &CodeStats) -> Result<()> {
        let ema = self.ema.as_ref().ok_or_else(|| {
            Error::Config(
                "SGHC ema_update: the pixel codebook is not EMA-updated (update = loss)".into(),
            )
        })?;
        let mut ema = ema.lock().map_err(|_| {
            Error::Config("a thread panicked while holding the codebook lock".into())
        })?;
        ema.update(stats, &self.codebook)
    }

    /// Pixel codes of unified ids (any shape, int64 in `0..K_sem*m`) -> `[.., D_pix]` (normalized
    /// when `l2_norm`). Out-of-range ids are an error.
    pub fn lookup_unified(&self, unified: &Tensor) -> Result<Tensor> {
        check_ids("unified ids", unified, self.cfg.vocab_size())?;
        let mut shape = unified.size();
        shape.push(self.cfg.dim);
        Ok(self
            .codes()?
            .f_reshape([-1, self.cfg.dim])?
            .f_index_select(0, &unified.f_reshape([-1])?)?
            .f_reshape(shape.as_slice())?)
    }
}
