//! The decoder against transformers (fixtures: scripts/fixtures/gen_llm.py).

use semhitok_mllm::generate::{generate, GenerationConfig};
use semhitok_mllm::llm::{Input, LlamaConfig, LlamaModel, LogitsAt, Weights};
use semhitok_nn::test_device;
use std::collections::HashMap;
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

type R = Result<(), Box<dyn std::error::Error>>;

pub fn fixtures() -> PathBuf {
    super::workspace().join("crates/semhitok-mllm/tests/fixtures/llm")
}

pub fn golden(name: &str) -> HashMap<String, Tensor> {
    Tensor::read_safetensors(fixtures().join(name))
        .unwrap()
        .into_iter()
        .collect()
}

/// max |a - b| / max |b|.
pub fn rel_err(a: &Tensor, b: &Tensor) -> f64 {
    let a = a.to_device(Device::Cpu).to_kind(Kind::Double);
    let b = b.to_device(Device::Cpu).to_kind(Kind::Double);
    (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[])
}

pub fn load(dir: &str, dev: Device) -> LlamaModel {
    let d = fixtures().join(dir);
    let cfg = LlamaConfig::from_hf_file(&d.join("config.json")).unwrap();
    let w = Weights::from_hf_dir(&d, Kind::Float, dev).unwrap();
    LlamaModel::new(&cfg, &w).unwrap()
}

fn rows(t: &Tensor) -> Vec<Vec<u32>> {
    let t = t.to_device(Device::Cpu);
    (0..t.size()[0])
        .map(|r| {
            Vec::<i64>::try_from(t.get(r))
                .unwrap()
                .into_iter()
                .map(|x| x as u32)
                .collect()
        })
        .collect()
}

/// Logits at every position, 20 greedy tokens, and the left-padded batch of 3, vs transformers.
fn check_model(dir: &str, dev: Device) -> R {
    let g = golden(&format!("{dir}_golden.safetensors"));
    let m = load(dir, dev);
    // f32 on both devices; CUDA matmuls may differ in summation order (and TF32 is off in tch).
    let tol = if dev.is_cuda() { 1e-4 } else { 1e-5 };
    let ids = g["ids"].to_device(dev);
    let mut cache = m.new_cache(1, 64)?;
    let logits = m.forward(Input::Ids(&ids), None, &mut cache, LogitsAt::All)?;
    let e = rel_err(&logits, &g["logits"]);
    eprintln!("{dir} on {dev:?}: logits rel err {e:.2e}");
    assert!(e < tol, "{dir}: logits rel err {e}");

    // Input embeddings give the same logits as ids.
    let mut c2 = m.new_cache(1, 64)?;
    let emb = m.embed(&ids)?;
    let l2 = m.forward(Input::Embeds(&emb), None, &mut c2, LogitsAt::All)?;
    assert!(rel_err(&l2, &logits) < 1e-6);

    // Incremental decoding through the cache equals the full forward.
    let mut c3 = m.new_cache(1, 64)?;
    let l = ids.size()[1];
    let first = m.forward(
        Input::Ids(&ids.narrow(1, 0, 4)),
        None,
        &mut c3,
        LogitsAt::All,
    )?;
    let mut parts = vec![first];
    for t in 4..l {
        parts.push(m.forward(
            Input::Ids(&ids.narrow(1, t, 1)),
            None,
            &mut c3,
            LogitsAt::Last,
        )?);
    }
    let inc = Tensor::cat(&parts, 1);
    let e = rel_err(&inc, &logits);
    assert!(e < tol, "{dir}: incremental vs full rel err {e}");

    let cfg = GenerationConfig {
        max_new_tokens: 20,
        ..Default::default()
    };
    let out = generate(&m, &rows(&g["ids"]), 0, &cfg, None, &mut |_, _| true)?;
    assert_eq!(out.tokens, rows(&g["greedy"]), "{dir}: greedy tokens");

    // Left-padded batch: logits where the mask is 1, and greedy continuations.
    let bids = g["batch_ids"].to_device(dev);
    let bmask = g["batch_mask"].to_device(dev);
    let mut cb = m.new_cache(3, 64)?;
    let bl = m.forward(Input::Ids(&bids), Some(&bmask), &mut cb, LogitsAt::All)?;
    let keep = g["batch_mask"].to_kind(Kind::Bool).unsqueeze(-1);
    let e = rel_err(
        &bl.to_device(Device::Cpu).masked_select(&keep),
        &g["batch_logits"].masked_select(&keep),
    );
    eprintln!("{dir} on {dev:?}: left-padded batch logits rel err {e:.2e}");
    assert!(e < tol, "{dir}: batch logits rel err {e}");
    let mask_rows = rows(&g["batch_mask"]);
    let prompts: Vec<Vec<u32>> = rows(&g["batch_ids"])
        .into_iter()
        .zip(&mask_rows)
        .map(|(r, m)| {
            r.into_iter()
                .zip(m)
                .filter(|(_, &m)| m == 1)
                .map(|(t, _)| t)
                .collect()
        })
        .collect();
    let out = generate(&m, &prompts, 0, &cfg, None, &mut |_, _| true)?;
    assert_eq!(
        out.tokens,
        rows(&g["batch_greedy"]),
        "{dir}: batch greedy tokens"
    );
    Ok(())
}

fn llama_golden(dev: Device) -> R {
    check_model("llama", dev)?;
    // Negative control: without its Llama-3 rope scaling the same weights miss the golden, so
    // the comparison above does exercise the scaling.
    let d = fixtures().join("llama");
    let mut cfg = LlamaConfig::from_hf_file(&d.join("config.json"))?;
    cfg.rope_scaling = semhitok_mllm::llm::RopeScaling::Default;
    let m = LlamaModel::new(&cfg, &Weights::from_hf_dir(&d, Kind::Float, dev)?)?;
    let g = golden("llama_golden.safetensors");
    let l = m.forward(
        Input::Ids(&g["ids"].to_device(dev)),
        None,
        &mut m.new_cache(1, 16)?,
        LogitsAt::All,
    )?;
    let e = rel_err(&l, &g["logits"]);
    assert!(e > 1e-3, "unscaled rope still matches (rel err {e})");
    Ok(())
}
test_device!(llama_golden, llama_golden_cpu, llama_golden_cuda);

fn qwen2_golden(dev: Device) -> R {
    check_model("qwen2", dev)
}
test_device!(qwen2_golden, qwen2_golden_cpu, qwen2_golden_cuda);

#[test]
fn config_resolution() {
    let l = LlamaConfig::from_hf_file(&fixtures().join("llama/config.json")).unwrap();
    assert_eq!(l.arch, semhitok_mllm::llm::Arch::Llama);
    assert!(!l.tie_word_embeddings && !l.qkv_bias);
    assert_eq!(l.rope_theta, 500000.0);
    assert!(matches!(
        l.rope_scaling,
        semhitok_mllm::llm::RopeScaling::Llama3 { factor, .. } if factor == 8.0
    ));
    let q = LlamaConfig::from_hf_file(&fixtures().join("qwen2/config.json")).unwrap();
    assert!(q.tie_word_embeddings && q.qkv_bias && !q.o_bias);
    assert_eq!(
        (q.num_attention_heads, q.num_key_value_heads, q.head_dim),
        (4, 2, 16)
    );
    // transformers 4 spelling: top-level rope_theta and rope_scaling with "type".
    let raw: semhitok_mllm::llm::config::HfConfig = serde_json::from_value(serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2,
        "rope_theta": 1234.0, "eos_token_id": [2, 7],
        "rope_scaling": {"type": "llama3", "factor": 2.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 16}
    }))
    .unwrap();
    let c = LlamaConfig::from_hf(&raw, "inline").unwrap();
    assert_eq!(c.rope_theta, 1234.0);
    assert_eq!(c.eos_token_ids, vec![2, 7]);
    assert_eq!(c.num_key_value_heads, 2);
    let bad: semhitok_mllm::llm::config::HfConfig = serde_json::from_value(serde_json::json!({
        "architectures": ["GPT2LMHeadModel"], "vocab_size": 10, "hidden_size": 8,
        "intermediate_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2
    }))
    .unwrap();
    let e = LlamaConfig::from_hf(&bad, "inline")
        .unwrap_err()
        .to_string();
    assert!(e.contains("GPT2LMHeadModel"), "{e}");
    let mut gqa = raw.clone();
    gqa.num_key_value_heads = Some(3);
    let e = LlamaConfig::from_hf(&gqa, "inline")
        .unwrap_err()
        .to_string();
    assert!(e.contains("num_key_value_heads"), "{e}");
}

#[test]
fn sharded_equals_single() -> R {
    let a = load("llama", Device::Cpu);
    let b = load("sharded", Device::Cpu);
    let ids = Tensor::from_slice(&[3i64, 1, 4, 1, 5]).unsqueeze(0);
    let la = a.forward(
        Input::Ids(&ids),
        None,
        &mut a.new_cache(1, 8)?,
        LogitsAt::All,
    )?;
    let lb = b.forward(
        Input::Ids(&ids),
        None,
        &mut b.new_cache(1, 8)?,
        LogitsAt::All,
    )?;
    assert_eq!(rel_err(&la, &lb), 0.0);
    Ok(())
}

/// Config/weights mismatches are errors naming the tensor; unused tensors are reported.
#[test]
fn strict_loading_errors() {
    let d = fixtures();
    let qcfg = LlamaConfig::from_hf_file(&d.join("qwen2/config.json")).unwrap();
    let lw = Weights::from_hf_dir(&d.join("llama"), Kind::Float, Device::Cpu).unwrap();
    let e = LlamaModel::new(&qcfg, &lw).unwrap_err().to_string();
    assert!(
        e.contains("model.layers.0.self_attn.q_proj.bias") && e.contains("missing"),
        "{e}"
    );

    let mut lcfg = LlamaConfig::from_hf_file(&d.join("llama/config.json")).unwrap();
    lcfg.intermediate_size = 100;
    let e = LlamaModel::new(&lcfg, &lw).unwrap_err().to_string();
    assert!(
        e.contains("mlp.gate_proj.weight") && e.contains("[96, 64]"),
        "{e}"
    );

    // Llama weights under a tied config: lm_head.weight may be present (ignored); a config with
    // fewer layers leaves layer 1 unused.
    let mut one = LlamaConfig::from_hf_file(&d.join("llama/config.json")).unwrap();
    one.num_hidden_layers = 1;
    let lw = Weights::from_hf_dir(&d.join("llama"), Kind::Float, Device::Cpu).unwrap();
    let e = LlamaModel::new(&one, &lw).unwrap_err().to_string();
    assert!(
        e.contains("does not use") && e.contains("model.layers.1."),
        "{e}"
    );

    let e = Weights::from_hf_dir(&d.join("nonexistent"), Kind::Float, Device::Cpu)
        .unwrap_err()
        .to_string();
    assert!(e.contains("model.safetensors"), "{e}");
}

/// New rows follow the stated rule; old logits are unchanged; a tied head is untied.
#[test]
fn extend_vocab_rule() -> R {
    let mut m = load("qwen2", Device::Cpu);
    let ids = Tensor::from_slice(&[3i64, 1, 4, 1, 5]).unsqueeze(0);
    let before = m.forward(
        Input::Ids(&ids),
        None,
        &mut m.new_cache(1, 8)?,
        LogitsAt::All,
    )?;
    let old = m.embed_weight().copy();
    m.extend_vocab(4000, 1.0, 7)?;
    assert_eq!(m.config().vocab_size, 128 + 4000);
    assert!(!m.config().tie_word_embeddings);
    let after = m.forward(
        Input::Ids(&ids),
        None,
        &mut m.new_cache(1, 8)?,
        LogitsAt::All,
    )?;
    assert_eq!(after.size(), [1, 5, 4128]);
    assert!(
        rel_err(&after.narrow(2, 0, 128), &before) < 1e-6,
        "old logits changed"
    );
    assert_eq!(rel_err(&m.embed_weight().narrow(0, 0, 128), &old), 0.0);
    // Sample statistics of 4000 new rows vs the old mean and covariance (cov_scale = 1).
    let new = m.embed_weight().narrow(0, 128, 4000).to_kind(Kind::Double);
    let o = old.to_kind(Kind::Double);
    let mu = o.mean_dim(0, false, Kind::Double);
    let c = &o - &mu;
    let cov = c.transpose(0, 1).matmul(&c) / 128.0;
    let mu_new = new.mean_dim(0, false, Kind::Double);
    let cn = &new - &mu_new;
    let cov_new = cn.transpose(0, 1).matmul(&cn) / 4000.0;
    let sd = cov.diagonal(0, 0, 1).sqrt();
    let z = ((&mu_new - &mu) / &sd).abs().max().double_value(&[]) * (4000f64).sqrt();
    assert!(z < 5.0, "new-row mean off by {z} standard errors");
    let ce = (&cov_new - &cov).abs().max().double_value(&[])
        / cov.diagonal(0, 0, 1).max().double_value(&[]);
    assert!(ce < 0.15, "covariance rel err {ce}");
    // The head got the same new rows (it was tied); seeded.
    assert_eq!(rel_err(m.lm_head_weight(), m.embed_weight()), 0.0);
    let mut m2 = load("qwen2", Device::Cpu);
    m2.extend_vocab(4000, 1.0, 7)?;
    assert_eq!(rel_err(m2.embed_weight(), m.embed_weight()), 0.0);
    // transformers' default scale 1e-9: rows at the mean.
    let mut m3 = load("llama", Device::Cpu);
    m3.extend_vocab(3, 1e-9, 0)?;
    let r = m3.embed_weight().narrow(0, 128, 3);
    let mu3 = m3
        .embed_weight()
        .narrow(0, 0, 128)
        .mean_dim(0, true, Kind::Float);
    assert!((&r - &mu3).abs().max().double_value(&[]) < 1e-3);
    assert!(m3.extend_vocab(0, 1.0, 0).is_err());
    Ok(())
}

/// A full cache is an error, not a panic; a wrong mask shape is named.
#[test]
fn cache_errors() -> R {
    let m = load("llama", Device::Cpu);
    let ids = Tensor::from_slice(&[3i64, 1, 4, 1, 5]).unsqueeze(0);
    let mut c = m.new_cache(1, 4)?;
    let e = m
        .forward(Input::Ids(&ids), None, &mut c, LogitsAt::Last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("KV cache full"), "{e}");
    let mut c = m.new_cache(1, 8)?;
    let bad = Tensor::ones([1, 4], (Kind::Int64, Device::Cpu));
    let e = m
        .forward(Input::Ids(&ids), Some(&bad), &mut c, LogitsAt::Last)
        .unwrap_err()
        .to_string();
    assert!(e.contains("attention mask"), "{e}");
    Ok(())
}

/// A pickle-only checkpoint converted by scripts/convert_pickle_to_safetensors.py (two shards,
/// tied head sharing storage) loads and gives the same logits as transformers.
#[test]
fn pickle_converted_checkpoint() -> R {
    let m = load("qwen2_from_pickle", Device::Cpu);
    let g = golden("qwen2_golden.safetensors");
    let l = m.forward(
        Input::Ids(&g["ids"]),
        None,
        &mut m.new_cache(1, 16)?,
        LogitsAt::All,
    )?;
    let e = rel_err(&l, &g["logits"]);
    assert!(e < 1e-5, "rel err {e}");
    Ok(())
}
