//! The crate's one error type.

use std::path::PathBuf;

/// Errors of semhitok-train. Every variant names the offending file, key or step.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error raised inside LibTorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// An error of the model crate.
    #[error(transparent)]
    Nn(#[from] semhitok_nn::Error),
    /// An error of the data crate.
    #[error(transparent)]
    Data(#[from] semhitok_data::Error),
    /// An error of the LLM crate (`semhitok chat`).
    #[error(transparent)]
    Mllm(#[from] semhitok_mllm::Error),
    /// A collective or the process group of data-parallel training (semhitok-sys).
    #[error(transparent)]
    Dist(#[from] semhitok_sys::Error),
    /// An error of the codebook-math crate.
    #[error(transparent)]
    Quant(#[from] semhitok_quant::Error),
    /// A config file (or a `--set` override) is invalid: `key` is the dotted path.
    #[error("{}: key `{key}`: {msg}", file.display())]
    Config {
        file: PathBuf,
        key: String,
        msg: String,
    },
    /// A file could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A checkpoint is unreadable, truncated, or of the wrong kind.
    #[error("checkpoint {}: {msg}", path.display())]
    Checkpoint { path: PathBuf, msg: String },
    /// A loss became NaN/Inf; the run stopped and the last good checkpoint is untouched.
    #[error("non-finite loss at step {step}: {detail}")]
    NonFinite { step: u64, detail: String },
    /// A finite blow-up (a loss/gradient spike that persisted, or one step that grew the weights
    /// past `guard.max_weight_growth`); the run stopped before checkpointing it.
    #[error("training diverged at step {step}: {detail}")]
    Diverged { step: u64, detail: String },
    /// A user input (ids, images, arguments) is invalid.
    #[error("{0}")]
    Input(String),
    /// A plot or image could not be written.
    #[error("{}: {msg}", path.display())]
    Render { path: PathBuf, msg: String },
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// IO error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    /// Checkpoint error helper.
    pub fn ckpt(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Checkpoint {
            path: path.into(),
            msg: msg.into(),
        }
    }
}
