//! Training configs: TOML files in `configs/`, parsed strictly, plus `--set key.path=value`
//! overrides.
//!
//! Every struct denies unknown fields, so a misspelled key is an error that names the dotted
//! key and the file (or the `--set` override it came from). Defaults live in exactly one place:
//! the `#[serde(default = ..)]` functions below; presets state everything else explicitly.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The model config (semhitok-nn's, strict as well). `sghc.k_sem`, `encoder.out_dim`,
/// `decoder.in_dim` and `decoder.groups` are derived (from `spc.codebook_size`, `sghc.dim` and
/// `fusion`) when the config is loaded, so `--set model.fusion=pixel_only` or
/// `--set model.sghc.m=8` are single switches.
pub type ModelConfig = semhitok_nn::model::SemHiTokConfig;

/// Training stage (issue 6 §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// Teacher frozen; trains the SPC head, semantic codebook (EMA) and semantic decoder.
    Spc,
    /// SPC loaded and frozen; trains pixel encoder, pixel sub-codebooks, fusion, pixel decoder
    /// (+ discriminator from `disc.start_step`).
    Pre,
    /// Everything frozen but the pixel decoder (optionally re-initialised larger).
    DecoderFt,
    /// The "texture incorporation" baseline: one codebook trained with semantic and pixel
    /// losses together (MUSE-VL style).
    Joint,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Spc => "spc",
            Stage::Pre => "pre",
            Stage::DecoderFt => "decoder-ft",
            Stage::Joint => "joint",
        }
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "spc" => Ok(Stage::Spc),
            "pre" => Ok(Stage::Pre),
            "decoder-ft" => Ok(Stage::DecoderFt),
            "joint" => Ok(Stage::Joint),
            _ => Err(format!(
                "unknown stage `{s}` (expected spc, pre, decoder-ft or joint)"
            )),
        }
    }
}

/// Where tensors live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Cpu,
    Cuda,
}

impl DeviceKind {
    pub fn device(self) -> tch::Device {
        match self {
            DeviceKind::Cpu => tch::Device::Cpu,
            // LOCAL_RANK in a distributed run (crate::dist), else 0.
            DeviceKind::Cuda => tch::Device::Cuda(crate::dist::cuda_index()),
        }
    }
}

/// Numeric precision of forward passes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// fp32 everywhere (CPU default; needed for bit-exact resume tests).
    F32,
    /// bf16 autocast on CUDA (fp32 master weights and optimizer); ignored on CPU.
    Bf16,
}

/// The whole training config.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    pub run: RunConfig,
    /// The model (semhitok-nn's config, strict as well).
    pub model: ModelConfig,
    pub teacher: TeacherConfig,
    pub data: DataConfig,
    pub optim: OptimConfig,
    #[serde(default)]
    pub loss: LossConfig,
    #[serde(default)]
    pub disc: DiscConfig,
    pub schedule: ScheduleConfig,
    #[serde(default)]
    pub init: InitConfig,
    #[serde(default)]
    pub eval: EvalConfig,
    #[serde(default)]
    pub dist: DistConfig,
}

/// `[run]`: identity, stage, device.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunConfig {
    /// Human-readable run name (also the default run-dir name).
    pub name: String,
    /// The run directory (checkpoints, metrics.jsonl, config.toml, run.json).
    pub out_dir: PathBuf,
    pub stage: Stage,
    #[serde(default)]
    pub seed: u64,
    #[serde(default = "default_device")]
    pub device: DeviceKind,
    #[serde(default = "default_precision")]
    pub precision: Precision,
    /// With `precision = "bf16"` on CUDA: keep one flat bf16 copy of the trained matrices,
    /// refreshed once per forward, instead of letting autocast cast each weight forward and each
    /// gradient back (same values; see `optim::Bf16Copy`). `false`: plain autocast.
    #[serde(default = "default_true")]
    pub bf16_weight_copy: bool,
    /// Intra-op CPU threads (0: LibTorch's default).
    #[serde(default)]
    pub threads: usize,
}

impl RunConfig {
    /// Forward passes run under bf16 autocast (`precision = "bf16"` on CUDA; CPU runs f32).
    pub fn bf16_autocast(&self) -> bool {
        self.precision == Precision::Bf16 && self.device == DeviceKind::Cuda
    }

    /// The trainer computes from the flat bf16 weight copy ([`Self::bf16_autocast`] and
    /// `bf16_weight_copy`).
    pub fn bf16_copy(&self) -> bool {
        self.bf16_autocast() && self.bf16_weight_copy
    }
}

fn default_true() -> bool {
    true
}

fn default_device() -> DeviceKind {
    DeviceKind::Cpu
}
fn default_precision() -> Precision {
    Precision::F32
}

// --- [dist]: data-parallel training (crate::dist) -------------------------------------------

/// c10d backend of a distributed run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DistBackend {
    /// NCCL on CUDA, Gloo on CPU.
    #[default]
    Auto,
    Nccl,
    Gloo,
}

/// `[dist]`: only read when a launcher (torchrun, srun, `cargo xtask train --gpus N`) set
/// `WORLD_SIZE`; `data.batch_size` is then per rank, and the global batch is
/// `batch_size x world size x optim.accum_steps`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DistConfig {
    #[serde(default)]
    pub backend: DistBackend,
    /// Limit of the rendezvous and of each collective: a rank waiting longer on a dead or stuck
    /// peer stops with an error naming the collective, its rank and the step.
    #[serde(default = "default_dist_timeout")]
    pub timeout_s: f64,
    /// Limit of the start-up: every rank launched and connected to the rendezvous store.
    #[serde(default = "default_dist_timeout")]
    pub rendezvous_timeout_s: f64,
    /// Limit of the barrier where the other ranks wait while rank 0 writes a checkpoint.
    #[serde(default = "default_dist_ckpt_timeout")]
    pub checkpoint_timeout_s: f64,
}

fn default_dist_timeout() -> f64 {
    600.0
}
fn default_dist_ckpt_timeout() -> f64 {
    1800.0
}

impl Default for DistConfig {
    fn default() -> Self {
        Self {
            backend: DistBackend::Auto,
            timeout_s: default_dist_timeout(),
            rendezvous_timeout_s: default_dist_timeout(),
            checkpoint_timeout_s: default_dist_ckpt_timeout(),
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// Which frozen teacher supplies the semantic targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TeacherKind {
    /// EfficientNet-Lite0 (embedded default; weights in `.assets/weights`).
    EfficientnetLite0,
    /// SigLIP-large-patch16-256 (paper, 256 px).
    SiglipLargeP16_256,
    /// SigLIP-so400m-patch14-384 (paper, 384 px).
    SiglipSo400mP14_384,
}

/// `[teacher]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    pub kind: TeacherKind,
    /// Safetensors weights; `None` means random init (benchmarks only: never for real runs).
    #[serde(default)]
    pub weights: Option<PathBuf>,
    /// EfficientNet feature stride (8 or 16); ignored by SigLIP.
    #[serde(default = "default_stride")]
    pub stride: i64,
    /// SigLIP hidden state used as the target (`last` or `penultimate`); ignored by EfficientNet.
    #[serde(default = "default_siglip_layer")]
    pub siglip_layer: semhitok_nn::siglip::SiglipLayer,
}

fn default_stride() -> i64 {
    16
}
fn default_siglip_layer() -> semhitok_nn::siglip::SiglipLayer {
    semhitok_nn::siglip::SiglipLayer::Last
}

/// Which images the trainer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKind {
    /// Random crops of the photos under `root` (train split; a held-out split for eval).
    Photos,
    /// Seeded synthetic images generated in memory (tests, benchmarks).
    Synthetic,
}

/// `[data]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub kind: DataKind,
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// Side of the square training image fed to the model.
    pub image_size: i64,
    /// Images per micro-batch.
    pub batch_size: i64,
    /// Photos are downscaled at load so their shorter side is at most this; training crops are
    /// `image_size ..= max_crop_frac * max_short_side` source pixels, resized to `image_size`.
    #[serde(default = "default_short")]
    pub max_short_side: u32,
    #[serde(default = "one_f")]
    pub max_crop_frac: f64,
    /// Fraction of photos held out for evaluation.
    #[serde(default = "default_holdout")]
    pub heldout_fraction: f64,
    /// Evaluation crops per held-out photo (the first is the ADM center crop).
    #[serde(default = "default_eval_crops")]
    pub eval_crops_per_image: usize,
    /// Decoding threads of the loader.
    #[serde(default = "default_workers")]
    pub workers: usize,
}

fn default_holdout() -> f64 {
    0.1
}
fn default_short() -> u32 {
    768
}
fn default_eval_crops() -> usize {
    4
}
fn default_workers() -> usize {
    1
}

/// `[optim]`: AdamW + schedule for the generator side.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    pub lr: f64,
    pub betas: [f64; 2],
    #[serde(default = "default_eps")]
    pub eps: f64,
    pub weight_decay: f64,
    pub warmup_steps: u64,
    /// Final lr as a fraction of `lr` at the end of the cosine.
    #[serde(default)]
    pub min_lr_ratio: f64,
    /// Max global grad norm (0: no clipping).
    #[serde(default)]
    pub grad_clip: f64,
    /// Micro-batches per optimizer step.
    #[serde(default = "one")]
    pub accum_steps: u64,
    /// Decay of the EMA of trainable weights (`None`: no EMA).
    #[serde(default)]
    pub ema_decay: Option<f64>,
}

fn default_eps() -> f64 {
    1e-8
}
fn one() -> u64 {
    1
}

/// Pixel reconstruction loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RecLoss {
    L1,
    L2,
}

/// Perceptual loss network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PerceptualKind {
    None,
    /// LPIPS v0.1 with the VGG16 trunk: the trunk from `loss.lpips_vgg16` (a torchvision `vgg16`
    /// state dict as safetensors; not shipped offline), the heads from
    /// `.assets/weights/lpips_vgg.safetensors`.
    LpipsVgg,
    /// Feature-matching on the EfficientNet-Lite0 trunk (embedded default).
    Effnet,
}

/// `[loss]`: weights of the loss terms (paper Eq. 5 for the pixel side).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossConfig {
    #[serde(default = "default_rec")]
    pub rec: RecLoss,
    #[serde(default = "one_f")]
    pub rec_weight: f64,
    #[serde(default = "default_perc")]
    pub perceptual: PerceptualKind,
    #[serde(default)]
    pub perceptual_weight: f64,
    /// VGG16 trunk for `perceptual = "lpips-vgg"` (torchvision `vgg16` state dict, safetensors).
    #[serde(default)]
    pub lpips_vgg16: Option<PathBuf>,
    /// LPIPS v0.1 linear heads (relative paths: from the current directory).
    #[serde(default = "default_lpips_heads")]
    pub lpips_heads: PathBuf,
    /// Commitment weight of the quantizers (beta).
    #[serde(default = "default_commit")]
    pub commit_weight: f64,
    /// Weight of the semantic (cosine) loss in `spc` and `joint`.
    #[serde(default = "one_f")]
    pub semantic_weight: f64,
}

fn default_rec() -> RecLoss {
    RecLoss::L2
}
fn one_f() -> f64 {
    1.0
}
fn default_perc() -> PerceptualKind {
    PerceptualKind::None
}
fn default_lpips_heads() -> PathBuf {
    PathBuf::from(crate::stages::LPIPS_HEADS)
}
fn default_commit() -> f64 {
    0.25
}

impl Default for LossConfig {
    fn default() -> Self {
        Self {
            rec: default_rec(),
            rec_weight: 1.0,
            perceptual: default_perc(),
            perceptual_weight: 0.0,
            lpips_vgg16: None,
            lpips_heads: default_lpips_heads(),
            commit_weight: default_commit(),
            semantic_weight: 1.0,
        }
    }
}

/// GAN generator/discriminator loss form (semhitok-nn's: `hinge` or `non-saturating`).
pub use semhitok_nn::discriminator::GanLoss;

/// `[disc]`: PatchGAN discriminator with its own AdamW.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiscConfig {
    #[serde(default)]
    pub enabled: bool,
    /// First optimizer step with the adversarial terms on.
    #[serde(default)]
    pub start_step: u64,
    #[serde(default = "default_disc_lr")]
    pub lr: f64,
    #[serde(default = "default_disc_betas")]
    pub betas: [f64; 2],
    /// Generator adversarial weight.
    #[serde(default = "default_gan_w")]
    pub weight: f64,
    #[serde(default = "default_gan_loss")]
    pub loss: GanLoss,
    /// Scale the adversarial term by the VQGAN adaptive weight (grad-norm ratio at the last
    /// decoder layer).
    #[serde(default)]
    pub adaptive_weight: bool,
    /// LeCam regularisation weight (0: off; IBQ uses 0.05).
    #[serde(default)]
    pub lecam_weight: f64,
    /// Decay of LeCam's logit EMAs (IBQ: 0.999).
    #[serde(default = "default_lecam_decay")]
    pub lecam_decay: f64,
    /// Base channels of the PatchGAN.
    #[serde(default = "default_ndf")]
    pub ndf: i64,
    #[serde(default = "default_disc_layers")]
    pub n_layers: i64,
}

fn default_disc_lr() -> f64 {
    1e-4
}
fn default_disc_betas() -> [f64; 2] {
    [0.5, 0.9]
}
fn default_gan_w() -> f64 {
    0.5
}
fn default_gan_loss() -> GanLoss {
    GanLoss::Hinge
}
fn default_lecam_decay() -> f64 {
    0.999
}
fn default_ndf() -> i64 {
    64
}
fn default_disc_layers() -> i64 {
    3
}

impl Default for DiscConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            start_step: 0,
            lr: default_disc_lr(),
            betas: default_disc_betas(),
            weight: default_gan_w(),
            loss: default_gan_loss(),
            adaptive_weight: false,
            lecam_weight: 0.0,
            lecam_decay: default_lecam_decay(),
            ndf: default_ndf(),
            n_layers: default_disc_layers(),
        }
    }
}

/// `[schedule]`: length, logging, checkpoints.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleConfig {
    /// Optimizer steps.
    pub steps: u64,
    #[serde(default = "default_log_every")]
    pub log_every: u64,
    /// Checkpoint every N optimizer steps (and always at the end).
    pub ckpt_every: u64,
    /// Checkpoints kept (oldest deleted first).
    #[serde(default = "default_keep")]
    pub keep_last: usize,
}

fn default_log_every() -> u64 {
    10
}
fn default_keep() -> usize {
    3
}

/// `[init]`: weights taken from earlier stages.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// A run dir or checkpoint of stage `spc` (required by `pre`, `decoder-ft`).
    #[serde(default)]
    pub spc: Option<PathBuf>,
    /// A run dir or checkpoint of stage `pre` (required by `decoder-ft`).
    #[serde(default)]
    pub pre: Option<PathBuf>,
}

/// `[eval]`: defaults of `semhitok eval` for this run.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalConfig {
    /// Held-out images evaluated (center crops).
    #[serde(default = "default_n_eval")]
    pub n_images: usize,
    /// Images in the PNG grid.
    #[serde(default = "default_grid")]
    pub grid_images: usize,
}

fn default_n_eval() -> usize {
    64
}
fn default_grid() -> usize {
    8
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            n_images: default_n_eval(),
            grid_images: default_grid(),
        }
    }
}

/// Parse `key.path=value`. The value is read as a TOML literal (`1e-4`, `true`, `"x"`,
/// `[0.9, 0.95]`); anything that is not a valid literal is taken as a bare string.
pub fn parse_override(s: &str) -> Result<(String, toml::Value)> {
    let (k, v) = s.split_once('=').ok_or_else(|| Error::Config {
        file: PathBuf::from("--set"),
        key: s.to_string(),
        msg: "expected `key.path=value`".into(),
    })?;
    let k = k.trim().to_string();
    let v = v.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {v}")) {
        Ok(mut t) => t.remove("v").unwrap_or(toml::Value::String(v.into())),
        Err(_) => toml::Value::String(v.into()),
    };
    Ok((k, value))
}

fn set_path(root: &mut toml::Value, key: &str, value: toml::Value) -> Result<()> {
    let err = |msg: &str| Error::Config {
        file: PathBuf::from("--set"),
        key: key.to_string(),
        msg: msg.to_string(),
    };
    let parts: Vec<&str> = key.split('.').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return Err(err("empty key segment"));
    }
    let mut cur = root;
    for p in &parts[..parts.len() - 1] {
        let table = cur
            .as_table_mut()
            .ok_or_else(|| err(&format!("`{p}` is inside a non-table value")))?;
        cur = table
            .entry(p.to_string())
            .or_insert_with(|| toml::Value::Table(Default::default()));
    }
    let table = cur
        .as_table_mut()
        .ok_or_else(|| err("parent is not a table"))?;
    table.insert(parts[parts.len() - 1].to_string(), value);
    Ok(())
}

impl TrainConfig {
    /// Read `path`, apply `overrides` (`key.path=value`), and parse strictly.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path, overrides)
    }

    /// Parse TOML text (`file` is only used in error messages).
    pub fn from_toml_str(text: &str, file: &Path, overrides: &[String]) -> Result<Self> {
        // First a strict parse of the file alone, so an error in the file names the file.
        let raw: toml::Value = toml::from_str(text).map_err(|e| Error::Config {
            file: file.to_path_buf(),
            key: "(syntax)".into(),
            msg: e.to_string(),
        })?;
        let mut cfg = Self::from_value(raw.clone(), file)?;
        cfg.resolve();
        if overrides.is_empty() {
            cfg.validate(file)?;
            return Ok(cfg);
        }
        let mut v = raw;
        for o in overrides {
            let (k, val) = parse_override(o)?;
            set_path(&mut v, &k, val)?;
        }
        let origin = PathBuf::from(format!(
            "{} + --set {}",
            file.display(),
            overrides.join(" ")
        ));
        let mut cfg = Self::from_value(v, &origin)?;
        cfg.resolve();
        cfg.validate(&origin)?;
        Ok(cfg)
    }

    fn from_value(v: toml::Value, file: &Path) -> Result<Self> {
        serde_path_to_error::deserialize(v).map_err(|e| {
            let key = e.path().to_string();
            Error::Config {
                file: file.to_path_buf(),
                key,
                msg: e.into_inner().to_string(),
            }
        })
    }

    /// Fill the derived model fields (see [`ModelConfig`]).
    fn resolve(&mut self) {
        let m = &mut self.model;
        m.sghc.k_sem = m.spc.codebook_size;
        m.encoder.out_dim = m.sghc.dim;
        let fusion = m.fusion;
        *m = m.clone().with_fusion(fusion);
    }

    /// Cross-field checks (each names its key).
    pub fn validate(&self, file: &Path) -> Result<()> {
        if let Err(e) = self.model.validate() {
            return Err(Error::Config {
                file: file.to_path_buf(),
                key: "model".into(),
                msg: e.to_string(),
            });
        }
        if self.model.encoder.image_size != self.data.image_size {
            return Err(Error::Config {
                file: file.to_path_buf(),
                key: "model.encoder.image_size".into(),
                msg: format!(
                    "{} != data.image_size {}",
                    self.model.encoder.image_size, self.data.image_size
                ),
            });
        }
        let bad = |key: &str, msg: String| {
            Err(Error::Config {
                file: file.to_path_buf(),
                key: key.into(),
                msg,
            })
        };
        if self.data.batch_size < 1 {
            return bad("data.batch_size", "must be >= 1".into());
        }
        if self.data.image_size < 8 {
            return bad("data.image_size", "must be >= 8".into());
        }
        if self.optim.accum_steps < 1 {
            return bad("optim.accum_steps", "must be >= 1".into());
        }
        // Every float hyperparameter: finite and in range (a NaN passes `x < 0.0` checks).
        let o = &self.optim;
        let in_range = |key: &str, v: f64, lo: f64, hi: f64, hi_open: bool| {
            let ok = v.is_finite() && v >= lo && if hi_open { v < hi } else { v <= hi };
            if ok {
                Ok(())
            } else {
                let end = if hi_open { ")" } else { "]" };
                bad(
                    key,
                    format!("{v} is not a finite value in [{lo}, {hi}{end}"),
                )
            }
        };
        in_range("optim.lr", o.lr, 0.0, f64::MAX, false)?;
        in_range("optim.betas[0]", o.betas[0], 0.0, 1.0, true)?;
        in_range("optim.betas[1]", o.betas[1], 0.0, 1.0, true)?;
        in_range("optim.eps", o.eps, 0.0, f64::MAX, false)?;
        in_range("optim.weight_decay", o.weight_decay, 0.0, f64::MAX, false)?;
        in_range("optim.min_lr_ratio", o.min_lr_ratio, 0.0, 1.0, false)?;
        in_range("optim.grad_clip", o.grad_clip, 0.0, f64::MAX, false)?;
        in_range("disc.lr", self.disc.lr, 0.0, f64::MAX, false)?;
        in_range("disc.betas[0]", self.disc.betas[0], 0.0, 1.0, true)?;
        in_range("disc.betas[1]", self.disc.betas[1], 0.0, 1.0, true)?;
        in_range("dist.timeout_s", self.dist.timeout_s, 0.001, 1e9, false)?;
        in_range(
            "dist.rendezvous_timeout_s",
            self.dist.rendezvous_timeout_s,
            0.001,
            1e9,
            false,
        )?;
        in_range(
            "dist.checkpoint_timeout_s",
            self.dist.checkpoint_timeout_s,
            0.001,
            1e9,
            false,
        )?;
        in_range(
            "data.heldout_fraction",
            self.data.heldout_fraction,
            0.0,
            1.0,
            true,
        )?;
        if !(self.data.max_crop_frac.is_finite() && self.data.max_crop_frac > 0.0) {
            return bad(
                "data.max_crop_frac",
                format!("{} must be finite and > 0", self.data.max_crop_frac),
            );
        }
        if self.schedule.log_every == 0 {
            return bad("schedule.log_every", "must be >= 1".into());
        }
        if self.schedule.steps == 0 {
            return bad("schedule.steps", "must be >= 1".into());
        }
        if let Some(d) = self.optim.ema_decay {
            if !(0.0..1.0).contains(&d) {
                return bad("optim.ema_decay", format!("{d} is not in [0, 1)"));
            }
        }
        if self.schedule.ckpt_every == 0 {
            return bad("schedule.ckpt_every", "must be >= 1".into());
        }
        if self.schedule.keep_last == 0 {
            return bad("schedule.keep_last", "must be >= 1".into());
        }
        if self.data.kind == DataKind::Photos && self.data.root.is_none() {
            return bad("data.root", "required when data.kind = \"photos\"".into());
        }
        if matches!(self.run.stage, Stage::Pre | Stage::DecoderFt) && self.init.spc.is_none() {
            return bad(
                "init.spc",
                format!(
                    "stage `{}` needs the SPC checkpoint of stage 1",
                    self.run.stage.as_str()
                ),
            );
        }
        if self.run.stage == Stage::DecoderFt && self.init.pre.is_none() {
            return bad(
                "init.pre",
                "stage `decoder-ft` needs the checkpoint of stage `pre`".into(),
            );
        }
        Ok(())
    }

    /// The resolved config as TOML (written into the run dir before the first step).
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# serialisation failed: {e}\n"))
    }
}
