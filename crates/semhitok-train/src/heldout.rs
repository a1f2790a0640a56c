//! The held-out images of a config, for `semhitok eval` and for validation during training:
//! `[eval.data]` (read in order, ADM center crop), else the held-out photos of a photos folder
//! (`--data`, or `data.root`), together with what identifies them for the FID reference cache.

use crate::config::{DataKind, TrainConfig};
use crate::error::Result;
use crate::eval::{heldout_photos, stream_images};
use crate::fid_ref::{RefIdentity, INCEPTION, RESIZE};
use crate::stages::{build_eval_stream, eval_data_inputs, photo_config};
use std::path::{Path, PathBuf};
use tch::Tensor;

/// A held-out set: the images and how they were made.
#[derive(Debug)]
pub struct HeldOut {
    /// `[N, 3, S, S]` in [-1, 1] on the CPU.
    pub images: Tensor,
    pub keys: Vec<String>,
    /// What the set is (for the report).
    pub reference: String,
    /// How the images were cropped and resized.
    pub crop: String,
    /// The files and folders the images come from.
    pub inputs: Vec<PathBuf>,
    /// The settings that decide which images and crops these are (hashed into the cache key).
    settings: serde_json::Value,
}

impl HeldOut {
    /// Images in the set.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// `n` images spread evenly over the set (all of them when it has at most `n`), in order:
    /// a fixed subset that covers more than the first few sources (e.g. more than one photo's
    /// crops).
    pub fn spread(self, n: usize) -> Result<Self> {
        let total = self.len();
        if total <= n {
            return Ok(self);
        }
        let pick: Vec<i64> = (0..n).map(|i| (i * total / n) as i64).collect();
        let idx = Tensor::from_slice(&pick);
        let mut settings = self.settings;
        settings["spread"] = serde_json::json!({"of_first": total, "picked": n});
        Ok(Self {
            images: self.images.f_index_select(0, &idx)?,
            keys: pick
                .iter()
                .map(|&i| self.keys[i as usize].clone())
                .collect(),
            settings,
            ..self
        })
    }

    /// The set's identity for the FID cache, with the Inception weights it is measured with
    /// (`quant`: the 8-bit rounding before the resize).
    pub fn identity(&self, fid_weights: &Path, quant: bool) -> RefIdentity {
        let mut inputs = self.inputs.clone();
        inputs.push(fid_weights.to_path_buf());
        RefIdentity {
            what: serde_json::json!({
                "reference_set": self.reference,
                "crop": self.crop,
                "n_images": self.len(),
                "settings": self.settings,
                "inception": INCEPTION,
                "resize": RESIZE,
                "quant_8bit": quant,
            }),
            inputs,
        }
    }
}

/// The first `n` held-out images of `cfg`: the photos folder `photos` when given, else
/// `[eval.data]`, else the held-out photos of `data.root` (kind `photos`); `None` when `cfg`
/// names none.
/// `batch`: images per decoded batch.
pub fn held_out(
    cfg: &TrainConfig,
    photos: Option<&Path>,
    n: usize,
    batch: usize,
) -> Result<Option<HeldOut>> {
    let size = cfg.data.image_size;
    if photos.is_none() {
        if let Some((mut stream, reference)) = build_eval_stream(cfg, batch)? {
            let (images, keys) = stream_images(stream.as_mut(), n)?;
            let e = cfg.eval.data.as_ref();
            return Ok(Some(HeldOut {
                images,
                keys,
                reference,
                crop: format!("ADM center crop to {size}x{size}"),
                inputs: e.map(eval_data_inputs).transpose()?.unwrap_or_default(),
                settings: serde_json::json!({"eval_data": e, "image_size": size}),
            }));
        }
    }
    let from_data = (cfg.data.kind == DataKind::Photos)
        .then_some(cfg.data.root.as_deref())
        .flatten();
    let Some(root) = photos.or(from_data) else {
        return Ok(None);
    };
    let (images, keys) = heldout_photos(cfg, root, n)?;
    Ok(Some(HeldOut {
        images,
        keys,
        reference: format!(
            "held-out photos of {} (semhitok-data PhotoCrops eval split)",
            root.display()
        ),
        crop: format!(
            "per held-out photo: ADM center crop, then the data crate's fixed eval crops; \
             resized to {size}x{size}"
        ),
        inputs: vec![root.to_path_buf()],
        settings: serde_json::json!({"photo_crops": photo_config(cfg)}),
    }))
}
