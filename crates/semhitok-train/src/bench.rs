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

/// Forward matmul FLOPs per image of the parts of the tokenizer (the ViT trunks by [`vit_flops`],
/// the linear layers as `2 * tokens * in * out`); the nearest-code searches are not counted.
struct PartFlops {
    teacher: f64,
    head: f64,
    semantic_decoder: f64,
    encoder: f64,
    decoder: f64,
}

impl PartFlops {
    fn new(
        cfg: &TrainConfig,
        teacher: &VitConfig,
        teacher_tokens: i64,
        teacher_patch: i64,
    ) -> Self {
        let m = &cfg.model;
        let n = m.encoder.grid() * m.encoder.grid();
        let nf = n as f64;
        let patch_in = (3 * m.encoder.patch_size * m.encoder.patch_size) as f64;
        let lin = |tokens: f64, i: i64, o: i64| 2.0 * tokens * (i * o) as f64;
        let s = &m.spc;
        let sd = s.decoder.hidden_size;
        let dec_n = n * m.decoder.groups;
        Self {
            teacher: vit_flops(teacher, teacher_tokens)
                + 2.0
                    * teacher_tokens as f64
                    * (3 * teacher_patch * teacher_patch) as f64
                    * teacher.hidden_size as f64,
            head: lin(nf, s.teacher_dim, s.head_hidden) + lin(nf, s.head_hidden, s.code_dim),
            semantic_decoder: lin(nf, s.code_dim, sd)
                + vit_flops(&s.decoder, n)
                + lin(nf, sd, sd)
                + lin(nf, sd, s.teacher_dim),
            encoder: vit_flops(&m.encoder.vit, n)
                + 2.0 * nf * patch_in * m.encoder.vit.hidden_size as f64
                + lin(nf, m.encoder.vit.hidden_size, m.encoder.out_dim),
            decoder: vit_flops(&m.decoder.vit, dec_n)
                + lin(dec_n as f64, m.decoder.in_dim, m.decoder.vit.hidden_size)
                + 2.0 * nf * m.decoder.vit.hidden_size as f64 * patch_in,
        }
    }
}

/// The SigLIP teacher's trunk, token count and patch side (`None`: the embedded EfficientNet,
/// which has no ViT FLOP formula).
fn teacher_shape(kind: crate::config::TeacherKind) -> Option<(VitConfig, i64, i64)> {
    use crate::config::TeacherKind;
    match kind {
        TeacherKind::SiglipLargeP16_256 => Some((VitConfig::custom(1024, 24, 16), 256, 16)),
        TeacherKind::SiglipSo400mP14_384 => {
            let mut v = VitConfig::custom(1152, 27, 16);
            v.mlp_ratio = 4304.0 / 1152.0;
            Some((v, 729, 14))
        }
        TeacherKind::EfficientnetLite0 => None,
    }
}

/// Training FLOPs per image of a tokenizer stage: the frozen parts it runs once (forward), the
/// trained ones three times (forward + backward), as `scripts/bench_train_gpu_torch.py` counts.
/// `None` for the stages that are not the tokenizer's and for the embedded EfficientNet teacher.
pub fn flops_per_image(cfg: &TrainConfig) -> Option<f64> {
    let (teacher, teacher_tokens, teacher_patch) = teacher_shape(cfg.teacher.kind)?;
    let f = PartFlops::new(cfg, &teacher, teacher_tokens, teacher_patch);
    Some(match cfg.run.stage {
        Stage::Spc => f.teacher + 3.0 * (f.head + f.semantic_decoder),
        Stage::Pre => f.teacher + f.head + 3.0 * (f.encoder + f.decoder),
        Stage::DecoderFt => f.teacher + f.head + f.encoder + 3.0 * f.decoder,
        Stage::Joint => f.teacher + 3.0 * (f.head + f.semantic_decoder + f.decoder),
        _ => return None,
    })
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
    // Per device: the images of all ranks over the peak of all devices.
    let fpi = flops_per_image(&cfg);
    let mfu = fpi.map(|f| ips * f / (a.peak_tflops * 1e12 * world as f64));
    let fpi = fpi.map(|f| f / 1e9);
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
