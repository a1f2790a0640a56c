//! Guided text-to-image sampling speed (issue 18 §2): images/s of `semhitok_mllm::t2i` (KV
//! cache, 2B rows with CFG, device sampler with host uniforms) on a Qwen2.5-3B-shaped decoder
//! with random weights and the paper's visual vocabulary (151,936 + 196,610 rows), one JSON
//! line per batch size on stdout. `scripts/bench_t2i_torch.py` is the PyTorch reference loop
//! (LlamaGen-style: static KV cache, cond/uncond halves, top-k/top-p + multinomial); run both
//! with `scripts/gpu/t2i_bench.sh`.
//!
//! Args: `--device cpu|cuda`, `--dtype bf16|f32`, `--batches 16,64`, `--tokens 256`,
//! `--cfg 5.0`, `--top-k 0`, `--top-p 1.0`, `--prompt-tokens 12`, `--reps 3` (best kept),
//! `--shape qwen2.5-3b|tiny`.

use semhitok_mllm::cfg::Guidance;
use semhitok_mllm::llm::{Arch, LlamaConfig, LlamaModel, RopeScaling, Weights};
use semhitok_mllm::t2i::{
    generate_visual, CachedVisualLm, ImageRequest, T2iLayout, T2iSampling, VisualSampling,
};
use semhitok_mllm::vocab::VisualVocab;
use std::time::Instant;
use tch::{Device, Kind};

fn arg(args: &[String], k: &str) -> Option<String> {
    args.iter()
        .position(|a| a == k)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Qwen2.5-3B's shape (config.json of Qwen/Qwen2.5-3B) with `vocab` rows.
fn qwen25_3b(vocab: i64) -> LlamaConfig {
    LlamaConfig {
        arch: Arch::Qwen2,
        vocab_size: vocab,
        hidden_size: 2048,
        intermediate_size: 11008,
        num_hidden_layers: 36,
        num_attention_heads: 16,
        num_key_value_heads: 2,
        head_dim: 128,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        rope_scaling: RopeScaling::Default,
        max_position_embeddings: 32768,
        tie_word_embeddings: false,
        qkv_bias: true,
        o_bias: false,
        mlp_bias: false,
        bos_token_id: Some(151_643),
        eos_token_ids: vec![151_643],
    }
}

fn tiny(vocab: i64) -> LlamaConfig {
    LlamaConfig {
        hidden_size: 64,
        intermediate_size: 128,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 16,
        ..qwen25_3b(vocab)
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let num = |k: &str, d: f64| {
        arg(&args, k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(d)
    };
    let dev = match arg(&args, "--device").as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(d) => anyhow::bail!("--device {d}"),
    };
    let kind = match arg(&args, "--dtype").as_deref() {
        None | Some("bf16") => Kind::BFloat16,
        Some("f32") => Kind::Float,
        Some(d) => anyhow::bail!("--dtype {d}"),
    };
    let batches: Vec<usize> = arg(&args, "--batches")
        .unwrap_or_else(|| "16,64".into())
        .split(',')
        .map(|s| s.parse())
        .collect::<Result<_, _>>()?;
    let n_tokens = num("--tokens", 256.0) as usize;
    let scale = num("--cfg", 5.0);
    let reps = num("--reps", 3.0) as usize;
    let p_tokens = num("--prompt-tokens", 12.0) as usize;
    let vocab = VisualVocab::paper(151_936)?;
    let shape = arg(&args, "--shape").unwrap_or_else(|| "qwen2.5-3b".into());
    let cfg = match shape.as_str() {
        "qwen2.5-3b" => qwen25_3b(vocab.total() as i64),
        "tiny" => tiny(vocab.total() as i64),
        s => anyhow::bail!("--shape {s}"),
    };
    let t = Instant::now();
    let model = LlamaModel::new(&cfg, &Weights::random(0.02, 0, kind, dev))?;
    let layout = T2iLayout::new(vocab, cfg.bos_token_id)?;
    let load_s = t.elapsed().as_secs_f64();
    let sampling = T2iSampling {
        sampling: VisualSampling {
            temperature: num("--temperature", 1.0),
            top_k: num("--top-k", 0.0) as i64,
            top_p: num("--top-p", 1.0),
        },
        guidance: Guidance::scale(scale),
    };
    for &b in &batches {
        let reqs: Vec<ImageRequest> = (0..b)
            .map(|i| ImageRequest {
                caption: (0..p_tokens as u32)
                    .map(|t| (t * 7919 + i as u32) % 151_000)
                    .collect(),
                seed: i as u64,
            })
            .collect();
        let mut best = f64::INFINITY;
        for r in 0..=reps {
            let t = Instant::now();
            let mut lm = CachedVisualLm::new(&model, &vocab, n_tokens)?;
            let ids = generate_visual(&mut lm, &layout, &reqs, n_tokens, &sampling)?; // ends with a host copy (sync)
            let s = t.elapsed().as_secs_f64();
            assert_eq!(ids.len(), b);
            if r > 0 {
                best = best.min(s); // r = 0 is the warm-up
            }
        }
        println!(
            "{}",
            serde_json::json!({
                "impl": "semhitok-mllm (tch)", "shape": shape, "device": format!("{dev:?}"),
                "dtype": format!("{kind:?}"), "batch": b, "tokens_per_image": n_tokens,
                "cfg": scale, "rows": if scale != 1.0 { 2 * b } else { b },
                "seconds": best, "images_per_s": b as f64 / best,
                "tokens_per_s": (b * n_tokens) as f64 / best, "load_s": load_s,
            })
        );
    }
    Ok(())
}
