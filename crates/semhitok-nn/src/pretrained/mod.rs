//! A trained SemHiTok as a portable model folder, and the inference API over it.
//!
//! ```text
//! DIR/config.json         PretrainedConfig: model config, teacher kind + config, preprocessing,
//!                         vocabulary sizes K, m, K*m, decode mode, grid, feature width, provenance
//! DIR/model.safetensors   every tensor, named by module path: spc.*, pixel.*, decoder.* (the
//!                         SemHiTok parts as trained, i.e. the EMA when the run kept one) and
//!                         teacher.* (the frozen teacher, so the folder alone encodes)
//! DIR/README.md           model card
//! ```
//!
//! [`Tokenizer::from_pretrained`] (also reachable as [`SemHiTok::from_pretrained`]) loads a
//! folder strictly: a missing, unexpected or mis-shaped tensor is an error listing every such
//! name, and `config.json` is checked against itself and the weights. A [`Tokenizer`] owns the
//! model, its teacher and the preprocessing, so `encode(images)` takes raw images (u8 or
//! [-1, 1] floats, any size) and gives ids and features; `decode(unified)` gives images back.
//!
//! Canonical ids are those of fp32 on the CPU; CUDA in fp32 (TF32 off, LibTorch's default for
//! matmuls) is expected to give the same ids.

mod config;
mod preprocess;

pub use config::{Crop, Preprocess, PretrainedConfig, Resample, TeacherSpec, Vocab, FORMAT};
pub use preprocess::{adm_geometry, preprocess};

use crate::error::{Error, Result};
use crate::model::{Encoded, Part, SemHiTok};
use crate::teacher::Teacher;
use crate::weights::{load_strict_tensors, read_safetensors, LoadOptions};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// File names inside a model folder.
pub const CONFIG_FILE: &str = "config.json";
/// Weights file of a model folder.
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// Model card of a model folder.
pub const CARD_FILE: &str = "README.md";
/// Name prefix of the teacher's tensors in `model.safetensors`.
pub const TEACHER_PREFIX: &str = "teacher.";

/// What [`Tokenizer::analyze`] computes.
#[derive(Debug)]
pub struct Analysis {
    /// Ids `[B, h, w]` and features `[B, h*w, D]`.
    pub encoded: Encoded,
    /// Reconstructions `[B, 3, S, S]` (not clamped).
    pub recon: Tensor,
    /// Teacher features `[B, N, C_t]`.
    pub teacher_features: Tensor,
    /// The SPC decoder's reconstruction of the teacher features `[B, N, C_t]`.
    pub semantic_features: Tensor,
}

/// A trained tokenizer: the model, its frozen teacher and the preprocessing.
pub struct Tokenizer {
    model: SemHiTok,
    teacher: Box<dyn Teacher>,
    config: PretrainedConfig,
    /// Which part of `encode` runs in bf16 ([`Tokenizer::use_bf16`]).
    bf16: Bf16Encode,
}

/// Which part of [`Tokenizer::encode`] runs in bf16 on CUDA. The nearest-code searches compute
/// fp32 scores in every mode (they run outside autocast), so only the features they search
/// change. `Off`, fp32 everywhere, gives the canonical ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Bf16Encode {
    /// fp32 (canonical ids).
    #[default]
    Off,
    /// The teacher's weights in bf16, its forward under autocast; the SPC head and the pixel
    /// encoder in fp32.
    Teacher,
    /// The teacher as in `Teacher`, and the SPC head and the pixel encoder under autocast too (what
    /// a PyTorch user gets from wrapping the encode path in `torch.autocast`).
    Encoders,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokenizer")
            .field("teacher", &self.teacher.name())
            .field("vocab", &self.config.vocab)
            .field("decode_mode", &self.config.decode_mode)
            .finish()
    }
}

impl SemHiTok {
    /// Load a model folder written by [`Tokenizer::save_pretrained`] (`semhitok export`) on
    /// `device`: the model with its teacher and preprocessing, see [`Tokenizer`].
    pub fn from_pretrained(dir: impl AsRef<Path>, device: Device) -> Result<Tokenizer> {
        Tokenizer::from_pretrained(dir, device)
    }
}

/// Adds `prefix` to every name of a strict-load error (the parts load without their prefix).
fn prefixed(e: Error, prefix: &str, acc: &mut [Vec<String>; 3]) -> Result<()> {
    match e {
        Error::Checkpoint {
            missing,
            unexpected,
            mismatched,
            ..
        } => {
            acc[0].extend(missing.into_iter().map(|k| format!("{prefix}{k}")));
            acc[1].extend(unexpected.into_iter().map(|k| format!("{prefix}{k}")));
            acc[2].extend(mismatched.into_iter().map(|k| format!("{prefix}{k}")));
            Ok(())
        }
        e => Err(e),
    }
}

impl Tokenizer {
    /// Load the model folder `dir` on `device` (see the module docs for the layout).
    pub fn from_pretrained(dir: impl AsRef<Path>, device: Device) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "not a model folder (write one with `semhitok export`)",
                ),
            });
        }
        let cpath = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&cpath).map_err(|source| Error::Io {
            path: cpath.clone(),
            source,
        })?;
        let config = PretrainedConfig::from_json(&text, &cpath)?;
        let wpath = dir.join(WEIGHTS_FILE);
        let mut groups: BTreeMap<&str, Vec<(String, Tensor)>> = BTreeMap::new();
        let prefixes = [
            Part::Spc.prefix(),
            Part::Pixel.prefix(),
            Part::Decoder.prefix(),
            TEACHER_PREFIX,
        ];
        let mut problems: [Vec<String>; 3] = Default::default();
        for (k, t) in read_safetensors(&wpath)? {
            match prefixes.iter().find(|p| k.starts_with(**p)) {
                Some(p) => groups
                    .entry(p)
                    .or_default()
                    .push((k[p.len()..].to_string(), t)),
                None => problems[1].push(k),
            }
        }
        let mut model = SemHiTok::new(&config.model, device).map_err(|e| Error::Format {
            path: cpath.clone(),
            msg: format!("key `model`: {e}"),
        })?;
        let strict = LoadOptions::default();
        for part in Part::ALL {
            let tensors = groups.remove(part.prefix()).unwrap_or_default();
            if let Err(e) = load_strict_tensors(model.var_store_mut(part), tensors, &wpath, &strict)
            {
                prefixed(e, part.prefix(), &mut problems)?;
            }
            model.freeze(part);
        }
        let tensors = groups.remove(TEACHER_PREFIX).unwrap_or_default();
        let teacher = match config.teacher.build(tensors, &wpath, device) {
            Ok(t) => Some(t),
            Err(e) => {
                prefixed(e, TEACHER_PREFIX, &mut problems)?;
                None
            }
        };
        let [missing, unexpected, mismatched] = problems;
        if !missing.is_empty() || !unexpected.is_empty() || !mismatched.is_empty() {
            return Err(Error::Checkpoint {
                path: wpath,
                missing,
                unexpected,
                mismatched,
            });
        }
        let teacher = teacher.ok_or_else(|| Error::Format {
            path: wpath.clone(),
            msg: "teacher not built".into(),
        })?;
        Self::new(model, teacher, config)
    }

    /// Assemble a tokenizer from a model, its teacher and the folder config describing them
    /// (the exporter's path; `config.model` must be the model's config, and the teacher's token
    /// grid and width must be what the SPC reads).
    pub fn new(
        model: SemHiTok,
        teacher: Box<dyn Teacher>,
        config: PretrainedConfig,
    ) -> Result<Self> {
        if &config.model != model.config() {
            return Err(Error::Config(
                "the folder config's `model` differs from the model's config".into(),
            ));
        }
        config.validate(Path::new(CONFIG_FILE))?;
        let s = config.preprocessing.image_size;
        let (gh, gw) = teacher.grid(s, s);
        let spc = &config.model.spc;
        if teacher.dim() != spc.teacher_dim || gh * gw != spc.num_tokens {
            return Err(Error::Config(format!(
                "teacher {} gives {gh}x{gw} tokens of dim {} at {s} px; the SPC expects {} tokens of dim {}",
                teacher.name(),
                teacher.dim(),
                spc.num_tokens,
                spc.teacher_dim
            )));
        }
        Ok(Self {
            model,
            teacher,
            config,
            bf16: Bf16Encode::Off,
        })
    }

    /// The faster, non-canonical teacher path on CUDA: the teacher's weights stored in bf16 and its
    /// forward under CUDA autocast (the process's autocast dtype: semhitok-train's
    /// `amp::set_cuda_autocast_bf16` makes it bf16), its features cast back to f32 before the SPC.
    /// Some semantic ids may change (measure it: `semhitok bench-tokenize --teacher-bf16`). On the
    /// CPU this does nothing. One-way: load the folder again for canonical ids.
    pub fn use_bf16_teacher(&mut self) -> Result<()> {
        self.use_bf16(Bf16Encode::Teacher)
    }

    /// Runs [`Self::encode`] in bf16 mode `mode` on CUDA ([`Bf16Encode`]; `Encoders`, the fastest,
    /// puts the SPC head and the pixel encoder under autocast too, the searches stay fp32, and may
    /// change more ids than `Teacher`: measure it with `semhitok bench-tokenize --bf16-encoders`).
    /// On the CPU, and for `Off`, this does nothing. One-way: load the folder again for canonical
    /// ids.
    pub fn use_bf16(&mut self, mode: Bf16Encode) -> Result<()> {
        if self.device().is_cuda() && mode != Bf16Encode::Off {
            if self.bf16 == Bf16Encode::Off {
                self.teacher.bf16_weights()?;
            }
            self.bf16 = mode;
        }
        Ok(())
    }

    /// The bf16 mode in effect ([`Bf16Encode::Off`] on the CPU).
    pub fn bf16_mode(&self) -> Bf16Encode {
        self.bf16
    }

    /// Teacher features of a preprocessed batch, `[B, N, C_t]` f32.
    fn teacher_features(&self, x: &Tensor) -> Result<Tensor> {
        if self.bf16 != Bf16Encode::Off {
            let f = crate::amp::autocast(true, || self.teacher.features(x))?;
            Ok(f.f_to_kind(Kind::Float)?)
        } else {
            self.teacher.features(x)
        }
    }

    /// The folder config.
    pub fn config(&self) -> &PretrainedConfig {
        &self.config
    }
    /// The model.
    pub fn model(&self) -> &SemHiTok {
        &self.model
    }
    /// The frozen teacher.
    pub fn teacher(&self) -> &dyn Teacher {
        self.teacher.as_ref()
    }
    /// Device of the model.
    pub fn device(&self) -> Device {
        self.model.device()
    }
    /// Unified vocabulary size K * m.
    pub fn vocab_size(&self) -> i64 {
        self.config.vocab.unified_vocab_size
    }

    /// images `[B, 3, H, W]` / `[3, H, W]`, u8 or float in [-1, 1], any size -> the model input
    /// `[B, 3, S, S]` f32 in [-1, 1] on the model's device ([`preprocess`]).
    pub fn preprocess(&self, images: &Tensor) -> Result<Tensor> {
        preprocess(images, self.config.preprocessing.image_size, self.device())
    }

    /// Tokenize: images (see [`Self::preprocess`]) -> ids `[B, h, w]` int64 (semantic, pixel,
    /// unified) and features `[B, h*w, D]` f32. No gradient.
    pub fn encode(&self, images: &Tensor) -> Result<Encoded> {
        let x = self.preprocess(images)?;
        tch::no_grad(|| {
            if self.bf16 == Bf16Encode::Encoders {
                let mut e = crate::amp::autocast(true, || -> Result<Encoded> {
                    let feats = self.teacher.features(&x)?;
                    self.model.encode(&x, &feats)
                })?;
                e.features = e.features.f_to_kind(Kind::Float)?;
                return Ok(e);
            }
            let feats = self.teacher_features(&x)?;
            self.model.encode(&x, &feats)
        })
    }

    /// `decode(encode(images))` in one pass: images -> reconstructions `[B, 3, S, S]` in about
    /// [-1, 1] (not clamped). No gradient.
    pub fn reconstruct(&self, images: &Tensor) -> Result<Tensor> {
        let x = self.preprocess(images)?;
        tch::no_grad(|| {
            let feats = self.teacher_features(&x)?;
            self.model.reconstruct(&x, &feats)
        })
    }

    /// Everything evaluation reads, from one teacher, encoder and decoder forward: the
    /// [`Encoded`] ids and features, the reconstructions, the teacher features `[B, N, C_t]` and
    /// the SPC's decoding of the semantic codes `[B, N, C_t]`. No gradient.
    pub fn analyze(&self, images: &Tensor) -> Result<Analysis> {
        let x = self.preprocess(images)?;
        tch::no_grad(|| {
            let teacher_features = self.teacher_features(&x)?;
            let (encoded, recon) = self.model.encode_reconstruct(&x, &teacher_features)?;
            let d_sem = self.config.model.spc.code_dim;
            let codes = encoded.features.f_narrow(-1, 0, d_sem)?.f_contiguous()?;
            let semantic_features = self.model.spc().decode(&codes)?;
            Ok(Analysis {
                encoded,
                recon,
                teacher_features,
                semantic_features,
            })
        })
    }

    /// Checked unified ids: `[B, h, w]` or `[h, w]`, any integer dtype, every id in `0..K*m`
    /// (an error names the first offending position) -> int64 `[B, h, w]` on the device.
    pub fn check_ids(&self, unified: &Tensor) -> Result<Tensor> {
        let [gh, gw] = self.config.grid;
        let u = if unified.dim() == 2 {
            unified.f_unsqueeze(0)?
        } else {
            unified.shallow_clone()
        };
        if !matches!(
            u.kind(),
            Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Int8 | Kind::Uint8
        ) {
            return Err(Error::Config(format!(
                "unified ids of dtype {:?}: ids must be an integer dtype (int64/int32)",
                u.kind()
            )));
        }
        match u.size().as_slice() {
            &[_, h, w] if h == gh && w == gw => {}
            _ => {
                return Err(Error::shape(
                    "unified ids",
                    format!("[B, {gh}, {gw}] or [{gh}, {gw}]"),
                    unified,
                ))
            }
        }
        let u = u.f_to_kind(Kind::Int64)?;
        let bound = self.vocab_size();
        let bad = u.f_lt(0)?.f_logical_or(&u.f_ge(bound)?)?;
        if bad.f_any()?.int64_value(&[]) != 0 {
            let pos: Vec<i64> = Vec::try_from(bad.f_nonzero()?.f_get(0)?)?;
            let value = u.int64_value(&pos);
            return Err(Error::IdOutOfRange {
                what: "unified ids".into(),
                position: pos,
                value,
                bound,
            });
        }
        Ok(u.f_to_device(self.device())?)
    }

    /// Detokenize: unified ids (see [`Self::check_ids`]) -> images `[B, 3, S, S]` in about
    /// [-1, 1] (not clamped). No gradient.
    pub fn decode(&self, unified: &Tensor) -> Result<Tensor> {
        let u = self.check_ids(unified)?;
        self.model.decode(&u)
    }

    /// Quantized features `[B, h*w, D]` of unified ids (what the LLaVA projector reads).
    pub fn features_of(&self, unified: &Tensor) -> Result<Tensor> {
        let u = self.check_ids(unified)?;
        tch::no_grad(|| self.model.features_of(&u))
    }

    /// Every tensor of the folder's `model.safetensors`, by name, on the CPU.
    pub fn state_dict(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = Part::ALL
            .iter()
            .flat_map(|p| self.model.named_variables(*p))
            .chain(
                self.teacher
                    .variables()
                    .into_iter()
                    .map(|(k, t)| (format!("{TEACHER_PREFIX}{k}"), t)),
            )
            .map(|(k, t)| (k, t.detach().to_device(Device::Cpu).contiguous()))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }

    /// Write the model folder `dir` (config.json, model.safetensors, README.md = `card`)
    /// atomically: into a temporary sibling folder, fsynced, then renamed. An existing `dir` is
    /// an error unless `overwrite` (it is then replaced only after the new folder is complete).
    pub fn save_pretrained(&self, dir: &Path, card: &str, overwrite: bool) -> Result<()> {
        if self.teacher.variables().is_empty() {
            return Err(Error::Config(format!(
                "teacher {} has no weights to store",
                self.teacher.name()
            )));
        }
        if dir.exists() && !overwrite {
            return Err(Error::Io {
                path: dir.to_path_buf(),
                source: std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    "exists (pass --overwrite to replace it)",
                ),
            });
        }
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Io { path, source }
        };
        let name = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "model".into());
        let parent = match dir.parent() {
            Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
            _ => PathBuf::from("."),
        };
        std::fs::create_dir_all(&parent).map_err(io(&parent))?;
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
        let json = serde_json::to_string_pretty(&self.config).map_err(|e| Error::Format {
            path: tmp.join(CONFIG_FILE),
            msg: e.to_string(),
        })?;
        for (file, bytes) in [(CONFIG_FILE, json.as_bytes()), (CARD_FILE, card.as_bytes())] {
            let p = tmp.join(file);
            let mut f = std::fs::File::create(&p).map_err(io(&p))?;
            f.write_all(bytes).map_err(io(&p))?;
            f.sync_all().map_err(io(&p))?;
        }
        let wp = tmp.join(WEIGHTS_FILE);
        Tensor::write_safetensors(&self.state_dict(), &wp)?;
        std::fs::File::open(&wp)
            .and_then(|f| f.sync_all())
            .map_err(io(&wp))?;
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        if dir.exists() {
            std::fs::rename(dir, &old).map_err(io(dir))?;
        }
        std::fs::rename(&tmp, dir).map_err(io(dir))?;
        if old.exists() {
            std::fs::remove_dir_all(&old).map_err(io(&old))?;
        }
        if let Ok(f) = std::fs::File::open(&parent) {
            let _ = f.sync_all();
        }
        Ok(())
    }
}
