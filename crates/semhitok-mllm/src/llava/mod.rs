//! LLaVA-1.5-style understanding on SemHiTok features: prompts, labels, image splicing and
//! answer scoring (the model and its training live in semhitok-train's `llava`).
//!
//! - [`template`]: `plain` (stage 1), `vicuna_v1` (stage 2 and evaluation) and the LLM's own
//!   chat template ([`Template`]).
//! - [`prompt`]: [`PromptBuilder`]: LLaVA records -> [`Example`] (ids with one
//!   [`IMAGE_TOKEN_INDEX`], labels with [`IGNORE_INDEX`]) exactly as LLaVA's `preprocess_plain` /
//!   `preprocess_v1`, and generation prompts for answering.
//! - [`splice`]: image positions expanded to the feature count, truncation, right-padded
//!   batches, and [`splice::splice_embeddings`] (features written over the image positions).
//! - [`answer`]: greedy batched answers from spliced embeddings with the KV cache.
//! - [`eval`]: the benchmark scorer (VQA-normalised exact match, POPE, multiple choice).
//!
//! Reference: haotian-liu/LLaVA at c121f04 (`llava/conversation.py`, `llava/train/train.py`,
//! `llava/mm_utils.py`, `llava/model/llava_arch.py`, `llava/eval/`).

pub mod answer;
pub mod eval;
pub mod prompt;
pub mod splice;
pub mod template;

pub use prompt::{Example, PromptBuilder};
pub use splice::{PromptStats, Sequence};
pub use template::Template;

/// LLaVA's `IMAGE_TOKEN_INDEX`: the id standing for the image in input ids.
pub const IMAGE_TOKEN_INDEX: i64 = -200;
/// LLaVA's `IGNORE_INDEX` (PyTorch cross-entropy's `ignore_index`).
pub const IGNORE_INDEX: i64 = -100;
