//! The crate's one error type.

/// Errors of semhitok-mllm; each names the offending id, shape or file.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An error raised inside LibTorch.
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    /// An id of the codebook math (unified id u = k * m + j; `semhitok-quant` owns the rule).
    #[error(transparent)]
    Quant(#[from] semhitok_quant::Error),
    /// A CUDA graph (capture / replay) failed in semhitok-sys.
    #[error(transparent)]
    Sys(#[from] semhitok_sys::Error),
    /// An NVRTC kernel (the decode GEMV, the fused steps) could not be compiled or launched.
    #[error(transparent)]
    Cuda(#[from] semhitok_nn::cuda::driver::CudaError),
    /// An error of a semhitok-nn layer (the LLaVA projector).
    #[error(transparent)]
    Nn(#[from] semhitok_nn::Error),
    /// An id outside its range.
    #[error("{what}: {value} is outside {lo}..{hi}")]
    OutOfRange {
        what: &'static str,
        value: i64,
        lo: i64,
        hi: i64,
    },
    /// A tensor with the wrong shape.
    #[error("{what}: expected shape {expected}, got {got:?}")]
    Shape {
        what: &'static str,
        expected: String,
        got: Vec<i64>,
    },
    /// An invalid setting.
    #[error("invalid config: {0}")]
    Config(String),
    /// Model weights that do not fit the model (missing, mis-shaped or unused tensors).
    #[error("weights {origin}: {msg}")]
    Weights { origin: String, msg: String },
    /// A GGUF file that is truncated, malformed or uses an unsupported type.
    #[error("gguf {path}: {msg}")]
    Gguf { path: String, msg: String },
    /// A chat template that does not parse or render.
    #[error("chat template ({origin}): {msg}")]
    Template { origin: String, msg: String },
    /// A tokenizer file that could not be loaded or used.
    #[error("tokenizer {path}: {msg}")]
    Tokenizer { path: String, msg: String },
    /// A conversation that cannot become a LLaVA prompt (record id or template named).
    #[error("llava prompt ({what}): {msg}")]
    Prompt { what: String, msg: String },
    /// An evaluation file or answer that cannot be read (file and line named).
    #[error("llava eval {path}: {msg}")]
    Eval { path: String, msg: String },
}

/// Result alias of the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;
