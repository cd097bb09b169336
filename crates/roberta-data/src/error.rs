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
    #[error("writing the block index {path}: {source}")]
    WriteIndex {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "{path} was changed after preprocess wrote it ({what} differs from meta.json's record): preprocess the corpus again (`--force`)"
    )]
    ChangedShard { path: PathBuf, what: String },
    #[error("{path}: damaged block index: {message}")]
    CorruptBlockIndex { path: PathBuf, message: String },
    #[error("{path}: corrupt shard: {message}")]
    CorruptShard { path: PathBuf, message: String },
    #[error(
        "{path}: not a preprocessed data directory (no meta.json; run `roberta-train preprocess`)"
    )]
    NotADataDir { path: PathBuf },
    #[error("{path}: {message}")]
    BadMeta { path: PathBuf, message: String },
    #[error(
        "{path} was made by an earlier roberta-train (data format {format}: no content hashes, validation split drawn from the old random streams): preprocess its inputs again (`roberta-train preprocess`, or the pretraining run that made it, rebuilds it)"
    )]
    OutdatedData { path: PathBuf, format: u32 },
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
    #[error(
        "{path}: the shards' vocabulary has {shards} tokens, more than the {vocab} this tokenizer and model have: their ids would index past the embeddings; preprocess again with this tokenizer"
    )]
    VocabTooLarge {
        path: PathBuf,
        shards: usize,
        vocab: usize,
    },
    #[error(
        "{path}: a {file} alone is not a tokenizer: pass the directory that holds vocab.json and merges.txt (or a tokenizer.json)"
    )]
    PartialTokenizer { path: PathBuf, file: String },
    #[error("{path} is empty")]
    EmptyFile { path: PathBuf },
    #[error(
        "{files}: no text to train a tokenizer on (empty or blank); give --input files that hold text"
    )]
    NoText { files: String },
    /// The output path holds something `preprocess` did not write; `why` says what.
    #[error("{path} {why}: choose another --out (data.data_dir when pretraining)")]
    ForeignOutput { path: PathBuf, why: String },
    #[error(
        "{path} was preprocessed with another tokenizer (sha256 {shards}…, this one {tokenizer}…): choose another --out (data.data_dir when pretraining), or rebuild it with `roberta-train preprocess --force`"
    )]
    TokenizerChanged {
        path: PathBuf,
        shards: String,
        tokenizer: String,
    },
    /// A new output (a tokenizer directory) whose path is taken.
    #[error(
        "{path} already exists; this command writes a new directory and replaces nothing: choose another --out or move that one away"
    )]
    OutputExists { path: PathBuf },
    /// Paths are recorded in `meta.json` and handed to the tokenizers crate as strings.
    #[error(
        "{path}: the name is not valid UTF-8, which meta.json and the tokenizer trainer cannot hold: rename it"
    )]
    NonUtf8Path { path: PathBuf },
    #[error(
        "{path} lies inside the input directory {input}: a later run would read its shards back as corpus text; choose another --out (data.data_dir when pretraining), outside every input"
    )]
    OutputInInput { path: PathBuf, input: PathBuf },
    #[error(
        "the input {input} lies inside the output {path}: preprocess would read its own output as corpus text; choose another --out (data.data_dir when pretraining), outside every input"
    )]
    InputInOutput { path: PathBuf, input: PathBuf },
    #[error(
        "{path} is being written by another roberta-train (PID {pid}): wait for it to finish, or choose another --out (data.data_dir when pretraining)"
    )]
    InUse { path: PathBuf, pid: String },
    #[error("interrupted: nothing written to {path}")]
    Interrupted { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T> = std::result::Result<T, DataError>;

impl From<roberta_fs::IoError> for DataError {
    fn from(e: roberta_fs::IoError) -> Self {
        Self::Io {
            path: e.path,
            source: e.source,
        }
    }
}
