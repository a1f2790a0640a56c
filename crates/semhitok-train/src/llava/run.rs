//! Building a LLaVA model from its config, training it (`semhitok train` with a LLaVA stage),
//! and loading a trained one back (a run directory or an exported folder).

use super::config::LlavaConfig;
use super::data::{LlavaBatches, LlmText};
use super::model::{LlavaModel, VisionFeatures};
use super::task::LlavaTask;
use crate::atomic::{rename_into_place, tmp_path};
use crate::config::{config_error, LlmTrain};
use crate::dispatch::TrainRequest;
use crate::error::{Error, Result};
use crate::rundir::RunStart;
use crate::trainer::{train, LoopConfig, TrainOptions, TrainReport};
use semhitok_mllm::llava::Template;
use semhitok_mllm::llm::{LmParam, TrainSpec};
use semhitok_nn::pretrained::Tokenizer;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The projector file a run writes at its end (LLaVA's stage-1 `mm_projector.bin`, as
/// safetensors) and an exported folder holds.
pub const PROJECTOR_FILE: &str = "mm_projector.safetensors";
/// The exported folder's LLaVA settings (tokenizer folder, features, template, lengths).
pub const LLAVA_CONFIG_FILE: &str = "llava_config.json";

/// A model built from a config, with the LLM's trained tensors and the prompt side.
#[derive(Debug)]
pub struct Built {
    pub model: LlavaModel,
    pub lm_params: Vec<LmParam>,
    pub text: LlmText,
}

fn spec_of(t: LlmTrain) -> TrainSpec {
    match t {
        LlmTrain::Frozen => TrainSpec::Frozen,
        LlmTrain::Full => TrainSpec::Full,
        LlmTrain::Lora { r, alpha } => TrainSpec::Lora { r, alpha },
    }
}

/// Projector tensors from a file (`mm_projector.safetensors`) or a folder holding one, into
/// the model's projector (every tensor present with its shape).
pub fn load_projector(model: &LlavaModel, path: &Path) -> Result<()> {
    let file = if path.is_dir() {
        path.join(PROJECTOR_FILE)
    } else {
        path.to_path_buf()
    };
    let tensors: BTreeMap<String, Tensor> = Tensor::read_safetensors(&file)
        .map_err(|e| Error::Input(format!("{}: {e}", file.display())))?
        .into_iter()
        .collect();
    let _g = tch::no_grad_guard();
    for (name, var) in model.projector_state() {
        let t = tensors
            .get(&name)
            .ok_or_else(|| Error::Input(format!("{}: no tensor {name}", file.display())))?;
        if t.size() != var.size() {
            return Err(Error::Input(format!(
                "{}: {name} has shape {:?}, the projector {:?} (another tokenizer or LLM?)",
                file.display(),
                t.size(),
                var.size()
            )));
        }
        let mut v = var.shallow_clone();
        v.copy_(t);
    }
    Ok(())
}

/// Build the model a config describes (tokenizer folder, LLM weights, projector init or file,
/// the LLM's trained tensors), on `run.device`.
pub fn build(cfg: &LlavaConfig, origin: &Path) -> Result<Built> {
    let device = cfg.run.device.device();
    if !cfg.llava.tokenizer.is_dir() {
        return Err(config_error(
            origin,
            "llava.tokenizer",
            format!(
                "{}: not a model folder (export a tokenizer run with `semhitok export`)",
                cfg.llava.tokenizer.display()
            ),
        ));
    }
    if !cfg.llm.weights.exists() {
        return Err(config_error(
            origin,
            "llm.weights",
            format!("{}: no such file or folder", cfg.llm.weights.display()),
        ));
    }
    let vision = Tokenizer::from_pretrained(&cfg.llava.tokenizer, device)?;
    let lm = semhitok_mllm::llm::load::load(&cfg.llm.weights, cfg.llm.dtype.kind(), device)?;
    let text = LlmText::of(&lm, cfg.llava.template, cfg.llm.max_seq_len as usize)
        .map_err(|e| config_error(origin, "llava.template", e.to_string()))?;
    let mut model = LlavaModel::new(vision, cfg.llava.features, lm, cfg.run.seed as i64)?;
    if let Some(p) = &cfg.llava.projector {
        load_projector(&model, p)
            .map_err(|e| config_error(origin, "llava.projector", e.to_string()))?;
    }
    let spec = spec_of(cfg.llm.train_spec(origin, "llm")?);
    tch::manual_seed(cfg.run.seed as i64 + 1);
    let lm_params = model.lm.model.train_params(&spec)?;
    Ok(Built {
        model,
        lm_params,
        text,
    })
}

fn write_projector(model: &LlavaModel, path: &Path) -> Result<()> {
    let st: Vec<(String, Tensor)> = model
        .projector_state()
        .into_iter()
        .map(|(k, t)| (k, t.detach().to_device(Device::Cpu)))
        .collect();
    let tmp = tmp_path(path);
    Tensor::write_safetensors(&st, &tmp)
        .map_err(|e| Error::Input(format!("{}: {e}", tmp.display())))?;
    rename_into_place(&tmp, path)
}

/// The task and its data for `cfg` (data opened first: a missing JSON is reported before any
/// model is built).
pub fn prepare(cfg: &LlavaConfig, origin: &Path) -> Result<(LlavaTask, LlavaBatches)> {
    let json = &cfg.data.json;
    if !json.is_file() {
        return Err(config_error(
            origin,
            "data.json",
            format!("{}: no such file", json.display()),
        ));
    }
    let Built {
        model,
        lm_params,
        text,
    } = build(cfg, origin)?;
    let data = LlavaBatches::open(
        json,
        &cfg.image_root(),
        text,
        model.n_image as usize,
        model.vision.config().preprocessing.image_size,
        cfg.data.batch_size,
        cfg.data.limit,
        cfg.data.shuffle,
        cfg.run.seed,
    )?;
    let n_lm: i64 = lm_params.iter().map(|p| p.var.numel() as i64).sum();
    let n_proj: i64 = model
        .projector_state()
        .iter()
        .map(|(_, t)| t.numel() as i64)
        .sum();
    eprintln!(
        "llava {}: {} records, {} image positions per image (features {}, width {}), trained: \
         projector {n_proj} + LLM {n_lm} parameters",
        cfg.run.stage.as_str(),
        data.len(),
        model.n_image,
        model.features.as_str(),
        model.mm_hidden_size
    );
    Ok((LlavaTask::new(model, lm_params), data))
}

/// What the trainer reads of a LLaVA config.
pub fn loop_config(cfg: &LlavaConfig) -> LoopConfig {
    LoopConfig {
        run: cfg.run.clone(),
        optim: cfg.optim.clone(),
        schedule: cfg.schedule.clone(),
        guard: cfg.guard.clone(),
        dist: cfg.dist.clone(),
        disc: None,
        batch_size: cfg.data.batch_size,
        log: crate::config::LogConfig::default(),
        config_toml: cfg.to_toml(),
    }
}

/// After training: `RUN/mm_projector.safetensors`, `RUN/data_report.json`, and the evaluation
/// of `data.eval` into `RUN/eval.json`.
pub fn finish(cfg: &LlavaConfig, task: &LlavaTask, data: &LlavaBatches, dir: &Path) -> Result<()> {
    write_projector(&task.model, &dir.join(PROJECTOR_FILE))?;
    let dr = serde_json::to_string_pretty(&data.report).expect("serializable");
    crate::atomic::write_atomic(&dir.join("data_report.json"), dr.as_bytes())?;
    if let Some(w) = data.report.prompts.warning(cfg.llm.max_seq_len as usize) {
        eprintln!("warning: {w}");
    }
    if data.report.batch_skipped > 0 {
        eprintln!(
            "warning: {} records skipped while batching (see {})",
            data.report.batch_skipped,
            dir.join("data_report.json").display()
        );
    }
    if let Some(eval) = &cfg.data.eval {
        let text = LlmText::of(
            &task.model.lm,
            cfg.llava.template,
            cfg.llm.max_seq_len as usize,
        )?;
        let items = super::evaluate::read_items(eval, cfg.data.eval_limit)?;
        let root = eval.parent().map(Path::to_path_buf).unwrap_or_default();
        let out = super::evaluate::evaluate(
            &task.model,
            &text,
            &items,
            &root,
            cfg.data.eval_batch_size,
            cfg.llava.max_new_tokens,
        )?;
        super::evaluate::write_report(&dir.join("eval.json"), &out)?;
        eprintln!("{}", super::evaluate::summary(&out.report));
    }
    Ok(())
}

/// `semhitok train --config FILE` for `run.stage = "llava-pretrain" | "llava-finetune"`.
pub fn run(req: &TrainRequest) -> Result<TrainReport> {
    let (cfg, origin) = LlavaConfig::load(&req.config, &req.overrides)?;
    cfg.run.apply_threads();
    // Under a launcher: data-parallel (before the model is built: it picks the CUDA device).
    let dist = crate::dist::Dist::from_env(&cfg.dist, cfg.run.device)?;
    let (mut task, data) = prepare(&cfg, &origin)?;
    let mut data = match &dist {
        Some(d) => data.sharded(d.rank(), d.world_size()),
        None => data,
    };
    let main = dist.as_ref().is_none_or(crate::dist::Dist::is_main);
    let loop_cfg = loop_config(&cfg);
    let opts = TrainOptions {
        resume: req.start == RunStart::Resume,
        overwrite: req.start == RunStart::Overwrite,
        command_line: req.command_line.clone(),
        quiet: req.quiet || !main,
        dist,
        ..Default::default()
    };
    let report = train(&loop_cfg, &mut task, &mut data, &opts)?;
    // Rank 0 writes the projector and the data report and evaluates.
    if main {
        finish(&cfg, &task, &data, &report.run_dir)?;
    }
    Ok(report)
}

/// The exported folder's settings.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct ExportedLlava {
    /// The SemHiTok model folder (as given at training time).
    pub tokenizer: PathBuf,
    pub features: VisionFeatures,
    pub template: Template,
    pub max_seq_len: usize,
    pub n_image_tokens: i64,
    pub mm_hidden_size: i64,
}

/// A trained LLaVA model: a run directory (its config and newest checkpoint) or a folder
/// written by [`export`]. `device` overrides the run's.
pub fn load(path: &Path, device: Device) -> Result<(LlavaModel, LlmText)> {
    let dev = if device.is_cuda() { "cuda" } else { "cpu" };
    if path.join(LLAVA_CONFIG_FILE).is_file() {
        let p = path.join(LLAVA_CONFIG_FILE);
        let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
        let ex: ExportedLlava = serde_json::from_str(&text)
            .map_err(|e| Error::Input(format!("{}: {e}", p.display())))?;
        let vision = Tokenizer::from_pretrained(&ex.tokenizer, device)?;
        let lm = semhitok_mllm::llm::load::load(
            path,
            semhitok_mllm::llm::load::default_kind(device),
            device,
        )?;
        let text = LlmText::of(&lm, ex.template, ex.max_seq_len)?;
        let model = LlavaModel::new(vision, ex.features, lm, 0)?;
        load_projector(&model, path)?;
        return Ok((model, text));
    }
    let cfg_path = path.join("config.toml");
    if !cfg_path.is_file() {
        return Err(Error::Input(format!(
            "{}: neither a LLaVA run directory (config.toml) nor an exported LLaVA folder ({LLAVA_CONFIG_FILE})",
            path.display()
        )));
    }
    let (cfg, origin) = LlavaConfig::load(&cfg_path, &[format!("run.device=\"{dev}\"")])?;
    let Built {
        model,
        lm_params,
        text,
    } = build(&cfg, &origin)?;
    let task = LlavaTask::new(model, lm_params);
    let ck = crate::checkpoint::load_latest(path)?.ok_or_else(|| {
        Error::Input(format!("{}: the run has no checkpoint yet", path.display()))
    })?;
    crate::checkpoint::restore_vars(&ck, "model.", &task.trained())?;
    eprintln!("loaded {} (step {})", ck.dir.display(), ck.state.step);
    Ok((task.model, text))
}

/// Write a trained LLaVA model in LLaVA's layout: the LLM as an HF folder (`config.json` with
/// LLaVA's `mm_*` keys added, `model.safetensors` with LoRA merged, tokenizer files), the
/// projector as `mm_projector.safetensors` (`model.mm_projector.{0,2}.*`), and
/// `llava_config.json` naming the SemHiTok tokenizer folder. transformers loads the LLM half
/// (`AutoModelForCausalLM.from_pretrained(out)`); the projector is LLaVA's `mlp2x_gelu`.
pub fn export(run: &Path, out: &Path, overwrite: bool) -> Result<PathBuf> {
    if out.exists() && !overwrite {
        return Err(Error::Input(format!(
            "{}: exists (pass --overwrite)",
            out.display()
        )));
    }
    let cfg_path = run.join("config.toml");
    let (cfg, _) = LlavaConfig::load(&cfg_path, &["run.device=\"cpu\"".to_string()])?;
    let (model, _) = load(run, Device::Cpu)?;
    let tmp = out.with_file_name(format!(
        ".tmp-{}-{}",
        out.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    model.lm.save_hf_dir(&tmp)?;
    let cj = tmp.join("config.json");
    let mut c: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&cj).map_err(|e| Error::io(&cj, e))?)
            .map_err(|e| Error::Input(format!("{}: {e}", cj.display())))?;
    let obj = c.as_object_mut().expect("config.json is an object");
    for (k, v) in [
        ("mm_projector_type", serde_json::json!("mlp2x_gelu")),
        ("mm_hidden_size", serde_json::json!(model.mm_hidden_size)),
        (
            "mm_vision_tower",
            serde_json::json!(cfg.llava.tokenizer.display().to_string()),
        ),
        ("mm_patch_merge_type", serde_json::json!("flat")),
        ("image_aspect_ratio", serde_json::json!("square")),
        (
            "tokenizer_model_max_length",
            serde_json::json!(cfg.llm.max_seq_len),
        ),
        ("tokenizer_padding_side", serde_json::json!("right")),
        (
            "semhitok_features",
            serde_json::json!(model.features.as_str()),
        ),
    ] {
        obj.insert(k.into(), v);
    }
    std::fs::write(&cj, serde_json::to_string_pretty(&c).expect("json") + "\n")
        .map_err(|e| Error::io(&cj, e))?;
    write_projector(&model, &tmp.join(PROJECTOR_FILE))?;
    let ex = ExportedLlava {
        tokenizer: cfg.llava.tokenizer.clone(),
        features: model.features,
        template: cfg.llava.template,
        max_seq_len: cfg.llm.max_seq_len as usize,
        n_image_tokens: model.n_image,
        mm_hidden_size: model.mm_hidden_size,
    };
    let p = tmp.join(LLAVA_CONFIG_FILE);
    std::fs::write(&p, serde_json::to_string_pretty(&ex).expect("json") + "\n")
        .map_err(|e| Error::io(&p, e))?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|e| Error::io(out, e))?;
    }
    std::fs::rename(&tmp, out).map_err(|e| Error::io(out, e))?;
    Ok(out.to_path_buf())
}
