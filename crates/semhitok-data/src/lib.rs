//! SemHiTok data pipelines. The only crate of the workspace that opens dataset files.
//!
//! Every source turns the files real users have into [`Batch`]es: one contiguous NCHW buffer
//! (`f32` in [-1, 1] or `u8`, see [`PixelFormat`]) with `shape = [N, 3, H, W]`, plus keys, labels
//! and captions. The trainer turns `batch.as_f32()` into a tensor with a single
//! `Tensor::from_slice(..).view(shape)` copy. This crate has no tch dependency.
//!
//! # Sources
//! * [`PhotoCrops`]: a folder of high-resolution photographs served as random training crops and
//!   fixed evaluation crops of a held-out split (the embedded default `.assets/photos/`).
//! * [`ImageFolder`]: ImageNet-style `root/<synset>/*.JPEG` class folders.
//! * [`FashionMnist`]: IDX `.gz` files as image-caption pairs ("a photo of a {class}").
//! * [`WdsLoader`]: webdataset tar shards (img2dataset layout), streamed shard by shard.
//! * [`load_llava`]: LLaVA-Pretrain-558K / LLaVA-v1.5-mix665K JSON records, validated.
//!
//! Every loader is a [`BatchStream`] (the one interface the trainer sees, with one serde
//! [`StreamState`] for checkpoints; see [`stream`] for ranks, epochs and world-size changes).
//! Indexed sources ([`IndexedSource`]) are batched by a [`Loader`]; see [`loader`] for the order,
//! sharding and resume rules. [`resolve_shards`] turns a brace pattern, glob, list file or folder
//! into shard paths; [`pack()`] writes image folders as webdataset shards. Transforms
//! ([`Transform`]) are the ADM center crop (evaluation), LlamaGen's random crop + flip (training)
//! and torchvision's random resized crop + flip; see [`transform`].
//!
//! # Bad input
//! Decoding never panics and never trusts the extension ([`decode_rgb8`]). Per-sample problems
//! become a [`SkipReason`] and are counted in [`SkipStats`]; batches are refilled from the
//! following samples, so an epoch is never silently short. [`scan()`] checks a whole dataset
//! (`cargo xtask data scan`).
//!
//! # Determinism and resume
//! Order and augmentation depend only on `(seed, epoch, index)` (and for tar streams on the
//! shard and position), never on thread timing. [`Loader::state`] / [`Loader::restore`] (and
//! the same on [`WdsLoader`]) give a serde state that resumes with no sample repeated or skipped.

pub mod batch;
pub mod error;
pub mod fashion_mnist;
pub mod folder;
pub mod image;
pub mod jpeg_scaled;
pub mod llava;
pub mod loader;
pub mod order;
pub mod pack;
pub mod photos;
mod pool;
pub mod scan;
pub mod shards;
pub mod stream;
pub mod tar_samples;
pub mod transform;
pub mod wds;
mod wds_read;
pub mod wds_state;

pub use error::{Error, Result, SkipReason};
pub use fashion_mnist::{
    fashion_mnist_caption, fashion_mnist_class, FashionMnist, Split, FASHION_MNIST_CLASSES,
};
pub use folder::{ImageFolder, ImageFolderConfig};
pub use image::{decode_rgb8, read_image_file, DecodeLimits, Rgb8Image};
pub use jpeg_scaled::{decode_rgb8_scaled, jpeg_scale};
pub use llava::{load_llava, LlavaRecord, Role, Turn};
pub use loader::{
    Batch, IndexedSource, Item, Loader, LoaderConfig, LoaderState, PixelFormat, Pixels, RankPos,
    SkipStats,
};
pub use pack::{pack, PackOptions, PackReport};
pub use photos::{Heldout, PhotoCrops, PhotoCropsConfig};
pub use scan::{scan, ScanOptions, ScanReport, ScanSource};
pub use shards::{resolve_shards, Shards};
pub use stream::{default_workers, BatchStream, PositionSet, RankWorld, StreamState};
pub use transform::Transform;
pub use wds::{ShardBase, ShardDone, WdsConfig, WdsLoader, WdsRankPos, WdsState};
