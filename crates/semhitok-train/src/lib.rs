//! SemHiTok two-stage trainer: configs, the training loop and its machinery (AdamW, schedule,
//! EMA, checkpoints, exact resume), the stages `spc`, `pre`, `decoder-ft`, `joint`,
//! evaluation, encode/decode, model-folder export and dataset tokenization; `semhitok train`
//! dispatches on `run.stage` ([`dispatch`]) to the tokenizer stages, [`llava`] or [`t2i`], all
//! over the one [`trainer`] loop.
//!
//! The `semhitok` binary (`src/bin/semhitok.rs`) is a thin CLI over this library;
//! `cargo xtask train|eval|encode|decode|demo` launch it.

pub mod amp;
pub mod atomic;
pub mod bench;
pub mod bench_tokenize;
pub mod chat;
pub mod checkpoint;
pub mod codec;
pub mod config;
pub mod demo;
pub mod dispatch;
pub mod dist;
pub mod encode_precision;
pub mod error;
pub mod eval;
pub mod export;
pub mod fid_ref;
pub mod gan;
pub mod heldout;
pub mod llava;
pub mod metrics;
pub mod npz;
pub mod optim;
pub mod report;
pub mod rundir;
pub mod stages;
pub mod synthetic;
pub mod t2i;
pub mod tokenize;
pub mod trainer;

pub use error::{Error, Result};
