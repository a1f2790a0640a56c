//! GGUF (llama.cpp's model container): reader, dequantizers, the mapping onto the HF-layout
//! [`crate::llm::LlamaModel`], and the tokenizer stored in the metadata.
//!
//! - [`reader`]: GGUF v2/v3 header, metadata, tensor infos, `general.alignment`, bounds checks.
//! - [`dequant`]: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q5_K, Q6_K to f32 (fast path + scalar
//!   reference).
//! - [`qmatvec`]: batch-1 matrix-vector products straight from Q4_1 / Q8_0 blocks (CPU decode).
//! - [`load`]: config from `{arch}.*` keys, GGUF -> HF tensor names, Q/K un-permutation, tied head.
//! - [`tokenizer`]: byte-level BPE from `tokenizer.ggml.*` with the `pre`-dependent split.

pub mod dequant;
pub mod load;
pub mod qmatvec;
pub mod reader;
pub mod tokenizer;

pub use dequant::GgmlType;
pub use reader::{GgufFile, TensorInfo, Value};
