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
    #[error("{path}: corrupt shard: {message}")]
    CorruptShard { path: PathBuf, message: String },
    #[error(
        "{path}: not a preprocessed data directory (no meta.json; run `roberta-train preprocess`)"
    )]
    NotADataDir { path: PathBuf },
    #[error("{path}: {message}")]
    BadMeta { path: PathBuf, message: String },
    #[error(
        "{path}: the shards were made with another tokenizer (sha256 {shards}, this tokenizer {tokenizer}); preprocess again with this tokenizer"
    )]
    TokenizerMismatch {
        path: PathBuf,
        shards: String,
        tokenizer: String,
    },
    #[error("{path}: no `{split}` split (it has: {available})")]
    MissingSplit {
        path: PathBuf,
        split: String,
        available: String,
    },
    #[error("{path}: {message}")]
    Corpus { path: PathBuf, message: String },
    #[error("{path}: invalid UTF-8 at byte {offset} (pass --skip-invalid to skip such lines)")]
    InvalidUtf8 { path: PathBuf, offset: u64 },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, DataError>;
