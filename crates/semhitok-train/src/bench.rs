//! `semhitok bench`: time N optimizer steps of a stage (default: `pre` at paper size) through
//! the real training loop, and report images/s and model FLOP utilisation (MFU).
//!
//! No checkpoint is loaded: the SPC and the teacher have random weights (no real weights exist
//! offline), which changes nothing about the cost. The batch is one fixed synthetic batch kept
//! on the device, so data loading is not timed. `scripts/bench_train_gpu_torch.py` is the PyTorch
//! eager reference of the same model, batch, precision and FLOP count.
//!
//! FLOPs: matmul FLOPs only (the usual MFU convention), `2 * N * params_matmul` per forward
//! token plus `4 * N^2 * D` per attention layer; trained parts count 3x (forward + backward),
//! the frozen teacher and SPC count 1x.

use crate::config::{Stage, TrainConfig};
use crate::error::{Error, Result};
use crate::trainer::{train, Batch, Batches, TrainOptions};
use semhitok_nn::vit::VitConfig;
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Tensor};

/// `semhitok bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    #[arg(long, default_value = "configs/paper-pre-vitb-256.toml")]
    pub config: PathBuf,
    /// Timed optimizer steps.
    #[arg(long, default_value_t = 20)]
    pub steps: u64,
    /// Untimed warm-up steps.
    #[arg(long, default_value_t = 5)]
    pub warmup: u64,
    /// Peak dense TFLOP/s of the device at the run's precision (H200 bf16: 989).
    #[arg(long, default_value_t = 989.0)]
    pub peak_tflops: f64,
    /// After the timed run, run the same steps again with a device sync at every phase boundary
    /// and report milliseconds per step for each phase (`phases_ms`; the sum exceeds the timed
    /// step: no overlap).
    #[arg(long)]
    pub profile: bool,
    /// Then run two more optimizer steps, the second between `cudaProfilerStart` and
    /// `cudaProfilerStop`, for `ncu --profile-from-start off` (per-kernel times of exactly one
    /// steady-state step).
    #[arg(long)]
    pub cuda_profiler_step: bool,
    /// `key=value` config overrides.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

struct FixedBatch(Tensor);

impl Batches for FixedBatch {
    fn next_batch(&mut self, device: Device) -> Result<Batch> {
        Ok(Batch::Images(self.0.to_device(device)))
    }
    fn state(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn restore(&mut self, _: &serde_json::Value) -> Result<()> {
        Ok(())
    }
}

/// Forward matmul FLOPs of a ViT trunk over `n` tokens.
pub fn vit_flops(v: &VitConfig, n: i64) -> f64 {
    let d = v.hidden_size as f64;
    let n = n as f64;
    let mlp = v.mlp_ratio * d;
    let per_layer = 2.0 * n * (4.0 * d * d + 2.0 * d * mlp) + 4.0 * n * n * d;
    per_layer * v.depth as f64
}

/// Training FLOPs per image of stage `pre` (teacher + SPC forward, encoder/decoder fwd + bwd).
pub fn pre_flops_per_image(
    cfg: &TrainConfig,
    teacher: &VitConfig,
    teacher_tokens: i64,
    teacher_patch: i64,
) -> f64 {
    let m = &cfg.model;
    let n = m.encoder.grid() * m.encoder.grid();
    let patch_in = (3 * m.encoder.patch_size * m.encoder.patch_size) as f64;
    let t = vit_flops(teacher, teacher_tokens)
        + 2.0
            * teacher_tokens as f64
            * (3 * teacher_patch * teacher_patch) as f64
            * teacher.hidden_size as f64;
    let spc = vit_flops(&m.spc.decoder, n) * 0.0 // the SPC decoder does not run in `pre`
        + 2.0 * n as f64 * (m.spc.teacher_dim * m.spc.head_hidden + m.spc.head_hidden * m.spc.code_dim) as f64;
    let enc = vit_flops(&m.encoder.vit, n)
        + 2.0 * n as f64 * patch_in * m.encoder.vit.hidden_size as f64
        + 2.0 * n as f64 * (m.encoder.vit.hidden_size * m.encoder.out_dim) as f64;
    let dec_n = n * m.decoder.groups;
    let dec = vit_flops(&m.decoder.vit, dec_n)
        + 2.0 * dec_n as f64 * (m.decoder.in_dim * m.decoder.vit.hidden_size) as f64
        + 2.0 * n as f64 * m.decoder.vit.hidden_size as f64 * patch_in;
    t + spc + 3.0 * (enc + dec)
}

/// Run the benchmark; prints and returns a JSON record.
pub fn run(a: &BenchArgs) -> Result<serde_json::Value> {
    let tmp = std::env::temp_dir().join(format!("semhitok-bench-{}", std::process::id()));
    let mut set = a.set.clone();
    set.push(format!("run.out_dir=\"{}\"", tmp.display()));
    set.push(format!("schedule.steps={}", a.warmup + a.steps));
    set.push(format!("schedule.ckpt_every={}", 1_000_000_000u64));
    set.push("schedule.log_every=1000000".into());
    let mut cfg = TrainConfig::load(&a.config, &set)?;
    // Random-init weights (the earlier stages' runs and SigLIP's checkpoint are not read): the
    // same cost per step as trained ones, and nothing to download. The embedded EfficientNet
    // teacher has no random init; its weights are a local asset and stay.
    cfg.init.spc = None;
    cfg.init.pre = None;
    if cfg.teacher.kind != crate::config::TeacherKind::EfficientnetLite0 {
        cfg.teacher.weights = None;
    }
    if !matches!(
        cfg.run.stage,
        Stage::Pre | Stage::Spc | Stage::DecoderFt | Stage::Joint
    ) {
        return Err(Error::Input(format!(
            "bench times the tokenizer stages (spc, pre, decoder-ft, joint), not `{}`",
            cfg.run.stage.as_str()
        )));
    }
    // Under a launcher (WORLD_SIZE set) the steps are data-parallel; before the model is built.
    let dist = crate::dist::Dist::from_env(&cfg.dist, cfg.run.device)?;
    let world = dist.as_ref().map_or(1, crate::dist::Dist::world_size);
    let device = cfg.run.device.device();
    let mut task = crate::stages::build_task_uninit(&cfg)?;
    tch::manual_seed(0);
    let s = cfg.data.image_size;
    let x = (Tensor::rand([cfg.data.batch_size, 3, s, s], (tch::Kind::Float, device)) * 2.0 - 1.0)
        .clamp(-1.0, 1.0);
    let mut data = FixedBatch(x);
    let quiet = TrainOptions {
        overwrite: true,
        quiet: true,
        dist: dist.clone(),
        ..Default::default()
    };
    let sync = || crate::trainer::cuda_sync(device);
    // Warm-up, then timed steps (each step ends with a host read of the loss: a sync).
    let mut c1 = cfg.clone();
    c1.schedule.steps = a.warmup.max(1);
    train(&c1.loop_config(), task.as_mut(), &mut data, &quiet)?;
    sync();
    // The timed run must not include the end-of-run checkpoint (gigabytes written and hashed):
    // a schedule longer than the run, stopped after `steps` optimizer steps, writes none.
    let mut c2 = cfg.clone();
    c2.schedule.steps = a.steps * 1000;
    c2.run.out_dir = tmp.join("timed");
    let timed = TrainOptions {
        overwrite: true,
        stop_after: Some(a.steps),
        ..quiet.clone()
    };
    let t = Instant::now();
    train(&c2.loop_config(), task.as_mut(), &mut data, &timed)?;
    sync();
    let dt = t.elapsed().as_secs_f64();
    let imgs = (a.steps * cfg.data.batch_size as u64 * cfg.optim.accum_steps * world as u64) as f64;
    let ips = imgs / dt;
    let (tv, tt, tp) = match cfg.teacher.kind {
        crate::config::TeacherKind::SiglipLargeP16_256 => {
            (VitConfig::custom(1024, 24, 16), 256, 16)
        }
        crate::config::TeacherKind::SiglipSo400mP14_384 => {
            let mut v = VitConfig::custom(1152, 27, 16);
            v.mlp_ratio = 4304.0 / 1152.0;
            (v, 729, 14)
        }
        crate::config::TeacherKind::EfficientnetLite0 => (VitConfig::custom(8, 0, 1), 0, 1),
    };
    let phases_ms = if a.profile {
        let mut c3 = c2.clone();
        c3.run.out_dir = tmp.join("profile");
        let prof = TrainOptions {
            overwrite: true,
            profile: true,
            ..timed.clone()
        };
        let r = train(&c3.loop_config(), task.as_mut(), &mut data, &prof)?;
        let per = 1e3 / a.steps.max(1) as f64;
        serde_json::json!(r
            .phases
            .iter()
            .map(|(k, v)| (k.to_string(), v * per))
            .collect::<std::collections::BTreeMap<_, _>>())
    } else {
        serde_json::Value::Null
    };
    if a.cuda_profiler_step && device.is_cuda() {
        // Two steps of a fresh run; the second (steady state, as the PyTorch side's) is profiled.
        let mut c4 = c2.clone();
        c4.run.out_dir = tmp.join("cuda-profiler");
        let two = TrainOptions {
            overwrite: true,
            stop_after: Some(2),
            cuda_profile_step: Some(1),
            ..quiet.clone()
        };
        train(&c4.loop_config(), task.as_mut(), &mut data, &two)?;
    }
    // The FLOP formula is the `pre` stage's; for `spc` only throughput is reported.
    let (fpi, mfu) = if cfg.run.stage == Stage::Pre {
        let fpi = pre_flops_per_image(&cfg, &tv, tt, tp);
        // Per device: the images of all ranks over the peak of all devices.
        (
            Some(fpi / 1e9),
            Some(ips * fpi / (a.peak_tflops * 1e12 * world as f64)),
        )
    } else {
        (None, None)
    };
    let rec = serde_json::json!({
        "impl": "semhitok-rs (tch)",
        "config": a.config.display().to_string(),
        "device": format!("{device:?}"),
        "precision": format!("{:?}", cfg.run.precision),
        "bf16_weight_copy": cfg.run.bf16_copy(),
        "batch": cfg.data.batch_size,
        "world_size": world,
        "dist_backend": dist.as_ref().map(|d| d.process_group().backend().as_str()),
        "dist_bucket_mb": dist.as_ref().map(|_| cfg.dist.bucket_mb),
        "dist_overlap": dist.as_ref().map(|_| cfg.dist.overlap),
        "steps": a.steps,
        "seconds": dt,
        "images_per_s": ips,
        "stage": cfg.run.stage.as_str(),
        "step_ms": dt * 1e3 / a.steps.max(1) as f64,
        "gflops_per_image": fpi,
        "peak_tflops": a.peak_tflops,
        "mfu": mfu,
        "phases_ms": phases_ms,
    });
    println!("{rec}");
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(rec)
}
