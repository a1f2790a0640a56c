//! A folder of high-resolution photographs served as square crops: the embedded default
//! (`.assets/photos/`, fetched by `cargo xtask assets`).
//!
//! [`PhotoCrops::open`] decodes every photo once (in parallel), downscales it so the shorter side
//! is at most `max_short_side`, and keeps it in memory. A fixed held-out split is chosen from the
//! file names alone (FNV-1a hash order), so it never depends on the seed, the file system's
//! listing order, or the other files' contents.
//!
//! * Train ([`PhotoCrops::train`]): each epoch has `crops_per_epoch` samples; sample `i` picks a
//!   training photo, a square side log-uniform in `[min(size, short) , short * max_crop_frac]`, a
//!   uniform position and (if `hflip`) a flip, all from `sample_rng(seed, epoch, i)`; the crop is
//!   resampled to `size x size`.
//! * Eval ([`PhotoCrops::eval`]): for each held-out photo, the ADM center crop of the whole photo,
//!   followed by `eval_crops_per_image - 1` fixed `size x size` crops at seed-independent
//!   positions. Same pixels every time.
//!
//! ```no_run
//! use semhitok_data::{LoaderConfig, PhotoCrops, PhotoCropsConfig};
//! let photos = PhotoCrops::open(".assets/photos", PhotoCropsConfig::demo(64))?;
//! let mut train = photos.train(LoaderConfig::train(8, 0))?;
//! let batch = train.next().unwrap(); // batch.shape == [8, 3, 64, 64], f32 in [-1, 1]
//! let saved = train.state();         // serde: store it in the checkpoint
//! train.restore(&saved)?;            // resumes exactly after `batch`
//! for b in photos.eval(LoaderConfig::eval(8))? { let _ = b.as_f32(); }
//! # Ok::<(), semhitok_data::Error>(())
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rand::Rng;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::error::{Error, Result, SkipReason};
use crate::image::{decode_rgb8, DecodeLimits, Rgb8Image};
use crate::loader::{mix_seed, IndexedSource, Item, Loader, LoaderConfig, SkipStats};
use crate::transform::{
    adm_center_crop_box, downscale_short_side, flip_horizontal, resize_crop, CropBox,
};

/// How many photos are held out for evaluation.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Heldout {
    /// Exactly this many (at least one photo always stays for training).
    Count(usize),
    /// `ceil(fraction * n)` photos.
    Fraction(f64),
}

/// Settings of [`PhotoCrops`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhotoCropsConfig {
    /// Output side length.
    pub size: u32,
    /// Training samples per epoch.
    pub crops_per_epoch: usize,
    pub heldout: Heldout,
    /// Photos are downscaled at load so their shorter side is at most this (memory, and crops
    /// that show objects rather than texture).
    pub max_short_side: u32,
    /// Largest training crop side as a fraction of the photo's shorter side (smallest: `size`).
    pub max_crop_frac: f64,
    pub hflip: bool,
    /// Eval samples per held-out photo (the first is the ADM center crop).
    pub eval_crops_per_image: usize,
    pub limits: DecodeLimits,
}

impl PhotoCropsConfig {
    /// The demo default: `size` crops, 4096 per epoch, 10% held out, photos at <= 768 px short
    /// side, crops up to the full short side, flips, 4 eval crops per held-out photo.
    pub fn demo(size: u32) -> Self {
        Self {
            size,
            crops_per_epoch: 4096,
            heldout: Heldout::Fraction(0.1),
            max_short_side: 768,
            max_crop_frac: 1.0,
            hflip: true,
            eval_crops_per_image: 4,
            limits: DecodeLimits::default(),
        }
    }
}

/// FNV-1a 64-bit, used for the fixed split.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Image file extensions a folder source lists (case-insensitive).
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff"];

pub(crate) fn has_image_ext(p: &Path) -> bool {
    p.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.contains(&e.to_ascii_lowercase().as_str()))
}

/// Reads and decodes one file, mapping I/O problems to [`SkipReason::Unreadable`].
pub fn load_file(path: &Path, limits: &DecodeLimits) -> std::result::Result<Rgb8Image, SkipReason> {
    let bytes = crate::image::read_image_file(path, limits)?;
    decode_rgb8(&bytes, limits)
}

struct Photo {
    name: String,
    image: Rgb8Image,
}

struct Inner {
    cfg: PhotoCropsConfig,
    train: Vec<Photo>,
    heldout: Vec<Photo>,
}

/// The photo-crop source. Cheap to clone (shared decoded photos).
#[derive(Clone)]
pub struct PhotoCrops {
    inner: Arc<Inner>,
    report: SkipStats,
}

impl std::fmt::Debug for PhotoCrops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhotoCrops")
            .field("train", &self.inner.train.len())
            .field("heldout", &self.heldout_names())
            .field("cfg", &self.inner.cfg)
            .finish()
    }
}

impl PhotoCrops {
    /// Lists image files in `dir` (not recursive), decodes them and splits them. Undecodable
    /// files are skipped and reported by [`PhotoCrops::open_report`]; fewer than 2 usable photos
    /// is an error.
    pub fn open(dir: impl AsRef<Path>, cfg: PhotoCropsConfig) -> Result<Self> {
        let dir = dir.as_ref();
        if cfg.size == 0 || cfg.max_short_side < cfg.size {
            return Err(Error::Config(format!(
                "photo crops need size >= 1 and max_short_side ({}) >= size ({})",
                cfg.max_short_side, cfg.size
            )));
        }
        let rd = std::fs::read_dir(dir).map_err(|e| {
            let hint = if dir.ends_with(".assets/photos") {
                " (run `cargo xtask assets`)"
            } else {
                ""
            };
            Error::format(dir, format!("{e}{hint}"))
        })?;
        let mut files: Vec<PathBuf> = rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| has_image_ext(p))
            .collect();
        files.sort();
        let decoded: Vec<(String, std::result::Result<Rgb8Image, SkipReason>)> = files
            .par_iter()
            .map(|p| {
                let name = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let img = load_file(p, &cfg.limits)
                    .and_then(|im| downscale_short_side(im, cfg.max_short_side))
                    .and_then(|im| {
                        if im.width.min(im.height) < cfg.size {
                            Err(SkipReason::Corrupt(format!(
                                "{}x{} is smaller than the crop size {}",
                                im.width, im.height, cfg.size
                            )))
                        } else {
                            Ok(im)
                        }
                    });
                (name, img)
            })
            .collect();
        let mut report = SkipStats::default();
        let mut photos = Vec::new();
        for (name, r) in decoded {
            match r {
                Ok(image) => photos.push(Photo { name, image }),
                Err(e) => report.record(&name, &e),
            }
        }
        if photos.len() < 2 {
            return Err(Error::Empty {
                path: dir.to_path_buf(),
                detail: format!(
                    "{} usable photos (need 2: train + held out), skipped {:?}",
                    photos.len(),
                    report.reasons
                ),
            });
        }
        let n = photos.len();
        let k = match cfg.heldout {
            Heldout::Count(c) => c,
            Heldout::Fraction(f) => (f * n as f64).ceil() as usize,
        }
        .clamp(1, n - 1);
        let mut by_hash: Vec<(u64, usize)> = photos
            .iter()
            .enumerate()
            .map(|(i, p)| (fnv1a(p.name.as_bytes()), i))
            .collect();
        by_hash.sort();
        let held: std::collections::HashSet<usize> = by_hash[..k].iter().map(|&(_, i)| i).collect();
        let (mut train, mut heldout) = (Vec::new(), Vec::new());
        for (i, p) in photos.into_iter().enumerate() {
            if held.contains(&i) {
                heldout.push(p);
            } else {
                train.push(p);
            }
        }
        Ok(Self {
            inner: Arc::new(Inner {
                cfg,
                train,
                heldout,
            }),
            report,
        })
    }

    /// Files skipped by [`PhotoCrops::open`] with their reasons.
    pub fn open_report(&self) -> &SkipStats {
        &self.report
    }
    /// File names of the training photos (sorted).
    pub fn train_names(&self) -> Vec<String> {
        self.inner.train.iter().map(|p| p.name.clone()).collect()
    }
    /// File names of the held-out photos (sorted).
    pub fn heldout_names(&self) -> Vec<String> {
        self.inner.heldout.iter().map(|p| p.name.clone()).collect()
    }
    /// The configuration.
    pub fn config(&self) -> &PhotoCropsConfig {
        &self.inner.cfg
    }
    /// The training split as an indexed source (`crops_per_epoch` samples).
    pub fn train_source(&self) -> Arc<dyn IndexedSource> {
        Arc::new(TrainCrops(Arc::clone(&self.inner)))
    }
    /// The held-out split as an indexed source (`heldout * eval_crops_per_image` samples).
    pub fn eval_source(&self) -> Arc<dyn IndexedSource> {
        Arc::new(EvalCrops(Arc::clone(&self.inner)))
    }
    /// A loader of random training crops.
    pub fn train(&self, cfg: LoaderConfig) -> Result<Loader> {
        Loader::new(self.train_source(), cfg)
    }
    /// A loader of the fixed evaluation crops (use [`LoaderConfig::eval`]).
    pub fn eval(&self, cfg: LoaderConfig) -> Result<Loader> {
        Loader::new(self.eval_source(), cfg)
    }
}

struct TrainCrops(Arc<Inner>);

impl IndexedSource for TrainCrops {
    fn len(&self) -> usize {
        self.0.cfg.crops_per_epoch
    }
    fn key(&self, index: usize) -> String {
        format!("train_crop:{index}")
    }
    fn output_size(&self) -> (u32, u32) {
        (self.0.cfg.size, self.0.cfg.size)
    }
    fn get(&self, index: usize, rng: &mut ChaCha8Rng) -> std::result::Result<Item, SkipReason> {
        let cfg = &self.0.cfg;
        let p = &self.0.train[rng.gen_range(0..self.0.train.len())];
        let (w, h) = (p.image.width, p.image.height);
        let short = w.min(h) as f64;
        let lo = (cfg.size as f64).min(short);
        let hi = (short * cfg.max_crop_frac).clamp(lo, short);
        let side = if hi > lo {
            rng.gen_range(lo.ln()..=hi.ln()).exp().floor()
        } else {
            lo
        };
        let side = side.clamp(1.0, short);
        let left = rng.gen_range(0.0..=(w as f64 - side)).floor();
        let top = rng.gen_range(0.0..=(h as f64 - side)).floor();
        let crop = CropBox {
            left,
            top,
            width: side,
            height: side,
        };
        let mut image = resize_crop(&p.image, crop, cfg.size, cfg.size)?;
        if cfg.hflip && rng.gen::<bool>() {
            flip_horizontal(&mut image);
        }
        Ok(Item {
            key: format!("{}@{left},{top},{side}#{index}", p.name),
            image,
            label: None,
            caption: None,
        })
    }
}

struct EvalCrops(Arc<Inner>);

impl IndexedSource for EvalCrops {
    fn len(&self) -> usize {
        self.0.heldout.len() * self.0.cfg.eval_crops_per_image
    }
    fn key(&self, index: usize) -> String {
        let k = self.0.cfg.eval_crops_per_image.max(1);
        format!("{}#{}", self.0.heldout[index / k].name, index % k)
    }
    fn output_size(&self) -> (u32, u32) {
        (self.0.cfg.size, self.0.cfg.size)
    }
    fn get(&self, index: usize, _rng: &mut ChaCha8Rng) -> std::result::Result<Item, SkipReason> {
        let cfg = &self.0.cfg;
        let k = cfg.eval_crops_per_image.max(1);
        let p = &self.0.heldout[index / k];
        let j = index % k;
        let (w, h) = (p.image.width, p.image.height);
        let crop = if j == 0 {
            adm_center_crop_box(w, h, cfg.size)
        } else {
            // Seed-independent positions: a function of the photo name and j only.
            let mut r = ChaCha8Rng::seed_from_u64(mix_seed(&[fnv1a(p.name.as_bytes()), j as u64]));
            let s = cfg.size as f64;
            let left = r.gen_range(0.0..=(w as f64 - s)).floor();
            let top = r.gen_range(0.0..=(h as f64 - s)).floor();
            CropBox {
                left,
                top,
                width: s,
                height: s,
            }
        };
        let image = resize_crop(&p.image, crop, cfg.size, cfg.size)?;
        Ok(Item {
            key: self.key(index),
            image,
            label: None,
            caption: None,
        })
    }
}
