//! A trained text-to-image LLM from a run directory (its newest checkpoint, the EMA when the
//! run kept one) or from an exported folder, and `semhitok export` of a T2I run.
//!
//! Exported folder: the extended LLM as a Hugging Face folder (`config.json` with the grown
//! `vocab_size`, `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`) plus
//! `t2i.json`: `format` (`semhitok-t2i/1`), `visual_start` (= the base model's embedding
//! rows), `semantic_codebook_size` K, `sub_codebook_size` m, `boi`, `eoi`, `bos`, `grid`,
//! `tokenizer` (the SemHiTok model folder the ids decode with), `caption_template`, `classes`.
//! `t2i.json` is written after the HF folder is in place; a folder without it is refused.

use super::config::T2iConfig;
use super::task::extended_lm;
use crate::checkpoint;
use crate::error::{Error, Result};
use semhitok_mllm::llm::load::load_hf_dir;
use semhitok_mllm::llm::LlamaModel;
use semhitok_mllm::t2i::T2iLayout;
use semhitok_mllm::tokenizer::TextTokenizer;
use semhitok_mllm::vocab::VisualVocab;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

/// Format tag of `t2i.json`.
pub const T2I_FORMAT: &str = "semhitok-t2i/1";

/// A text-to-image LLM ready to sample.
pub struct T2iModel {
    pub model: LlamaModel,
    pub tokenizer: TextTokenizer,
    pub layout: T2iLayout,
    /// Token grid `[h, w]` of one image.
    pub grid: [i64; 2],
    /// The SemHiTok folder the ids decode with (as recorded).
    pub image_tokenizer: PathBuf,
    /// The training caption template and class names, when the run used them.
    pub caption_template: Option<String>,
    pub classes: Option<super::config::ClassNames>,
    /// Bos/eos etc. for re-export.
    pub lm_meta: (Option<u32>, Vec<u32>),
}

impl std::fmt::Debug for T2iModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("T2iModel")
            .field("vocab", &self.layout.vocab)
            .field("grid", &self.grid)
            .finish()
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Input(format!("{}: {e}", path.display())))
}

/// (K, m, grid) of a SemHiTok model folder's `config.json`.
pub fn image_tokenizer_vocab(dir: &Path) -> Result<(u32, u32, [i64; 2])> {
    let p = dir.join("config.json");
    let v = read_json(&p)?;
    let k = v["vocab"]["semantic_codebook_size"].as_u64();
    let m = v["vocab"]["sub_codebook_size"].as_u64();
    let g = (v["grid"][0].as_i64(), v["grid"][1].as_i64());
    match (k, m, g) {
        (Some(k), Some(m), (Some(h), Some(w))) => Ok((k as u32, m as u32, [h, w])),
        _ => Err(Error::Input(format!(
            "{}: not a SemHiTok model folder config (vocab.semantic_codebook_size, vocab.sub_codebook_size, grid)",
            p.display()
        ))),
    }
}

/// Load `path`: an exported folder (with `t2i.json`) or a T2I run directory (with
/// `config.toml` and checkpoints). `kind`: the model's dtype.
pub fn load_t2i(path: &Path, kind: Kind, device: Device) -> Result<T2iModel> {
    let meta_p = path.join("t2i.json");
    if meta_p.exists() {
        let meta = read_json(&meta_p)?;
        if meta["format"] != T2I_FORMAT {
            return Err(Error::Input(format!(
                "{}: format {} is not {T2I_FORMAT}",
                meta_p.display(),
                meta["format"]
            )));
        }
        let get = |k: &str| {
            meta[k]
                .as_u64()
                .ok_or_else(|| Error::Input(format!("{}: no integer `{k}`", meta_p.display())))
        };
        let vocab = VisualVocab::new(
            get("visual_start")? as u32,
            get("semantic_codebook_size")? as u32,
            get("sub_codebook_size")? as u32,
        )?;
        let lm = load_hf_dir(path, kind, device)?;
        if lm.model.config().vocab_size != vocab.total() as i64 {
            return Err(Error::Input(format!(
                "{}: config.json has {} rows, t2i.json describes {}",
                path.display(),
                lm.model.config().vocab_size,
                vocab.total()
            )));
        }
        let bos = meta["bos"].as_u64().map(|b| b as u32);
        let grid = [
            meta["grid"][0].as_i64().unwrap_or(0),
            meta["grid"][1].as_i64().unwrap_or(0),
        ];
        let classes = serde_json::from_value(meta["classes"].clone()).ok();
        return Ok(T2iModel {
            layout: T2iLayout::new(vocab, bos)?,
            lm_meta: (lm.bos_to_add, lm.eos.clone()),
            model: lm.model,
            tokenizer: lm.tokenizer,
            grid,
            image_tokenizer: PathBuf::from(meta["tokenizer"].as_str().unwrap_or("")),
            caption_template: meta["caption_template"].as_str().map(str::to_string),
            classes,
        });
    }
    let cp = path.join("config.toml");
    if !cp.exists() {
        return Err(Error::Input(format!(
            "{}: neither an exported text-to-image folder (t2i.json) nor a run directory (config.toml)",
            path.display()
        )));
    }
    let cfg = T2iConfig::load(&cp, &[])?;
    let (k, m, grid) = image_tokenizer_vocab(&cfg.t2i.tokenizer)?;
    let ext = extended_lm(
        &cfg.llm.weights,
        kind,
        device,
        k,
        m,
        cfg.t2i.new_rows_cov_scale,
        cfg.run.seed,
    )?;
    let ck = checkpoint::load_latest(path)?
        .ok_or_else(|| Error::Input(format!("{}: no checkpoint", path.display())))?;
    let has_ema = ck.tensors.keys().any(|k| k.starts_with("ema."));
    let prefix = if has_ema { "ema." } else { "model." };
    let trained: BTreeMap<String, tch::Tensor> = ck
        .tensors
        .iter()
        .filter_map(|(k, t)| {
            k.strip_prefix(prefix)
                .map(|n| (n.to_string(), t.shallow_clone()))
        })
        .collect();
    let mut model = ext.lm.model;
    model.load_trained(&trained)?;
    Ok(T2iModel {
        model,
        lm_meta: (ext.lm.bos_to_add, ext.lm.eos.clone()),
        tokenizer: ext.lm.tokenizer,
        layout: ext.layout,
        grid,
        image_tokenizer: cfg.t2i.tokenizer.clone(),
        caption_template: cfg.t2i.caption_template.clone(),
        classes: cfg.t2i.classes,
    })
}

/// Whether `path` is a T2I run directory (`config.toml` with `run.stage = "t2i"`) or an
/// exported T2I folder (`t2i.json`).
pub fn is_t2i(path: &Path) -> bool {
    path.join("t2i.json").exists()
        || crate::config::peek_stage(&path.join("config.toml"), &[])
            .is_ok_and(|s| s == crate::config::Stage::T2i)
}

/// Export a T2I run (or re-export a folder) to `out` (see the module docs).
pub fn export_t2i(run: &Path, out: &Path) -> Result<PathBuf> {
    let m = load_t2i(run, Kind::Float, Device::Cpu)?;
    let lm = semhitok_mllm::llm::load::LoadedLm {
        model: m.model,
        tokenizer: m.tokenizer,
        chat_template: None,
        bos_to_add: m.lm_meta.0,
        eos: m.lm_meta.1,
    };
    lm.save_hf_dir(out)?;
    let v = m.layout.vocab;
    let meta = serde_json::json!({
        "format": T2I_FORMAT,
        "visual_start": v.visual_start(),
        "semantic_codebook_size": v.k_sem(),
        "sub_codebook_size": v.m(),
        "n_visual": v.n_visual(),
        "boi": v.boi(),
        "eoi": v.eoi(),
        "bos": m.layout.bos,
        "grid": m.grid,
        "tokenizer": m.image_tokenizer.display().to_string(),
        "caption_template": m.caption_template,
        "classes": m.classes,
        "source": run.display().to_string(),
    });
    let text = serde_json::to_string_pretty(&meta).map_err(|e| Error::Input(e.to_string()))?;
    crate::atomic::write_atomic(&out.join("t2i.json"), text.as_bytes())?;
    Ok(out.to_path_buf())
}
