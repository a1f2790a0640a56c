//! [`T2iTask`]: the LLM with the visual vocabulary, fully fine-tuned on `[bos] caption <boi>
//! ids <eoi>` with the loss on the visual tokens and `<eoi>` (shift by one, f32 logsumexp:
//! `semhitok_mllm::loss::causal_lm_loss`), over the trainer's machinery (flat AdamW, bf16
//! autocast, checkpoints, exact resume, progress, metrics); and [`run`], `semhitok train` for
//! `run.stage = "t2i"`.

use super::config::T2iConfig;
use super::data::{CaptionSource, T2iBatches, TokenShards};
use crate::dispatch::TrainRequest;
use crate::dist::Dist;
use crate::error::{Error, Result};
use crate::optim::Param;
use crate::rundir::RunStart;
use crate::trainer::{train, Batch, LossOut, Task, TrainOptions, TrainReport};
use semhitok_mllm::llm::load::{load, LoadedLm};
use semhitok_mllm::llm::{Input, LlamaModel, TrainSpec};
use semhitok_mllm::loss::causal_lm_loss;
use semhitok_mllm::t2i::T2iLayout;
use semhitok_mllm::vocab::VisualVocab;
use std::collections::BTreeMap;
use std::path::Path;
use tch::{Device, Tensor};

/// The base LLM extended with the visual vocabulary of a tokenizer with `k_sem` x `m` ids:
/// the new rows start at the model's embedding row count (see `VisualVocab`).
pub struct ExtendedLm {
    /// Model, tokenizer, bos / eos.
    pub lm: LoadedLm,
    /// Where the visual ids, `<boi>` and `<eoi>` sit.
    pub vocab: VisualVocab,
    /// The sequence layout (bos = the model's `bos_token_id`).
    pub layout: T2iLayout,
}

impl std::fmt::Debug for ExtendedLm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExtendedLm")
            .field("vocab", &self.vocab)
            .finish()
    }
}

/// Load `weights` (GGUF or HF folder) in `kind` on `device` and extend it for K x m visual ids
/// (new rows seeded by `seed`, spread `cov_scale`).
pub fn extended_lm(
    weights: &Path,
    kind: tch::Kind,
    device: Device,
    k_sem: u32,
    m: u32,
    cov_scale: f64,
    seed: u64,
) -> Result<ExtendedLm> {
    let mut lm = load(weights, kind, device)?;
    let vocab = VisualVocab::for_model(lm.model.config(), k_sem, m)?;
    if lm.tokenizer.vocab_size() > vocab.rows() {
        return Err(Error::Input(format!(
            "{}: the tokenizer has {} tokens but the model only {} embedding rows",
            weights.display(),
            lm.tokenizer.vocab_size(),
            vocab.rows()
        )));
    }
    let bos = lm.model.config().bos_token_id;
    lm.model
        .extend_vocab(vocab.n_new() as i64, cov_scale, seed)?;
    let layout = T2iLayout::new(vocab, bos)?;
    Ok(ExtendedLm { lm, vocab, layout })
}

/// The text-to-image task.
pub struct T2iTask {
    /// The extended LLM (trained in place).
    pub model: LlamaModel,
    params: Vec<Param>,
}

impl std::fmt::Debug for T2iTask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T2iTask")
            .field("params", &self.params.len())
            .finish()
    }
}

impl T2iTask {
    /// Every weight of `model` trains (`TrainSpec::Full`, new rows included).
    pub fn new(mut model: LlamaModel) -> Result<Self> {
        let mut params: Vec<Param> = model
            .train_params(&TrainSpec::Full)?
            .into_iter()
            .map(|p| Param {
                name: p.name,
                var: p.var,
                role: p.role,
            })
            .collect();
        params.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self { model, params })
    }
}

impl Task for T2iTask {
    fn params(&self) -> Vec<Param> {
        self.params
            .iter()
            .map(|p| Param {
                name: p.name.clone(),
                var: p.var.shallow_clone(),
                role: p.role,
            })
            .collect()
    }
    fn state(&self) -> BTreeMap<String, Tensor> {
        self.params
            .iter()
            .map(|p| (p.name.clone(), p.var.shallow_clone()))
            .collect()
    }
    /// input_ids / labels / attention_mask [B, L] -> mean cross-entropy over the visual
    /// tokens and `<eoi>` (logits [B, L, V] in f32).
    fn loss(&mut self, batch: &Batch, _step: u64) -> Result<LossOut> {
        let tb = batch.tokens()?;
        tb.check()?;
        let logits = self
            .model
            .forward_train(Input::Ids(&tb.input_ids), &tb.attention_mask)?;
        let (ce, count) = causal_lm_loss(&logits, &tb.labels)?;
        Ok(LossOut {
            parts: vec![
                ("ce", ce.detach()),
                ("loss_tokens", count.to_kind(tch::Kind::Float)),
            ],
            total: ce,
            disc_inputs: None,
        })
    }
}

/// Model and batches of a config (the data is opened, and a missing path reported, first).
pub fn build(cfg: &T2iConfig) -> Result<(T2iTask, T2iBatches)> {
    build_for(cfg, None)
}

/// [`build`] for rank `dist` of a data-parallel run (its shard of every global batch).
pub fn build_for(cfg: &T2iConfig, dist: Option<&Dist>) -> Result<(T2iTask, T2iBatches)> {
    cfg.check_paths()?;
    let shards = TokenShards::open(&cfg.data.tokens)?;
    check_tokenizer_folder(&cfg.t2i.tokenizer, &shards)?;
    let device = cfg.run.device.device();
    cfg.run.apply_threads();
    tch::manual_seed(cfg.run.seed as i64);
    let ext = extended_lm(
        &cfg.llm.weights,
        cfg.llm.dtype.kind(),
        device,
        shards.k_sem,
        shards.m,
        cfg.t2i.new_rows_cov_scale,
        cfg.run.seed,
    )?;
    let captions = match (&cfg.t2i.caption_template, cfg.t2i.classes) {
        (Some(t), Some(c)) => CaptionSource::Template {
            template: t.clone(),
            names: c.names(),
        },
        _ => CaptionSource::Shards,
    };
    let batches = T2iBatches::new(
        shards,
        ext.layout,
        ext.lm.tokenizer,
        captions,
        cfg.t2i.cfg_dropout,
        cfg.run.seed,
        cfg.data.batch_size,
        cfg.llm.max_seq_len as usize,
    )?;
    let batches = match dist {
        Some(d) => batches.sharded(d.rank(), d.world_size()),
        None => batches,
    };
    Ok((T2iTask::new(ext.lm.model)?, batches))
}

/// The tokenizer folder's `config.json` agrees with the shards (K, m, grid).
pub fn check_tokenizer_folder(dir: &Path, shards: &TokenShards) -> Result<()> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| Error::Input(format!("{}: {e}", p.display())))?;
    let k = v["vocab"]["semantic_codebook_size"].as_u64();
    let m = v["vocab"]["sub_codebook_size"].as_u64();
    let g = [v["grid"][0].as_i64(), v["grid"][1].as_i64()];
    if k != Some(shards.k_sem as u64)
        || m != Some(shards.m as u64)
        || g != [Some(shards.grid[0]), Some(shards.grid[1])]
    {
        return Err(Error::Input(format!(
            "{}: K {k:?}, m {m:?}, grid {g:?} do not match the token shards {} (K {}, m {}, grid {:?})",
            p.display(),
            shards.dir.display(),
            shards.k_sem,
            shards.m,
            shards.grid
        )));
    }
    Ok(())
}

/// Train `cfg` (fresh / overwrite / resume).
pub fn train_config(
    cfg: &T2iConfig,
    start: RunStart,
    command_line: Vec<String>,
    quiet: bool,
) -> Result<TrainReport> {
    // Under a launcher: data-parallel (before the model is built: it picks the CUDA device).
    let dist = Dist::from_env(&cfg.dist, cfg.run.device)?;
    let (mut task, mut data) = build_for(cfg, dist.as_ref())?;
    let opts = TrainOptions {
        resume: start == RunStart::Resume,
        overwrite: start == RunStart::Overwrite,
        command_line,
        quiet: quiet || dist.as_ref().is_some_and(|d| !d.is_main()),
        dist,
        ..Default::default()
    };
    train(&cfg.loop_config(), &mut task, &mut data, &opts)
}

/// `semhitok train --config FILE` with `run.stage = "t2i"`.
pub fn run(req: &TrainRequest) -> Result<TrainReport> {
    let cfg = T2iConfig::load(&req.config, &req.overrides)?;
    train_config(&cfg, req.start, req.command_line.clone(), req.quiet)
}
