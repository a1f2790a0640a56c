//! On-device sampling and the generation loop's controls.

use semhitok_mllm::generate::{
    cut_at_stop, generate, left_pad, GenerationConfig, Sampler, Sampling, TextStream,
};
use tch::{Device, Kind, Tensor};

fn sampler(s: Sampling, penalty: f64, history: &[i64], vocab: i64) -> Sampler {
    let cfg = GenerationConfig {
        sampling: s,
        repetition_penalty: penalty,
        ..Default::default()
    };
    Sampler::new(&cfg, &Tensor::from_slice(history).unsqueeze(0), vocab).unwrap()
}

#[test]
fn greedy_top_k_top_p_and_penalty() {
    let logits = Tensor::from_slice(&[1.0f32, 3.0, -2.0, 2.5, 0.0]).unsqueeze(0);
    let id = |s: &mut Sampler| s.sample(&logits).unwrap().int64_value(&[0]);
    assert_eq!(id(&mut sampler(Sampling::Greedy, 1.0, &[0], 5)), 1);
    // top_k = 1 and a tiny top_p leave only the argmax.
    let k1 = Sampling::Sample {
        temperature: 5.0,
        top_k: 1,
        top_p: 1.0,
    };
    let p0 = Sampling::Sample {
        temperature: 5.0,
        top_k: 0,
        top_p: 1e-6,
    };
    for _ in 0..20 {
        assert_eq!(id(&mut sampler(k1, 1.0, &[0], 5)), 1);
        assert_eq!(id(&mut sampler(p0, 1.0, &[0], 5)), 1);
    }
    // top_k = 2 keeps tokens 1 and 3; the rest are -inf.
    let k2 = sampler(
        Sampling::Sample {
            temperature: 1.0,
            top_k: 2,
            top_p: 1.0,
        },
        1.0,
        &[0],
        5,
    );
    let l = Vec::<f32>::try_from(k2.process(&logits).unwrap().view([-1])).unwrap();
    assert_eq!(l.iter().filter(|x| x.is_finite()).count(), 2);
    assert!(l[1].is_finite() && l[3].is_finite());
    // top_p: probabilities of [3, 2.5, 1, 0, -2] are about .556 .337 .075 .028 .004; a token is
    // dropped once the ones above it reach p: p = 0.8 keeps two (.556 < .8 <= .893), p = 0.9
    // keeps three (.893 < .9 <= .968).
    for (p, keep) in [(0.8, 2), (0.9, 3), (1.0, 5)] {
        let s = sampler(
            Sampling::Sample {
                temperature: 1.0,
                top_k: 0,
                top_p: p,
            },
            1.0,
            &[0],
            5,
        );
        let l = Vec::<f32>::try_from(s.process(&logits).unwrap().view([-1])).unwrap();
        assert_eq!(
            l.iter().filter(|x| x.is_finite()).count(),
            keep,
            "top_p {p}: {l:?}"
        );
    }
    // Repetition penalty 2 on seen tokens 1 (positive: halved) and 2 (negative: doubled).
    let s = sampler(Sampling::Greedy, 2.0, &[1, 2], 5);
    let l = Vec::<f32>::try_from(s.process(&logits).unwrap().view([-1])).unwrap();
    assert_eq!(l, vec![1.0, 1.5, -4.0, 2.5, 0.0]);
    let mut s = sampler(Sampling::Greedy, 2.0, &[1, 2], 5);
    assert_eq!(id(&mut s), 3, "penalised 1 loses to 3");
    // ... and the sampled token is now penalised too.
    let l = Vec::<f32>::try_from(s.process(&logits).unwrap().view([-1])).unwrap();
    assert_eq!(l[3], 1.25);
    let bad = GenerationConfig {
        sampling: Sampling::Sample {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
        },
        ..Default::default()
    };
    assert!(Sampler::new(&bad, &Tensor::from_slice(&[0i64]).unsqueeze(0), 5).is_err());
}

/// Temperature sampling follows softmax(logits / T).
#[test]
fn sampling_frequencies() {
    tch::manual_seed(3);
    let logits = Tensor::from_slice(&[0.0f32, 1.0, 2.0, -1.0])
        .unsqueeze(0)
        .repeat([20000, 1]);
    let t = 2.0;
    let cfg = GenerationConfig {
        sampling: Sampling::Sample {
            temperature: t,
            top_k: 0,
            top_p: 1.0,
        },
        ..Default::default()
    };
    let mut s = Sampler::new(
        &cfg,
        &Tensor::zeros([20000, 1], (Kind::Int64, Device::Cpu)),
        4,
    )
    .unwrap();
    let ids = Vec::<i64>::try_from(s.sample(&logits).unwrap()).unwrap();
    let z: f64 = [0.0f64, 1.0, 2.0, -1.0].iter().map(|x| (x / t).exp()).sum();
    for (k, x) in [0.0f64, 1.0, 2.0, -1.0].iter().enumerate() {
        let p = (x / t).exp() / z;
        let f = ids.iter().filter(|&&i| i == k as i64).count() as f64 / 20000.0;
        let sd = (p * (1.0 - p) / 20000.0).sqrt();
        assert!((f - p).abs() < 5.0 * sd, "token {k}: freq {f} vs p {p}");
    }
}

#[test]
fn padding_and_stops() {
    let (ids, mask) = left_pad(&[vec![5, 6], vec![7, 8, 9]], 0).unwrap();
    assert_eq!(
        Vec::<i64>::try_from(ids.view([-1])).unwrap(),
        vec![0, 5, 6, 7, 8, 9]
    );
    assert_eq!(
        Vec::<i64>::try_from(mask.view([-1])).unwrap(),
        vec![0, 1, 1, 1, 1, 1]
    );
    assert!(left_pad(&[vec![]], 0).is_err());
    let stops = vec!["<|im_end|>".to_string(), "\n\n".to_string()];
    assert_eq!(cut_at_stop("Paris.\n\nMore", &stops), "Paris.");
    assert_eq!(cut_at_stop("no stop", &stops), "no stop");
}

/// eos ends a row, seeded sampling repeats, and a stop string ends generation (tiny llama).
#[test]
fn generation_controls() -> Result<(), Box<dyn std::error::Error>> {
    let _rng = crate::rng_lock(); // seeded sampling draws from the global generator
    let m = super::llm::load("llama", Device::Cpu);
    let g = super::llm::golden("llama_golden.safetensors");
    let prompt: Vec<u32> = Vec::<i64>::try_from(g["ids"].view([-1]))?
        .into_iter()
        .map(|x| x as u32)
        .collect();
    let greedy: Vec<u32> = Vec::<i64>::try_from(g["greedy"].view([-1]))?
        .into_iter()
        .map(|x| x as u32)
        .collect();
    // Use the 5th greedy token as "eos": the row ends right after it.
    let cfg = GenerationConfig {
        max_new_tokens: 20,
        eos: vec![greedy[4]],
        ..Default::default()
    };
    let first = greedy.iter().position(|&t| t == greedy[4]).unwrap();
    let out = generate(&m, &[prompt.clone()], 0, &cfg, None, &mut |_, _| true)?;
    assert_eq!(out.tokens[0], greedy[..=first].to_vec());
    // Reading ids 6 steps late gives the same tokens (also in a batch where rows end apart).
    let late = GenerationConfig {
        sync_every: 6,
        ..cfg.clone()
    };
    let out6 = generate(&m, &[prompt.clone()], 0, &late, None, &mut |_, _| true)?;
    assert_eq!(out6.tokens, out.tokens);
    let batch = vec![prompt.clone(), prompt[3..].to_vec(), prompt[..4].to_vec()];
    let a = generate(&m, &batch, 0, &cfg, None, &mut |_, _| true)?;
    let b = generate(&m, &batch, 0, &late, None, &mut |_, _| true)?;
    assert_eq!(a.tokens, b.tokens);
    // Streaming callback can stop early.
    let mut seen = 0;
    let cfg = GenerationConfig {
        max_new_tokens: 20,
        ..Default::default()
    };
    let out = generate(&m, &[prompt.clone()], 0, &cfg, None, &mut |_, _| {
        seen += 1;
        seen < 3
    })?;
    assert_eq!(out.tokens[0].len(), 3);
    // Seeded sampling is reproducible.
    let cfg = GenerationConfig {
        sampling: Sampling::Sample {
            temperature: 1.0,
            top_k: 20,
            top_p: 0.9,
        },
        repetition_penalty: 1.3,
        max_new_tokens: 12,
        seed: 11,
        ..Default::default()
    };
    let a = generate(&m, &[prompt.clone()], 0, &cfg, None, &mut |_, _| true)?;
    let b = generate(&m, &[prompt.clone()], 0, &cfg, None, &mut |_, _| true)?;
    assert_eq!(a.tokens, b.tokens);
    // Stop strings need a tokenizer.
    let cfg = GenerationConfig {
        stop_strings: vec!["x".into()],
        ..Default::default()
    };
    assert!(generate(&m, &[prompt], 0, &cfg, None, &mut |_, _| true).is_err());
    Ok(())
}

/// Streaming detokenization holds back a split multi-byte character (SmolLM2's tokenizer).
#[test]
fn text_stream() -> Result<(), Box<dyn std::error::Error>> {
    let f = semhitok_mllm::gguf::GgufFile::open(&super::gguf::smollm2_path())?;
    let (tk, _) = semhitok_mllm::gguf::tokenizer::tokenizer(&f)?;
    let tk = semhitok_mllm::tokenizer::TextTokenizer::from_tokenizer(tk, "smollm2");
    let s = "naïve 😀 café";
    let ids = tk.encode(s)?;
    let mut st = TextStream::default();
    let mut text = String::new();
    for &i in &ids {
        let piece = st.push(&tk, i)?;
        assert!(!piece.contains('\u{FFFD}'));
        text += &piece;
    }
    assert_eq!(text, s);
    Ok(())
}
