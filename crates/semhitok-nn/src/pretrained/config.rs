//! `config.json` of a model folder: the model config, the teacher's kind and config, the
//! preprocessing, the vocabulary sizes, and where the weights came from. Parsed strictly (an
//! unknown key is an error naming it) and checked against itself and against the weights.

use crate::efficientnet::{EffNetFeatures, EfficientNetTeacher};
use crate::error::{Error, Result};
use crate::model::{DecodeMode, SemHiTokConfig};
use crate::siglip::{SiglipLayer, SiglipTeacher, SiglipVisionConfig};
use crate::teacher::Teacher;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::{Device, Tensor};

/// Format tag of `config.json`.
pub const FORMAT: &str = "semhitok-pretrained/1";

/// The frozen teacher of a model folder: which network, with which settings. Its weights are the
/// `teacher.*` tensors of `model.safetensors`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum TeacherSpec {
    /// EfficientNet-Lite0 (the embedded default), ImageNet normalization inside.
    EfficientnetLite0 {
        /// Which feature map is the teacher's output.
        features: EffNetFeatures,
    },
    /// A SigLIP vision tower (Hugging Face `SiglipVisionConfig`).
    Siglip {
        vision: SiglipVisionConfig,
        layer: SiglipLayer,
        /// Fixed size inputs are resized to before the tower (bilinear), `None`: as given.
        resize: Option<[i64; 2]>,
    },
}

impl TeacherSpec {
    /// Build the teacher from its tensors (names without the `teacher.` prefix), strictly.
    pub fn build(
        &self,
        tensors: Vec<(String, Tensor)>,
        origin: &Path,
        device: Device,
    ) -> Result<Box<dyn Teacher>> {
        Ok(match self {
            TeacherSpec::EfficientnetLite0 { features } => Box::new(
                EfficientNetTeacher::from_tensors(tensors, origin, device, *features)?,
            ),
            TeacherSpec::Siglip {
                vision,
                layer,
                resize,
            } => Box::new(SiglipTeacher::from_tensors(
                vision,
                tensors,
                origin,
                device,
                *layer,
                resize.map(|[h, w]| (h, w)),
            )?),
        })
    }
}

/// Where the image is cut from an input of any size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Crop {
    /// guided-diffusion's `center_crop_arr`: shorter side to `image_size` (long side
    /// `round(L * image_size / S)`), then `(L' - image_size) // 2` cut from the start of the long side.
    AdmCenter,
}

/// How the crop is resampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Resample {
    /// Antialiased bicubic (a = -0.5, PyTorch's `interpolate(mode="bicubic", antialias=True)`
    /// on tensors; semhitok-data's antialiased Catmull-Rom on image files), clamped to [-1, 1].
    BicubicAntialias,
}

/// The transform from an input image to what the model reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preprocess {
    /// Side of the square model input.
    pub image_size: i64,
    pub crop: Crop,
    pub resample: Resample,
    /// Pixel range the model reads: `[-1, 1]`, i.e. `u8 / 127.5 - 1` (each teacher normalizes
    /// inside: ImageNet mean/std for EfficientNet, `(x - 0.5) / 0.5` = identity for SigLIP).
    pub value_range: [f64; 2],
}

impl Preprocess {
    /// The ADM center crop at `image_size`, values in [-1, 1].
    pub fn adm(image_size: i64) -> Self {
        Self {
            image_size,
            crop: Crop::AdmCenter,
            resample: Resample::BicubicAntialias,
            value_range: [-1.0, 1.0],
        }
    }
}

/// Vocabulary sizes (redundant with the model config on purpose: readers of the folder need them
/// without knowing SemHiTok's config layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Vocab {
    /// K: semantic codebook size.
    pub semantic_codebook_size: i64,
    /// m: pixel codes per semantic code.
    pub sub_codebook_size: i64,
    /// K * m: the unified ids are `k * m + j` in `0..K * m`.
    pub unified_vocab_size: i64,
}

/// The whole `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PretrainedConfig {
    /// [`FORMAT`].
    pub format: String,
    pub model: SemHiTokConfig,
    pub teacher: TeacherSpec,
    pub preprocessing: Preprocess,
    pub vocab: Vocab,
    pub decode_mode: DecodeMode,
    /// Token grid `[h, w]` of one image.
    pub grid: [i64; 2],
    /// Width D of the features (`D_sem + D_pix`, or `D_sem` in semantic-only mode).
    pub feature_dim: i64,
    /// Provenance written by the exporter (run, stage, step, EMA); not read by the loader.
    #[serde(default)]
    pub source: serde_json::Value,
}

impl PretrainedConfig {
    /// The config of `model` with `teacher` (every derived field filled in).
    pub fn new(model: SemHiTokConfig, teacher: TeacherSpec, source: serde_json::Value) -> Self {
        let g = model.encoder.grid();
        Self {
            format: FORMAT.into(),
            preprocessing: Preprocess::adm(model.encoder.image_size),
            vocab: Vocab {
                semantic_codebook_size: model.spc.codebook_size,
                sub_codebook_size: model.sghc.m,
                unified_vocab_size: model.sghc.vocab_size(),
            },
            decode_mode: model.decode_mode(),
            grid: [g, g],
            feature_dim: model.feature_dim(),
            teacher,
            model,
            source,
        }
    }

    /// Parse `config.json` text strictly and check it (`path` names the file in errors).
    pub fn from_json(text: &str, path: &Path) -> Result<Self> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let cfg: Self = serde_path_to_error::deserialize(de).map_err(|e| Error::Format {
            path: path.to_path_buf(),
            msg: format!("key `{}`: {}", e.path(), e.inner()),
        })?;
        cfg.validate(path)?;
        Ok(cfg)
    }

    /// Every redundant field must agree with the model config (each error names the key).
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |key: &str, msg: String| {
            Err(Error::Format {
                path: path.to_path_buf(),
                msg: format!("key `{key}`: {msg}"),
            })
        };
        if self.format != FORMAT {
            return bad("format", format!("`{}`, expected `{FORMAT}`", self.format));
        }
        if let Err(e) = self.model.validate() {
            return bad("model", e.to_string());
        }
        let want = Self::new(
            self.model.clone(),
            self.teacher.clone(),
            self.source.clone(),
        );
        if self.vocab != want.vocab {
            return bad(
                "vocab",
                format!(
                    "{:?} but the model config gives {:?}",
                    self.vocab, want.vocab
                ),
            );
        }
        if self.decode_mode != want.decode_mode {
            return bad(
                "decode_mode",
                format!(
                    "{:?} but model.fusion = {:?} gives {:?}",
                    self.decode_mode, self.model.fusion, want.decode_mode
                ),
            );
        }
        if self.grid != want.grid {
            return bad(
                "grid",
                format!("{:?} but the model config gives {:?}", self.grid, want.grid),
            );
        }
        if self.feature_dim != want.feature_dim {
            return bad(
                "feature_dim",
                format!(
                    "{} but the model config gives {}",
                    self.feature_dim, want.feature_dim
                ),
            );
        }
        if self.preprocessing.image_size != self.model.encoder.image_size {
            return bad(
                "preprocessing.image_size",
                format!(
                    "{} but model.encoder.image_size = {}",
                    self.preprocessing.image_size, self.model.encoder.image_size
                ),
            );
        }
        if self.preprocessing.value_range != [-1.0, 1.0] {
            return bad(
                "preprocessing.value_range",
                format!(
                    "{:?}; the model reads [-1, 1]",
                    self.preprocessing.value_range
                ),
            );
        }
        Ok(())
    }
}
