//! The static-shape decode step (`forward_static`, `DecodeMode::Static`) against the dynamic
//! path, and the CUDA-graph replay of it (`DecodeMode::CudaGraph`, CUDA only) against both.

use super::llm::{golden, load, rel_err};
use semhitok_mllm::generate::{generate, DecodeMode, GenerationConfig, Sampling};
use semhitok_mllm::llm::{Input, LlamaModel, LogitsAt};
use semhitok_nn::test_device;
use tch::{Device, Kind, Tensor};

type R = Result<(), Box<dyn std::error::Error>>;

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

/// The golden's left-padded batch without its padding.
fn batch_prompts(dir: &str) -> Vec<Vec<u32>> {
    let g = golden(&format!("{dir}_golden.safetensors"));
    rows(&g["batch_ids"])
        .into_iter()
        .zip(rows(&g["batch_mask"]))
        .map(|(r, m)| {
            r.into_iter()
                .zip(m)
                .filter(|(_, m)| *m == 1)
                .map(|(t, _)| t)
                .collect()
        })
        .collect()
}

/// Prefill `ids`/`mask` into two caches, then feed the same 6 tokens one at a time through
/// `forward` and `forward_static`: the logits agree within `tol` at every step.
fn compare_steps(m: &LlamaModel, ids: &Tensor, mask: Option<&Tensor>, tol: f64) -> R {
    let dev = m.device();
    let b = ids.size()[0];
    let cap = ids.size()[1] + 8; // more slots than used: the unused tail must not matter
    let mut dynamic = m.new_cache(b, cap)?;
    let mut fixed = m.new_cache(b, cap)?;
    let _ = m.forward(Input::Ids(ids), mask, &mut dynamic, LogitsAt::Last)?;
    let _ = m.forward(Input::Ids(ids), mask, &mut fixed, LogitsAt::Last)?;
    let slot = Tensor::full([1], fixed.len(), (Kind::Int64, dev));
    for t in 0..6i64 {
        let step =
            Tensor::from_slice(&(0..b).map(|r| (7 * t + 3 * r + 1) % 50).collect::<Vec<_>>())
                .view([b, 1])
                .to_device(dev);
        let a = m.forward(Input::Ids(&step), None, &mut dynamic, LogitsAt::Last)?;
        let s = m.forward_static(&step, &slot, &mut fixed)?;
        let _ = slot.shallow_clone().f_add_scalar_(1)?;
        let e = rel_err(&s, &a.select(1, 0));
        assert!(e < tol, "step {t}: static vs dynamic logits rel err {e}");
    }
    Ok(())
}

fn static_logits(dev: Device) -> R {
    let tol = if dev.is_cuda() { 1e-4 } else { 1e-5 };
    for dir in ["llama", "qwen2"] {
        let m = load(dir, dev);
        let g = golden(&format!("{dir}_golden.safetensors"));
        compare_steps(&m, &g["ids"].to_device(dev), None, tol)?;
        let mask = g["batch_mask"].to_device(dev);
        compare_steps(&m, &g["batch_ids"].to_device(dev), Some(&mask), tol)?;
    }
    Ok(())
}
test_device!(static_logits, static_logits_cpu, static_logits_cuda);

/// Greedy tokens of `mode` equal the dynamic path's (single prompt, left-padded batch, with a
/// repetition penalty, and with ids read every 4 steps).
fn same_tokens(dev: Device, mode: DecodeMode) -> R {
    for dir in ["llama", "qwen2"] {
        let m = load(dir, dev);
        let g = golden(&format!("{dir}_golden.safetensors"));
        for (prompts, penalty, every) in [
            (rows(&g["ids"]), 1.0, 1),
            (batch_prompts(dir), 1.0, 1),
            (batch_prompts(dir), 1.3, 4),
        ] {
            let base = GenerationConfig {
                max_new_tokens: 20,
                repetition_penalty: penalty,
                sync_every: every,
                ..Default::default()
            };
            let want = generate(&m, &prompts, 0, &base, None, &mut |_, _| true)?;
            let cfg = GenerationConfig {
                decode: mode,
                ..base.clone()
            };
            let got = generate(&m, &prompts, 0, &cfg, None, &mut |_, _| true)?;
            assert_eq!(got.tokens, want.tokens, "{dir} {mode:?} penalty {penalty}");
            assert_eq!(got.decode_steps, want.decode_steps);
        }
        // The golden itself (transformers' greedy tokens).
        let cfg = GenerationConfig {
            max_new_tokens: 20,
            decode: mode,
            ..Default::default()
        };
        let out = generate(&m, &rows(&g["ids"]), 0, &cfg, None, &mut |_, _| true)?;
        assert_eq!(
            out.tokens,
            rows(&g["greedy"]),
            "{dir} {mode:?} vs transformers"
        );
    }
    Ok(())
}

fn static_tokens(dev: Device) -> R {
    same_tokens(dev, DecodeMode::Static)
}
test_device!(static_tokens, static_tokens_cpu, static_tokens_cuda);

/// Sampling through host uniforms: the same seed gives the same tokens, another seed other
/// tokens, top_k = 1 gives the greedy tokens, and eos ends a row early.
#[test]
fn static_sampling_is_seeded() -> R {
    let m = load("llama", Device::Cpu);
    let prompts = batch_prompts("llama");
    let cfg = |seed: i64, top_k: i64| GenerationConfig {
        max_new_tokens: 16,
        sampling: Sampling::Sample {
            temperature: 1.5,
            top_k,
            top_p: 0.95,
        },
        seed,
        decode: DecodeMode::Static,
        ..Default::default()
    };
    let run = |c: &GenerationConfig| generate(&m, &prompts, 0, c, None, &mut |_, _| true).unwrap();
    let a = run(&cfg(5, 0));
    assert_eq!(a.tokens, run(&cfg(5, 0)).tokens);
    assert_ne!(a.tokens, run(&cfg(6, 0)).tokens);
    let greedy = run(&GenerationConfig {
        max_new_tokens: 16,
        ..Default::default()
    });
    assert_eq!(run(&cfg(5, 1)).tokens, greedy.tokens);
    // eos = the second token of row 0: row 0 stops there, the others are unaffected.
    let eos = greedy.tokens[0][1];
    let stop = generate(
        &m,
        &prompts,
        0,
        &GenerationConfig {
            max_new_tokens: 16,
            eos: vec![eos],
            decode: DecodeMode::Static,
            ..Default::default()
        },
        None,
        &mut |_, _| true,
    )?;
    assert_eq!(stop.tokens[0], greedy.tokens[0][..2].to_vec());
    Ok(())
}

/// CUDA: graph replay gives the dynamic path's tokens. CPU: a clear error.
fn graph_tokens(dev: Device) -> R {
    if dev.is_cuda() {
        return same_tokens(dev, DecodeMode::CudaGraph);
    }
    let m = load("llama", dev);
    let cfg = GenerationConfig {
        max_new_tokens: 4,
        decode: DecodeMode::CudaGraph,
        ..Default::default()
    };
    let err = generate(&m, &[vec![1, 2, 3]], 0, &cfg, None, &mut |_, _| true).unwrap_err();
    assert!(
        err.to_string()
            .contains("CUDA-graph decoding needs a CUDA device"),
        "{err}"
    );
    Ok(())
}
test_device!(graph_tokens, graph_tokens_cpu, graph_tokens_cuda);
