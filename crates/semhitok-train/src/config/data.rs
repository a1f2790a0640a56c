//! `[data]`: which images the trainer reads and how it crops them.

use super::{default_true, one_f};
use crate::error::Result;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Which images the trainer reads (`[data] kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKind {
    /// ImageNet-style class folders: `root/<synset>/*.JPEG` (labels = sorted class index;
    /// `labels_file` names them for captions). For evaluation also the flat `val/` layout with
    /// `solution_csv` (`LOC_val_solution.csv`).
    Imagenet,
    /// Webdataset tar shards (img2dataset layout, COYO / LAION): `shards` = a brace pattern
    /// (`/data/coyo/{00000..09999}.tar`), a glob, a text file listing shards, or a folder; or
    /// `root` = a folder of shards. Captions (`.txt`, `.json` `caption`) ride on the batch.
    Webdataset,
    /// Random crops of the photos under `root` (train split; a held-out split for eval).
    Photos,
    /// Fashion-MNIST IDX `.gz` files under `root` (train split; `t10k` for eval).
    FashionMnist,
    /// Seeded synthetic images generated in memory (tests, benchmarks).
    Synthetic,
}

impl DataKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DataKind::Imagenet => "imagenet",
            DataKind::Webdataset => "webdataset",
            DataKind::Photos => "photos",
            DataKind::FashionMnist => "fashion-mnist",
            DataKind::Synthetic => "synthetic",
        }
    }
}

/// Training crop of the `imagenet`, `webdataset` and `fashion-mnist` kinds (`photos` has its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainTransform {
    /// LlamaGen's tokenizer training crop (`random_crop_arr` + flip): shorter side resized to
    /// `image_size / U[min_crop_frac, max_crop_frac]`, random window.
    RandomCrop,
    /// torchvision `RandomResizedCrop` (scale 0.08-1, ratio 3/4-4/3) + flip.
    RandomResizedCrop,
    /// The ADM center crop (no augmentation).
    CenterCrop,
}

/// `[data]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub kind: DataKind,
    /// The dataset folder (`imagenet`: the folder of class folders; `webdataset`: a folder of
    /// shards, unless `shards` is given; `photos`, `fashion-mnist`: the folder).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// `webdataset`: brace pattern, glob or list file of shards (takes precedence over `root`).
    #[serde(default)]
    pub shards: Option<String>,
    /// `imagenet`: `LOC_synset_mapping.txt`-style class names (captions "a photo of a NAME").
    #[serde(default)]
    pub labels_file: Option<PathBuf>,
    /// Side of the square training image fed to the model.
    pub image_size: i64,
    /// Images per micro-batch (per rank).
    pub batch_size: i64,
    /// Training crop of `imagenet`, `webdataset`, `fashion-mnist`.
    #[serde(default = "default_transform")]
    pub transform: TrainTransform,
    /// `random-crop`: smallest fraction of the resized shorter side the crop covers (LlamaGen 0.8).
    #[serde(default = "default_min_crop")]
    pub min_crop_frac: f64,
    /// Horizontal flips with probability 1/2 (training crops).
    #[serde(default = "default_true")]
    pub hflip: bool,
    /// `webdataset`: samples in each stream's shuffle buffer (within a shard).
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// `webdataset`: skip samples without a caption (counted as `missing_caption`).
    #[serde(default)]
    pub require_caption: bool,
    /// Photos are downscaled at load so their shorter side is at most this; training crops are
    /// `image_size ..= max_crop_frac * max_short_side` source pixels, resized to `image_size`.
    #[serde(default = "default_short")]
    pub max_short_side: u32,
    /// `photos`: largest crop side as a fraction of the shorter side; `random-crop`: largest
    /// fraction of the resized shorter side the crop covers (LlamaGen 1.0).
    #[serde(default = "one_f")]
    pub max_crop_frac: f64,
    /// Fraction of photos held out for evaluation.
    #[serde(default = "default_holdout")]
    pub heldout_fraction: f64,
    /// Evaluation crops per held-out photo (the first is the ADM center crop).
    #[serde(default = "default_eval_crops")]
    pub eval_crops_per_image: usize,
    /// Decoding threads of the loader (default: this process's cores divided by
    /// `LOCAL_WORLD_SIZE`, minus one).
    #[serde(default)]
    pub workers: Option<usize>,
    /// Decoded batches each worker may hold ahead (bounded prefetch).
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// This process's rank and the world size (default: `RANK` / `WORLD_SIZE` from the
    /// environment as torchrun sets them, else 0 / 1). Each rank reads its own part.
    #[serde(default)]
    pub rank: Option<usize>,
    #[serde(default)]
    pub world_size: Option<usize>,
}

impl DataConfig {
    /// Rank and world size: the config's, else the environment's.
    pub fn rank_world(&self) -> Result<semhitok_data::RankWorld> {
        let env = semhitok_data::RankWorld::from_env()?;
        let rw = semhitok_data::RankWorld {
            rank: self.rank.unwrap_or(env.rank),
            world: self.world_size.unwrap_or(env.world),
        };
        rw.validate()?;
        Ok(rw)
    }
    /// Decoding threads (see `workers`).
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(semhitok_data::default_workers)
    }
}

fn default_transform() -> TrainTransform {
    TrainTransform::RandomCrop
}
fn default_min_crop() -> f64 {
    0.8
}
fn default_shuffle_buffer() -> usize {
    1000
}
fn default_prefetch() -> usize {
    2
}
fn default_holdout() -> f64 {
    0.1
}
fn default_short() -> u32 {
    768
}
fn default_eval_crops() -> usize {
    4
}
