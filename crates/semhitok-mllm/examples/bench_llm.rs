//! Prefill and decode tokens/s of semhitok-mllm's decoder, one JSON line on stdout.
//!
//! `cargo xtask bench llm` runs it next to `scripts/bench_llm_cpu.py` (transformers on the same
//! GGUF); `scripts/gpu/llm.sh` runs it with `--random llama2-7b` on an H200.
//!
//! Args: `--model PATH.gguf | --random llama2-7b`, `--device cpu|cuda`, `--dtype f32|gguf|bf16|f16`
//! (`gguf`: f32 weights plus the file's Q4_1 / Q8_0 blocks for batch-1 decoding, CPU only),
//! `--threads N`, `--batch B`, `--prompt-tokens P`, `--new-tokens N`, `--reps R` (best kept),
//! `--sync-every K` (read sampled ids on the host every K steps; 1 = every token),
//! `--decode dynamic|static|graph` (the decode step: dynamic shapes, the static-shape step issued
//! op by op, or the static step as a CUDA graph; default dynamic),
//! `--accuracy` (also report the max relative error of the logits of one decode step, after a
//! prefill of the prompt, against the f32 model without blocks, for `gguf` and the smaller dtypes).

use semhitok_mllm::generate::{generate, DecodeMode, GenerationConfig};
use semhitok_mllm::llm::{Input, LlamaConfig, LlamaModel, LogitsAt, Weights};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn arg(args: &[String], k: &str) -> Option<String> {
    args.iter()
        .position(|a| a == k)
        .and_then(|i| args.get(i + 1).cloned())
}

fn load(args: &[String], kind: Kind, dev: Device, blocks: bool) -> anyhow::Result<LlamaModel> {
    if let Some(r) = arg(args, "--random") {
        anyhow::ensure!(r == "llama2-7b", "--random {r}: only llama2-7b");
        let cfg = LlamaConfig::llama2_7b_shape();
        let w = Weights::random(0.02, 0, kind, dev);
        return Ok(LlamaModel::new(&cfg, &w)?);
    }
    let p = arg(args, "--model").ok_or_else(|| anyhow::anyhow!("give --model or --random"))?;
    let f = semhitok_mllm::gguf::GgufFile::open(std::path::Path::new(&p))?;
    let (cfg, w) = semhitok_mllm::gguf::load::load(&f, kind, dev)?;
    let mut m = LlamaModel::new(&cfg, &w)?;
    if blocks {
        anyhow::ensure!(dev == Device::Cpu, "--dtype gguf runs on the CPU");
        let a = m.attach_gguf_blocks(&f)?;
        eprintln!(
            "gguf blocks: {} layers, {:.1} MB read per decode step",
            a.layers,
            a.bytes as f64 / 1e6
        );
    }
    Ok(m)
}

fn sync(dev: Device) {
    if let Device::Cuda(i) = dev {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let num = |k: &str, d: i64| arg(&args, k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let threads = num("--threads", 0);
    if threads > 0 {
        tch::set_num_threads(threads as i32);
    }
    let dev = match arg(&args, "--device").as_deref() {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") => Device::Cuda(0),
        Some(d) => anyhow::bail!("--device {d}"),
    };
    let blocks = arg(&args, "--dtype").as_deref() == Some("gguf");
    let kind = match arg(&args, "--dtype").as_deref() {
        None | Some("f32") | Some("gguf") => Kind::Float,
        Some("bf16") => Kind::BFloat16,
        Some("f16") => Kind::Half,
        Some(d) => anyhow::bail!("--dtype {d}"),
    };
    let (batch, p, n, reps) = (
        num("--batch", 1),
        num("--prompt-tokens", 128),
        num("--new-tokens", 64),
        num("--reps", 3),
    );
    let t = Instant::now();
    let m = load(&args, kind, dev, blocks)?;
    sync(dev);
    let load_s = t.elapsed().as_secs_f64();
    let v = m.config().vocab_size;
    let prompt: Vec<u32> = (0..p).map(|i| ((i * 7919 + 13) % v) as u32).collect();
    let prompts = vec![prompt.clone(); batch as usize];
    let decode = match arg(&args, "--decode").as_deref() {
        None | Some("dynamic") => DecodeMode::Dynamic,
        Some("static") => DecodeMode::Static,
        Some("graph") => DecodeMode::CudaGraph,
        Some(d) => anyhow::bail!("--decode {d}: dynamic | static | graph"),
    };
    let cfg = GenerationConfig {
        decode,
        max_new_tokens: n as usize,
        sync_every: num("--sync-every", 1) as usize,
        ..Default::default()
    };
    let (mut best_pre, mut best_dec) = (0f64, 0f64);
    let mut tokens = vec![];
    // One untimed warm-up, then `reps` timed runs.
    for r in 0..=reps {
        sync(dev);
        let out = generate(&m, &prompts, 0, &cfg, None, &mut |_, _| true)?;
        sync(dev);
        if r == 0 {
            tokens = out.tokens[0].clone();
            continue;
        }
        best_pre = best_pre.max((batch * p) as f64 / out.prefill_secs);
        best_dec = best_dec.max((batch as f64 * out.decode_steps as f64) / out.decode_secs);
    }
    let mut accuracy = serde_json::Value::Null;
    if args.iter().any(|a| a == "--accuracy") && (kind != Kind::Float || blocks) {
        let reference = load(&args, Kind::Float, dev, false)?;
        let ids =
            Tensor::from_slice(&prompt.iter().map(|&x| x as i64).collect::<Vec<_>>()).unsqueeze(0);
        // Prefill p - 1 tokens, then one decode step (batch 1, one token: the blocks' path).
        let step = |model: &LlamaModel| -> anyhow::Result<Tensor> {
            let mut cache = model.new_cache(1, p)?;
            let _ = model.forward(
                Input::Ids(&ids.narrow(1, 0, p - 1)),
                None,
                &mut cache,
                LogitsAt::Last,
            )?;
            Ok(model.forward(
                Input::Ids(&ids.narrow(1, p - 1, 1)),
                None,
                &mut cache,
                LogitsAt::Last,
            )?)
        };
        let (a, b) = (step(&m)?, step(&reference)?);
        let err = (&a - &b).abs().max().double_value(&[]) / b.abs().max().double_value(&[]);
        let same =
            a.argmax(-1, false).int64_value(&[0, 0]) == b.argmax(-1, false).int64_value(&[0, 0]);
        accuracy =
            serde_json::json!({"decode_logits_max_rel_err_vs_f32": err, "same_argmax": same});
    }
    println!(
        "{}",
        serde_json::json!({
            "impl": "semhitok-mllm (tch)",
            "model": arg(&args, "--model").or(arg(&args, "--random")),
            "device": format!("{dev:?}"), "dtype": if blocks { "Float+gguf-blocks".to_string() } else { format!("{kind:?}") }, "threads": tch::get_num_threads(),
            "batch": batch, "prompt_tokens": p, "new_tokens": n, "reps": reps, "sync_every": cfg.sync_every, "decode": format!("{decode:?}"),
            "load_s": load_s, "prefill_tok_s": best_pre, "decode_tok_s": best_dec,
            "params": m.config().n_params(), "first_tokens": &tokens[..tokens.len().min(8)],
            "accuracy": accuracy,
        })
    );
    Ok(())
}
