//! LLaVA-style understanding and autoregressive text-to-image glue around SemHiTok ids.
//!
//! - [`vocab::VisualVocab`]: the LLM vocabulary extended by the 196,608 unified visual ids
//!   (`u = k * m + j`) plus `<boi>`/`<eoi>`, starting at the model's embedding row count, with
//!   checked conversions both ways.
//! - [`cfg`]: classifier-free guidance: text dropped with p = 0.1 at training time (seeded), and
//!   guided logits `uncond + s * (cond - uncond)` at sampling time.
//! - [`t2i`]: text-to-image: the sequence layout and loss mask, the guided sampler (2B rows,
//!   KV cache, temperature / top-k / top-p over the visual range on the device, inverse CDF
//!   with host uniforms so CPU and CUDA pick the same tokens).
//! - [`projector::MlpProjector`]: LLaVA-1.5's `mlp2x_gelu` projector from quantized SemHiTok
//!   features to the LLM width, with LLaVA's weight names (`model.mm_projector.{0,2}`).
//! - [`tokenizer::TextTokenizer`]: the LLM's text tokenizer (HF tokenizer.json, e.g. the embedded
//!   Qwen2.5 one, or one built from GGUF metadata) whose size fixes where visual tokens start.
//! - [`llm`]: the Llama-family decoder (Llama 2/3, Vicuna, SmolLM2, Qwen2/2.5) with an explicit
//!   KV cache, HF safetensors loading and `extend_vocab`; trainable (full or LoRA) through
//!   `forward_train`, with HF export.
//! - [`loss::causal_lm_loss`]: next-token cross-entropy (shift, ignore -100, f32).
//! - [`gguf`]: GGUF reader, dequantizers, mapping onto [`llm::LlamaModel`], GGUF tokenizer.
//! - [`chat`]: chat templates (Jinja via minijinja).
//! - [`spm`]: SentencePiece `tokenizer.model` (Llama-2 / Vicuna) as a `tokenizers` tokenizer.
//! - [`llava`]: LLaVA-1.5 prompts and labels (`plain`, `vicuna_v1`, the model's chat template),
//!   image splicing, and the answer scorer (VQA exact match, POPE, multiple choice).
//! - [`generate`]: on-device sampling, eos / stop strings, streaming, batched left-padded decoding.

pub mod cfg;
pub mod chat;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod llava;
pub mod llm;
pub mod loss;
pub mod projector;
pub mod spm;
pub mod t2i;
pub mod tokenizer;
pub mod vocab;

pub use error::{Error, Result};
