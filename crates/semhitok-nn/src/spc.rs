//! SPC, the Semantic-Priority Codebook (SemHiTok paper Sec. 3.1, stage 1), following VQKD
//! (microsoft/unilm `beit2/modeling_vqkd.py` + `norm_ema_quantizer.py`):
//!
//! ```text
//! teacher feats [B, N, C_t] -> encode_task_layer (Linear C_t->H, Tanh, Linear H->D)      [B, N, D]
//!   -> l2-normalize -> nearest code of the l2-normalized codebook [K, D] (EMA, k-means init)
//!   -> straight-through -> decoder (Linear D->C_d, pos_embed, 3 pre-norm blocks, norm)
//!   -> decode_task_layer (Linear C_d->C_d, Tanh, Linear C_d->C_t)                        [B, N, C_t]
//! loss = (1 - cos(recon, teacher)).mean() + beta * mse(sg[zq], z)
//! ```
//!
//! Weight names follow VQKD where the layer is the same (`encode_task_layer.{0,2}`,
//! `quantize.embedding`, `quantize.cluster_size`, `quantize.embed_avg`, `quantize.initted`,
//! `decoder.{pos_embed,blocks,norm}`, `decode_task_layer.{0,2}`); the decoder input is a linear
//! `decoder.embed` instead of VQKD's 1x1 conv, and the decoder has no class token.
//!
//! Divergences from VQKD, all deliberate: the EMA step is not taken inside `forward` but by
//! [`Spc::ema_update`] from [`CodeStats`] the caller may all-reduce first; after k-means init the
//! EMA average restarts from the k-means codes with zero cluster sizes (as
//! `semhitok_quant::EmaState::new`), and k-means runs on the CPU via `semhitok_quant::spherical_kmeans`
//! over the first `kmeans_vectors` encoder outputs (possibly several batches). In data-parallel
//! training ([`Spc::set_process_group`]) those are the all-gathered outputs of every rank, rank 0
//! alone runs the k-means and broadcasts the codes, so every rank starts from one codebook.

use crate::error::{Error, Result};
use crate::layers::{Linear, LinearInit};
use crate::quantizer::{
    l2_normalize, nearest_l2, straight_through, without_autocast, CodeStats, EmaCodebook,
    EmaSettings,
};
use crate::vit::{Trunk, VitConfig};
use crate::weights::check_finite;
use semhitok_sys::ProcessGroup;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex, OnceLock};
use tch::nn;
use tch::{Device, Kind, Tensor};

/// SPC configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SpcConfig {
    /// Teacher feature dimension C_t (SigLIP-L: 1024).
    pub teacher_dim: i64,
    /// Tokens per image N (16 x 16 = 256 at 256 px with patch 16).
    pub num_tokens: i64,
    /// Hidden width of the Linear-Tanh-Linear head (VQKD: the encoder width).
    pub head_hidden: i64,
    /// Code dimension D_sem (32).
    pub code_dim: i64,
    /// Codebook size K (16384).
    pub codebook_size: i64,
    /// Semantic decoder trunk (3 blocks in the paper; VQKD: 768 wide, 12 heads).
    pub decoder: VitConfig,
    /// EMA of the codebook.
    pub ema: EmaSettings,
    /// Commitment weight beta (VQKD: 1.0).
    pub commit_beta: f64,
    /// Initialise the codebook by spherical k-means(++) over the first encoder outputs seen in training.
    pub kmeans_init: bool,
    /// How many code-space vectors to collect before k-means (>= K; several batches if needed).
    pub kmeans_vectors: i64,
    /// Lloyd iterations of the k-means init (VQKD: 10).
    pub kmeans_iters: usize,
    /// Seed of the k-means init.
    pub kmeans_seed: u64,
}

impl SpcConfig {
    /// The paper's SPC at 256 px: SigLIP-L/16 teacher (1024-d, 16 x 16 tokens), D = 32, K = 16384,
    /// 3-block 768-wide decoder.
    pub fn paper_256() -> Self {
        Self {
            teacher_dim: 1024,
            num_tokens: 256,
            head_hidden: 1024,
            code_dim: 32,
            codebook_size: 16384,
            decoder: VitConfig::custom(768, 3, 12),
            ema: EmaSettings::vqkd(),
            commit_beta: 1.0,
            kmeans_init: true,
            kmeans_vectors: 16384,
            kmeans_iters: 10,
            kmeans_seed: 0,
        }
    }

    /// A small SPC for tests and CPU runs.
    pub fn tiny(teacher_dim: i64, num_tokens: i64, codebook_size: i64, code_dim: i64) -> Self {
        Self {
            teacher_dim,
            num_tokens,
            head_hidden: teacher_dim,
            code_dim,
            codebook_size,
            decoder: VitConfig::custom(32, 1, 2),
            kmeans_vectors: codebook_size,
            ..Self::paper_256()
        }
    }

    /// Whether `teacher` fits this SPC at `image_size` px: `num_tokens` tokens of width
    /// `teacher_dim`. The one definition of the check (the model's `teacher_features` and the
    /// trainer's stage set-up both call it); `Err` names both sides, e.g. "teacher X gives 4x4
    /// tokens of dim 9 at 32 px; the SPC expects 16 tokens of dim 40".
    pub fn check_teacher(
        &self,
        teacher: &dyn crate::teacher::Teacher,
        image_size: i64,
    ) -> Result<()> {
        let s = image_size;
        let (gh, gw) = teacher.grid(s, s);
        if teacher.dim() != self.teacher_dim || gh * gw != self.num_tokens {
            return Err(Error::Config(format!(
                "teacher {} gives {gh}x{gw} tokens of dim {} at {s} px; the SPC expects {} tokens of dim {}",
                teacher.name(),
                teacher.dim(),
                self.num_tokens,
                self.teacher_dim
            )));
        }
        Ok(())
    }

    /// Checks sizes.
    pub fn validate(&self) -> Result<()> {
        self.decoder.validate("SPC decoder")?;
        for (name, v) in [
            ("teacher_dim", self.teacher_dim),
            ("num_tokens", self.num_tokens),
            ("head_hidden", self.head_hidden),
            ("code_dim", self.code_dim),
            ("codebook_size", self.codebook_size),
        ] {
            if v <= 0 {
                return Err(Error::Config(format!("SPC {name} = {v} must be positive")));
            }
        }
        if self.kmeans_init && self.kmeans_vectors < self.codebook_size {
            return Err(Error::Config(format!(
                "SPC kmeans_vectors {} must be >= codebook_size {}",
                self.kmeans_vectors, self.codebook_size
            )));
        }
        Ok(())
    }

    /// Builds the SPC under `p`.
    pub fn init(&self, p: &nn::Path<'_>) -> Result<Spc> {
        self.validate()?;
        let lin = |p: nn::Path<'_>, i: i64, o: i64| Linear::new(p, i, o, true, LinearInit::Vit);
        let enc = p / "encode_task_layer";
        let head0 = lin(&enc / 0, self.teacher_dim, self.head_hidden);
        let head2 = lin(&enc / 2, self.head_hidden, self.code_dim);
        let q = p / "quantize";
        let mut codebook = q.f_zeros_no_train("embedding", &[self.codebook_size, self.code_dim])?;
        tch::no_grad(|| -> Result<()> {
            let init = Tensor::f_randn(
                [self.codebook_size, self.code_dim],
                (Kind::Float, codebook.device()),
            )?;
            codebook.f_copy_(&l2_normalize(&init)?)?;
            Ok(())
        })?;
        let ema = EmaCodebook::new(&q, &codebook, self.ema, true)?;
        let mut initted = q.f_zeros_no_train("initted", &[1])?;
        if !self.kmeans_init {
            tch::no_grad(|| initted.f_fill_(1.0)).map(|_| ())?;
        }
        let dec = p / "decoder";
        let c = self.decoder.hidden_size;
        let dtl = p / "decode_task_layer";
        Ok(Spc {
            head0,
            head2,
            codebook,
            ema: Mutex::new(ema),
            initted,
            dec_embed: lin(&dec / "embed", self.code_dim, c),
            dec_trunk: Trunk::new(&dec, &self.decoder, self.num_tokens),
            dec0: lin(&dtl / 0, c, c),
            dec2: lin(&dtl / 2, c, self.teacher_dim),
            kmeans_buf: Mutex::new(Vec::new()),
            dist: OnceLock::new(),
            cfg: self.clone(),
        })
    }
}

/// Semantic codes of a batch (no decoder).
#[derive(Debug)]
pub struct SpcCodes {
    /// Semantic ids `[B, N]` int64 in `0..K`.
    pub ids: Tensor,
    /// Quantized codes `[B, N, D]` fp32 (straight-through: value of the code, gradient of `z`).
    pub quantized: Tensor,
    /// l2-normalized encoder output `[B, N, D]` fp32 (the quantizer input).
    pub z: Tensor,
}

/// SPC forward result.
#[derive(Debug)]
pub struct SpcOutput {
    /// Semantic ids `[B, N]` int64.
    pub ids: Tensor,
    /// Quantized codes `[B, N, D]` (straight-through).
    pub quantized: Tensor,
    /// l2-normalized encoder output `[B, N, D]`.
    pub z: Tensor,
    /// Reconstructed teacher features `[B, N, C_t]`.
    pub recon: Tensor,
    /// `(1 - cos(recon, teacher)).mean()`, scalar.
    pub loss_cos: Tensor,
    /// `beta * mse(sg[zq], z)`, scalar.
    pub loss_commit: Tensor,
    /// `loss_cos + loss_commit`.
    pub loss: Tensor,
    /// Codebook statistics of this batch (training only): all-reduce, then [`Spc::ema_update`].
    pub stats: Option<CodeStats>,
}

/// The Semantic-Priority Codebook model (head, EMA codebook, semantic decoder).
#[derive(Debug)]
pub struct Spc {
    head0: Linear,
    head2: Linear,
    codebook: Tensor,
    ema: Mutex<EmaCodebook>,
    initted: Tensor,
    dec_embed: Linear,
    dec_trunk: Trunk,
    dec0: Linear,
    dec2: Linear,
    kmeans_buf: Mutex<Vec<Tensor>>,
    /// Data-parallel group of the k-means init (unset: a single process).
    dist: OnceLock<Arc<ProcessGroup>>,
    cfg: SpcConfig,
}

impl Spc {
    /// Make the k-means initialisation data-parallel: it collects the all-gathered encoder
    /// outputs of every rank (rank order), rank 0 computes the codes, every rank receives them.
    /// Set once, before the first training forward; a second call is ignored.
    pub fn set_process_group(&self, pg: Arc<ProcessGroup>) {
        let _ = self.dist.set(pg);
    }

    /// The configuration it was built from.
    pub fn config(&self) -> &SpcConfig {
        &self.cfg
    }

    /// The l2-normalized codebook `[K, D]` (a non-trainable variable; EMA writes it in place).
    pub fn codebook(&self) -> &Tensor {
        &self.codebook
    }

    /// Whether the codebook has been initialised (by k-means, a checkpoint, or `kmeans_init = false`).
    pub fn initialized(&self) -> bool {
        self.initted.double_value(&[0]) > 0.0
    }

    fn check_feats(&self, feats: &Tensor) -> Result<()> {
        let c = &self.cfg;
        match feats.size().as_slice() {
            &[_, n, d] if n == c.num_tokens && d == c.teacher_dim && feats.is_floating_point() => {
                Ok(())
            }
            _ => Err(Error::shape(
                "SPC teacher features (float)",
                format!("[B, {}, {}]", c.num_tokens, c.teacher_dim),
                feats,
            )),
        }
    }

    /// Head: teacher features `[B, N, C_t]` -> l2-normalized code-space vectors `[B, N, D]` fp32.
    pub fn encode_z(&self, feats: &Tensor) -> Result<Tensor> {
        self.check_feats(feats)?;
        let h = self.head0.forward(feats)?.f_tanh()?;
        let z = self.head2.forward(&h)?.f_to_kind(Kind::Float)?;
        without_autocast(|| l2_normalize(&z))
    }

    /// Quantizes normalized vectors `z [B, N, D]`: ids `[B, N]` and straight-through codes.
    /// NaN/Inf in `z` is an error.
    pub fn quantize_z(&self, z: &Tensor) -> Result<SpcCodes> {
        let (b, n, d) = z.size3()?;
        check_finite("SPC quantizer input", z)?;
        let flat = z.f_reshape([b * n, d])?;
        let ids = nearest_l2(&flat, &self.codebook)?;
        let zq = self
            .codebook
            .f_index_select(0, &ids)?
            .f_reshape([b, n, d])?;
        Ok(SpcCodes {
            ids: ids.f_reshape([b, n])?,
            quantized: straight_through(z, &zq)?,
            z: z.shallow_clone(),
        })
    }

    /// Teacher features `[B, N, C_t]` -> semantic codes (ids `[B, N]`, codes `[B, N, D]`), no decoder.
    pub fn quantize(&self, feats: &Tensor) -> Result<SpcCodes> {
        let z = self.encode_z(feats)?;
        self.quantize_z(&z)
    }

    /// Semantic decoder: codes `[B, N, D]` -> teacher-space features `[B, N, C_t]`.
    pub fn decode(&self, codes: &Tensor) -> Result<Tensor> {
        let x = self.dec_embed.forward(codes)?;
        let x = self.dec_trunk.forward(&x)?;
        let x = self.dec0.forward(&x)?.f_tanh()?;
        self.dec2.forward(&x)
    }

    /// Stage-1 forward. `train` collects k-means vectors (and initialises the codebook once
    /// enough are seen) and returns the EMA statistics; it never updates the codebook itself.
    ///
    /// feats: `[B, N, C_t]` -> [`SpcOutput`] (ids `[B, N]`, quantized `[B, N, D]`, recon `[B, N, C_t]`, losses).
    pub fn forward_t(&self, feats: &Tensor, train: bool) -> Result<SpcOutput> {
        let z = self.encode_z(feats)?;
        if train && self.cfg.kmeans_init && !self.initialized() {
            // Checked before collecting so a bad batch never poisons the k-means buffer.
            check_finite("SPC quantizer input", &z)?;
            self.collect_kmeans(&z)?;
        }
        let codes = self.quantize_z(&z)?;
        let recon = self.decode(&codes.quantized)?;
        let (loss_cos, loss_commit) = without_autocast(|| -> Result<(Tensor, Tensor)> {
            let r = l2_normalize(&recon.f_to_kind(Kind::Float)?)?;
            let t = l2_normalize(&feats.f_to_kind(Kind::Float)?)?;
            let cos = r
                .f_mul(&t)?
                .f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?;
            let loss_cos = cos.f_neg()?.f_add_scalar(1.0)?.f_mean(Kind::Float)?;
            let zq = codes.quantized.f_detach()?;
            let commit = zq
                .f_mse_loss(&z, tch::Reduction::Mean)?
                .f_mul_scalar(self.cfg.commit_beta)?;
            Ok((loss_cos, commit))
        })?;
        let stats = if train {
            let (b, n, d) = z.size3()?;
            Some(CodeStats::from_assignments(
                self.cfg.codebook_size,
                &z.f_reshape([b * n, d])?,
                &codes.ids.f_reshape([b * n])?,
            )?)
        } else {
            None
        };
        Ok(SpcOutput {
            loss: loss_cos.f_add(&loss_commit)?,
            ids: codes.ids,
            quantized: codes.quantized,
            z,
            recon,
            loss_cos,
            loss_commit,
            stats,
        })
    }

    /// One EMA step of the codebook from (all-reduced) statistics. Does nothing before the
    /// codebook is initialised (the statistics of random codes are not worth keeping).
    pub fn ema_update(&self, stats: &CodeStats) -> Result<()> {
        if !self.initialized() {
            return Ok(());
        }
        let mut ema = self.ema.lock().map_err(|_| poisoned())?;
        ema.update(stats, &self.codebook)
    }

    /// EMA buffers `(cluster_size [K], embed_avg [K, D])`.
    pub fn ema_buffers(&self) -> Result<(Tensor, Tensor)> {
        let ema = self.ema.lock().map_err(|_| poisoned())?;
        Ok((
            ema.cluster_size.shallow_clone(),
            ema.embed_avg.shallow_clone(),
        ))
    }

    /// The vectors collected so far for the k-means initialisation, `[M, D]` fp32 on the CPU
    /// (`None` when none are pending: before the first training batch or once initialised).
    /// A checkpoint taken while the initialisation spans several batches must hold them for an
    /// exact resume.
    pub fn kmeans_pending(&self) -> Result<Option<Tensor>> {
        let buf = self.kmeans_buf.lock().map_err(|_| poisoned())?;
        if buf.is_empty() {
            return Ok(None);
        }
        Ok(Some(Tensor::f_cat(&buf, 0)?))
    }

    /// Replace the pending k-means vectors by `vectors [M, D]` (from [`Spc::kmeans_pending`]).
    pub fn set_kmeans_pending(&self, vectors: &Tensor) -> Result<()> {
        let d = self.cfg.code_dim;
        match vectors.size().as_slice() {
            &[_, dd] if dd == d && vectors.is_floating_point() => {}
            _ => {
                return Err(Error::shape(
                    "pending k-means vectors",
                    format!("[M, {d}] float"),
                    vectors,
                ))
            }
        }
        let mut buf = self.kmeans_buf.lock().map_err(|_| poisoned())?;
        buf.clear();
        buf.push(
            vectors
                .f_detach()?
                .f_to_device(Device::Cpu)?
                .f_to_kind(Kind::Float)?,
        );
        Ok(())
    }

    fn collect_kmeans(&self, z: &Tensor) -> Result<()> {
        let d = self.cfg.code_dim;
        let local = z
            .f_detach()?
            .f_reshape([-1, d])?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?;
        let pg = self.dist.get();
        let seen = match pg {
            Some(pg) => pg.all_gather("SPC k-means vectors", &local)?,
            None => local,
        };
        let mut buf = self.kmeans_buf.lock().map_err(|_| poisoned())?;
        buf.push(seen.f_to_device(Device::Cpu)?);
        let total: i64 = buf.iter().map(|t| t.size()[0]).sum();
        if total < self.cfg.kmeans_vectors {
            return Ok(());
        }
        let data = Tensor::f_cat(&buf, 0)?;
        buf.clear();
        drop(buf);
        match pg {
            None => self.init_codebook_kmeans(&data),
            Some(pg) => {
                let mut codes = if pg.is_main() {
                    self.kmeans_codes(&data)?
                } else {
                    Tensor::f_zeros(
                        [self.cfg.codebook_size, d],
                        (Kind::Float, self.codebook.device()),
                    )?
                };
                pg.broadcast("SPC k-means codebook", &mut codes, 0)?;
                self.set_initial_codebook(&codes)
            }
        }
    }

    /// Initialises the codebook by spherical k-means (k-means++ seeding) of `vectors [M, D]`
    /// (M >= K) on the CPU, resets the EMA buffers and marks the codebook initialised.
    pub fn init_codebook_kmeans(&self, vectors: &Tensor) -> Result<()> {
        let codes = self.kmeans_codes(vectors)?;
        self.set_initial_codebook(&codes)
    }

    /// Spherical k-means(++) centres `[K, D]` of `vectors [M, D]` (M >= K), on the codebook's device.
    fn kmeans_codes(&self, vectors: &Tensor) -> Result<Tensor> {
        let k = self.cfg.codebook_size;
        let d = self.cfg.code_dim;
        match vectors.size().as_slice() {
            &[m, dd] if dd == d && m >= k => {}
            _ => {
                return Err(Error::shape(
                    "k-means vectors",
                    format!("[M >= {k}, {d}]"),
                    vectors,
                ))
            }
        }
        check_finite("k-means vectors", vectors)?;
        let m = vectors.size()[0] as usize;
        let host = vectors
            .f_detach()?
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Float)?
            .f_contiguous()?
            .f_view([-1])?;
        let v = Vec::<f32>::try_from(&host)?;
        let view = ndarray::ArrayView2::from_shape((m, d as usize), &v)
            .map_err(|e| Error::Config(format!("k-means vectors: {e}")))?;
        let cfg = semhitok_quant::KMeansConfig {
            k: k as usize,
            iters: self.cfg.kmeans_iters,
            seed: self.cfg.kmeans_seed,
        };
        let centres = semhitok_quant::spherical_kmeans(view, &cfg)?;
        let flat: Vec<f32> = centres.iter().copied().collect();
        Ok(Tensor::from_slice(&flat)
            .f_reshape([k, d])?
            .f_to_device(self.codebook.device())?)
    }

    /// Install `codes [K, D]` as the initial codebook: EMA buffers re-seeded, marked initialised.
    fn set_initial_codebook(&self, t: &Tensor) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            self.codebook.shallow_clone().f_copy_(t)?;
            let _ = self.initted.shallow_clone().f_fill_(1.0)?;
            Ok(())
        })?;
        let mut ema = self.ema.lock().map_err(|_| poisoned())?;
        ema.reset(&self.codebook)
    }

    /// Codebook lookup: ids (any shape, int64 in `0..K`) -> codes `[.., D]`. Out-of-range ids are an error.
    pub fn lookup(&self, ids: &Tensor) -> Result<Tensor> {
        check_ids("semantic ids", ids, self.cfg.codebook_size)?;
        let mut shape = ids.size();
        shape.push(self.cfg.code_dim);
        Ok(self
            .codebook
            .f_index_select(0, &ids.f_reshape([-1])?)?
            .f_reshape(shape.as_slice())?)
    }
}

fn poisoned() -> Error {
    Error::Config("a thread panicked while holding the codebook lock".into())
}

/// Errors unless every entry of the integer tensor `ids` is in `0..bound` (names the first bad one).
pub fn check_ids(what: &str, ids: &Tensor, bound: i64) -> Result<()> {
    if ids.is_floating_point() {
        return Err(Error::Shape {
            what: format!("{what} (must be integer)"),
            expected: "an int64 tensor".into(),
            got: ids.size(),
        });
    }
    if ids.numel() == 0 {
        return Ok(());
    }
    let bad = ids.f_lt(0)?.f_logical_or(&ids.f_ge(bound)?)?;
    if bad.f_any()?.int64_value(&[]) != 0 {
        let first = ids.f_masked_select(&bad)?.int64_value(&[0]);
        return Err(Error::OutOfRange {
            what: what.to_string(),
            value: first,
            bound,
        });
    }
    Ok(())
}
