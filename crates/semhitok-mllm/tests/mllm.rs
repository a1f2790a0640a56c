//! Integration tests of semhitok-mllm (one test binary; a module per topic).

use std::path::PathBuf;

/// Held by every test that seeds LibTorch's process-global generator and draws from it
/// (`tch::manual_seed`, `Weights::random`, LoRA init, `Sampling::Sample` in the dynamic decode
/// path): tests run on parallel threads, and a draw between another test's seed and its draws
/// changes that test's numbers (seen once as `generation_controls` failing its reproducibility
/// check).
/// An NVRTC compile result of the LLM's kernels: a cubin, and every entry ptxas reports on
/// without register spills (a spill would cost more than these memory-bound kernels gain).
pub(crate) fn assert_compiled_without_spills(r: semhitok_mllm::Result<(Vec<u8>, String)>) {
    let (cubin, log) = r.unwrap();
    assert_eq!(&cubin[..4], b"\x7fELF", "not a cubin");
    assert!(
        semhitok_nn::cuda::kernel::no_report_spills(&log),
        "a kernel spills registers:\n{log}"
    );
}

pub(crate) fn rng_lock() -> std::sync::MutexGuard<'static, ()> {
    static L: std::sync::Mutex<()> = std::sync::Mutex::new(());
    L.lock().unwrap_or_else(|e| e.into_inner())
}

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

#[path = "mllm/llm.rs"]
mod llm;

#[path = "mllm/train.rs"]
mod train;

#[path = "mllm/gguf.rs"]
mod gguf;

#[path = "mllm/fused.rs"]
mod fused;

#[path = "mllm/gemv.rs"]
mod gemv;

#[path = "mllm/qmatvec.rs"]
mod qmatvec;

#[path = "mllm/generate.rs"]
mod generate;

#[path = "mllm/static_decode.rs"]
mod static_decode;

#[path = "mllm/llava.rs"]
mod llava;

#[path = "mllm/t2i.rs"]
mod t2i;

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
        // Qwen2.5's config.json has 151,936 embedding rows: visual ids start there, after the
        // 271 rows no token uses, not at the tokenizer's size.
        let v = semhitok_mllm::vocab::VisualVocab::paper(151_936).unwrap();
        assert!(v.visual_start() > tok.vocab_size());
        assert!(tok.id_to_token(v.visual_start() - 1).is_none());
        assert!(
            TextTokenizer::from_file(std::path::Path::new("/nonexistent/tokenizer.json")).is_err()
        );
    }
}
