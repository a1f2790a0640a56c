//! The four training stages as [`Task`]s over semhitok-nn's [`SemHiTok`], built by [`build_task`]
//! from a config; the factories of their parts are in `build` (teacher, perceptual network),
//! `data` (training batches), `tasks` (the `Task`s), `model_io` (models from checkpoints),
//! `validation` (the held-out set measured during training).
//!
//! | stage | trains | frozen | loss |
//! |---|---|---|---|
//! | `spc` | SPC head + semantic decoder (codebook by EMA) | teacher | `w_sem (1 - cos) + beta commit` |
//! | `pre` | pixel encoder, SGHC codebook, pixel decoder | teacher, SPC | `w_rec L_rec + codebook + commit (+ w_p L_p + GAN)` |
//! | `decoder-ft` | pixel decoder (optionally re-initialised larger) | all else | as `pre` |
//! | `joint` | SPC head + semantic decoder + pixel decoder on semantic codes | teacher | `spc` + `pre` pixel terms |
//!
//! `pre` with `model.fusion = "semantic_only"` is the semantic-only decoder baseline; with
//! `pixel_only` / `length_concat` and `model.sghc.m` it gives the paper's Tab. 5 ablations; with
//! `pixel_only` and a single semantic code (`model.spc.codebook_size = 1`, no `init.spc`) it is a
//! flat VQGAN-style pixel-only VQ of `model.sghc.m` codes (`configs/fmnist-pixel-vq.toml`).

mod build;
mod data;
mod model_io;
mod tasks;
mod validation;

pub use build::{
    build_teacher, check_teacher_fits, siglip_spec, teacher_spec, Perceptual, EFFNET_WEIGHTS,
    LPIPS_HEADS,
};
pub use data::{
    batch_tensor, build_batches, build_batches_for, build_eval_stream, build_stream,
    eval_data_inputs, merge_data_states, photo_config, u8_batch_tensor, StreamBatches,
};
pub use model_io::{f32_bits, init_checkpoint, load_model, load_parts, load_tokenizer, Loaded};
pub use tasks::{PixelTask, SpcTask};
pub use validation::build_validation;

use crate::config::{PerceptualKind, RecLoss, Stage, TrainConfig};
use crate::dist::Dist;
use crate::error::Result;
use crate::gan::Gan;
use crate::rundir::RunStart;
use crate::trainer::{train_validated, Task, TrainOptions, TrainReport};
use semhitok_nn::losses::PixelLoss;
use semhitok_nn::lpips::Lpips;
use semhitok_nn::model::{Part, SemHiTok};
use semhitok_nn::perceptual::EffNetPerceptual;
use std::path::Path;

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
                return Err(cfg.error(
                    "disc.enabled",
                    "stage `spc` reconstructs teacher features, not pixels: the discriminator only applies to `pre`, `decoder-ft` and `joint`",
                ));
            }
            return Ok(Box::new(SpcTask {
                model,
                teacher,
                semantic_weight: cfg.loss.semantic_weight,
                pending: None,
                dist: None,
            }));
        }
        Stage::Pre => {
            if load_init {
                match (&cfg.init.spc, cfg.model.spc.codebook_size) {
                    (Some(p), _) => {
                        let ck = init_checkpoint(p, &[Stage::Spc])?;
                        load_parts(&model, &ck, &[Part::Spc])?;
                    }
                    // One semantic code: every patch's semantic id is 0 whatever the SPC's
                    // weights, SGHC's sub-codebook 0 is one flat codebook and (with
                    // `fusion = "pixel_only"`) the decoder never reads the semantic code: a
                    // VQGAN-style pixel-only VQ (configs/fmnist-pixel-vq.toml).
                    (None, 1) => {}
                    (None, _) => {
                        return Err(cfg.error(
                            "init.spc",
                            "stage `pre` needs the SPC checkpoint of stage 1",
                        ))
                    }
                }
                // Fine-tuning a `pre` run on other data (ImageNet -> COYO, as LlamaGen): its
                // pixel encoder, sub-codebooks and decoder are the starting point.
                if let Some(pre) = &cfg.init.pre {
                    let ck = init_checkpoint(pre, &[Stage::Pre])?;
                    load_parts(&model, &ck, &[Part::Pixel, Part::Decoder])?;
                }
            }
            model.freeze(Part::Spc);
            vec![Part::Pixel, Part::Decoder]
        }
        Stage::DecoderFt => {
            if load_init {
                let ck = init_checkpoint(
                    cfg.init.pre.as_deref().unwrap_or(Path::new("")),
                    &[Stage::Pre],
                )?;
                load_parts(&model, &ck, &[Part::Spc, Part::Pixel])?;
                // The decoder comes from `pre` unless the config asks for a different one (e.g.
                // ViT-L), which then starts from fresh weights.
                if let Err(e) = load_parts(&model, &ck, &[Part::Decoder]) {
                    eprintln!(
                        "decoder-ft: decoder not loaded from {} ({e}); training a fresh decoder",
                        ck.dir.display()
                    );
                }
            }
            model.freeze(Part::Spc);
            model.freeze(Part::Pixel);
            vec![Part::Decoder]
        }
        Stage::Joint => {
            if cfg.model.fusion != semhitok_nn::fusion::Fusion::SemanticOnly {
                return Err(cfg.error(
                    "model.fusion",
                    "stage `joint` decodes pixels from the one (semantic) codebook: set model.fusion = \"semantic_only\"",
                ));
            }
            if let (Some(p), true) = (&cfg.init.spc, load_init) {
                let ck = init_checkpoint(p, &[Stage::Spc])?;
                load_parts(&model, &ck, &[Part::Spc])?;
            }
            model.freeze(Part::Pixel);
            vec![Part::Spc, Part::Decoder]
        }
        // (A loaded TrainConfig refuses these stages; this is one built in code.)
        Stage::LlavaPretrain | Stage::LlavaFinetune | Stage::T2i => {
            return Err(cfg.error(
                "run.stage",
                format!("`{}` is not a tokenizer stage", stage.as_str()),
            ))
        }
    };
    let perceptual = match cfg.loss.perceptual {
        _ if cfg.loss.perceptual_weight == 0.0 => None,
        PerceptualKind::None => None,
        PerceptualKind::Effnet => Some((
            Perceptual::Effnet(Box::new(EffNetPerceptual::load(
                &cfg.loss.effnet_weights,
                device,
            )?)),
            cfg.loss.perceptual_weight,
        )),
        PerceptualKind::LpipsVgg => {
            let vgg = cfg.loss.lpips_vgg16.as_deref().ok_or_else(|| {
                cfg.error(
                    "loss.lpips_vgg16",
                    "perceptual = \"lpips-vgg\" needs the VGG16 trunk: a torchvision vgg16 state dict saved as safetensors (not shipped offline; or use \"effnet\")",
                )
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
        dist: None,
    }))
}

/// Build task + data and train (the `semhitok train` command). Under a launcher (torchrun,
/// srun, `cargo xtask train --gpus N`: `WORLD_SIZE` set) the run is data-parallel over a c10d
/// process group (`[dist]`), each rank reading its shard of every global batch.
pub fn run_stage(
    cfg: &TrainConfig,
    start: RunStart,
    command_line: Vec<String>,
    quiet: bool,
) -> Result<TrainReport> {
    cfg.check_paths()?;
    cfg.run.apply_threads();
    // Before the model is built: it sets this process's CUDA device to LOCAL_RANK. Data next:
    // a missing dataset is reported before any model is built.
    let dist = Dist::from_env(&cfg.dist, cfg.run.device)?;
    let mut data = build_batches_for(cfg, dist.as_ref())?;
    let val = build_validation(cfg, dist.as_ref().is_none_or(Dist::is_main))?;
    let mut task = build_task(cfg)?;
    let opts = TrainOptions {
        resume: start == RunStart::Resume,
        overwrite: start == RunStart::Overwrite,
        command_line,
        // One progress bar (rank 0's).
        quiet: quiet || dist.as_ref().is_some_and(|d| !d.is_main()),
        dist,
        ..Default::default()
    };
    train_validated(
        &cfg.loop_config(),
        task.as_mut(),
        data.as_mut(),
        &opts,
        val.as_ref(),
    )
}
