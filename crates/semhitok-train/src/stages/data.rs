//! The batches of a config: `[data] kind` (training) and `[eval.data]` (the held-out set) as
//! semhitok-data [`BatchStream`]s, so no stage has per-source code.
//!
//! Every kind is checked before any model is built ([`run_stage`](super::run_stage) builds the
//! data first): a missing root, a shard pattern matching nothing or an empty dataset is an error
//! naming the key and the path. Batches travel as u8 NCHW (4x less host-to-device traffic than
//! f32) and are normalised to [-1, 1] on the device ([`u8_batch_tensor`]).

use crate::config::{DataKind, EvalDataConfig, TrainConfig, TrainTransform};
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::synthetic::SyntheticBatches;
use crate::trainer::{Batch, Batches};
use semhitok_data::{BatchStream, LoaderConfig, PixelFormat, StreamState, Transform};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Photo-crop settings of `cfg` (semhitok-data).
pub fn photo_config(cfg: &TrainConfig) -> semhitok_data::PhotoCropsConfig {
    let d = &cfg.data;
    let mut p = semhitok_data::PhotoCropsConfig::demo(d.image_size as u32);
    p.max_short_side = d.max_short_side;
    p.max_crop_frac = d.max_crop_frac;
    p.hflip = d.hflip;
    p.heldout = semhitok_data::Heldout::Fraction(d.heldout_fraction);
    p.eval_crops_per_image = d.eval_crops_per_image;
    p
}

/// A data-crate batch as a `[B, 3, H, W]` f32 tensor in [-1, 1] on `device` (f32 batches are
/// copied as they are, u8 batches through [`u8_batch_tensor`]).
pub fn batch_tensor(b: &semhitok_data::Batch, device: Device) -> Result<Tensor> {
    let s: Vec<i64> = b.shape.iter().map(|&v| v as i64).collect();
    match &b.pixels {
        semhitok_data::Pixels::F32(px) => {
            Ok(Tensor::from_slice(px).view(s.as_slice()).to_device(device))
        }
        semhitok_data::Pixels::U8(px) => u8_batch_tensor(px, &s, device),
    }
}

/// u8 NCHW pixels -> `[B, 3, H, W]` f32 in [-1, 1]: copied to `device` as u8, normalised there
/// (`v * (1 / 127.5) - 1`, the data crate's f32 formula). To a CUDA device the copy goes through
/// pinned host memory and does not block: the training thread does not wait for the GPU to drain
/// its queue at every step (LibTorch's host allocator keeps the pinned buffer until the copy is
/// done, as with PyTorch's `pin_memory=True` + `non_blocking=True`). The pinned copy goes through
/// `semhitok_sys::pin_memory`: tch's `pin_memory(device)` printed PyTorch 2.11's deprecation
/// warning at every batch.
pub fn u8_batch_tensor(px: &[u8], shape: &[i64], device: Device) -> Result<Tensor> {
    let host = Tensor::f_from_slice(px)?.f_view(shape)?;
    let t = if device.is_cuda() {
        match semhitok_sys::pin_memory(&host) {
            Ok(pinned) => pinned.f_to_device_(device, Kind::Uint8, true, false)?,
            Err(e) => {
                // Pageable memory still works (the copy then waits for the GPU's queue).
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    eprintln!("warning: {e}; batches are uploaded from pageable memory")
                });
                host.f_to_device(device)?
            }
        }
    } else {
        host.f_to_device(device)?
    };
    Ok(t.f_to_kind(Kind::Float)?
        .f_mul_scalar(1.0 / 127.5)?
        .f_sub_scalar(1.0)?)
}

/// Training batches from any [`BatchStream`].
pub struct StreamBatches {
    stream: Box<dyn BatchStream>,
}

impl std::fmt::Debug for StreamBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamBatches")
            .field("sample_shape", &self.stream.sample_shape())
            .finish()
    }
}

impl StreamBatches {
    pub fn new(stream: Box<dyn BatchStream>) -> Self {
        Self { stream }
    }
    /// The stream (skip statistics, state).
    pub fn stream(&self) -> &dyn BatchStream {
        self.stream.as_ref()
    }
}

impl Batches for StreamBatches {
    fn next_batch(&mut self, device: Device) -> Result<Batch> {
        let b = self.stream.next_batch().ok_or_else(|| {
            Error::Input(format!(
                "the training data ended (it should be endless): no usable samples left; skipped {:?}",
                self.stream.skip_stats().reasons
            ))
        })?;
        batch_tensor(&b, device).map(Batch::Images)
    }
    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.stream.state()).unwrap_or(serde_json::Value::Null)
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: StreamState = serde_json::from_value(state.clone()).map_err(|e| {
            Error::Input(format!(
                "data state in the checkpoint is not a semhitok-data stream state ({e}); it was \
                 written by another data kind or an older version"
            ))
        })?;
        Ok(self.stream.restore(&s)?)
    }
    fn merge_states(&self, states: &[serde_json::Value]) -> Result<serde_json::Value> {
        merge_data_states(states)
    }
}

/// The data state of a multi-rank checkpoint: the [`Batches::state`] of every rank combined
/// (gathered by the caller, e.g. an all-gather of the JSON), so that each rank resumes exactly at
/// the same world size and positions are re-derived at another (`StreamState::merge`). A
/// synthetic-batch state (a counter per rank, no sharding) is returned as rank 0's.
pub fn merge_data_states(states: &[serde_json::Value]) -> Result<serde_json::Value> {
    let first = states
        .first()
        .ok_or_else(|| Error::Input("no data states to merge".into()))?;
    if first.get("kind").and_then(|k| k.as_str()) == Some("synthetic") {
        return Ok(first.clone());
    }
    let parts: Vec<StreamState> = states
        .iter()
        .map(|v| serde_json::from_value(v.clone()))
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| Error::Input(format!("a rank's data state is not a stream state: {e}")))?;
    let merged = StreamState::merge(&parts)?;
    serde_json::to_value(merged).map_err(|e| Error::Input(format!("data state: {e}")))
}

fn key_err(key: &str, msg: String) -> Error {
    Error::Config {
        file: PathBuf::from("config"),
        key: key.into(),
        msg,
    }
}

/// `path` must exist (a config key pointing nowhere is an error naming both).
fn existing(key: &str, path: Option<&Path>) -> Result<PathBuf> {
    let p = path.ok_or_else(|| key_err(key, "not set".into()))?;
    if !p.exists() {
        return Err(key_err(key, format!("{} does not exist", p.display())));
    }
    Ok(p.to_path_buf())
}

/// Wraps an error of opening the dataset at `key` = `path`.
fn open_err(key: &str, path: &Path, e: semhitok_data::Error) -> Error {
    key_err(key, format!("{}: {e}", path.display()))
}

fn train_transform(cfg: &TrainConfig) -> Transform {
    let d = &cfg.data;
    let size = d.image_size as u32;
    match d.transform {
        TrainTransform::RandomCrop => Transform::RandomCrop {
            size,
            min_crop_frac: d.min_crop_frac,
            max_crop_frac: d.max_crop_frac,
            hflip: d.hflip,
        },
        TrainTransform::RandomResizedCrop => Transform::RandomResizedCrop {
            size,
            scale: (0.08, 1.0),
            ratio: (3.0 / 4.0, 4.0 / 3.0),
            hflip: d.hflip,
        },
        TrainTransform::CenterCrop => Transform::center_crop(size),
    }
}

/// The shard list of a webdataset config: `shards` (pattern, glob or list) or `root`.
fn shard_list(shards: Option<&str>, root: Option<&Path>, prefix: &str) -> Result<Vec<PathBuf>> {
    let (key, spec) = match (shards, root) {
        (Some(s), _) => (format!("{prefix}.shards"), s.to_string()),
        (None, Some(r)) => (
            format!("{prefix}.root"),
            existing(&format!("{prefix}.root"), Some(r))?
                .to_string_lossy()
                .into_owned(),
        ),
        (None, None) => {
            return Err(key_err(
                &format!("{prefix}.shards"),
                "webdataset needs shards or root".into(),
            ))
        }
    };
    let s = semhitok_data::resolve_shards(&spec).map_err(|e| key_err(&key, e.to_string()))?;
    if s.missing > 0 {
        eprintln!(
            "{key} = {spec}: {} shards, {} listed paths missing (left out)",
            s.paths.len(),
            s.missing
        );
    }
    Ok(s.paths)
}

/// The loader settings of `cfg` for training (shuffled, endless, u8, this rank's part).
fn train_loader_config(cfg: &TrainConfig) -> Result<LoaderConfig> {
    let d = &cfg.data;
    let rw = d.rank_world()?;
    Ok(LoaderConfig {
        workers: d.workers(),
        prefetch: d.prefetch,
        rank: rw.rank,
        world: rw.world,
        format: PixelFormat::U8,
        ..LoaderConfig::train(d.batch_size as usize, cfg.run.seed)
    })
}

/// A config error raised below without the config at hand names the file `config`: name the
/// real one (`TrainConfig::origin`).
fn in_file<T>(cfg: &TrainConfig, r: Result<T>) -> Result<T> {
    r.map_err(|e| match e {
        Error::Config { file, key, msg } if file == Path::new("config") => Error::Config {
            file: cfg.origin(),
            key,
            msg,
        },
        e => e,
    })
}

/// The training stream of `cfg` (every kind but `synthetic`), opened and checked.
pub fn build_stream(cfg: &TrainConfig) -> Result<Box<dyn BatchStream>> {
    in_file(cfg, build_stream_inner(cfg))
}

fn build_stream_inner(cfg: &TrainConfig) -> Result<Box<dyn BatchStream>> {
    let d = &cfg.data;
    let lc = train_loader_config(cfg)?;
    Ok(match d.kind {
        DataKind::Synthetic => {
            return Err(key_err(
                "data.kind",
                "synthetic images are generated by the trainer, not a data stream".into(),
            ))
        }
        DataKind::Photos => {
            let root = existing("data.root", d.root.as_deref())?;
            let photos = semhitok_data::PhotoCrops::open(&root, photo_config(cfg))
                .map_err(|e| open_err("data.root", &root, e))?;
            Box::new(photos.train(lc)?)
        }
        DataKind::Imagenet => {
            let root = existing("data.root", d.root.as_deref())?;
            let fc = semhitok_data::ImageFolderConfig {
                transform: train_transform(cfg),
                labels_file: d.labels_file.clone(),
                limits: Default::default(),
            };
            let folder = semhitok_data::ImageFolder::open(&root, fc)
                .map_err(|e| open_err("data.root", &root, e))?;
            Box::new(folder.loader(lc)?)
        }
        DataKind::FashionMnist => {
            let root = existing("data.root", d.root.as_deref())?;
            let ds = semhitok_data::FashionMnist::open(
                &root,
                semhitok_data::Split::Train,
                train_transform(cfg),
            )
            .map_err(|e| open_err("data.root", &root, e))?;
            Box::new(ds.loader(lc)?)
        }
        DataKind::Webdataset => {
            let shards = shard_list(d.shards.as_deref(), d.root.as_deref(), "data")?;
            let wc = semhitok_data::WdsConfig {
                transform: train_transform(cfg),
                shuffle_buffer: d.shuffle_buffer,
                require_caption: d.require_caption,
                limits: Default::default(),
            };
            Box::new(semhitok_data::WdsLoader::new(shards, wc, lc)?)
        }
    })
}

/// The training batches of `cfg`.
pub fn build_batches(cfg: &TrainConfig) -> Result<Box<dyn Batches>> {
    build_batches_for(cfg, None)
}

/// The training batches of this rank of a data-parallel run (`data.batch_size` per rank).
///
/// Synthetic data is sharded exactly ([`crate::dist::shard_range`]): the ranks together read the
/// images one process with batch `world x batch_size` reads, and the data position does not
/// depend on the world size. Streams (photos, ImageNet, webdataset, Fashion-MNIST) read this
/// rank's part of each epoch (semhitok-data's rank sharding, rank and world from the group).
pub fn build_batches_for(cfg: &TrainConfig, dist: Option<&Dist>) -> Result<Box<dyn Batches>> {
    let d = &cfg.data;
    let (rank, world) = dist.map_or((0, 1), |x| (x.rank(), x.world_size()));
    match d.kind {
        DataKind::Synthetic => Ok(Box::new(
            SyntheticBatches::new(cfg.run.seed, d.batch_size, d.image_size).sharded(rank, world),
        )),
        _ => {
            // The process group is authoritative for this rank's part of the data.
            let mut c = cfg.clone();
            if dist.is_some() {
                c.data.rank = Some(rank);
                c.data.world_size = Some(world);
            }
            Ok(Box::new(StreamBatches::new(build_stream(&c)?)))
        }
    }
}

/// The held-out stream of `[eval.data]` (in order, one pass, ADM center crop at `size`, every
/// rank reads everything), or `None` without `[eval.data]`.
pub fn build_eval_stream(
    cfg: &TrainConfig,
    batch_size: usize,
) -> Result<Option<(Box<dyn BatchStream>, String)>> {
    in_file(cfg, build_eval_stream_inner(cfg, batch_size))
}

fn build_eval_stream_inner(
    cfg: &TrainConfig,
    batch_size: usize,
) -> Result<Option<(Box<dyn BatchStream>, String)>> {
    let Some(e) = &cfg.eval.data else {
        return Ok(None);
    };
    let size = cfg.data.image_size as u32;
    let lc = LoaderConfig {
        format: PixelFormat::U8,
        workers: cfg.data.workers(),
        ..LoaderConfig::eval(batch_size)
    };
    let crop = Transform::center_crop(size);
    let stream: Box<dyn BatchStream> = match e.kind {
        DataKind::Synthetic => return Err(key_err("eval.data.kind", "not a held-out set".into())),
        DataKind::Imagenet => {
            let root = existing("eval.data.root", e.root.as_deref())?;
            let fc = semhitok_data::ImageFolderConfig {
                transform: crop,
                labels_file: e.labels_file.clone(),
                limits: Default::default(),
            };
            let folder = match &e.solution_csv {
                Some(csv) => {
                    let csv = existing("eval.data.solution_csv", Some(csv))?;
                    semhitok_data::ImageFolder::open_flat(&root, &csv, fc)
                }
                None => semhitok_data::ImageFolder::open(&root, fc),
            }
            .map_err(|err| open_err("eval.data.root", &root, err))?;
            Box::new(folder.loader(lc)?)
        }
        DataKind::FashionMnist => {
            let root = existing("eval.data.root", e.root.as_deref())?;
            let ds = semhitok_data::FashionMnist::open(&root, semhitok_data::Split::Test, crop)
                .map_err(|err| open_err("eval.data.root", &root, err))?;
            Box::new(ds.loader(lc)?)
        }
        DataKind::Photos => {
            let root = existing("eval.data.root", e.root.as_deref())?;
            let photos = semhitok_data::PhotoCrops::open(&root, photo_config(cfg))
                .map_err(|err| open_err("eval.data.root", &root, err))?;
            Box::new(photos.eval(lc)?)
        }
        DataKind::Webdataset => {
            let shards = shard_list(e.shards.as_deref(), e.root.as_deref(), "eval.data")?;
            let wc = semhitok_data::WdsConfig {
                transform: crop,
                shuffle_buffer: 0,
                require_caption: false,
                limits: Default::default(),
            };
            let lc = LoaderConfig { workers: 1, ..lc };
            Box::new(semhitok_data::WdsLoader::new(shards, wc, lc)?)
        }
    };
    Ok(Some((stream, describe_eval(e))))
}

fn describe_eval(e: &EvalDataConfig) -> String {
    let place = e
        .shards
        .clone()
        .or_else(|| e.root.as_ref().map(|r| r.display().to_string()))
        .unwrap_or_default();
    format!(
        "[eval.data] {} {place}{}, in order, ADM center crop",
        e.kind.as_str(),
        if e.solution_csv.is_some() {
            " (flat val layout + solution csv)"
        } else {
            ""
        }
    )
}

/// The files and folders the held-out set of `[eval.data]` is read from (what the FID cache
/// key lists): root, the resolved shards, the solution csv and the labels file.
pub fn eval_data_inputs(e: &EvalDataConfig) -> Result<Vec<PathBuf>> {
    let mut v = match (e.kind, &e.shards) {
        (DataKind::Webdataset, _) => {
            shard_list(e.shards.as_deref(), e.root.as_deref(), "eval.data")?
        }
        _ => vec![existing("eval.data.root", e.root.as_deref())?],
    };
    v.extend(e.solution_csv.iter().chain(&e.labels_file).cloned());
    Ok(v)
}
