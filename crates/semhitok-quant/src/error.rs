//! The crate's error type. Every variant names the offending value, key or shape.

use std::path::PathBuf;

/// Errors from `semhitok-quant`. Bad input is always an error, never a panic.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An array had the wrong number of dimensions or a wrong size.
    #[error("{what}: expected shape {expected}, got {got:?}")]
    Shape {
        what: String,
        expected: String,
        got: Vec<usize>,
    },
    /// A NaN or infinity in an input (or an overflow to infinity in a computed score).
    #[error("{what}: non-finite value {value} at {location}")]
    NonFinite {
        what: String,
        value: f32,
        location: String,
    },
    /// An id outside `0..bound`.
    #[error("{what}: id {id} out of range (must be < {bound})")]
    IdOutOfRange { what: String, id: u64, bound: u64 },
    /// Two accumulators or arrays that must agree in size do not.
    #[error("{what}: size mismatch, {left} vs {right}")]
    SizeMismatch {
        what: String,
        left: String,
        right: String,
    },
    /// A configuration value or argument outside its valid range.
    #[error("invalid {what} = {value}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: String,
    },
    /// Reading or writing a file failed.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A safetensors file could not be parsed or written.
    #[error("{}: safetensors: {source}", path.display())]
    SafeTensors {
        path: PathBuf,
        source: safetensors::SafeTensorError,
    },
    /// A named tensor is absent from a safetensors file.
    #[error("{}: tensor {name:?} not found (file has {available:?})", path.display())]
    MissingTensor {
        path: PathBuf,
        name: String,
        available: Vec<String>,
    },
    /// A tensor has a dtype other than F32.
    #[error("{}: tensor {name:?} has dtype {dtype}, expected F32", path.display())]
    Dtype {
        path: PathBuf,
        name: String,
        dtype: String,
    },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// Shorthand for [`Error::Invalid`].
pub(crate) fn invalid(
    what: &'static str,
    value: impl ToString,
    reason: impl Into<String>,
) -> Error {
    Error::Invalid {
        what,
        value: value.to_string(),
        reason: reason.into(),
    }
}
