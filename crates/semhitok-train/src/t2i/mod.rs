//! Autoregressive text-to-image on SemHiTok ids (issue 18): training, generation and the
//! Fashion-MNIST evaluation.
//!
//! - [`config`]: the T2I config (`[run]`, `[llm]`, `[t2i]`, `[data]`, ...), presets.
//! - [`data`]: sequences from `semhitok tokenize` shards with caption dropout, right padded.
//! - [`task`]: the extended LLM as a trainer `Task`; [`run`] = `semhitok train` for
//!   `run.stage = "t2i"`.
//! - [`model_io`]: a trained model from a run or an exported folder; `semhitok export`.
//! - [`generate_cmd`]: `semhitok generate` (PNGs, grid, JSONL).
//! - [`eval`]: `semhitok t2i-eval` (N per class for each CFG scale, u8 files + grids).
//! - [`classifier`]: the Fashion-MNIST CNN that judges generated images (`semhitok
//!   fmnist-classifier`).
//! - [`judge`]: class accuracy and FID of generated images against the test split (`semhitok
//!   t2i-score`).
//! - [`real`]: real images as an images file (`semhitok t2i-real`), for the real-vs-real FID.

pub mod classifier;
pub mod config;
pub mod data;
pub mod eval;
pub mod generate_cmd;
pub mod judge;
pub mod model_io;
pub mod real;
pub mod task;

pub use task::run;
