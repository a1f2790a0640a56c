//! Peak memory and training tokens/s of LLaVA stage 1 (projector only, frozen LLM) and stage 2
//! LoRA (projector + LoRA r on q,k,v,o,gate,up,down) on a random-init Vicuna-7B-shaped LLM
//! (Llama-2-7B shape), one JSON line on stdout. `scripts/bench_llava_gpu.py` is the
//! transformers (+ peft) reference on the same shapes; `scripts/gpu/llava_bench.sh` runs both
//! back to back on an H200.
//!
//! What one step is (both sides): text embeddings of random ids, the `mlp2x_gelu` projector
//! (f32) over random vision features `[B, N, mm_hidden]` spliced over the first N positions,
//! `forward_train` + causal-LM loss (labels on the text positions), backward, AdamW step
//! (lr 1e-4, no weight decay) over the trained tensors. The frozen tokenizer is not run (its
//! cost is the same for every LLM recipe and is benchmarked by `semhitok bench-tokenize`).
//!
//! Args: `--stage 1|2`, `--batch B`, `--seq L` (text + image positions), `--n-image N`,
//! `--mm-hidden D`, `--lora-r R` (alpha = 2R), `--dtype bf16|f32` (LLM weights), `--steps S`,
//! `--warmup W`, `--device cuda|cpu`, `--layers K` (fewer layers for a CPU smoke run).

use semhitok_mllm::llava::splice::splice_embeddings;
use semhitok_mllm::llava::IMAGE_TOKEN_INDEX;
use semhitok_mllm::llm::{Input, LlamaConfig, LlamaModel, TrainSpec, Weights};
use semhitok_mllm::loss::causal_lm_loss;
use semhitok_mllm::projector::{MlpProjector, MlpProjectorConfig};
use semhitok_train::config::OptimConfig;
use semhitok_train::optim::{AdamW, Param};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

fn arg(args: &[String], k: &str) -> Option<String> {
    args.iter()
        .position(|a| a == k)
        .and_then(|i| args.get(i + 1).cloned())
}

fn sync(dev: Device) {
    if let Device::Cuda(i) = dev {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let num = |k: &str, d: i64| arg(&args, k).and_then(|v| v.parse().ok()).unwrap_or(d);
    let stage = num("--stage", 1);
    let (b, l, n, mm) = (
        num("--batch", 8),
        num("--seq", 512),
        num("--n-image", 256),
        num("--mm-hidden", 64),
    );
    let (r, steps, warmup) = (num("--lora-r", 128), num("--steps", 10), num("--warmup", 3));
    let dev = match arg(&args, "--device").as_deref() {
        None | Some("cuda") => Device::Cuda(0),
        Some("cpu") => Device::Cpu,
        Some(d) => anyhow::bail!("--device {d}"),
    };
    let kind = match arg(&args, "--dtype").as_deref() {
        None | Some("bf16") => Kind::BFloat16,
        Some("f32") => Kind::Float,
        Some(d) => anyhow::bail!("--dtype {d}"),
    };
    let mut cfg = LlamaConfig::llama2_7b_shape();
    if let Some(k) = arg(&args, "--layers") {
        cfg.num_hidden_layers = k.parse()?;
    }
    anyhow::ensure!(n < l, "--n-image {n} must be < --seq {l}");
    let w = Weights::random(0.02, 0, kind, dev);
    let mut model = LlamaModel::new(&cfg, &w)?;
    drop(w);
    tch::manual_seed(1);
    let spec = if stage == 1 {
        TrainSpec::Frozen
    } else {
        TrainSpec::Lora {
            r,
            alpha: 2.0 * r as f64,
        }
    };
    let lm_params = model.train_params(&spec)?;
    let vs = nn::VarStore::new(dev);
    let proj = MlpProjector::new(
        vs.root() / "model" / "mm_projector",
        MlpProjectorConfig {
            mm_hidden_size: mm,
            hidden_size: cfg.hidden_size,
        },
    );
    // Roles as declared (weight_decay is 0 and there is no bf16 copy here, so they change nothing).
    let mut params: Vec<Param> = semhitok_nn::role::trainable(&vs)
        .into_iter()
        .map(|(name, var, role)| Param { name, var, role })
        .collect();
    let n_lora: i64 = lm_params.iter().map(|p| p.var.numel() as i64).sum();
    params.extend(lm_params.into_iter().map(|p| Param {
        name: p.name,
        var: p.var,
        role: p.role,
    }));
    let ocfg = OptimConfig {
        lr: 1e-4,
        betas: [0.9, 0.999],
        eps: 1e-8,
        weight_decay: 0.0,
        warmup_steps: 0,
        min_lr_ratio: 0.0,
        grad_clip: 0.0,
        accum_steps: 1,
        ema_decay: None,
    };
    let mut opt = AdamW::new(params, &ocfg);
    // Inputs: image positions first (after a BOS), then text; labels on the text.
    let mut ids = Tensor::randint_low(3, cfg.vocab_size, [b, l], (Kind::Int64, dev));
    let _ = ids.narrow(1, 1, n).fill_(IMAGE_TOKEN_INDEX);
    let labels = ids.where_scalarother(&ids.ne(IMAGE_TOKEN_INDEX), -100);
    let mask = Tensor::ones([b, l], (Kind::Bool, dev));
    let feats = Tensor::randn([b, n, mm], (Kind::Float, dev));
    let mut times = vec![];
    let mut loss_v = 0.0;
    for step in 0..(warmup + steps) {
        sync(dev);
        let t = Instant::now();
        let text = model.embed(&ids.clamp_min(0))?;
        let p = proj.forward(&feats)?.to_kind(text.kind());
        let x = splice_embeddings(&text, &ids, &p)?;
        let logits = model.forward_train(Input::Embeds(&x), &mask)?;
        let (loss, _) = causal_lm_loss(&logits, &labels)?;
        opt.zero_grad();
        loss.backward();
        opt.step(1e-4);
        loss_v = loss.double_value(&[]);
        sync(dev);
        if step >= warmup {
            times.push(t.elapsed().as_secs_f64());
        }
    }
    let _ = &mut ids;
    times.sort_by(|a, b| a.total_cmp(b));
    let med = times[times.len() / 2];
    println!(
        "{}",
        serde_json::json!({
            "impl": "semhitok (tch)",
            "stage": stage,
            "batch": b, "seq": l, "n_image": n, "mm_hidden": mm,
            "lora_r": if stage == 2 { r } else { 0 },
            "trained_llm_params": n_lora,
            "dtype": format!("{kind:?}"),
            "layers": cfg.num_hidden_layers,
            "step_s_median": med,
            "tokens_per_s": (b * l) as f64 / med,
            "loss": loss_v,
            "steps": steps,
        })
    );
    Ok(())
}
