//! LLaVA-1.5 on SemHiTok features (issue 17): the config ([`config`]), the model
//! ([`model`]: frozen tokenizer -> `mm_projector` -> LLM), the trainer task ([`task`]), token
//! batches of LLaVA records ([`data`]), training / loading / export ([`run`]), evaluation
//! ([`evaluate`]), `semhitok ask` and `semhitok llava-eval` ([`ask`]), and the Fashion-MNIST
//! LLaVA-format set ([`fmnist`]).

pub mod ask;
pub mod config;
pub mod data;
pub mod evaluate;
pub mod fmnist;
pub mod model;
pub mod run;
pub mod task;

pub use run::run;
