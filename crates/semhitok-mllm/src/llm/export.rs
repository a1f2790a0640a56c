//! Writing a (trained) decoder as a Hugging Face folder that [`super::load::load_hf_dir`] and
//! transformers' `from_pretrained` read: `config.json` (the current `vocab_size`, untied after
//! `extend_vocab`), `model.safetensors` (HF names, LoRA merged) and, when known, `tokenizer.json`
//! and `tokenizer_config.json`. Atomic: everything goes to a sibling temporary folder that is
//! renamed into place (an existing folder is moved aside first and removed after).

use super::config::{Arch, LlamaConfig, RopeScaling};
use super::load::LoadedLm;
use super::model::LlamaModel;
use crate::error::{Error, Result};
use crate::tokenizer::TextTokenizer;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use tch::{Device, Kind};

fn io_err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Weights {
        origin: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// `config.json` of `cfg` (transformers 4 spelling of RoPE: `rope_theta` + `rope_scaling`,
/// which transformers 5 also reads).
pub fn hf_config_json(cfg: &LlamaConfig, kind: Kind) -> Value {
    let (arch, model_type) = match cfg.arch {
        Arch::Llama => ("LlamaForCausalLM", "llama"),
        Arch::Qwen2 => ("Qwen2ForCausalLM", "qwen2"),
    };
    let rope_scaling = match cfg.rope_scaling {
        RopeScaling::Default => Value::Null,
        RopeScaling::Llama3 {
            factor,
            low_freq_factor,
            high_freq_factor,
            original_max_position_embeddings,
        } => json!({
            "rope_type": "llama3",
            "factor": factor,
            "low_freq_factor": low_freq_factor,
            "high_freq_factor": high_freq_factor,
            "original_max_position_embeddings": original_max_position_embeddings as i64,
        }),
    };
    let eos: Value = match cfg.eos_token_ids.as_slice() {
        [] => Value::Null,
        [e] => json!(e),
        es => json!(es),
    };
    let mut v = json!({
        "architectures": [arch],
        "model_type": model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "intermediate_size": cfg.intermediate_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "num_key_value_heads": cfg.num_key_value_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.rms_norm_eps,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": rope_scaling,
        "max_position_embeddings": cfg.max_position_embeddings,
        "tie_word_embeddings": cfg.tie_word_embeddings,
        "bos_token_id": cfg.bos_token_id,
        "eos_token_id": eos,
        "torch_dtype": if kind == Kind::BFloat16 { "bfloat16" } else { "float32" },
    });
    if cfg.arch == Arch::Llama {
        v["attention_bias"] = json!(cfg.qkv_bias);
        v["mlp_bias"] = json!(cfg.mlp_bias);
    } else {
        v["use_sliding_window"] = json!(false);
    }
    v
}

/// Write `dir` atomically: `fill` writes into a fresh sibling temporary folder, which then
/// replaces `dir`.
fn write_dir_atomic(dir: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let name = dir
        .file_name()
        .ok_or_else(|| io_err(dir, "not a folder name"))?
        .to_string_lossy()
        .to_string();
    let parent = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| io_err(&parent, e))?;
    let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
    let old = parent.join(format!(".{name}.old-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| io_err(&tmp, e))?;
    if let Err(e) = fill(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(e);
    }
    if dir.exists() {
        std::fs::rename(dir, &old).map_err(|e| io_err(dir, e))?;
    }
    std::fs::rename(&tmp, dir).map_err(|e| io_err(dir, e))?;
    let _ = std::fs::remove_dir_all(&old);
    Ok(())
}

fn write_json(path: &Path, v: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(v).map_err(|e| io_err(path, e))?;
    std::fs::write(path, text + "\n").map_err(|e| io_err(path, e))
}

impl LlamaModel {
    /// Write the model as an HF folder (`config.json`, `model.safetensors`; LoRA merged) plus
    /// `tokenizer.json` when `tokenizer` is given. Atomic (see the module docs). Tensors are
    /// written in the model's kind.
    pub fn save_hf_dir(&self, dir: &Path, tokenizer: Option<&TextTokenizer>) -> Result<()> {
        self.save_hf_dir_with(dir, tokenizer, None)
    }

    fn save_hf_dir_with(
        &self,
        dir: &Path,
        tokenizer: Option<&TextTokenizer>,
        tokenizer_config: Option<&Value>,
    ) -> Result<()> {
        let sd = self.hf_state_dict(true)?;
        let sd: Vec<(String, tch::Tensor)> = sd
            .into_iter()
            .map(|(k, t)| Ok((k, t.f_to_device(Device::Cpu)?.f_contiguous()?)))
            .collect::<Result<_>>()?;
        write_dir_atomic(dir, |tmp| {
            write_json(
                &tmp.join("config.json"),
                &hf_config_json(&self.cfg, self.kind),
            )?;
            let st = tmp.join("model.safetensors");
            tch::Tensor::write_safetensors(&sd, &st).map_err(|e| io_err(&st, e))?;
            if let Some(tk) = tokenizer {
                let p = tmp.join("tokenizer.json");
                tk.inner().save(&p, false).map_err(|e| io_err(&p, e))?;
            }
            if let Some(tc) = tokenizer_config {
                write_json(&tmp.join("tokenizer_config.json"), tc)?;
            }
            Ok(())
        })
    }
}

impl LoadedLm {
    /// Write the model ([`LlamaModel::save_hf_dir`]) with its tokenizer (`tokenizer.json`) and
    /// `tokenizer_config.json` (bos / eos tokens, `add_bos_token`, the chat template's source),
    /// so that [`super::load::load_hf_dir`] gives the same model, tokenizer and template back.
    pub fn save_hf_dir(&self, dir: &Path) -> Result<()> {
        let tok = |id: Option<u32>| id.and_then(|i| self.tokenizer.id_to_token(i));
        let bos = tok(self.bos_to_add.or(self.model.config().bos_token_id));
        let eos = tok(self.eos.first().copied());
        let mut tc = json!({
            "bos_token": bos,
            "eos_token": eos,
            "add_bos_token": self.bos_to_add.is_some(),
        });
        if let Some(t) = &self.chat_template {
            tc["chat_template"] = json!(t.source());
        }
        self.model
            .save_hf_dir_with(dir, Some(&self.tokenizer), Some(&tc))
    }
}
