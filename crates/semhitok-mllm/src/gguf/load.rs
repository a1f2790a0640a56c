//! A GGUF `llama` / `qwen2` model as [`LlamaConfig`] + HF-named [`Weights`].
//!
//! GGUF has no HF state dict, so the one table below maps llama.cpp's tensor names onto HF's
//! (`blk.N.attn_q` -> `model.layers.N.self_attn.q_proj`, ...). For `llama`-architecture files,
//! llama.cpp's converter permuted the rows of Q and K into its interleaved rotary layout
//! (`convert_hf_to_gguf.py`, `LlamaModel.permute`); [`unpermute_rows`] undoes it so the
//! HF-layout model (`rotate_half`) can use them. No `output.weight` means tied embeddings.

use super::dequant::dequantize;
use super::reader::{GgufFile, TensorInfo, Value};
use crate::error::{Error, Result};
use crate::llm::config::{Arch, LlamaConfig, RopeScaling};
use crate::llm::weights::Weights;
use std::collections::BTreeMap;
use tch::{Device, Kind, Tensor};

fn gerr(f: &GgufFile, msg: impl std::fmt::Display) -> Error {
    Error::Gguf {
        path: f.path.clone(),
        msg: msg.to_string(),
    }
}

fn int(f: &GgufFile, key: &str) -> Result<i64> {
    f.require(key)?
        .as_i64()
        .ok_or_else(|| gerr(f, format!("metadata {key} is not an integer")))
}

fn float(f: &GgufFile, key: &str) -> Result<Option<f64>> {
    match f.get(key) {
        None => Ok(None),
        Some(v) => v
            .as_f64()
            .map(Some)
            .ok_or_else(|| gerr(f, format!("metadata {key} is not a number"))),
    }
}

/// The architecture named by `general.architecture`.
pub fn arch_of(f: &GgufFile) -> Result<Arch> {
    match f.require("general.architecture")?.as_str() {
        Some("llama") => Ok(Arch::Llama),
        Some("qwen2") => Ok(Arch::Qwen2),
        other => Err(gerr(
            f,
            format!("general.architecture {other:?} is not supported (llama, qwen2)"),
        )),
    }
}

/// The decoder config from `{arch}.*` metadata (vocab size from `token_embd.weight`).
pub fn config(f: &GgufFile) -> Result<LlamaConfig> {
    let arch = arch_of(f)?;
    let a = match arch {
        Arch::Llama => "llama",
        Arch::Qwen2 => "qwen2",
    };
    let k = |s: &str| format!("{a}.{s}");
    let emb = f
        .tensor("token_embd.weight")
        .ok_or_else(|| gerr(f, "tensor token_embd.weight is missing"))?;
    let hidden = int(f, &k("embedding_length"))?;
    let heads = int(f, &k("attention.head_count"))?;
    let kv_heads = match f.get(&k("attention.head_count_kv")) {
        Some(v) => v.as_i64().ok_or_else(|| {
            gerr(
                f,
                format!("{} is not an integer", k("attention.head_count_kv")),
            )
        })?,
        None => heads,
    };
    let head_dim = match f.get(&k("attention.key_length")) {
        Some(v) => v
            .as_i64()
            .ok_or_else(|| gerr(f, "attention.key_length is not an integer"))?,
        None => hidden / heads.max(1),
    };
    let rope_scaling = match f.get(&k("rope.scaling.type")).and_then(Value::as_str) {
        None | Some("none") => RopeScaling::Default,
        Some(other) => {
            return Err(gerr(
                f,
                format!("{} = {other:?} is not supported", k("rope.scaling.type")),
            ))
        }
    };
    let bos = f
        .get("tokenizer.ggml.bos_token_id")
        .and_then(Value::as_u64)
        .map(|x| x as u32);
    let eos: Vec<u32> = f
        .get("tokenizer.ggml.eos_token_id")
        .and_then(Value::as_u64)
        .map(|x| vec![x as u32])
        .unwrap_or_default();
    let cfg = LlamaConfig {
        arch,
        vocab_size: emb.shape()[0],
        hidden_size: hidden,
        intermediate_size: int(f, &k("feed_forward_length"))?,
        num_hidden_layers: int(f, &k("block_count"))?,
        num_attention_heads: heads,
        num_key_value_heads: kv_heads,
        head_dim,
        rms_norm_eps: float(f, &k("attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
        rope_theta: float(f, &k("rope.freq_base"))?.unwrap_or(10_000.0),
        rope_scaling,
        max_position_embeddings: int(f, &k("context_length")).unwrap_or(2048),
        tie_word_embeddings: f.tensor("output.weight").is_none(),
        qkv_bias: f.tensor("blk.0.attn_q.bias").is_some(),
        o_bias: f.tensor("blk.0.attn_output.bias").is_some(),
        mlp_bias: f.tensor("blk.0.ffn_up.bias").is_some(),
        bos_token_id: bos,
        eos_token_ids: eos,
    };
    cfg.validate(&f.path)?;
    Ok(cfg)
}

/// GGUF tensor name -> HF name (`None`: not a model weight this loader knows).
pub fn hf_name(gguf: &str) -> Option<String> {
    let fixed = match gguf {
        "token_embd.weight" => Some("model.embed_tokens.weight"),
        "output_norm.weight" => Some("model.norm.weight"),
        "output.weight" => Some("lm_head.weight"),
        _ => None,
    };
    if let Some(n) = fixed {
        return Some(n.to_string());
    }
    let rest = gguf.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: u32 = layer.parse().ok()?;
    let (module, leaf) = rest.rsplit_once('.')?;
    let hf = match module {
        "attn_q" => "self_attn.q_proj",
        "attn_k" => "self_attn.k_proj",
        "attn_v" => "self_attn.v_proj",
        "attn_output" => "self_attn.o_proj",
        "ffn_gate" => "mlp.gate_proj",
        "ffn_up" => "mlp.up_proj",
        "ffn_down" => "mlp.down_proj",
        "attn_norm" => "input_layernorm",
        "ffn_norm" => "post_attention_layernorm",
        _ => return None,
    };
    Some(format!("model.layers.{layer}.{hf}.{leaf}"))
}

/// Undo llama.cpp's `permute(w, n_head)` on the rows of a Q or K projection (weight [n_head *
/// head_dim, in] or bias [n_head * head_dim]): it stored, per head, the rows in the order
/// (pair index, half) where HF has (half, pair index).
pub fn unpermute_rows(w: &Tensor, n_head: i64) -> Result<Tensor> {
    let s = w.size();
    let rows = s[0];
    let d2 = rows / n_head / 2;
    let mut shape = vec![n_head, d2, 2];
    shape.extend_from_slice(&s[1..]);
    Ok(w.f_reshape(&shape)?.f_transpose(1, 2)?.f_reshape(&s)?)
}

/// Dequantize one tensor into an f32 tensor of its row-major shape (CPU).
pub fn dequantize_tensor(f: &GgufFile, t: &TensorInfo) -> Result<Tensor> {
    let bytes = f.tensor_bytes(t)?;
    let v = dequantize(t.ty, bytes, t.n_elements() as usize)
        .map_err(|e| gerr(f, format!("tensor {}: {e}", t.name)))?;
    Ok(Tensor::from_slice(&v).f_reshape(t.shape())?)
}

/// Config and HF-named weights (dequantized to f32, then converted to `kind` on `device` as the
/// model takes them). Tensors with names this loader does not know are an error naming them.
pub fn load(f: &GgufFile, kind: Kind, device: Device) -> Result<(LlamaConfig, Weights)> {
    let cfg = config(f)?;
    let mut map = BTreeMap::new();
    for t in &f.tensors {
        let name = hf_name(&t.name).ok_or_else(|| {
            gerr(
                f,
                format!("tensor {} has no Hugging Face counterpart here", t.name),
            )
        })?;
        let mut x = dequantize_tensor(f, t)?;
        if cfg.arch == Arch::Llama {
            if name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.q_proj.bias")
            {
                x = unpermute_rows(&x, cfg.num_attention_heads)?;
            } else if name.ends_with("self_attn.k_proj.weight")
                || name.ends_with("self_attn.k_proj.bias")
            {
                x = unpermute_rows(&x, cfg.num_key_value_heads)?;
            }
        }
        map.insert(name, x);
    }
    Ok((cfg, Weights::from_map(map, f.path.clone(), kind, device)))
}
