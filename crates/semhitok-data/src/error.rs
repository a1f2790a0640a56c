//! The crate's error type and the per-sample skip reasons.
//!
//! [`Error`] is for failures that stop an operation (a missing directory, an unreadable IDX header,
//! a state from another configuration). Per-sample problems (a corrupt JPEG inside a dataset) are
//! never errors: they become a [`SkipReason`], are counted in a [`crate::SkipStats`], and the
//! sample is skipped.

use std::path::PathBuf;

/// Errors of `semhitok-data`. Messages name the file, key or value at fault.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("{path}: no usable samples ({detail})")]
    Empty { path: PathBuf, detail: String },
    #[error("invalid config: {0}")]
    Config(String),
    #[error("cannot restore loader state: {0}")]
    State(String),
    #[error("cannot decode image {key}: {reason}")]
    Decode { key: String, reason: SkipReason },
}

/// `Result` with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn format(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::Format {
            path: path.into(),
            msg: msg.into(),
        }
    }
}

/// Why a sample was skipped. [`SkipReason::as_str`] gives the stable snake_case name used in
/// scan reports and [`crate::SkipStats`].
#[derive(
    Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub enum SkipReason {
    /// A zero-byte file or member.
    Empty,
    /// The bytes are not a known image format (e.g. text with a `.jpg` extension).
    NotAnImage,
    /// A known format whose data is corrupt or cut short (truncated JPEG, bad PNG CRC).
    Corrupt(String),
    /// Declared width x height above the configured pixel limit (decompression-bomb guard).
    TooLarge { width: u64, height: u64 },
    /// The file could not be read (permissions, dangling link, I/O error).
    Unreadable(String),
    /// A tar member or header that cannot be read; the rest of that shard is skipped.
    BrokenTar(String),
    /// A webdataset sample without a caption (`.txt`) when captions are required.
    MissingCaption,
    /// A sample without an image member, or a record whose image file does not exist.
    MissingImage,
    /// A JSON record that does not follow the expected schema.
    InvalidRecord(String),
}

impl SkipReason {
    /// Stable snake_case category name (detail strings are dropped).
    pub fn as_str(&self) -> &'static str {
        match self {
            SkipReason::Empty => "empty_file",
            SkipReason::NotAnImage => "not_an_image",
            SkipReason::Corrupt(_) => "corrupt_image",
            SkipReason::TooLarge { .. } => "too_many_pixels",
            SkipReason::Unreadable(_) => "unreadable",
            SkipReason::BrokenTar(_) => "broken_tar",
            SkipReason::MissingCaption => "missing_caption",
            SkipReason::MissingImage => "missing_image",
            SkipReason::InvalidRecord(_) => "invalid_record",
        }
    }
}

impl std::fmt::Display for SkipReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SkipReason::Corrupt(d)
            | SkipReason::Unreadable(d)
            | SkipReason::BrokenTar(d)
            | SkipReason::InvalidRecord(d) => write!(f, "{}: {d}", self.as_str()),
            SkipReason::TooLarge { width, height } => {
                write!(f, "{}: {width}x{height}", self.as_str())
            }
            _ => f.write_str(self.as_str()),
        }
    }
}
