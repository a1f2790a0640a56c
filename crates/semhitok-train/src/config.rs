//! Training configs: TOML files in `configs/`, parsed strictly, plus `--set key.path=value`
//! overrides.
//!
//! Every struct denies unknown fields, so a misspelled key is an error that names the dotted
//! key and the file (or the `--set` override it came from). Defaults live in exactly one place:
//! the `#[serde(default = ..)]` functions below; presets state everything else explicitly.

mod llm;
mod load;

pub use crate::trainer::{DiscOptim, LoopConfig};
pub use llm::{LlmConfig, LlmDtype, LlmTrain, LlmTrainMode};
pub use load::{
    config_error, from_toml_str, from_value, load_toml, origin_of, parse_override, peek_stage,
    peek_stage_str, Loaded,
};

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The model config (semhitok-nn's, strict as well). `sghc.k_sem`, `encoder.out_dim`,
/// `decoder.in_dim` and `decoder.groups` are derived (from `spc.codebook_size`, `sghc.dim` and
/// `fusion`) when the config is loaded, so `--set model.fusion=pixel_only` or
/// `--set model.sghc.m=8` are single switches.
pub type ModelConfig = semhitok_nn::model::SemHiTokConfig;

/// Training stage (issue 6 §1): the four tokenizer stages (read from a [`TrainConfig`]) and the
/// LLM stages around the tokenizer, each with its own config type (see [`Stage::config_kind`]).
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
    /// LLaVA-1.5 stage 1: only the MLP projector trains (tokenizer and LLM frozen).
    LlavaPretrain,
    /// LLaVA-1.5 stage 2: projector + LLM (full or LoRA, `[llm] train`).
    LlavaFinetune,
    /// Autoregressive text-to-image: the LLM with the visual-token vocabulary.
    T2i,
}

/// Which config type (and `semhitok train` path) a [`Stage`] belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigKind {
    /// [`TrainConfig`] (`stages::run_stage`).
    Tokenizer,
    /// The LLaVA training config (`crate::llava::run`).
    Llava,
    /// The text-to-image training config (`crate::t2i::run`).
    T2i,
}

impl Stage {
    /// Every stage, in declaration order.
    pub const ALL: [Stage; 7] = [
        Stage::Spc,
        Stage::Pre,
        Stage::DecoderFt,
        Stage::Joint,
        Stage::LlavaPretrain,
        Stage::LlavaFinetune,
        Stage::T2i,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Spc => "spc",
            Stage::Pre => "pre",
            Stage::DecoderFt => "decoder-ft",
            Stage::Joint => "joint",
            Stage::LlavaPretrain => "llava-pretrain",
            Stage::LlavaFinetune => "llava-finetune",
            Stage::T2i => "t2i",
        }
    }

    /// The config type that describes a run of this stage.
    pub fn config_kind(self) -> ConfigKind {
        match self {
            Stage::Spc | Stage::Pre | Stage::DecoderFt | Stage::Joint => ConfigKind::Tokenizer,
            Stage::LlavaPretrain | Stage::LlavaFinetune => ConfigKind::Llava,
            Stage::T2i => ConfigKind::T2i,
        }
    }

    /// A tokenizer stage (its run is described by a [`TrainConfig`]).
    pub fn is_tokenizer(self) -> bool {
        self.config_kind() == ConfigKind::Tokenizer
    }
}

impl std::str::FromStr for Stage {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Stage::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = Stage::ALL.iter().map(|st| st.as_str()).collect();
                format!("unknown stage `{s}` (expected one of {})", names.join(", "))
            })
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
    pub guard: GuardConfig,
    /// Where it was read from (the file, plus the `--set` overrides), for error messages; empty
    /// for configs built in code.
    #[serde(skip)]
    pub origin: PathBuf,
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
    /// Generator gradients all-reduced in buckets of at most this many MiB (0: one collective).
    #[serde(default)]
    pub bucket_mb: f64,
    /// Launch each bucket from the backward pass as soon as its gradients exist (needs bucket_mb > 0).
    #[serde(default)]
    pub overlap: bool,
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
            bucket_mb: 0.0,
            overlap: false,
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

/// Which images the trainer reads (`[data] kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DataKind {
    /// ImageNet-style class folders: `root/<synset>/*.JPEG` (labels = sorted class index;
    /// `labels_file` names them for captions). For evaluation also the flat `val/` layout with
    /// `solution_csv` (`LOC_val_solution.csv`).
    Imagenet,
    /// Webdataset tar shards (img2dataset layout, COYO / LAION): `shards` = a brace pattern
    /// (`/data/coyo/{00000..09999}.tar`), a glob, a text file listing shards, or a folder; or
    /// `root` = a folder of shards. Captions (`.txt`, `.json` `caption`) ride on the batch.
    Webdataset,
    /// Random crops of the photos under `root` (train split; a held-out split for eval).
    Photos,
    /// Fashion-MNIST IDX `.gz` files under `root` (train split; `t10k` for eval).
    FashionMnist,
    /// Seeded synthetic images generated in memory (tests, benchmarks).
    Synthetic,
}

impl DataKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DataKind::Imagenet => "imagenet",
            DataKind::Webdataset => "webdataset",
            DataKind::Photos => "photos",
            DataKind::FashionMnist => "fashion-mnist",
            DataKind::Synthetic => "synthetic",
        }
    }
}

/// Training crop of the `imagenet`, `webdataset` and `fashion-mnist` kinds (`photos` has its own).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TrainTransform {
    /// LlamaGen's tokenizer training crop (`random_crop_arr` + flip): shorter side resized to
    /// `image_size / U[min_crop_frac, max_crop_frac]`, random window.
    RandomCrop,
    /// torchvision `RandomResizedCrop` (scale 0.08-1, ratio 3/4-4/3) + flip.
    RandomResizedCrop,
    /// The ADM center crop (no augmentation).
    CenterCrop,
}

/// `[data]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    pub kind: DataKind,
    /// The dataset folder (`imagenet`: the folder of class folders; `webdataset`: a folder of
    /// shards, unless `shards` is given; `photos`, `fashion-mnist`: the folder).
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// `webdataset`: brace pattern, glob or list file of shards (takes precedence over `root`).
    #[serde(default)]
    pub shards: Option<String>,
    /// `imagenet`: `LOC_synset_mapping.txt`-style class names (captions "a photo of a NAME").
    #[serde(default)]
    pub labels_file: Option<PathBuf>,
    /// Side of the square training image fed to the model.
    pub image_size: i64,
    /// Images per micro-batch (per rank).
    pub batch_size: i64,
    /// Training crop of `imagenet`, `webdataset`, `fashion-mnist`.
    #[serde(default = "default_transform")]
    pub transform: TrainTransform,
    /// `random-crop`: smallest fraction of the resized shorter side the crop covers (LlamaGen 0.8).
    #[serde(default = "default_min_crop")]
    pub min_crop_frac: f64,
    /// Horizontal flips with probability 1/2 (training crops).
    #[serde(default = "default_true")]
    pub hflip: bool,
    /// `webdataset`: samples in each stream's shuffle buffer (within a shard).
    #[serde(default = "default_shuffle_buffer")]
    pub shuffle_buffer: usize,
    /// `webdataset`: skip samples without a caption (counted as `missing_caption`).
    #[serde(default)]
    pub require_caption: bool,
    /// Photos are downscaled at load so their shorter side is at most this; training crops are
    /// `image_size ..= max_crop_frac * max_short_side` source pixels, resized to `image_size`.
    #[serde(default = "default_short")]
    pub max_short_side: u32,
    /// `photos`: largest crop side as a fraction of the shorter side; `random-crop`: largest
    /// fraction of the resized shorter side the crop covers (LlamaGen 1.0).
    #[serde(default = "one_f")]
    pub max_crop_frac: f64,
    /// Fraction of photos held out for evaluation.
    #[serde(default = "default_holdout")]
    pub heldout_fraction: f64,
    /// Evaluation crops per held-out photo (the first is the ADM center crop).
    #[serde(default = "default_eval_crops")]
    pub eval_crops_per_image: usize,
    /// Decoding threads of the loader (default: this process's cores divided by
    /// `LOCAL_WORLD_SIZE`, minus one).
    #[serde(default)]
    pub workers: Option<usize>,
    /// Decoded batches each worker may hold ahead (bounded prefetch).
    #[serde(default = "default_prefetch")]
    pub prefetch: usize,
    /// This process's rank and the world size (default: `RANK` / `WORLD_SIZE` from the
    /// environment as torchrun sets them, else 0 / 1). Each rank reads its own part.
    #[serde(default)]
    pub rank: Option<usize>,
    #[serde(default)]
    pub world_size: Option<usize>,
}

impl DataConfig {
    /// Rank and world size: the config's, else the environment's.
    pub fn rank_world(&self) -> Result<semhitok_data::RankWorld> {
        let env = semhitok_data::RankWorld::from_env()?;
        let rw = semhitok_data::RankWorld {
            rank: self.rank.unwrap_or(env.rank),
            world: self.world_size.unwrap_or(env.world),
        };
        rw.validate()?;
        Ok(rw)
    }
    /// Decoding threads (see `workers`).
    pub fn workers(&self) -> usize {
        self.workers.unwrap_or_else(semhitok_data::default_workers)
    }
}

fn default_transform() -> TrainTransform {
    TrainTransform::RandomCrop
}
fn default_min_crop() -> f64 {
    0.8
}
fn default_shuffle_buffer() -> usize {
    1000
}
fn default_prefetch() -> usize {
    2
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

/// `[guard]`: stops for runs that blow up without going non-finite (a NaN/Inf loss or gradient
/// always stops the run). A stopped run never commits a checkpoint of the blown-up state.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GuardConfig {
    /// A step spikes when its loss or gradient norm exceeds `spike_factor` x the median of the
    /// last `spike_window` steps (0: off).
    #[serde(default = "default_spike_factor")]
    pub spike_factor: f64,
    /// Steps in the running median (the guard waits until it holds `spike_window / 4` steps).
    #[serde(default = "default_spike_window")]
    pub spike_window: usize,
    /// Consecutive spiking steps that stop the run. While a spike streak lasts, checkpoints are
    /// held back (written once the streak ends, at the step it ends).
    #[serde(default = "default_spike_patience")]
    pub spike_patience: u32,
    /// Stop when one optimizer step grows the parameters' l2 norm by more than this factor (0:
    /// off). Catches an lr blow-up from the first step, before any history exists.
    #[serde(default = "default_max_weight_growth")]
    pub max_weight_growth: f64,
}

fn default_spike_factor() -> f64 {
    10.0
}
fn default_spike_window() -> usize {
    64
}
fn default_spike_patience() -> u32 {
    3
}
fn default_max_weight_growth() -> f64 {
    1.5
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            spike_factor: default_spike_factor(),
            spike_window: default_spike_window(),
            spike_patience: default_spike_patience(),
            max_weight_growth: default_max_weight_growth(),
        }
    }
}

/// `[init]`: weights taken from earlier stages.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InitConfig {
    /// A run dir or checkpoint of stage `spc` (required by `pre`, `decoder-ft`).
    #[serde(default)]
    pub spc: Option<PathBuf>,
    /// A run dir or checkpoint of stage `pre` (required by `decoder-ft`; for `pre`: the run
    /// to fine-tune, e.g. on COYO after ImageNet).
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
    /// The held-out set (`[eval.data]`, e.g. ImageNet val); absent: the held-out photos of
    /// `[data]` (kind `photos`).
    #[serde(default)]
    pub data: Option<EvalDataConfig>,
}

/// `[eval.data]`: the held-out set, read in order with the ADM center crop at `data.image_size`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalDataConfig {
    pub kind: DataKind,
    #[serde(default)]
    pub root: Option<PathBuf>,
    /// `webdataset`: brace pattern, glob or list file (else `root`).
    #[serde(default)]
    pub shards: Option<String>,
    /// `imagenet`: the flat `val/` layout's `LOC_val_solution.csv` (absent: `root` has class
    /// folders).
    #[serde(default)]
    pub solution_csv: Option<PathBuf>,
    #[serde(default)]
    pub labels_file: Option<PathBuf>,
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
            data: None,
        }
    }
}

impl TrainConfig {
    /// Read `path`, apply `overrides` (`key.path=value`), and parse strictly.
    pub fn load(path: &Path, overrides: &[String]) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_toml_str(&text, path, overrides)
    }

    /// Parse TOML text (`file` is only used in error messages). A config of a non-tokenizer
    /// stage (`run.stage = "llava-pretrain"`, ...) is refused first, naming `run.stage` and the
    /// config type it needs.
    pub fn from_toml_str(text: &str, file: &Path, overrides: &[String]) -> Result<Self> {
        // (When the stage cannot be read, the full parse below names the problem.)
        if let Ok(stage) = load::peek_stage_str(text, file, overrides) {
            if !stage.is_tokenizer() {
                return Err(not_a_tokenizer_stage(
                    &load::origin_of(file, overrides),
                    stage,
                ));
            }
        }
        let Loaded { mut config, origin } = load::from_toml_str::<Self>(text, file, overrides)?;
        config.resolve();
        config.validate(&origin)?;
        config.origin = origin;
        Ok(config)
    }

    /// The file (and overrides) this config came from, for error messages (`config` when it
    /// was built in code).
    pub fn origin(&self) -> PathBuf {
        if self.origin.as_os_str().is_empty() {
            PathBuf::from("config")
        } else {
            self.origin.clone()
        }
    }

    /// A config error naming `key` and the file this config came from.
    pub fn error(&self, key: &str, msg: impl Into<String>) -> Error {
        Error::Config {
            file: self.origin(),
            key: key.into(),
            msg: msg.into(),
        }
    }

    /// The weight paths no builder checks by key exist (`init.*`, the LPIPS trunk): checked
    /// before anything is built, each failure naming its key, the path and the config file.
    /// (The data paths are checked by the data streams, `teacher.weights` by the teacher
    /// factory, each naming key and file the same way.) Paths are relative to the current
    /// directory.
    pub fn check_paths(&self) -> Result<()> {
        let exists = |key: &str, p: &Path| -> Result<()> {
            if p.exists() {
                Ok(())
            } else {
                Err(self.error(key, format!("{} does not exist", p.display())))
            }
        };
        if let Some(p) = &self.init.spc {
            exists("init.spc", p)?;
        }
        if let Some(p) = &self.init.pre {
            exists("init.pre", p)?;
        }
        if let Some(p) = &self.loss.lpips_vgg16 {
            exists("loss.lpips_vgg16", p)?;
        }
        Ok(())
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
        if !self.run.stage.is_tokenizer() {
            return Err(not_a_tokenizer_stage(file, self.run.stage));
        }
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
        if self.teacher.kind == TeacherKind::EfficientnetLite0
            && ![8, 16].contains(&self.teacher.stride)
        {
            return bad(
                "teacher.stride",
                format!(
                    "{}: EfficientNet-Lite0 features have stride 8 or 16",
                    self.teacher.stride
                ),
            );
        }
        let g = &self.guard;
        if !(g.spike_factor == 0.0 || (g.spike_factor.is_finite() && g.spike_factor > 1.0)) {
            return bad(
                "guard.spike_factor",
                format!("{} must be 0 (off) or a finite value > 1", g.spike_factor),
            );
        }
        if g.spike_window < 4 {
            return bad("guard.spike_window", "must be >= 4".into());
        }
        if g.spike_patience < 1 {
            return bad("guard.spike_patience", "must be >= 1".into());
        }
        if !(g.max_weight_growth == 0.0
            || (g.max_weight_growth.is_finite() && g.max_weight_growth > 1.0))
        {
            return bad(
                "guard.max_weight_growth",
                format!(
                    "{} must be 0 (off) or a finite value > 1",
                    g.max_weight_growth
                ),
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
        let d = &self.data;
        let needs_root = matches!(
            d.kind,
            DataKind::Photos | DataKind::Imagenet | DataKind::FashionMnist
        ) || (d.kind == DataKind::Webdataset && d.shards.is_none());
        if needs_root && d.root.is_none() {
            let also = if d.kind == DataKind::Webdataset {
                " (or data.shards)"
            } else {
                ""
            };
            return bad(
                "data.root",
                format!("required{also} when data.kind = \"{}\"", d.kind.as_str()),
            );
        }
        if d.kind != DataKind::Photos {
            in_range("data.max_crop_frac", d.max_crop_frac, 0.0, 1.0, false)?;
            if !(d.min_crop_frac > 0.0 && d.min_crop_frac <= d.max_crop_frac) {
                return bad(
                    "data.min_crop_frac",
                    format!(
                        "{} must be in (0, data.max_crop_frac = {}]",
                        d.min_crop_frac, d.max_crop_frac
                    ),
                );
            }
        }
        if d.prefetch == 0 {
            return bad("data.prefetch", "must be >= 1".into());
        }
        if d.workers == Some(0) {
            return bad(
                "data.workers",
                "must be >= 1 (omit it for the default)".into(),
            );
        }
        if let (Some(r), Some(w)) = (d.rank, d.world_size) {
            if w == 0 || r >= w {
                return bad("data.rank", format!("{r} must be < data.world_size = {w}"));
            }
        }
        if let Some(e) = &self.eval.data {
            if e.kind == DataKind::Synthetic {
                return bad(
                    "eval.data.kind",
                    "synthetic images are no held-out set".into(),
                );
            }
            if e.root.is_none() && !(e.kind == DataKind::Webdataset && e.shards.is_some()) {
                return bad(
                    "eval.data.root",
                    format!("required when eval.data.kind = \"{}\"", e.kind.as_str()),
                );
            }
        }
        // One semantic code (`model.spc.codebook_size = 1`) makes `pre` a flat pixel VQ: every
        // patch's semantic id is 0, so there is no SPC to start from (configs/fmnist-pixel-vq.toml).
        let flat_vq = self.run.stage == Stage::Pre && self.model.spc.codebook_size == 1;
        if matches!(self.run.stage, Stage::Pre | Stage::DecoderFt)
            && self.init.spc.is_none()
            && !flat_vq
        {
            return bad(
                "init.spc",
                format!(
                    "stage `{}` needs the SPC checkpoint of stage 1 (or model.spc.codebook_size = 1: a flat pixel VQ)",
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

    /// What the training loop reads of this config.
    pub fn loop_config(&self) -> LoopConfig {
        LoopConfig {
            run: self.run.clone(),
            optim: self.optim.clone(),
            schedule: self.schedule.clone(),
            guard: self.guard.clone(),
            dist: self.dist.clone(),
            disc: Some(DiscOptim {
                lr: self.disc.lr,
                betas: self.disc.betas,
            }),
            batch_size: self.data.batch_size as usize,
            config_toml: self.to_toml(),
        }
    }
}

/// The error of a tokenizer [`TrainConfig`] given a stage that another config type describes.
fn not_a_tokenizer_stage(file: &Path, stage: Stage) -> Error {
    let what = match stage.config_kind() {
        ConfigKind::Tokenizer => "a tokenizer stage",
        ConfigKind::Llava => {
            "a LLaVA stage: its config is the LLaVA training config (`semhitok_train::llava`, \
             sections [run], [llm], ...), not the tokenizer's TrainConfig"
        }
        ConfigKind::T2i => {
            "the text-to-image stage: its config is the T2I training config \
             (`semhitok_train::t2i`, sections [run], [llm], ...), not the tokenizer's TrainConfig"
        }
    };
    load::config_error(
        file,
        "run.stage",
        format!(
            "`{}` is {what}; `semhitok train --config FILE` reads the right type from run.stage \
             (the tokenizer stages are spc, pre, decoder-ft, joint)",
            stage.as_str()
        ),
    )
}
