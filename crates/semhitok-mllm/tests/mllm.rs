//! Integration tests of semhitok-mllm (one test binary; a module per topic).

use std::path::PathBuf;

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[path = "mllm/llm.rs"]
mod llm;

#[path = "mllm/train.rs"]
mod train;

#[path = "mllm/gguf.rs"]
mod gguf;

#[path = "mllm/generate.rs"]
mod generate;

#[path = "mllm/llava.rs"]
mod llava;

mod vocab {
    use proptest::prelude::*;
    use semhitok_mllm::vocab::VisualVocab;

    #[test]
    fn paper_layout() {
        let v = VisualVocab::paper(151_665).unwrap();
        assert_eq!(v.n_visual(), 196_608);
        assert_eq!(v.total(), 151_665 + 2 + 196_608);
        assert_eq!(v.token_of(0).unwrap(), 151_667);
        assert_eq!(v.token_of(196_607).unwrap(), v.total() - 1);
        assert!(v.token_of(196_608).is_err());
        assert!(v.unified_of(v.eoi()).is_err());
        assert!(v.unified_of(v.total()).is_err());
        assert_eq!(
            v.token_of_pair(3, 11).unwrap(),
            v.token_of(3 * 12 + 11).unwrap()
        );
        assert!(v.token_of_pair(16384, 0).is_err());
        assert!(v.token_of_pair(0, 12).is_err());
        assert!(VisualVocab::new(u32::MAX - 10, 16384, 12).is_err());
    }

    #[test]
    fn t2i_sequence_and_mask() {
        let v = VisualVocab::new(100, 4, 3).unwrap();
        let (seq, mask) = v.t2i_sequence(&[5, 6], &[0, 11, 7]).unwrap();
        assert_eq!(seq, vec![5, 6, 100, 102, 113, 109, 101]);
        assert_eq!(mask, vec![false, false, false, true, true, true, true]);
        assert!(
            v.t2i_sequence(&[100], &[0]).is_err(),
            "a special token passed as text is rejected"
        );
        assert!(
            v.t2i_sequence(&[1], &[12]).is_err(),
            "unified id K*m is out of range"
        );
    }

    proptest! {
        #[test]
        fn round_trip(text in 1u32..200_000, k in 1u32..20_000, m in 1u32..20, frac in 0.0f64..1.0) {
            let v = VisualVocab::new(text, k, m).unwrap();
            let u = ((v.n_visual() as f64 - 1.0) * frac) as u32;
            let t = v.token_of(u).unwrap();
            prop_assert!(v.visual_range().contains(&t));
            prop_assert_eq!(v.unified_of(t).unwrap(), u);
            prop_assert!(v.unified_of(text - 1).is_err());
        }
    }
}

mod cfg {
    use semhitok_mllm::cfg::{guided_logits, TextDropout};
    use tch::Tensor;

    #[test]
    fn dropout_rate_and_determinism() {
        let d = TextDropout::new(0.1, 7).unwrap();
        let n = 20_000u64;
        let dropped = (0..n).filter(|&i| d.drops(0, i)).count() as f64;
        // Binomial(20000, 0.1): sd = 42; 5 sd either side.
        assert!((dropped - 2000.0).abs() < 210.0, "dropped {dropped} of {n}");
        let again = TextDropout::new(0.1, 7).unwrap();
        assert!((0..1000).all(|i| d.drops(3, i) == again.drops(3, i)));
        assert!(
            (0..1000).any(|i| d.drops(0, i) != d.drops(1, i)),
            "epochs differ"
        );
        assert_eq!(
            d.apply(0, 0, &[1, 2], &[9]).len(),
            if d.drops(0, 0) { 1 } else { 2 }
        );
        assert!(TextDropout::new(1.5, 0).is_err());
        let never = TextDropout::new(0.0, 1).unwrap();
        assert!((0..1000).all(|i| !never.drops(0, i)));
    }

    #[test]
    fn guidance_formula() {
        let c = Tensor::from_slice(&[1.0f32, 2.0, 3.0]);
        let u = Tensor::from_slice(&[0.5f32, 2.5, 0.0]);
        let g = guided_logits(&c, &u, 4.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(g).unwrap(), vec![2.5, 0.5, 12.0]);
        let g1 = guided_logits(&c, &u, 1.0).unwrap();
        assert_eq!(Vec::<f32>::try_from(g1).unwrap(), vec![1.0, 2.0, 3.0]);
        assert!(guided_logits(&c, &Tensor::from_slice(&[1.0f32]), 2.0).is_err());
    }
}

mod sampling {
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;
    use semhitok_mllm::sampling::{generate, sample_visual, NextTokenModel, SamplingConfig};
    use semhitok_mllm::vocab::VisualVocab;
    use tch::{Kind, Tensor};

    fn vocab() -> VisualVocab {
        VisualVocab::new(10, 3, 2).unwrap() // 6 visual tokens at 12..18
    }

    #[test]
    fn only_visual_tokens_and_top_k_1_is_argmax() {
        let v = vocab();
        let mut logits = vec![0.0f32; v.total() as usize];
        logits[3] = 100.0; // a text token with the highest logit must never be drawn
        logits[12 + 4] = 5.0;
        let cfg = SamplingConfig {
            top_k: 1,
            ..Default::default()
        };
        let mut rng = ChaCha8Rng::seed_from_u64(0);
        for _ in 0..50 {
            assert_eq!(sample_visual(&logits, &v, &cfg, &mut rng).unwrap(), 4);
        }
        let cfg = SamplingConfig {
            top_p: 0.01,
            ..Default::default()
        };
        assert_eq!(sample_visual(&logits, &v, &cfg, &mut rng).unwrap(), 4);
        assert!(sample_visual(&logits[1..], &v, &cfg, &mut rng).is_err());
    }

    #[test]
    fn frequencies_follow_softmax() {
        let v = vocab();
        let mut logits = vec![0.0f32; v.total() as usize];
        let vis = [0.0f32, 1.0, 2.0, -1.0, 0.5, 0.0];
        logits[12..18].copy_from_slice(&vis);
        let z: f64 = vis.iter().map(|&x| (x as f64).exp()).sum();
        let cfg = SamplingConfig::default();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let n = 60_000;
        let mut counts = [0usize; 6];
        for _ in 0..n {
            counts[sample_visual(&logits, &v, &cfg, &mut rng).unwrap() as usize] += 1;
        }
        for i in 0..6 {
            let p = (vis[i] as f64).exp() / z;
            let sd = (n as f64 * p * (1.0 - p)).sqrt();
            assert!(
                (counts[i] as f64 - n as f64 * p).abs() < 5.0 * sd,
                "token {i}: {} vs {}",
                counts[i],
                n as f64 * p
            );
        }
        // top-k 2 keeps only the two best (ids 2 and 1).
        let cfg = SamplingConfig {
            top_k: 2,
            ..Default::default()
        };
        for _ in 0..500 {
            let u = sample_visual(&logits, &v, &cfg, &mut rng).unwrap();
            assert!(u == 2 || u == 1);
        }
    }

    /// A toy "LM": the next visual token is (last token + 1) mod 6 when the prompt starts with
    /// text token 1 (conditional), uniform otherwise.
    struct Toy {
        v: VisualVocab,
        calls: usize,
    }
    impl NextTokenModel for Toy {
        fn next_logits(&mut self, tokens: &Tensor) -> semhitok_mllm::Result<Tensor> {
            self.calls += 1;
            let t: Vec<i64> = Vec::try_from(tokens.reshape([-1])).unwrap();
            let mut l = vec![0.0f32; self.v.total() as usize];
            if t[0] == 1 {
                let last = *t.last().unwrap() as u32;
                let next = if last == self.v.boi() {
                    0
                } else {
                    (self.v.unified_of(last).unwrap() + 1) % 6
                };
                l[self.v.token_of(next).unwrap() as usize] = 8.0;
            }
            Ok(Tensor::from_slice(&l).unsqueeze(0).to_kind(Kind::Float))
        }
    }

    #[test]
    fn generation_is_seeded_and_guided() {
        let v = vocab();
        let mut m = Toy { v, calls: 0 };
        let greedy = SamplingConfig {
            top_k: 1,
            cfg_scale: 1.0,
            ..Default::default()
        };
        let ids = generate(&mut m, &v, &[1, 4], &[0], 8, &greedy).unwrap();
        assert_eq!(ids, vec![0, 1, 2, 3, 4, 5, 0, 1]);
        assert_eq!(m.calls, 8, "cfg_scale 1 skips the unconditional pass");
        let cfg = SamplingConfig {
            cfg_scale: 3.0,
            seed: 5,
            ..Default::default()
        };
        m.calls = 0;
        let a = generate(&mut m, &v, &[1], &[0], 16, &cfg).unwrap();
        assert_eq!(m.calls, 32);
        let b = generate(&mut m, &v, &[1], &[0], 16, &cfg).unwrap();
        assert_eq!(a, b, "same seed, same tokens");
        // Guidance sharpens the conditional: with scale 3 the chain is followed almost surely.
        let follows = a.windows(2).filter(|w| w[1] == (w[0] + 1) % 6).count();
        assert!(follows >= 14, "{a:?}");
    }
}

mod projector {
    use semhitok_mllm::projector::{MlpProjector, MlpProjectorConfig};
    use semhitok_nn::test_device;
    use tch::nn::VarStore;
    use tch::Tensor;

    fn golden(dev: tch::Device) -> Result<(), Box<dyn std::error::Error>> {
        let path =
            super::workspace().join("crates/semhitok-mllm/tests/fixtures/projector.safetensors");
        let t: std::collections::HashMap<String, Tensor> =
            Tensor::read_safetensors(&path)?.into_iter().collect();
        let mut vs = VarStore::new(dev);
        let p = MlpProjector::new(
            vs.root() / "model" / "mm_projector",
            MlpProjectorConfig {
                mm_hidden_size: 40,
                hidden_size: 24,
            },
        );
        let opts = semhitok_nn::weights::LoadOptions {
            allow_unexpected: true,
            ..Default::default()
        };
        semhitok_nn::weights::load_strict(&mut vs, &path, &opts)?;
        let y = p
            .forward(&t["input"].to_device(dev))?
            .to_device(tch::Device::Cpu);
        let err = (&y - &t["output"]).abs().max().double_value(&[]);
        assert!(err < 1e-5, "max abs err {err}");
        assert!(p
            .forward(&Tensor::zeros([2, 5, 41], (tch::Kind::Float, dev)))
            .is_err());
        Ok(())
    }
    test_device!(golden, golden_cpu, golden_cuda);
}

mod spm {
    use semhitok_mllm::spm::SpmModel;

    /// A SentencePiece BPE model trained by the generator: same ids and decodes as the
    /// `sentencepiece` package.
    #[test]
    fn sentencepiece_matches_reference() {
        let d = super::workspace().join("crates/semhitok-mllm/tests/fixtures/llm/spm");
        let m = SpmModel::open(&d.join("tokenizer.model")).unwrap();
        assert_eq!(
            (m.model_type, m.byte_fallback, m.pieces.len()),
            (2, true, 420)
        );
        let tk = m.to_tokenizer("tokenizer.model").unwrap();
        let g: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(d.join("golden.json")).unwrap()).unwrap();
        let corpus = g["corpus"].as_array().unwrap();
        for (i, s) in corpus.iter().enumerate() {
            let s = s.as_str().unwrap();
            let want: Vec<u32> = g["ids"][i]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_u64().unwrap() as u32)
                .collect();
            let got = tk.encode(s, false).unwrap().get_ids().to_vec();
            assert_eq!(got, want, "{s:?}");
            assert_eq!(
                tk.decode(&got, true).unwrap(),
                g["decoded"][i].as_str().unwrap(),
                "{s:?}"
            );
        }
        assert!(SpmModel::parse(b"not a model", "x").is_err());
    }
}

mod tokenizer {
    use semhitok_mllm::tokenizer::TextTokenizer;

    /// The embedded Qwen2.5 tokenizer (fetched by `cargo xtask assets`).
    #[test]
    fn qwen25_embedded() {
        let path = super::workspace().join(".assets/tokenizers/qwen2.5/tokenizer.json");
        assert!(
            path.exists(),
            "{} is missing: run `cargo xtask assets`",
            path.display()
        );
        let tok = TextTokenizer::from_file(&path).unwrap();
        assert_eq!(
            tok.vocab_size(),
            151_665,
            "Qwen2.5: 151,643 BPE tokens + 22 specials"
        );
        let ids = tok.encode("A photo of a cat").unwrap();
        assert_eq!(&ids[..5], &[32, 6548, 315, 264, 8251]);
        assert_eq!(tok.decode(&ids).unwrap(), "A photo of a cat");
        let v = tok.extended_vocab(16384, 12).unwrap();
        assert_eq!(v.boi(), 151_665);
        assert_eq!(v.total(), 151_665 + 2 + 196_608);
        assert!(
            TextTokenizer::from_file(std::path::Path::new("/nonexistent/tokenizer.json")).is_err()
        );
    }
}
