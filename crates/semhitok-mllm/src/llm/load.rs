//! One entry point: a GGUF file or a Hugging Face model folder -> model, tokenizer, chat template.

use super::config::LlamaConfig;
use super::model::LlamaModel;
use super::weights::Weights;
use crate::chat::ChatTemplate;
use crate::error::{Error, Result};
use crate::gguf::{self, GgufFile};
use crate::tokenizer::TextTokenizer;
use std::path::Path;
use tch::{Device, Kind};

/// A language model ready to chat.
#[derive(Debug)]
pub struct LoadedLm {
    /// The decoder.
    pub model: LlamaModel,
    /// Its tokenizer.
    pub tokenizer: TextTokenizer,
    /// Its chat template, when it ships one.
    pub chat_template: Option<ChatTemplate>,
    /// Prepend this token to prompts (`add_bos_token`).
    pub bos_to_add: Option<u32>,
    /// Generation stops at any of these.
    pub eos: Vec<u32>,
}

/// The default kind on a device: f32 on the CPU (the reference path), bf16 on CUDA.
pub fn default_kind(device: Device) -> Kind {
    if device.is_cuda() {
        Kind::BFloat16
    } else {
        Kind::Float
    }
}

/// Load `path`: a `.gguf` file or a folder with `config.json`, safetensors weights,
/// `tokenizer.json` (or only a SentencePiece `tokenizer.model`) and (optionally)
/// `tokenizer_config.json`.
pub fn load(path: &Path, kind: Kind, device: Device) -> Result<LoadedLm> {
    if path.is_dir() {
        load_hf_dir(path, kind, device)
    } else {
        load_gguf(path, kind, device)
    }
}

/// Whether CPU f32 loads of a GGUF file keep its Q4_1 / Q8_0 blocks for batch-1 decoding
/// (`llm::quantized`): on unless `SEMHITOK_GGUF_BLOCKS=0` (for before/after comparisons).
pub fn gguf_blocks_enabled() -> bool {
    std::env::var("SEMHITOK_GGUF_BLOCKS").map_or(true, |v| v != "0")
}

/// GGUF: weights dequantized to f32 then converted to `kind`; tokenizer and template from the
/// metadata. On the CPU in f32 the file's Q4_1 / Q8_0 blocks are also kept beside the weights
/// for batch-1 decoding ([`gguf_blocks_enabled`]).
pub fn load_gguf(path: &Path, kind: Kind, device: Device) -> Result<LoadedLm> {
    let f = GgufFile::open(path)?;
    let (cfg, weights) = gguf::load::load(&f, kind, device)?;
    let mut model = LlamaModel::new(&cfg, &weights)?;
    drop(weights);
    if device == Device::Cpu && kind == Kind::Float && gguf_blocks_enabled() {
        model.attach_gguf_blocks(&f)?;
    }
    let (tk, info) = gguf::tokenizer::tokenizer(&f)?;
    let tokenizer = TextTokenizer::from_tokenizer(tk, &f.path);
    let tok_str = |id: Option<u32>| {
        id.and_then(|i| info.tokens.get(i as usize).cloned())
            .unwrap_or_default()
    };
    let chat_template = match &info.chat_template {
        Some(src) => Some(ChatTemplate::new(
            src,
            &format!("{} tokenizer.chat_template", f.path),
            &tok_str(info.bos),
            &tok_str(info.eos),
        )?),
        None => None,
    };
    let mut eos: Vec<u32> = info.eos.into_iter().collect();
    eos.extend(
        cfg.eos_token_ids
            .iter()
            .copied()
            .filter(|e| Some(*e) != info.eos),
    );
    Ok(LoadedLm {
        model,
        tokenizer,
        chat_template,
        bos_to_add: if info.add_bos { info.bos } else { None },
        eos,
    })
}

fn token_string(v: Option<&serde_json::Value>) -> Option<String> {
    match v? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// HF folder.
pub fn load_hf_dir(dir: &Path, kind: Kind, device: Device) -> Result<LoadedLm> {
    let cfg = LlamaConfig::from_hf_file(&dir.join("config.json"))?;
    let weights = Weights::from_hf_dir(dir, kind, device)?;
    let model = LlamaModel::new(&cfg, &weights)?;
    drop(weights);
    let tc_path = dir.join("tokenizer_config.json");
    let tc: serde_json::Value = if tc_path.is_file() {
        let o = tc_path.display().to_string();
        let text = std::fs::read_to_string(&tc_path).map_err(|e| Error::Tokenizer {
            path: o.clone(),
            msg: e.to_string(),
        })?;
        serde_json::from_str(&text).map_err(|e| Error::Tokenizer {
            path: o,
            msg: e.to_string(),
        })?
    } else {
        serde_json::Value::Null
    };
    // tokenizer.json, or (Llama-2 / Vicuna folders) only SentencePiece's tokenizer.model, read
    // with tokenizer_config.json's `legacy` (transformers' default: true; Vicuna-v1.5: false).
    let tj = dir.join("tokenizer.json");
    let tm = dir.join("tokenizer.model");
    let tokenizer = if !tj.is_file() && tm.is_file() {
        let o = tm.display().to_string();
        let legacy = tc.get("legacy").and_then(|l| l.as_bool()).unwrap_or(true);
        TextTokenizer::from_spm(&crate::spm::SpmModel::open(&tm)?, &o, legacy)?
    } else {
        TextTokenizer::from_file(&tj)?
    };
    let bos_s = token_string(tc.get("bos_token"));
    let eos_s = token_string(tc.get("eos_token"));
    let chat_template = match tc.get("chat_template").and_then(|t| t.as_str()) {
        Some(src) => Some(ChatTemplate::new(
            src,
            &tc_path.display().to_string(),
            bos_s.as_deref().unwrap_or(""),
            eos_s.as_deref().unwrap_or(""),
        )?),
        None => None,
    };
    let add_bos = tc
        .get("add_bos_token")
        .and_then(|b| b.as_bool())
        .unwrap_or(false);
    let bos = bos_s
        .as_deref()
        .and_then(|s| tokenizer.token_to_id(s))
        .or(cfg.bos_token_id);
    let mut eos = cfg.eos_token_ids.clone();
    if let Some(e) = eos_s.as_deref().and_then(|s| tokenizer.token_to_id(s)) {
        if !eos.contains(&e) {
            eos.push(e);
        }
    }
    Ok(LoadedLm {
        model,
        tokenizer,
        chat_template,
        bos_to_add: if add_bos { bos } else { None },
        eos,
    })
}
