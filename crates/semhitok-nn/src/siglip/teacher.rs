//! SigLIP as a frozen [`Teacher`] of the SPC.

use super::{load_siglip_weights, SiglipLayer, SiglipVisionConfig, SiglipVisionModel};
use crate::error::Result;
use crate::teacher::{check_images, sorted_variables, Teacher};
use crate::weights::{load_strict_tensors, LoadOptions};
use std::path::Path;
use tch::nn;
use tch::{Device, Tensor};

/// Where [`SiglipTeacher`]'s weights come from.
enum SiglipWeights<'a> {
    File(&'a Path),
    Tensors(Vec<(String, Tensor)>, &'a Path),
}

/// SigLIP as a frozen [`Teacher`]: [-1, 1] images are already SigLIP-normalized
/// ((x01 - 0.5) / 0.5); an optional fixed `resize` (bilinear, no antialias) brings inputs to a size the
/// patch grid divides (e.g. 384 for so400m-patch14).
#[derive(Debug)]
pub struct SiglipTeacher {
    // Keeps the variables alive (the model holds shallow copies).
    _vs: nn::VarStore,
    model: SiglipVisionModel,
    layer: SiglipLayer,
    resize: Option<(i64, i64)>,
    /// Built by [`SiglipTeacher::random_init`] (no checkpoint).
    random: bool,
}

impl SiglipTeacher {
    /// Build from `cfg` on `device` and load `weights` (model.safetensors of a SiglipVisionModel or a full
    /// SigLIP checkpoint) strictly; variables are frozen.
    pub fn load(
        cfg: &SiglipVisionConfig,
        weights: &Path,
        device: Device,
        layer: SiglipLayer,
        resize: Option<(i64, i64)>,
    ) -> Result<Self> {
        Self::build(
            cfg,
            Some(SiglipWeights::File(weights)),
            device,
            layer,
            resize,
        )
    }

    /// From tensors already read, named as the vision tower's VarStore (no `vision_model.`
    /// prefix), strictly; `origin` names them in errors.
    pub fn from_tensors(
        cfg: &SiglipVisionConfig,
        tensors: Vec<(String, Tensor)>,
        origin: &Path,
        device: Device,
        layer: SiglipLayer,
        resize: Option<(i64, i64)>,
    ) -> Result<Self> {
        let w = SiglipWeights::Tensors(tensors, origin);
        Self::build(cfg, Some(w), device, layer, resize)
    }

    /// The same tower with random weights (frozen): for benchmarks, where only shapes and FLOPs
    /// matter and no real checkpoint is reachable offline.
    pub fn random_init(
        cfg: &SiglipVisionConfig,
        device: Device,
        layer: SiglipLayer,
        resize: Option<(i64, i64)>,
    ) -> Result<Self> {
        Self::build(cfg, None, device, layer, resize)
    }

    fn build(
        cfg: &SiglipVisionConfig,
        weights: Option<SiglipWeights<'_>>,
        device: Device,
        layer: SiglipLayer,
        resize: Option<(i64, i64)>,
    ) -> Result<Self> {
        let mut vs = nn::VarStore::new(device);
        let mut model = cfg.init(vs.root())?;
        let random = weights.is_none();
        match weights {
            Some(SiglipWeights::File(w)) => load_siglip_weights(&mut vs, w)?,
            Some(SiglipWeights::Tensors(t, origin)) => {
                load_strict_tensors(&mut vs, t, origin, &LoadOptions::default())?;
            }
            None => {}
        }
        vs.freeze();
        model.fuse_qkv()?;
        Ok(Self {
            _vs: vs,
            model,
            layer,
            resize,
            random,
        })
    }

    /// The wrapped model.
    pub fn model(&self) -> &SiglipVisionModel {
        &self.model
    }
}

impl Teacher for SiglipTeacher {
    /// images: [B, 3, H, W] in [-1, 1] -> [B, gh * gw, hidden_size]
    fn features(&self, images: &Tensor) -> Result<Tensor> {
        check_images("siglip teacher", images)?;
        tch::no_grad(|| {
            let x = match self.resize {
                Some((h, w)) => images.f_upsample_bilinear2d([h, w], false, None, None)?,
                None => images.shallow_clone(),
            };
            self.model.hidden_state(&x, self.layer)
        })
    }

    fn dim(&self) -> i64 {
        self.model.cfg.hidden_size
    }

    fn grid(&self, h: i64, w: i64) -> (i64, i64) {
        let (h, w) = self.resize.unwrap_or((h, w));
        self.model.grid(h, w)
    }

    fn variables(&self) -> Vec<(String, Tensor)> {
        sorted_variables(&self._vs)
    }

    fn name(&self) -> &str {
        if self.random {
            "siglip-random-init"
        } else {
            "siglip"
        }
    }

    fn bf16_weights(&mut self) -> Result<()> {
        crate::teacher::vars_to_bf16(&self._vs)?;
        self.model.fuse_qkv()
    }
}
