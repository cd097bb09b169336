use std::path::PathBuf;

/// Everything that can go wrong reading or writing a model directory.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("{path}: invalid RoBERTa config: {message}")]
    InvalidConfig { path: PathBuf, message: String },
    #[error("{path}: not a readable safetensors file: {message}")]
    Safetensors { path: PathBuf, message: String },
    #[error(
        "{path}: tensor `{key}` has dtype {dtype}; expected a float type (or I64/I32 for buffers)"
    )]
    UnsupportedDtype {
        path: PathBuf,
        key: String,
        dtype: String,
    },
    #[error("{path}: no model.safetensors or pytorch_model.bin in this directory")]
    NoWeights { path: PathBuf },
    #[error("{path}: not a readable PyTorch checkpoint: {message}")]
    Pytorch { path: PathBuf, message: String },
    /// `summary` is one line; `details` lists every key, one kind per line.
    #[error("{path}: weights do not match config.json: {summary}")]
    WeightMismatch {
        path: PathBuf,
        summary: String,
        details: String,
    },
}

pub type Result<T> = std::result::Result<T, ModelError>;

impl From<roberta_fs::IoError> for ModelError {
    fn from(e: roberta_fs::IoError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}
