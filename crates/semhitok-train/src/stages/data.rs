//! The training batches of a config (`[data] kind`).

use crate::config::{DataKind, TrainConfig};
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::synthetic::SyntheticBatches;
use crate::trainer::Batches;
use tch::{Device, Tensor};

/// Photo-crop settings of `cfg` (semhitok-data).
pub fn photo_config(cfg: &TrainConfig) -> semhitok_data::PhotoCropsConfig {
    let d = &cfg.data;
    let mut p = semhitok_data::PhotoCropsConfig::demo(d.image_size as u32);
    p.max_short_side = d.max_short_side;
    p.max_crop_frac = d.max_crop_frac;
    p.heldout = semhitok_data::Heldout::Fraction(d.heldout_fraction);
    p.eval_crops_per_image = d.eval_crops_per_image;
    p
}

/// Training batches from the photo crops of semhitok-data.
pub struct PhotoBatches {
    loader: semhitok_data::Loader,
}

impl std::fmt::Debug for PhotoBatches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PhotoBatches").finish()
    }
}

/// A data-crate batch as a `[B, 3, H, W]` f32 tensor on `device`.
pub fn batch_tensor(b: &semhitok_data::Batch, device: Device) -> Result<Tensor> {
    let px = b
        .as_f32()
        .ok_or_else(|| Error::Input("loader returned u8 pixels, expected f32".into()))?;
    let s: Vec<i64> = b.shape.iter().map(|&v| v as i64).collect();
    Ok(Tensor::from_slice(px).view(s.as_slice()).to_device(device))
}

impl Batches for PhotoBatches {
    fn next_batch(&mut self, device: Device) -> Result<Tensor> {
        let b = self
            .loader
            .next()
            .ok_or_else(|| Error::Input("photo loader ended (it should be endless)".into()))?;
        batch_tensor(&b, device)
    }
    fn state(&self) -> serde_json::Value {
        serde_json::to_value(self.loader.state()).unwrap_or(serde_json::Value::Null)
    }
    fn restore(&mut self, state: &serde_json::Value) -> Result<()> {
        let s: semhitok_data::LoaderState = serde_json::from_value(state.clone())
            .map_err(|e| Error::Input(format!("photo loader state {state}: {e}")))?;
        Ok(self.loader.restore(&s)?)
    }
}

/// The training batches of `cfg` (a single process).
pub fn build_batches(cfg: &TrainConfig) -> Result<Box<dyn Batches>> {
    build_batches_for(cfg, None)
}

/// The training batches of this rank of a data-parallel run (`data.batch_size` per rank).
///
/// Synthetic data is sharded exactly ([`crate::dist::shard_range`]): the ranks together read the
/// images one process with batch `world x batch_size` reads, and the data position does not
/// depend on the world size. Photo crops are random draws: each rank draws its own (seed offset
/// by the rank), so the global batch is a sample of the same distribution, not the 1-process
/// order.
pub fn build_batches_for(cfg: &TrainConfig, dist: Option<&Dist>) -> Result<Box<dyn Batches>> {
    let d = &cfg.data;
    let (rank, world) = dist.map_or((0, 1), |x| (x.rank(), x.world_size()));
    match d.kind {
        DataKind::Synthetic => Ok(Box::new(
            SyntheticBatches::new(cfg.run.seed, d.batch_size, d.image_size).sharded(rank, world),
        )),
        DataKind::Photos => {
            let root = d.root.clone().unwrap_or_default();
            let photos = semhitok_data::PhotoCrops::open(&root, photo_config(cfg))?;
            let seed = cfg.run.seed.wrapping_add(rank as u64);
            let mut lc = semhitok_data::LoaderConfig::train(d.batch_size as usize, seed);
            lc.workers = d.workers;
            Ok(Box::new(PhotoBatches {
                loader: photos.train(lc)?,
            }))
        }
    }
}
