//! Autoregressive text-to-image on SemHiTok ids (issue 18).
//!
//! - [`sequence`]: `[bos] caption <boi> visual <eoi>`, its loss mask (visual tokens and
//!   `<eoi>` only), the unconditional (empty) caption, right-padded batches.
//! - [`sampler`]: temperature / top-k / top-p over the visual range and the inverse-CDF pick
//!   with host uniforms, on the device, the same token on CPU and CUDA.
//! - [`generate`]: the guided sampler: conditional and unconditional rows as one batch of 2B,
//!   the KV cache of [`crate::llm::LlamaModel`], per-sample seeds, many prompts per batch.
//!
//! Caption dropout for training is [`crate::cfg::TextDropout`], guidance [`crate::cfg::Guidance`].

pub mod generate;
pub mod sampler;
pub mod sequence;

pub use generate::{
    generate_images, generate_visual, CachedVisualLm, ImageRequest, T2iSampling, VisualLogits,
};
pub use sampler::VisualSampling;
pub use sequence::{right_pad, T2iExample, T2iLayout, IGNORE};
