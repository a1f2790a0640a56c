//! The SemHiTok model in tch (LibTorch 2.11).

pub mod device;
pub mod error;
pub mod weights;

pub use error::{Error, Result};
