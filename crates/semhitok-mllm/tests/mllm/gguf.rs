//! GGUF: dequantizers vs the `gguf` package and a scalar reference, reader errors, the tiny
//! GGUF export vs transformers, and the real SmolLM2 file.

use super::llm::{fixtures, golden, rel_err};
use proptest::prelude::*;
use semhitok_mllm::gguf::dequant::{dequantize, reference_element};
use semhitok_mllm::gguf::{self, GgmlType, GgufFile};
use semhitok_mllm::llm::{Input, LlamaModel, LogitsAt};
use tch::{Device, Kind, Tensor};

const TYPES: [(&str, GgmlType); 8] = [
    ("F16", GgmlType::F16),
    ("BF16", GgmlType::BF16),
    ("Q8_0", GgmlType::Q8_0),
    ("Q4_0", GgmlType::Q4_0),
    ("Q4_1", GgmlType::Q4_1),
    ("Q4_K", GgmlType::Q4K),
    ("Q5_K", GgmlType::Q5K),
    ("Q6_K", GgmlType::Q6K),
];

/// Every dequantizer reproduces the `gguf` package's values on committed random blocks.
#[test]
fn dequant_matches_gguf_package() {
    let g = golden("dequant.safetensors");
    for (name, ty) in TYPES {
        let bytes = Vec::<u8>::try_from(&g[&format!("{name}_bytes")]).unwrap();
        let want = Vec::<f32>::try_from(&g[&format!("{name}_values")]).unwrap();
        let got = dequantize(ty, &bytes, want.len()).unwrap();
        for (i, (a, b)) in got.iter().zip(&want).enumerate() {
            // Same f32 operation order as ggml / gguf-py: at most 1 ulp apart.
            assert!(
                (a - b).abs() <= b.abs() * 2.0 * f32::EPSILON,
                "{name}[{i}]: {a} vs gguf {b}"
            );
        }
        assert!(dequantize(ty, &bytes[..bytes.len() - 1], want.len()).is_err());
    }
}

fn finite_block(ty: GgmlType, mut raw: Vec<u8>) -> Vec<u8> {
    // Keep f16 scale fields finite (exponent bits not all ones) so values compare.
    let fields: &[usize] = match ty {
        GgmlType::F16 => &[0],
        GgmlType::Q8_0 | GgmlType::Q4_0 => &[0],
        GgmlType::Q4_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
        GgmlType::Q6K => &[208],
        GgmlType::F32 | GgmlType::BF16 => &[],
    };
    for &o in fields {
        raw[o + 1] &= 0b1011_1111;
    }
    if ty == GgmlType::BF16 {
        raw[1] &= 0b1011_1111;
    }
    if ty == GgmlType::F32 {
        raw[3] &= 0b1011_1111;
    }
    raw
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]
    /// The fast block decoder equals the per-element scalar reference on random blocks.
    #[test]
    fn dequant_fast_equals_scalar_reference(
        which in 0usize..9,
        seed_bytes in proptest::collection::vec(any::<u8>(), 210 * 3),
    ) {
        let ty = [GgmlType::F32, GgmlType::F16, GgmlType::BF16, GgmlType::Q8_0, GgmlType::Q4_0,
                  GgmlType::Q4_1, GgmlType::Q4K, GgmlType::Q5K, GgmlType::Q6K][which];
        let (be, bb) = (ty.block_elems(), ty.block_bytes());
        let nblk = 3;
        let mut bytes = Vec::new();
        for b in 0..nblk {
            bytes.extend(finite_block(ty, seed_bytes[b * bb..(b + 1) * bb].to_vec()));
        }
        let fast = dequantize(ty, &bytes, nblk * be).unwrap();
        for b in 0..nblk {
            for i in 0..be {
                let r = reference_element(ty, &bytes[b * bb..(b + 1) * bb], i);
                let f = fast[b * be + i];
                prop_assert!(f == r || (f - r).abs() <= r.abs() * 2.0 * f32::EPSILON,
                    "{:?} block {} elem {}: fast {} vs reference {}", ty, b, i, f, r);
            }
        }
    }
}

/// The tiny GGUF (llama arch, permuted Q/K, F32/F16/Q8_0, no tokenizer) gives transformers'
/// logits on the same dequantized weights.
#[test]
fn tiny_gguf_matches_transformers() -> Result<(), Box<dyn std::error::Error>> {
    let f = GgufFile::open(&fixtures().join("tiny_llama.gguf"))?;
    assert_eq!(f.version, 3);
    let cfg = gguf::load::config(&f)?;
    assert_eq!(
        (
            cfg.num_hidden_layers,
            cfg.hidden_size,
            cfg.num_key_value_heads
        ),
        (2, 64, 2)
    );
    assert!(!cfg.tie_word_embeddings);
    let (cfg, w) = gguf::load::load(&f, Kind::Float, Device::Cpu)?;
    let m = LlamaModel::new(&cfg, &w)?;
    let g = golden("tiny_llama_gguf_golden.safetensors");
    let ids = golden("llama_golden.safetensors")["ids"].shallow_clone();
    let l = m.forward(
        Input::Ids(&ids),
        None,
        &mut m.new_cache(1, 16)?,
        LogitsAt::All,
    )?;
    let e = rel_err(&l, &g["logits"]);
    eprintln!("tiny gguf: logits rel err vs transformers {e:.2e}");
    assert!(e < 1e-5, "rel err {e}");
    // Without the un-permutation the logits would differ (position 0 has angle 0, so the
    // later positions carry the check).
    assert!(rel_err(&l.narrow(1, 1, 10), &g["logits"].narrow(1, 1, 10)) < 1e-5);
    Ok(())
}

fn corrupt(bytes: &[u8]) -> semhitok_mllm::Result<GgufFile> {
    GgufFile::parse(bytes.to_vec(), "corrupt.gguf".into())
}

/// Truncated files, bad magic and unknown tensor types are errors naming the problem.
#[test]
fn reader_errors() {
    let raw = std::fs::read(fixtures().join("tiny_llama.gguf")).unwrap();
    assert!(corrupt(&raw).is_ok());
    for cut in [3, 10, 30, 200, raw.len() / 2, raw.len() - 1] {
        let e = corrupt(&raw[..cut]).unwrap_err().to_string();
        assert!(
            e.contains("corrupt.gguf") && (e.contains("truncated") || e.contains("magic")),
            "cut {cut}: {e}"
        );
    }
    let mut bad = raw.clone();
    bad[0] = b'X';
    assert!(corrupt(&bad).unwrap_err().to_string().contains("magic"));
    // Patch the type id of the first tensor to 99.
    let f = corrupt(&raw).unwrap();
    let first = &f.tensors[0];
    let name = first.name.as_bytes();
    let at = raw.windows(name.len()).position(|w| w == name).unwrap();
    let ty_at = at + name.len() + 4 + 8 * first.dims.len();
    let mut bad = raw.clone();
    bad[ty_at..ty_at + 4].copy_from_slice(&99u32.to_le_bytes());
    let e = corrupt(&bad).unwrap_err().to_string();
    assert!(e.contains(&first.name) && e.contains("ggml type 99"), "{e}");
}

/// Name mapping and the inverse of llama.cpp's permutation.
#[test]
fn names_and_unpermute() {
    assert_eq!(
        gguf::load::hf_name("blk.12.attn_k.weight").as_deref(),
        Some("model.layers.12.self_attn.k_proj.weight")
    );
    assert_eq!(
        gguf::load::hf_name("blk.0.ffn_norm.weight").as_deref(),
        Some("model.layers.0.post_attention_layernorm.weight")
    );
    assert_eq!(
        gguf::load::hf_name("output.weight").as_deref(),
        Some("lm_head.weight")
    );
    assert!(gguf::load::hf_name("blk.0.attn_qkv.weight").is_none());
    // llama.cpp permute(w, 2 heads) of rows 0..8 (head_dim 4): per head (half, pair) -> (pair, half).
    let w = Tensor::arange(8, (Kind::Float, Device::Cpu)).view([8, 1]);
    let permuted = w.view([2, 2, 2, 1]).transpose(1, 2).reshape([8, 1]);
    let back = gguf::load::unpermute_rows(&permuted, 2).unwrap();
    assert_eq!(
        Vec::<f32>::try_from(back.view([-1])).unwrap(),
        (0..8).map(|x| x as f32).collect::<Vec<_>>()
    );
    assert_eq!(
        Vec::<f32>::try_from(permuted.view([-1])).unwrap(),
        vec![0., 2., 1., 3., 4., 6., 5., 7.]
    );
}

pub fn smollm2_path() -> std::path::PathBuf {
    let p = super::workspace().join(".assets/llm/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask assets`",
        p.display()
    );
    p
}

/// The real SmolLM2-135M-Instruct GGUF: config, logits vs transformers loading the same file
/// (both dequantize to f32), tokenizer ids vs a `pre = smollm` reference, chat template.
#[test]
fn smollm2_real_file() -> Result<(), Box<dyn std::error::Error>> {
    let lm = semhitok_mllm::llm::load::load(&smollm2_path(), Kind::Float, Device::Cpu)?;
    let c = lm.model.config();
    assert_eq!(
        (
            c.num_hidden_layers,
            c.hidden_size,
            c.intermediate_size,
            c.num_attention_heads,
            c.num_key_value_heads,
            c.vocab_size
        ),
        (30, 576, 1536, 9, 3, 49152)
    );
    assert!(c.tie_word_embeddings);
    assert_eq!(c.rope_theta, 100000.0);
    let g = golden("smollm2_golden.safetensors");
    let m = &lm.model;
    let l = m.forward(
        Input::Ids(&g["ids"]),
        None,
        &mut m.new_cache(1, 16)?,
        LogitsAt::All,
    )?;
    let last = l.select(1, l.size()[1] - 1).squeeze();
    let e = rel_err(&last, &g["last_logits"]);
    eprintln!("smollm2: last-position logits rel err vs transformers {e:.2e}");
    assert!(e < 1e-4, "last-position logits rel err {e}");
    assert_eq!(
        Vec::<i64>::try_from(l.argmax(-1, false).view([-1]))?,
        Vec::<i64>::try_from(g["argmax"].view([-1]))?
    );

    // Tokenizer: 200 strings.
    let text = std::fs::read_to_string(fixtures().join("smollm2_tokenizer.json"))?;
    let v: serde_json::Value = serde_json::from_str(&text)?;
    let corpus = v["corpus"].as_array().unwrap();
    let ids = v["ids"].as_array().unwrap();
    assert_eq!(corpus.len(), 200);
    for (s, want) in corpus.iter().zip(ids) {
        let s = s.as_str().unwrap();
        let want: Vec<u32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(lm.tokenizer.encode(s)?, want, "{s:?}");
    }
    // Digits are split one by one (plain GPT-2 byte-level would merge them).
    assert_eq!(lm.tokenizer.encode("12345")?.len(), 5);
    assert_eq!(lm.bos_to_add, None, "add_bos_token = false");
    assert_eq!(lm.eos, vec![2]);

    // Chat template (SmolLM2's: a default system prompt when none is given).
    let t = lm
        .chat_template
        .as_ref()
        .expect("the file ships a template");
    let p = t.render(
        &[semhitok_mllm::chat::Message::new(
            semhitok_mllm::chat::Role::User,
            "Hi",
        )],
        true,
    )?;
    assert_eq!(
        p,
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    );
    let pid = lm.tokenizer.encode(&p)?;
    assert_eq!(pid[0], lm.tokenizer.token_to_id("<|im_start|>").unwrap());
    Ok(())
}

/// Answers a question sensibly with greedy decoding (what `semhitok chat` does).
#[test]
fn smollm2_answers() -> Result<(), Box<dyn std::error::Error>> {
    use semhitok_mllm::chat::{Message, Role};
    use semhitok_mllm::generate::{generate, GenerationConfig};
    let lm = semhitok_mllm::llm::load::load(&smollm2_path(), Kind::Float, Device::Cpu)?;
    let t = lm.chat_template.as_ref().unwrap();
    let p = t.render(
        &[Message::new(Role::User, "What is the capital of France?")],
        true,
    )?;
    let ids = lm.tokenizer.encode(&p)?;
    let cfg = GenerationConfig {
        max_new_tokens: 16,
        eos: lm.eos.clone(),
        ..Default::default()
    };
    let out = generate(
        &lm.model,
        &[ids],
        2,
        &cfg,
        Some(&lm.tokenizer),
        &mut |_, _| true,
    )?;
    let answer = lm.tokenizer.decode_skip_special(&out.tokens[0])?;
    assert!(answer.contains("Paris"), "{answer:?}");
    Ok(())
}
