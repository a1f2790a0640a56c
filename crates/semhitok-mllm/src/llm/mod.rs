//! A Llama-family causal LM in tch: config from HF `config.json`, strict safetensors loading
//! (single file or sharded), an immutable model with an explicit [`KvCache`], and batched
//! decoding with left padding.
//!
//! - [`config`]: [`LlamaConfig`] (`LlamaForCausalLM`, `Qwen2ForCausalLM`, RoPE scaling).
//! - [`weights`]: [`Weights`], named tensors by path composition, strict.
//! - [`rope`]: rotary embeddings (HF `rotate_half` layout, Llama-3 scaling).
//! - [`kv_cache`]: [`KvCache`], per-layer preallocated keys/values, slot validity, positions.
//! - [`model`]: [`LlamaModel`] (RMSNorm, GQA attention through SDPA, SwiGLU, tied head,
//!   `extend_vocab`).
//! - [`static_decode`]: the static-shape decode step ([`LlamaModel::forward_static`]) and
//!   [`StaticDecoder`], eager or captured as a CUDA graph.
//! - [`load`]: one entry point for an HF folder or a GGUF file.
//! - [`fused`]: residual add + RMSNorm and SiLU x up as one kernel each (bf16, CUDA, NVRTC).
//! - [`gemv`]: the batch-1 decode products on CUDA (one bf16 row, NVRTC).
//! - [`quantized`]: the GGUF file's Q4_1 / Q8_0 blocks beside the f32 weights, for batch-1 CPU
//!   decoding.
//! - [`train`]: [`TrainSpec`] (frozen / full / LoRA), [`LmParam`], `train_params`,
//!   `hf_state_dict`, `load_trained`.
//! - [`export`]: `save_hf_dir` (HF folder, atomic, LoRA merged).

pub mod config;
pub mod export;
pub mod fused;
pub mod gemv;
pub mod kv_cache;
mod layers;
pub mod load;
mod model;
pub mod quantized;
pub mod rope;
pub mod static_decode;
pub mod train;
pub mod weights;

pub use config::{Arch, LlamaConfig, RopeScaling};
pub use kv_cache::KvCache;
pub use model::{Input, LlamaModel, LogitsAt};
pub use static_decode::{StaticDecoder, StepRun};
pub use train::{LmParam, TrainSpec};
pub use weights::Weights;
