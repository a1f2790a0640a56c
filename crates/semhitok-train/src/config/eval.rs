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

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            n_images: default_n_eval(),
            grid_images: default_grid(),
            data: None,
        }
    }
}
