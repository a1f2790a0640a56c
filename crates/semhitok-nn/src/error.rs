//! The crate's one error type.

use std::path::PathBuf;

/// Errors of semhitok-nn. Every variant names the offending file, key, value or shape.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error raised inside LibTorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// A collective of data-parallel training failed (semhitok-sys's c10d process group).
    #[error(transparent)]
    Dist(#[from] semhitok_sys::Error),
    /// An error of the CPU codebook math (k-means init, ...).
    #[error(transparent)]
    Quant(#[from] semhitok_quant::Error),
    /// A tensor had the wrong shape. `expected` is human-readable, e.g. "[B, 3, 256, 256]".
    #[error("{what}: expected shape {expected}, got {got:?}")]
    Shape {
        what: String,
        expected: String,
        got: Vec<i64>,
    },
    /// NaN or Inf reached a place that must not see them (e.g. the quantizer).
    #[error("{what}: {count} non-finite values (NaN/Inf)")]
    NonFinite { what: String, count: i64 },
    /// A checkpoint did not match the model: every problem key is listed.
    #[error("checkpoint {path}: {} missing, {} unexpected, {} mis-shaped tensors\n  missing: {missing:?}\n  unexpected: {unexpected:?}\n  mis-shaped: {mismatched:?}", missing.len(), unexpected.len(), mismatched.len())]
    Checkpoint {
        path: PathBuf,
        missing: Vec<String>,
        unexpected: Vec<String>,
        /// "key: checkpoint [..] vs model [..]"
        mismatched: Vec<String>,
    },
    /// A configuration value is invalid.
    #[error("invalid config: {0}")]
    Config(String),
    /// A run-time-compiled CUDA kernel could not be compiled or launched (`crate::cuda`).
    #[error("CUDA kernel: {0}")]
    Cuda(String),
    /// An id or index was out of range.
    #[error("{what}: {value} is out of range 0..{bound}")]
    OutOfRange {
        what: String,
        value: i64,
        bound: i64,
    },
    /// A token id was out of range; `position` is the index of the first offending one.
    #[error("{what}: id {value} at position {position:?} is out of range 0..{bound}")]
    IdOutOfRange {
        what: String,
        position: Vec<i64>,
        value: i64,
        bound: i64,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A JSON/safetensors/other file was malformed.
    #[error("{}: {msg}", path.display())]
    Format { path: PathBuf, msg: String },
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Shape error helper: `Error::shape("images", "[B, 3, H, W]", &t)`.
    pub fn shape(what: impl Into<String>, expected: impl Into<String>, got: &tch::Tensor) -> Self {
        Error::Shape {
            what: what.into(),
            expected: expected.into(),
            got: got.size(),
        }
    }
}
