//! Factories of the frozen networks a stage uses: the teacher and the perceptual loss network.

use crate::config::{TeacherKind, TrainConfig};
use crate::error::Result;
use semhitok_nn::efficientnet::{EffNetFeatures, EfficientNetTeacher};
use semhitok_nn::lpips::Lpips;
use semhitok_nn::perceptual::EffNetPerceptual;
use semhitok_nn::pretrained::TeacherSpec;
use semhitok_nn::siglip::{SiglipTeacher, SiglipVisionConfig};
use semhitok_nn::teacher::Teacher;
use tch::{Device, Tensor};

/// EfficientNet-Lite0 weights of the embedded perceptual loss (fetched by `cargo xtask assets`):
/// the default of `loss.effnet_weights`.
pub const EFFNET_WEIGHTS: &str = ".assets/weights/efficientnet_lite0.safetensors";
/// LPIPS v0.1 linear heads (fetched by `cargo xtask assets`).
pub const LPIPS_HEADS: &str = ".assets/weights/lpips_vgg.safetensors";

/// The perceptual loss network of a pixel stage (`loss.perceptual`).
#[derive(Debug)]
pub enum Perceptual {
    Effnet(Box<EffNetPerceptual>),
    Lpips(Box<Lpips>),
}

impl Perceptual {
    /// recon, target: [B, 3, H, W] in [-1, 1] -> per-image distance [B].
    pub fn forward(&self, recon: &Tensor, target: &Tensor) -> semhitok_nn::Result<Tensor> {
        match self {
            Perceptual::Effnet(n) => n.forward(recon, target),
            Perceptual::Lpips(n) => n.forward(recon, target),
        }
    }
}

/// The frozen teacher of `cfg` on `device`. Relative weight paths are resolved against the
/// current directory.
pub fn build_teacher(cfg: &TrainConfig, device: Device) -> Result<Box<dyn Teacher>> {
    let t = &cfg.teacher;
    if let Some(w) = t.weights.as_deref().filter(|w| !w.exists()) {
        return Err(cfg.error("teacher.weights", format!("{} does not exist", w.display())));
    }
    match t.kind {
        TeacherKind::EfficientnetLite0 => {
            let path = t.weights.clone().ok_or_else(|| {
                cfg.error(
                    "teacher.weights",
                    "EfficientNet-Lite0 needs weights (.assets/weights/efficientnet_lite0.safetensors; run `cargo xtask assets`)",
                )
            })?;
            let features = match t.stride {
                8 => EffNetFeatures::Stride8,
                16 => EffNetFeatures::Stride16,
                s => return Err(cfg.error("teacher.stride", format!("{s}: expected 8 or 16"))),
            };
            Ok(Box::new(EfficientNetTeacher::load(
                &path, device, features,
            )?))
        }
        TeacherKind::SiglipLargeP16_256 | TeacherKind::SiglipSo400mP14_384 => {
            let (vcfg, resize) = siglip_spec(t.kind).unwrap_or_default();
            match &t.weights {
                Some(w) => Ok(Box::new(SiglipTeacher::load(
                    &vcfg,
                    w,
                    device,
                    t.siglip_layer,
                    resize,
                )?)),
                None => Ok(Box::new(SiglipTeacher::random_init(
                    &vcfg,
                    device,
                    t.siglip_layer,
                    resize,
                )?)),
            }
        }
    }
}

/// The teacher of `cfg` as a model folder records it (`config.json` `teacher`).
pub fn teacher_spec(cfg: &TrainConfig) -> TeacherSpec {
    let t = &cfg.teacher;
    match siglip_spec(t.kind) {
        Some((vision, resize)) => TeacherSpec::Siglip {
            vision,
            layer: t.siglip_layer,
            resize: resize.map(|(h, w)| [h, w]),
        },
        None => TeacherSpec::EfficientnetLite0 {
            features: if t.stride == 8 {
                EffNetFeatures::Stride8
            } else {
                EffNetFeatures::Stride16
            },
        },
    }
}

/// The SigLIP vision config of a SigLIP teacher kind and the size its inputs are resized to
/// (`None`: used at the data size). `None` for other kinds.
pub fn siglip_spec(kind: TeacherKind) -> Option<(SiglipVisionConfig, Option<(i64, i64)>)> {
    match kind {
        TeacherKind::SiglipLargeP16_256 => {
            Some((SiglipVisionConfig::siglip_large_patch16_256(), None))
        }
        // so400m's native 384 px: 27x27 tokens of 14 px (the pixel ViTs use 378 px = 27 x 14).
        TeacherKind::SiglipSo400mP14_384 => Some((
            SiglipVisionConfig::siglip_so400m_patch14_384(),
            Some((384, 384)),
        )),
        TeacherKind::EfficientnetLite0 => None,
    }
}

/// The teacher's token grid and width must be what the SPC expects (semhitok-nn's
/// `SpcConfig::check_teacher`, reported under the key `model.spc` with the config file).
pub fn check_teacher_fits(cfg: &TrainConfig, teacher: &dyn Teacher) -> Result<()> {
    match cfg.model.spc.check_teacher(teacher, cfg.data.image_size) {
        Err(semhitok_nn::Error::Config(msg)) => Err(cfg.error(
            "model.spc",
            format!("{msg} (model.spc: num_tokens, teacher_dim)"),
        )),
        r => Ok(r?),
    }
}
