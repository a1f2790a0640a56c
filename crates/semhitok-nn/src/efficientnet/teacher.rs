//! Loading the weights, and EfficientNet-Lite as a frozen [`Teacher`] of the SPC.

use crate::error::{Error, Result};
use crate::teacher::{check_images, map_to_tokens, sorted_variables, Teacher};
use crate::weights::{load_strict, load_strict_tensors, LoadOptions};
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn;
use tch::{Device, Tensor};

use super::{EfficientNetLite, EfficientNetLiteConfig, FoldedEfficientNet};

/// Load the EfficientNet-Lite weights at `path` strictly into a fresh frozen VarStore on `device`.
pub fn load_efficientnet(
    cfg: &EfficientNetLiteConfig,
    path: &Path,
    device: Device,
) -> Result<(nn::VarStore, EfficientNetLite)> {
    let mut vs = nn::VarStore::new(device);
    let net = cfg.init(vs.root())?;
    load_strict(&mut vs, path, &LoadOptions::default())?;
    vs.freeze();
    Ok((vs, net))
}

/// Which feature map the EfficientNet teacher returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffNetFeatures {
    /// End of the stride-16 stages (block 10 of Lite0, 112 channels): 16 x 16 tokens at 256 px.
    Stride16,
    /// End of the stride-8 stages (block 4 of Lite0, 40 channels), for small images.
    Stride8,
}

impl EffNetFeatures {
    fn stride(self) -> i64 {
        match self {
            EffNetFeatures::Stride16 => 16,
            EffNetFeatures::Stride8 => 8,
        }
    }
}

/// EfficientNet-Lite0 as a frozen [`Teacher`]: ImageNet normalization inside, no resizing.
#[derive(Debug)]
pub struct EfficientNetTeacher {
    _vs: nn::VarStore,
    net: EfficientNetLite,
    /// `net` with folded batch norms (channels-last on CPU): what `feature_map` runs.
    folded: FoldedEfficientNet,
    tap: usize,
    features: EffNetFeatures,
}

impl EfficientNetTeacher {
    /// Load Lite0 from `path` (`.assets/weights/efficientnet_lite0.safetensors`) on `device`.
    pub fn load(path: &Path, device: Device, features: EffNetFeatures) -> Result<Self> {
        let (vs, net) =
            load_efficientnet(&EfficientNetLiteConfig::efficientnet_lite0(), path, device)?;
        Self::from_loaded(vs, net, device, features)
    }

    /// Lite0 from tensors already read (names as in the weights file), strictly; `origin` names
    /// them in errors (e.g. `model.safetensors [teacher.*]` of a model folder).
    pub fn from_tensors(
        tensors: Vec<(String, Tensor)>,
        origin: &Path,
        device: Device,
        features: EffNetFeatures,
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let net = EfficientNetLiteConfig::efficientnet_lite0().init(vs.root())?;
        load_strict_tensors(&mut vs, tensors, origin, &LoadOptions::default())?;
        vs.freeze();
        Self::from_loaded(vs, net, device, features)
    }

    fn from_loaded(
        vs: nn::VarStore,
        net: EfficientNetLite,
        device: Device,
        features: EffNetFeatures,
    ) -> Result<Self> {
        let tap = net
            .last_block_with_stride(features.stride())
            .ok_or_else(|| {
                Error::Config(format!(
                    "efficientnet has no stride-{} block",
                    features.stride()
                ))
            })?;
        let folded = net.fold(device == Device::Cpu)?;
        Ok(Self {
            _vs: vs,
            net,
            folded,
            tap,
            features,
        })
    }

    /// The wrapped network.
    pub fn net(&self) -> &EfficientNetLite {
        &self.net
    }

    /// images: [B, 3, H, W] in [-1, 1] -> ImageNet logits [B, 1000].
    pub fn logits(&self, images: &Tensor) -> Result<Tensor> {
        check_images("efficientnet", images)?;
        tch::no_grad(|| self.net.logits(&EfficientNetLite::normalize(images)?))
    }

    /// images: [B, 3, H, W] in [-1, 1] -> the feature map [B, C, gh, gw].
    pub fn feature_map(&self, images: &Tensor) -> Result<Tensor> {
        check_images("efficientnet", images)?;
        tch::no_grad(|| {
            let z = EfficientNetLite::normalize(images)?;
            Ok(self.folded.block_outputs(&z, &[self.tap])?.remove(0))
        })
    }
}

impl Teacher for EfficientNetTeacher {
    /// images: [B, 3, H, W] in [-1, 1] -> [B, gh * gw, C] (C = 112 at stride 16, 40 at stride 8).
    fn features(&self, images: &Tensor) -> Result<Tensor> {
        map_to_tokens(&self.feature_map(images)?)
    }

    fn dim(&self) -> i64 {
        self.net.block_out[self.tap].1
    }

    fn grid(&self, h: i64, w: i64) -> (i64, i64) {
        self.net.grid_at(self.features.stride(), h, w)
    }

    fn name(&self) -> &str {
        "efficientnet_lite0"
    }

    fn variables(&self) -> Vec<(String, Tensor)> {
        sorted_variables(&self._vs)
    }
}
