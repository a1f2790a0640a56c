//! Shared vector-quantizer pieces for SPC and SGHC: l2 normalization, straight-through estimator,
//! codebook statistics as plain sums (all-reducible across GPUs) and the EMA codebook update.
//!
//! The EMA follows VQKD's `NormEMAVectorQuantizer` (microsoft/unilm `beit2/norm_ema_quantizer.py`)
//! in the EMA-of-sums form that `semhitok_quant::EmaState` implements on the CPU, so both agree:
//!
//! ```text
//! cluster_size = decay * cluster_size + (1 - decay) * counts
//! embed_avg    = decay * embed_avg    + (1 - decay) * sums
//! n = sum(cluster_size); smoothed_k = (cluster_size_k + eps) / (n + K * eps) * n   (Laplace)
//! code_k = embed_avg_k / smoothed_k (l2-normalized for cosine codebooks), only where cluster_size_k > 0
//! ```
//!
//! All distance and statistics math runs in fp32 with CUDA autocast disabled locally, so bf16
//! autocast in the trainer never reaches the argmin.

use crate::error::{Error, Result};
use tch::{nn, Kind, Tensor};

/// `x / max(|x|_2, 1e-12)` along the last dimension (F.normalize).
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x
        .f_norm_scalaropt_dim(2.0, [-1i64].as_slice(), true)?
        .f_clamp_min(1e-12)?;
    Ok(x.f_div(&n)?)
}

/// Straight-through estimator: value of `zq`, gradient of `z`.
pub fn straight_through(z: &Tensor, zq: &Tensor) -> Result<Tensor> {
    Ok(z.f_add(&zq.f_sub(z)?.f_detach()?)?)
}

/// Runs `f` with CUDA autocast disabled (a no-op on CPU-only builds).
pub fn without_autocast<T>(f: impl FnOnce() -> T) -> T {
    crate::amp::autocast(false, f)
}

/// Per-code counts `[K]` and input sums `[K, D]` (fp32) of one batch: plain sums, so workers'
/// statistics can be all-reduced (summed) before one [`EmaCodebook::update`].
#[derive(Debug)]
pub struct CodeStats {
    /// Assignments per code, `[K]` fp32.
    pub counts: Tensor,
    /// Sum of the assigned inputs per code, `[K, D]` fp32.
    pub sums: Tensor,
}

impl CodeStats {
    /// Scatter statistics of inputs `[M, D]` assigned to ids `[M]` (int64) over `k` codes
    /// (index_add, never a dense `[M, K]` one-hot).
    pub fn from_assignments(k: i64, inputs: &Tensor, ids: &Tensor) -> Result<Self> {
        let inputs = inputs.f_detach()?.f_to_kind(Kind::Float)?;
        let (_, d) = inputs.size2()?;
        let dev = inputs.device();
        let counts = Tensor::f_zeros([k], (Kind::Float, dev))?.f_index_add(
            0,
            ids,
            &Tensor::f_ones([ids.size()[0]], (Kind::Float, dev))?,
        )?;
        let sums = Tensor::f_zeros([k, d], (Kind::Float, dev))?.f_index_add(0, ids, &inputs)?;
        Ok(Self { counts, sums })
    }

    /// Adds another batch's statistics (same K, D).
    pub fn merge(&mut self, other: &CodeStats) -> Result<()> {
        if self.sums.size() != other.sums.size() {
            return Err(Error::shape(
                "CodeStats merge",
                format!("{:?}", self.sums.size()),
                &other.sums,
            ));
        }
        self.counts = self.counts.f_add(&other.counts)?;
        self.sums = self.sums.f_add(&other.sums)?;
        Ok(())
    }

    /// Number of codes with at least one assignment in these statistics.
    pub fn used_codes(&self) -> Result<i64> {
        Ok(self.counts.f_gt(0.0)?.f_sum(Kind::Int64)?.int64_value(&[]))
    }
}

/// EMA hyperparameters.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmaSettings {
    /// Weight of the old state, in [0, 1) (paper/VQKD: 0.99).
    pub decay: f64,
    /// Laplace smoothing epsilon (VQKD: 1e-5).
    pub eps: f64,
}

impl EmaSettings {
    /// VQKD / SemHiTok: decay 0.99, eps 1e-5.
    pub fn vqkd() -> Self {
        Self {
            decay: 0.99,
            eps: 1e-5,
        }
    }

    fn validate(&self, what: &str) -> Result<()> {
        if !(0.0..1.0).contains(&self.decay) || self.eps <= 0.0 || !self.eps.is_finite() {
            return Err(Error::Config(format!(
                "{what}: EMA decay {} must be in [0, 1) and eps {} finite and > 0",
                self.decay, self.eps
            )));
        }
        Ok(())
    }
}

/// EMA buffers of a codebook with `K` codes of dimension `D`: `cluster_size [K]` and
/// `embed_avg [K, D]`, non-trainable variables (saved with the model). The codebook tensor
/// itself is owned by the quantizer and may have any shape `[.., D]` with K rows in total.
#[derive(Debug)]
pub struct EmaCodebook {
    /// `cluster_size [K]`.
    pub cluster_size: Tensor,
    /// `embed_avg [K, D]`.
    pub embed_avg: Tensor,
    settings: EmaSettings,
    normalize: bool,
}

impl EmaCodebook {
    /// Buffers `cluster_size` and `embed_avg` under `p`; `embed_avg` starts as a copy of `codebook`
    /// (viewed `[K, D]`) and `cluster_size` at zero, as `semhitok_quant::EmaState::new`.
    pub fn new(
        p: &nn::Path<'_>,
        codebook: &Tensor,
        settings: EmaSettings,
        normalize: bool,
    ) -> Result<Self> {
        settings.validate("codebook")?;
        let d = *codebook.size().last().unwrap_or(&0);
        let flat = codebook.f_reshape([-1, d])?;
        let k = flat.size()[0];
        let cluster_size = p.f_zeros_no_train("cluster_size", &[k])?;
        let mut embed_avg = p.f_zeros_no_train("embed_avg", &[k, d])?;
        tch::no_grad(|| embed_avg.f_copy_(&flat)).map(|_| ())?;
        Ok(Self {
            cluster_size,
            embed_avg,
            settings,
            normalize,
        })
    }

    /// Re-seeds the buffers from the codebook (after k-means init): cluster sizes 0, averages = codes.
    pub fn reset(&mut self, codebook: &Tensor) -> Result<()> {
        let d = self.embed_avg.size()[1];
        tch::no_grad(|| -> Result<()> {
            let _ = self.cluster_size.f_zero_()?;
            self.embed_avg.f_copy_(&codebook.f_reshape([-1, d])?)?;
            Ok(())
        })
    }

    /// One EMA step from (all-reduced) statistics, writing the new codes into `codebook`
    /// (any shape with K * D elements, updated in place).
    pub fn update(&mut self, stats: &CodeStats, codebook: &Tensor) -> Result<()> {
        let (k, d) = self.embed_avg.size2()?;
        if stats.sums.size() != [k, d] || stats.counts.size() != [k] {
            return Err(Error::shape(
                "EMA statistics sums",
                format!("[{k}, {d}] with counts [{k}]"),
                &stats.sums,
            ));
        }
        let a = self.settings.decay;
        let eps = self.settings.eps;
        without_autocast(|| {
            tch::no_grad(|| -> Result<()> {
                let dev = self.embed_avg.device();
                let counts = stats.counts.f_to_device(dev)?.f_to_kind(Kind::Float)?;
                let sums = stats.sums.f_to_device(dev)?.f_to_kind(Kind::Float)?;
                let _ = self.cluster_size.f_mul_scalar_(a)?;
                let _ = self.cluster_size.f_add_(&counts.f_mul_scalar(1.0 - a)?)?;
                let _ = self.embed_avg.f_mul_scalar_(a)?;
                let _ = self.embed_avg.f_add_(&sums.f_mul_scalar(1.0 - a)?)?;
                let n = self.cluster_size.f_sum(Kind::Float)?;
                let smoothed = self
                    .cluster_size
                    .f_add_scalar(eps)?
                    .f_div(&n.f_add_scalar(k as f64 * eps)?)?
                    .f_mul(&n)?;
                let mut new = self.embed_avg.f_div(&smoothed.f_unsqueeze(1)?)?;
                if self.normalize {
                    new = l2_normalize(&new)?;
                }
                let mut flat = codebook.f_view([k, d])?;
                let moved = self.cluster_size.f_gt(0.0)?.f_unsqueeze(1)?;
                let out = new.f_where_self(&moved, &flat)?;
                flat.f_copy_(&out)?;
                Ok(())
            })
        })
    }
}

/// Nearest code by squared l2 distance in fp32 (autocast off): z `[M, D]`, codes `[K, D]` -> ids `[M]` int64.
/// Ties go to the lowest index (torch argmin).
///
/// On CUDA with `D <= 44` this is one fused kernel (`crate::cuda::nearest`, chosen by
/// `SEMHITOK_SEARCH_KERNEL=v2|v3|tc|tc256|tc1`, default [`crate::cuda::nearest::Kernel::from_env`]: tc1) that
/// never writes the `M x K` score matrix; elsewhere (or when NVRTC is unavailable or
/// `SEMHITOK_FUSED_SEARCH=0`: a warning once, then the GEMM path) a GEMM with the `|c|^2` row as
/// addend, then argmin. Both compute fp32 scores with different summation orders: ids agree
/// except between codes whose scores are within the rounding bound stated in
/// `crate::cuda::nearest`.
pub fn nearest_l2(z: &Tensor, codes: &Tensor) -> Result<Tensor> {
    if z.device().is_cuda() && crate::cuda::nearest::enabled() {
        match crate::cuda::nearest::nearest_l2_fused(z, codes) {
            Ok(ids) => return Ok(ids),
            Err(e) => {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!(
                        "warning: fused nearest-code search unavailable ({e}); using the GEMM path"
                    )
                });
            }
        }
    }
    nearest_l2_gemm(z, codes)
}

/// [`nearest_l2`]'s GEMM path (any device): `addmm(|c|^2, -2 z, c^T).argmin(-1)` in fp32.
pub fn nearest_l2_gemm(z: &Tensor, codes: &Tensor) -> Result<Tensor> {
    without_autocast(|| -> Result<Tensor> {
        let z = z.f_to_kind(Kind::Float)?;
        let c = codes.f_to_kind(Kind::Float)?;
        // |z|^2 - 2 z.c + |c|^2 ; |z|^2 is constant per row and dropped.
        let cc =
            c.f_pow_tensor_scalar(2)?
                .f_sum_dim_intlist([-1i64].as_slice(), false, Kind::Float)?;
        // One GEMM with the |c|^2 row as its addend (addmm: cc + (-2 z) c^T), not a matmul
        // followed by two full-size [M, K] elementwise passes. Scaling by -2 is exact (a power of
        // two), so the values (and ties) are those of `cc - 2 * (z c^T)`.
        let d = cc
            .f_unsqueeze(0)?
            .f_addmm(&z.f_mul_scalar(-2.0)?, &c.f_tr()?)?;
        Ok(d.f_argmin(-1, false)?)
    })
}
