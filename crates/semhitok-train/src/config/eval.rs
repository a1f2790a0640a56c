//! `[eval]`: the defaults of `semhitok eval` for this run, and its held-out set.

use super::DataKind;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// `[eval]`: defaults of `semhitok eval` for this run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-out images evaluated (center crops).
    #[serde(default = "default_n_eval")]
    pub n_images: usize,
    /// Images in the PNG grid.
    #[serde(default = "default_grid")]
    pub grid_images: usize,
    /// The held-out set (`[eval.data]`, e.g. ImageNet val); absent: the held-out photos of
    /// `[data]` (kind `photos`).
    #[serde(default)]
    pub data: Option<EvalDataConfig>,
    /// Images of the fixed validation subset measured every `schedule.eval_every` steps, the
    /// same ones every time: spread evenly over the first `n_images` of the held-out set (at
    /// most `8 * val_images` of them are read).
    #[serde(default = "default_val_images")]
    pub val_images: usize,
    /// The FID Inception TorchScript of the validation rFID (a missing file: validation runs
    /// without rFID and says so once).
    #[serde(default = "default_fid_weights")]
    pub fid_weights: PathBuf,
    /// Folder of the cached Inception statistics of reference sets (absent:
    /// `$XDG_CACHE_HOME/semhitok/fid`, else `~/.cache/semhitok/fid`; never the dataset folder).
    #[serde(default)]
    pub fid_cache: Option<PathBuf>,
}

/// `[eval.data]`: the held-out set, read in order with the ADM center crop at `data.image_size`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalDataConfig {
    pub kind: DataKind,
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// `webdataset`: brace pattern, glob or list file (else `root`).
    #[serde(default)]
    pub shards: Option<String>,
    /// `imagenet`: the flat `val/` layout's `LOC_val_solution.csv` (absent: `root` has class
    /// folders).
    #[serde(default)]
    pub solution_csv: Option<PathBuf>,
    #[serde(default)]
    pub labels_file: Option<PathBuf>,
}

fn default_n_eval() -> usize {
    64
}
fn default_grid() -> usize {
    8
}
fn default_val_images() -> usize {
    32
}
/// Where `cargo xtask assets` puts the FID Inception (relative to the working directory).
pub fn default_fid_weights() -> PathBuf {
    PathBuf::from(".assets/weights/fid_inception_v3.pt")
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            n_images: default_n_eval(),
            grid_images: default_grid(),
            data: None,
            val_images: default_val_images(),
            fid_weights: default_fid_weights(),
            fid_cache: None,
        }
    }
}
