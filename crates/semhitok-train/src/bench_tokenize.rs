//! `semhitok bench-tokenize`: images/s of the tokenizer's encode path (teacher + SPC + pixel
//! encoder + SGHC search) on one fixed batch of u8 images kept on the device, so decoding files is
//! not timed. `scripts/bench_tokenize_torch.py` is the PyTorch eager reference of the same path:
//! it reads the model folder and the inputs written here, times the same batch, and reports the
//! share of ids that agree with the ones written here.
//!
//! The model is a folder (`--model`, e.g. the exported demo model) or, with `--config`, a model
//! of that training config with random weights (the SigLIP teacher too: no real weights exist
//! offline), written to `OUT/model` for the reference.

use crate::codec::parse_device;
use crate::config::TrainConfig;
use crate::error::{Error, Result};
use crate::stages::{build_teacher, load_tokenizer, teacher_spec};
use semhitok_nn::model::SemHiTok;
use semhitok_nn::pretrained::{PretrainedConfig, Tokenizer};
use std::path::PathBuf;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// `semhitok bench-tokenize`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchTokenizeArgs {
    /// A model folder or trained run.
    #[arg(long, conflicts_with = "config")]
    pub model: Option<PathBuf>,
    /// A training config: its model with random weights (e.g. configs/paper-pre-vitb-256.toml).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Output folder: inputs.safetensors (u8 images), ids.safetensors, result.json (and model/).
    #[arg(long, default_value = "target/bench/tokenize")]
    pub out: PathBuf,
    #[arg(long, default_value_t = 64)]
    pub batch: i64,
    #[arg(long, default_value_t = 10)]
    pub iters: usize,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    /// cpu | cuda | cuda:N
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Then time the bf16-autocast teacher path (CUDA) and report the share of unified ids it
    /// changes on the same batch (`unified_ids_changed_by_bf16_teacher`).
    #[arg(long)]
    pub teacher_bf16: bool,
    /// Then (after `--teacher-bf16`, if given) time the path with the teacher, the SPC head and
    /// the pixel encoder in bf16 (`Tokenizer::use_bf16(Bf16Encode::Encoders)`; searches fp32) and report
    /// `unified_ids_changed_by_bf16_encoders`.
    #[arg(long)]
    pub bf16_encoders: bool,
    /// Intra-op threads (0: LibTorch's default).
    #[arg(long, default_value_t = 0)]
    pub threads: i32,
}

fn sync(d: Device) {
    if let Device::Cuda(i) = d {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Run the benchmark; returns (and writes) `result.json`.
pub fn run(a: &BenchTokenizeArgs) -> Result<serde_json::Value> {
    if a.threads > 0 {
        tch::set_num_threads(a.threads);
    }
    let device = parse_device(&a.device)?;
    std::fs::create_dir_all(&a.out).map_err(|e| Error::io(&a.out, e))?;
    let (mut tok, model_dir) = match (&a.model, &a.config) {
        (Some(m), _) => (load_tokenizer(m, device)?, m.clone()),
        (None, Some(c)) => {
            let mut cfg = TrainConfig::load(c, &[])?;
            cfg.run.device = if device.is_cuda() {
                crate::config::DeviceKind::Cuda
            } else {
                crate::config::DeviceKind::Cpu
            };
            tch::manual_seed(0);
            let teacher = build_teacher(&cfg, device)?;
            let model = SemHiTok::new(&cfg.model, device)?;
            let source = serde_json::json!({"random_init_from": c.display().to_string()});
            let pc = PretrainedConfig::new(cfg.model.clone(), teacher_spec(&cfg), source);
            let tok = Tokenizer::new(model, teacher, pc)?;
            let dir = a.out.join("model");
            tok.save_pretrained(&dir, "random-init benchmark model\n", true)?;
            (tok, dir)
        }
        (None, None) => return Err(Error::Input("give --model DIR or --config FILE".into())),
    };
    let s = tok.config().preprocessing.image_size;
    tch::manual_seed(1);
    let x_cpu = Tensor::randint(256, [a.batch, 3, s, s], (Kind::Uint8, Device::Cpu));
    let x = x_cpu.to_device(device);
    let mut ids = None;
    for _ in 0..a.warmup {
        ids = Some(tok.encode(&x)?.unified_ids);
    }
    sync(device);
    let mut times = vec![];
    for _ in 0..a.iters {
        let t = Instant::now();
        let e = tok.encode(&x)?;
        sync(device);
        times.push(t.elapsed().as_secs_f64());
        ids = Some(e.unified_ids);
    }
    let ids = ids.ok_or_else(|| Error::Input("--warmup + --iters must be >= 1".into()))?;
    Tensor::write_safetensors(&[("images", &x_cpu)], a.out.join("inputs.safetensors"))?;
    Tensor::write_safetensors(
        &[("unified", ids.to_device(Device::Cpu))],
        a.out.join("ids.safetensors"),
    )?;
    if a.teacher_bf16 || a.bf16_encoders {
        crate::amp::set_cuda_autocast_bf16();
    }
    let bf16 = if a.teacher_bf16 {
        tok.use_bf16_teacher()?;
        time_bf16(&tok, &x, &ids, a, "unified_ids_changed_by_bf16_teacher")?
    } else {
        serde_json::Value::Null
    };
    let bf16_encoders = if a.bf16_encoders {
        tok.use_bf16(semhitok_nn::pretrained::Bf16Encode::Encoders)?;
        time_bf16(&tok, &x, &ids, a, "unified_ids_changed_by_bf16_encoders")?
    } else {
        serde_json::Value::Null
    };
    let mut sorted = times.clone();
    sorted.sort_by(f64::total_cmp);
    let median = sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN);
    let best = sorted.first().copied().unwrap_or(f64::NAN);
    let r = serde_json::json!({
        "impl": "semhitok (tch)",
        "model": model_dir.display().to_string(),
        "teacher": tok.teacher().name(),
        "image_size": s,
        "batch": a.batch,
        "device": a.device,
        "threads": tch::get_num_threads(),
        "iters": a.iters,
        "median_s": median,
        "best_s": best,
        "images_per_s_median": a.batch as f64 / median,
        "images_per_s_best": a.batch as f64 / best,
        "bf16_teacher": bf16,
        "bf16_encoders": bf16_encoders,
    });
    let p = a.out.join("result.json");
    crate::atomic::write_atomic(
        &p,
        serde_json::to_string_pretty(&r)
            .unwrap_or_default()
            .as_bytes(),
    )?;
    println!("{}", serde_json::to_string(&r).unwrap_or_default());
    Ok(r)
}

/// Times `tok`'s current (bf16) encode path on `x` like the fp32 one and reports the share of
/// unified ids that differ from the fp32 `ids` under `changed_key`.
fn time_bf16(
    tok: &Tokenizer,
    x: &Tensor,
    ids: &Tensor,
    a: &BenchTokenizeArgs,
    changed_key: &str,
) -> Result<serde_json::Value> {
    let device = x.device();
    let mut ids16 = tok.encode(x)?.unified_ids;
    sync(device);
    let mut t16 = vec![];
    for _ in 0..a.iters {
        let t = Instant::now();
        ids16 = tok.encode(x)?.unified_ids;
        sync(device);
        t16.push(t.elapsed().as_secs_f64());
    }
    t16.sort_by(f64::total_cmp);
    let changed = ids16
        .ne_tensor(ids)
        .to_kind(Kind::Double)
        .mean(Kind::Double)
        .double_value(&[]);
    let med = t16.get(t16.len() / 2).copied().unwrap_or(f64::NAN);
    let mut r = serde_json::json!({
        "median_s": med,
        "images_per_s_median": a.batch as f64 / med,
        "active": device.is_cuda(),
        "mode": format!("{:?}", tok.bf16_mode()),
    });
    r[changed_key] = serde_json::json!(changed);
    Ok(r)
}
