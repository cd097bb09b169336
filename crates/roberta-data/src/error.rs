use std::path::PathBuf;

/// Everything the data pipeline reports; each names the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: no tokenizer.json, nor vocab.json + merges.txt")]
    NoTokenizer { path: PathBuf },
    #[error("{path}: tokenizer error: {message}")]
    Tokenizer { path: PathBuf, message: String },
    #[error(
        "{path}: the tokenizer has no `{token}` token; RoBERTa needs <s> <pad> </s> <unk> <mask>"
    )]
    MissingSpecialToken { path: PathBuf, token: String },
}

pub type Result<T> = std::result::Result<T, DataError>;
