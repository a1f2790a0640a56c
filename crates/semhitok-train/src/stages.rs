//! The four training stages as [`Task`]s over semhitok-nn's [`SemHiTok`], plus the builders the
//! binary and the demo use (teacher, data, model from a checkpoint).
//!
//! | stage | trains | frozen | loss |
//! |---|---|---|---|
//! | `spc` | SPC head + semantic decoder (codebook by EMA) | teacher | `w_sem (1 - cos) + beta commit` |
//! | `pre` | pixel encoder, SGHC codebook, pixel decoder | teacher, SPC | `w_rec L_rec + codebook + commit (+ w_p L_p + GAN)` |
//! | `decoder-ft` | pixel decoder (optionally re-initialised larger) | all else | as `pre` |
//! | `joint` | SPC head + semantic decoder + pixel decoder on semantic codes | teacher | `spc` + `pre` pixel terms |
//!
//! `pre` with `model.fusion = "semantic_only"` is the semantic-only decoder baseline; with
//! `pixel_only` / `length_concat` and `model.sghc.m` it gives the paper's Tab. 5 ablations.

use crate::checkpoint::{self, Checkpoint};
use crate::config::{DataKind, PerceptualKind, RecLoss, Stage, TeacherKind, TrainConfig};
use crate::error::{Error, Result};
use crate::gan::Gan;
use crate::optim::{decays, Param};
use crate::synthetic::SyntheticBatches;
use crate::trainer::{train, Batches, LossOut, Task, TrainOptions, TrainReport};
use semhitok_nn::efficientnet::{EffNetFeatures, EfficientNetTeacher};
use semhitok_nn::losses::PixelLoss;
use semhitok_nn::lpips::Lpips;
use semhitok_nn::model::{Part, SemHiTok};
use semhitok_nn::perceptual::EffNetPerceptual;
use semhitok_nn::quantizer::CodeStats;
use semhitok_nn::siglip::{SiglipTeacher, SiglipVisionConfig};
use semhitok_nn::teacher::Teacher;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// EfficientNet-Lite0 weights of the embedded perceptual loss (fetched by `cargo xtask assets`).
const EFFNET_WEIGHTS: &str = ".assets/weights/efficientnet_lite0.safetensors";
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
    match t.kind {
        TeacherKind::EfficientnetLite0 => {
            let path = t.weights.clone().ok_or_else(|| Error::Config {
                file: PathBuf::from("config"),
                key: "teacher.weights".into(),
                msg: "EfficientNet-Lite0 needs weights (.assets/weights/efficientnet_lite0.safetensors; run `cargo xtask assets`)".into(),
            })?;
            let features = match t.stride {
                8 => EffNetFeatures::Stride8,
                16 => EffNetFeatures::Stride16,
                s => {
                    return Err(Error::Config {
                        file: PathBuf::from("config"),
                        key: "teacher.stride".into(),
                        msg: format!("{s}: expected 8 or 16"),
                    })
                }
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

/// The training batches of `cfg`.
pub fn build_batches(cfg: &TrainConfig) -> Result<Box<dyn Batches>> {
    let d = &cfg.data;
    match d.kind {
        DataKind::Synthetic => Ok(Box::new(SyntheticBatches::new(
            cfg.run.seed,
            d.batch_size,
            d.image_size,
        ))),
        DataKind::Photos => {
            let root = d.root.clone().unwrap_or_default();
            let photos = semhitok_data::PhotoCrops::open(&root, photo_config(cfg))?;
            let mut lc = semhitok_data::LoaderConfig::train(d.batch_size as usize, cfg.run.seed);
            lc.workers = d.workers;
            Ok(Box::new(PhotoBatches {
                loader: photos.train(lc)?,
            }))
        }
    }
}

fn params_of(model: &SemHiTok, parts: &[Part]) -> Vec<Param> {
    let mut v: Vec<Param> = parts
        .iter()
        .flat_map(|p| model.trainable_variables(*p))
        .map(|(name, var)| Param {
            decay: decays(&name, &var),
            name,
            var,
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

fn state_of(model: &SemHiTok, parts: &[Part]) -> BTreeMap<String, Tensor> {
    parts
        .iter()
        .flat_map(|p| model.named_variables(*p))
        .collect()
}

/// Copy the variables of `parts` from a checkpoint (keys `model.{part}.…`); where the run kept
/// an EMA of its weights (`optim.ema_decay`: keys `ema.{part}.…`), the EMA values replace them.
/// So a model "as trained" is its EMA everywhere: in evaluation, encode/decode, and as the frozen
/// SPC or pixel encoder that a later stage starts from (the semantic ids stay consistent).
/// Returns whether any EMA tensor was used.
pub fn load_parts(model: &SemHiTok, ck: &Checkpoint, parts: &[Part]) -> Result<bool> {
    let vars = state_of(model, parts);
    checkpoint::restore_vars(ck, "model.", &vars)?;
    let _g = tch::no_grad_guard();
    let mut used = false;
    for (k, mut v) in vars {
        if let Some(t) = ck.tensors.get(&format!("ema.{k}")) {
            if t.size() != v.size() {
                return Err(Error::ckpt(
                    &ck.dir,
                    format!(
                        "EMA tensor `ema.{k}`: shape {:?}, model expects {:?}",
                        t.size(),
                        v.size()
                    ),
                ));
            }
            v.copy_(t);
            used = true;
        }
    }
    Ok(used)
}

fn merge_stats(acc: &mut Option<CodeStats>, s: Option<CodeStats>) -> Result<()> {
    if let Some(s) = s {
        match acc {
            Some(a) => a.merge(&s)?,
            None => *acc = Some(s),
        }
    }
    Ok(())
}

/// Stage 1: SPC.
pub struct SpcTask {
    pub model: SemHiTok,
    pub teacher: Box<dyn Teacher>,
    semantic_weight: f64,
    pending: Option<CodeStats>,
}

impl std::fmt::Debug for SpcTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SpcTask").finish()
    }
}

impl Task for SpcTask {
    fn params(&self) -> Vec<Param> {
        params_of(&self.model, &[Part::Spc])
    }
    fn state(&self) -> BTreeMap<String, Tensor> {
        state_of(&self.model, &[Part::Spc])
    }
    fn loss(&mut self, images: &Tensor, _step: u64) -> Result<LossOut> {
        let feats = self.teacher.features(images)?;
        let out = self.model.spc().forward_t(&feats, true)?;
        merge_stats(&mut self.pending, out.stats)?;
        let total = &out.loss_cos * self.semantic_weight + &out.loss_commit;
        Ok(LossOut {
            parts: vec![
                ("cos", out.loss_cos.detach()),
                ("commit", out.loss_commit.detach()),
            ],
            total,
            disc_inputs: None,
        })
    }
    fn after_step(&mut self, _step: u64) -> Result<()> {
        if let Some(s) = self.pending.take() {
            self.model.spc().ema_update(&s)?;
        }
        Ok(())
    }
}

/// Stages 2 (`pre`), `decoder-ft` and `joint`: pixel reconstruction.
pub struct PixelTask {
    pub model: SemHiTok,
    pub teacher: Box<dyn Teacher>,
    stage: Stage,
    rec: PixelLoss,
    rec_weight: f64,
    semantic_weight: f64,
    trained: Vec<Part>,
    /// Perceptual loss network and its weight (`loss.perceptual`, `loss.perceptual_weight`).
    perceptual: Option<(Perceptual, f64)>,
    pending_sghc: Option<CodeStats>,
    pending_spc: Option<CodeStats>,
    /// PatchGAN and its losses (`[disc]`, `None` when disabled).
    gan: Option<Gan>,
}

impl std::fmt::Debug for PixelTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PixelTask")
            .field("stage", &self.stage)
            .finish()
    }
}

impl Task for PixelTask {
    fn params(&self) -> Vec<Param> {
        params_of(&self.model, &self.trained)
    }
    fn disc_params(&self) -> Vec<Param> {
        self.gan.as_ref().map(Gan::params).unwrap_or_default()
    }
    fn state(&self) -> BTreeMap<String, Tensor> {
        let mut s = state_of(&self.model, &Part::ALL);
        if let Some(g) = &self.gan {
            s.extend(g.state());
        }
        s
    }
    fn loss(&mut self, images: &Tensor, step: u64) -> Result<LossOut> {
        let feats = self.teacher.features(images)?;
        let mut parts = vec![];
        let (recon, total) = if self.stage == Stage::Joint {
            // One codebook, semantic + pixel losses together (MUSE-VL-style texture incorporation).
            let out = self.model.spc().forward_t(&feats, true)?;
            merge_stats(&mut self.pending_spc, out.stats)?;
            let recon = self.model.decoder().forward(&out.quantized)?;
            parts.push(("cos", out.loss_cos.detach()));
            parts.push(("commit", out.loss_commit.detach()));
            let t = &out.loss_cos * self.semantic_weight + &out.loss_commit;
            (recon, t)
        } else {
            let out = self.model.forward_t(images, &feats, true)?;
            merge_stats(&mut self.pending_sghc, out.pixel.stats)?;
            parts.push(("codebook", out.pixel.loss_codebook.detach()));
            parts.push(("commit", out.pixel.loss_commit.detach()));
            let t = &out.pixel.loss_codebook + &out.pixel.loss_commit;
            (out.recon, t)
        };
        let rec = self.rec.compute(&recon, images)?;
        parts.push(("rec", rec.detach()));
        // taming's `nll_loss`: what the adaptive GAN weight balances against.
        let mut nll = rec * self.rec_weight;
        if let Some((net, w)) = &self.perceptual {
            let p = net.forward(&recon, images)?.mean(tch::Kind::Float);
            parts.push(("perceptual", p.detach()));
            nll += p * *w;
        }
        let mut disc_inputs = None;
        if let Some(gan) = self.gan.as_ref().filter(|g| g.active(step)) {
            let g = gan.generator(&recon, &nll, self.model.decoder().last_layer_weight())?;
            parts.push(("gan_g", g.g_loss));
            parts.push(("gan_w", g.weight));
            nll += g.loss;
            disc_inputs = Some((images.detach(), recon.detach()));
        }
        Ok(LossOut {
            total: total + nll,
            parts,
            disc_inputs,
        })
    }
    fn disc_loss(&mut self, real: &Tensor, fake: &Tensor, step: u64) -> Result<Option<Tensor>> {
        match self.gan.as_mut() {
            Some(g) if g.active(step) => Ok(Some(g.discriminator(real, fake)?)),
            _ => Ok(None),
        }
    }
    fn after_step(&mut self, _step: u64) -> Result<()> {
        if let Some(s) = self.pending_sghc.take() {
            self.model.sghc().ema_update(&s)?;
        }
        if let Some(s) = self.pending_spc.take() {
            self.model.spc().ema_update(&s)?;
        }
        Ok(())
    }
}

/// Resolve `init.spc` / `init.pre` (a run dir or a checkpoint dir).
pub fn init_checkpoint(path: &Path, want_stage: &[&str]) -> Result<Checkpoint> {
    let ck = checkpoint::resolve(path)?;
    if !want_stage.contains(&ck.state.stage.as_str()) {
        return Err(Error::ckpt(
            &ck.dir,
            format!(
                "is a `{}` checkpoint, expected {}",
                ck.state.stage,
                want_stage.join(" or ")
            ),
        ));
    }
    Ok(ck)
}

/// The teacher's token grid and width must be what the SPC expects.
pub fn check_teacher_fits(cfg: &TrainConfig, teacher: &dyn Teacher) -> Result<()> {
    let s = cfg.data.image_size;
    let (gh, gw) = teacher.grid(s, s);
    let spc = &cfg.model.spc;
    if gh * gw != spc.num_tokens || teacher.dim() != spc.teacher_dim {
        return Err(Error::Config {
            file: PathBuf::from("config"),
            key: "model.spc".into(),
            msg: format!(
                "teacher {} gives {gh}x{gw} tokens of width {} at {s} px, but model.spc has num_tokens = {}, teacher_dim = {}",
                teacher.name(),
                teacher.dim(),
                spc.num_tokens,
                spc.teacher_dim
            ),
        });
    }
    Ok(())
}

/// Build the task of `cfg.run.stage` (fresh weights, then `init.*` checkpoints loaded).
pub fn build_task(cfg: &TrainConfig) -> Result<Box<dyn Task>> {
    build_task_opts(cfg, true)
}

/// As [`build_task`] but without loading `init.*` (benchmarks: random SPC, same cost).
pub fn build_task_uninit(cfg: &TrainConfig) -> Result<Box<dyn Task>> {
    build_task_opts(cfg, false)
}

fn build_task_opts(cfg: &TrainConfig, load_init: bool) -> Result<Box<dyn Task>> {
    let device = cfg.run.device.device();
    tch::manual_seed(cfg.run.seed as i64);
    let mut teacher = build_teacher(cfg, device)?;
    check_teacher_fits(cfg, teacher.as_ref())?;
    if cfg.run.bf16_autocast() {
        teacher.bf16_weights()?;
    }
    let mut model = SemHiTok::new(&cfg.model, device)?;
    let rec = match cfg.loss.rec {
        RecLoss::L1 => PixelLoss::L1,
        RecLoss::L2 => PixelLoss::L2,
    };
    let stage = cfg.run.stage;
    let trained = match stage {
        Stage::Spc => {
            if cfg.disc.enabled {
                return Err(Error::Config {
                    file: PathBuf::from("config"),
                    key: "disc.enabled".into(),
                    msg: "stage `spc` reconstructs teacher features, not pixels: the discriminator only applies to `pre`, `decoder-ft` and `joint`".into(),
                });
            }
            return Ok(Box::new(SpcTask {
                model,
                teacher,
                semantic_weight: cfg.loss.semantic_weight,
                pending: None,
            }));
        }
        Stage::Pre => {
            if load_init {
                let ck =
                    init_checkpoint(cfg.init.spc.as_deref().unwrap_or(Path::new("")), &["spc"])?;
                load_parts(&model, &ck, &[Part::Spc])?;
            }
            model.freeze(Part::Spc);
            vec![Part::Pixel, Part::Decoder]
        }
        Stage::DecoderFt => {
            let ck = init_checkpoint(cfg.init.pre.as_deref().unwrap_or(Path::new("")), &["pre"])?;
            load_parts(&model, &ck, &[Part::Spc, Part::Pixel])?;
            // The decoder comes from `pre` unless the config asks for a different one (e.g.
            // ViT-L), which then starts from fresh weights.
            if let Err(e) = load_parts(&model, &ck, &[Part::Decoder]) {
                eprintln!(
                    "decoder-ft: decoder not loaded from {} ({e}); training a fresh decoder",
                    ck.dir.display()
                );
            }
            model.freeze(Part::Spc);
            model.freeze(Part::Pixel);
            vec![Part::Decoder]
        }
        Stage::Joint => {
            if cfg.model.fusion != semhitok_nn::fusion::Fusion::SemanticOnly {
                return Err(Error::Config {
                    file: PathBuf::from("config"),
                    key: "model.fusion".into(),
                    msg: "stage `joint` decodes pixels from the one (semantic) codebook: set model.fusion = \"semantic_only\"".into(),
                });
            }
            if let Some(p) = &cfg.init.spc {
                let ck = init_checkpoint(p, &["spc"])?;
                load_parts(&model, &ck, &[Part::Spc])?;
            }
            model.freeze(Part::Pixel);
            vec![Part::Spc, Part::Decoder]
        }
    };
    let perceptual = match cfg.loss.perceptual {
        _ if cfg.loss.perceptual_weight == 0.0 => None,
        PerceptualKind::None => None,
        PerceptualKind::Effnet => Some((
            Perceptual::Effnet(Box::new(EffNetPerceptual::load(
                Path::new(EFFNET_WEIGHTS),
                device,
            )?)),
            cfg.loss.perceptual_weight,
        )),
        PerceptualKind::LpipsVgg => {
            let vgg = cfg.loss.lpips_vgg16.as_deref().ok_or_else(|| Error::Config {
                file: PathBuf::from("config"),
                key: "loss.lpips_vgg16".into(),
                msg: "perceptual = \"lpips-vgg\" needs the VGG16 trunk: a torchvision vgg16 state dict saved as safetensors (not shipped offline; or use \"effnet\")".into(),
            })?;
            Some((
                Perceptual::Lpips(Box::new(Lpips::load(vgg, &cfg.loss.lpips_heads, device)?)),
                cfg.loss.perceptual_weight,
            ))
        }
    };
    let gan = Gan::new(&cfg.disc, device)?;
    Ok(Box::new(PixelTask {
        model,
        teacher,
        stage,
        perceptual,
        rec,
        rec_weight: cfg.loss.rec_weight,
        semantic_weight: cfg.loss.semantic_weight,
        trained,
        pending_sghc: None,
        pending_spc: None,
        gan,
    }))
}

/// Build task + data and train (the `semhitok train` command).
pub fn run_stage(
    cfg: &TrainConfig,
    resume: bool,
    command_line: Vec<String>,
    quiet: bool,
) -> Result<TrainReport> {
    if cfg.run.threads > 0 {
        tch::set_num_threads(cfg.run.threads as i32);
    }
    let mut task = build_task(cfg)?;
    let mut data = build_batches(cfg)?;
    let opts = TrainOptions {
        resume,
        command_line,
        quiet,
        ..Default::default()
    };
    train(cfg, task.as_mut(), data.as_mut(), &opts)
}

/// A trained model with its teacher and config, loaded from a checkpoint (or run dir).
pub struct Loaded {
    pub cfg: TrainConfig,
    pub model: SemHiTok,
    pub teacher: Box<dyn Teacher>,
    pub checkpoint: PathBuf,
    pub stage: String,
    /// Whether the checkpoint's EMA weights were loaded (runs with `optim.ema_decay`).
    pub ema_used: bool,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded")
            .field("checkpoint", &self.checkpoint)
            .field("stage", &self.stage)
            .finish()
    }
}

/// Load a checkpoint written by `pre`, `decoder-ft` or `joint` (`allow_spc`: also `spc`) with
/// its run's config (`RUN/config.toml`), on `device`.
pub fn load_model(path: &Path, device: Device, allow_spc: bool) -> Result<Loaded> {
    let ck = checkpoint::resolve(path)?;
    let run_dir = ck
        .dir
        .parent()
        .and_then(|p| p.parent())
        .ok_or_else(|| Error::ckpt(&ck.dir, "not inside RUN/checkpoints/"))?;
    let mut cfg = TrainConfig::load(&run_dir.join("config.toml"), &[])?;
    cfg.run.device = if device.is_cuda() {
        crate::config::DeviceKind::Cuda
    } else {
        crate::config::DeviceKind::Cpu
    };
    let stage = ck.state.stage.clone();
    let parts: &[Part] = match stage.as_str() {
        "pre" | "decoder-ft" | "joint" => &Part::ALL,
        "spc" if allow_spc => &[Part::Spc],
        s => {
            return Err(Error::ckpt(
                &ck.dir,
                format!("is a `{s}` checkpoint; this command needs a `pre`, `decoder-ft` or `joint` checkpoint (pixel decoder)"),
            ))
        }
    };
    let teacher = build_teacher(&cfg, device)?;
    let mut model = SemHiTok::new(&cfg.model, device)?;
    let ema_used = load_parts(&model, &ck, parts)?;
    for p in Part::ALL {
        model.freeze(p);
    }
    Ok(Loaded {
        cfg,
        model,
        teacher,
        checkpoint: ck.dir.clone(),
        stage,
        ema_used,
    })
}

impl Loaded {
    /// images `[B, 3, S, S]` in [-1, 1] -> reconstructions `[B, 3, S, S]` (no gradient).
    pub fn reconstruct(&self, images: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let feats = self.teacher.features(images)?;
            if self.stage == "joint" {
                let (_, codes) = self.model.semantic_codes(&feats)?;
                Ok(self.model.decoder().forward(&codes)?)
            } else {
                Ok(self.model.reconstruct(images, &feats)?)
            }
        })
    }

    /// Semantic ids `[B, N]` of images (no gradient).
    pub fn semantic_ids(&self, images: &Tensor) -> Result<Tensor> {
        tch::no_grad(|| {
            let feats = self.teacher.features(images)?;
            Ok(self.model.semantic_codes(&feats)?.0)
        })
    }

    /// Mean cosine similarity of the SPC's decoded semantic features to the teacher's.
    pub fn teacher_cosine(&self, images: &Tensor) -> Result<f64> {
        tch::no_grad(|| {
            let feats = self.teacher.features(images)?;
            let (_, codes) = self.model.semantic_codes(&feats)?;
            let rec = self.model.spc().decode(&codes)?;
            Ok(crate::metrics::mean_cosine(&rec, &feats))
        })
    }
}

/// Quiet helper used by tests: a float tensor's bits as a `Vec<u32>` (exact comparisons).
pub fn f32_bits(t: &Tensor) -> Vec<u32> {
    let v: Vec<f32> = Vec::try_from(t.to_kind(Kind::Float).to_device(Device::Cpu).flatten(0, -1))
        .unwrap_or_default();
    v.into_iter().map(f32::to_bits).collect()
}
