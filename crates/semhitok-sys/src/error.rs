//! The crate's one error type.

use std::time::Duration;

/// Errors of semhitok-sys. Each names the variable, collective, rank or step at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CUDA graph could not be created, captured or replayed (`op` names the step).
    #[error("CUDA graph {op}: {msg}")]
    Graph { op: &'static str, msg: String },
    /// A pinned host copy failed (no CUDA, out of pinned memory).
    #[error("pin_memory: {0}")]
    Pin(String),
    /// A custom autograd function failed (its name and message).
    #[error("custom autograd function: {0}")]
    Custom(String),
    /// A gradient could not be assigned (dtype, device or shape unlike the variable's).
    #[error("{0}")]
    Grad(String),
    /// `at::parallel_for` threw (LibTorch's thread pool could not run the loop).
    #[error("parallel_for: {0}")]
    Parallel(String),
    /// A launcher variable (torchrun / SLURM) is missing or malformed.
    #[error("environment variable {var}: {msg}")]
    Env { var: &'static str, msg: String },
    /// The rendezvous or the process group's construction failed.
    #[error(
        "c10d init ({backend} backend, rank {rank} of {world_size}, store {addr}:{port}): {msg}"
    )]
    Init {
        backend: &'static str,
        rank: usize,
        world_size: usize,
        addr: String,
        port: u16,
        msg: String,
    },
    /// A collective failed or did not finish within its timeout (a dead or stuck peer).
    #[error(
        "c10d {op} of {what} failed on rank {rank} of {world_size} at step {step} \
         (timeout {timeout:?}): {msg}"
    )]
    Collective {
        op: &'static str,
        what: String,
        rank: usize,
        world_size: usize,
        step: u64,
        timeout: Duration,
        msg: String,
    },
    /// A tensor does not fit the collective (device, layout, shape).
    #[error("c10d {op} of {what}: {msg}")]
    Tensor {
        op: &'static str,
        what: String,
        msg: String,
    },
    /// The backend was not compiled into this build.
    #[error("{0}")]
    Unsupported(String),
    /// An error raised by tch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
