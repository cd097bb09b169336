//! Everything between raw text and a batch of token ids: tokenizers, corpus shards,
//! packing, the streaming loader and dynamic masking. No tensors live here, so the data
//! pipeline is the same whatever backend trains on it.

pub mod blocks;
pub mod columnar;
pub mod corpus;
pub mod dataset;
pub mod error;
pub mod input;
pub mod labeled;
pub mod loader;
pub mod masking;
pub mod preprocess;
pub mod rng;
pub mod shards;
pub mod tokenizer;

pub use dataset::{BreakMode, Meta, Split};
pub use error::{DataError, Result};
pub use loader::{Batch, Corpus, Loader, LoaderConfig, LoaderState, MaskRamp};
pub use masking::{MaskVocab, MaskingConfig};
pub use tokenizer::{Encoded, RobertaTokenizer, SpecialTokens};

/// For the workspace's tests, not for users: the real datasets in `../shared/data`.
#[doc(hidden)]
pub mod test_data {
    use std::io::Write;
    use std::path::{Path, PathBuf};

    /// `../shared/data/PATH` beside the workspace, or `None` where it is absent: the
    /// calling test skips what needs it, says so on stderr, and adds a line naming
    /// itself and the file to the file `ROBERTA_SKIP_LOG` names, when set (CI prints
    /// those lines after the tests, and fails on any while the data is there).
    pub fn shared(path: &str) -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data")
            .join(path);
        if p.exists() {
            return Some(p);
        }
        eprintln!("skipped: {} is absent", p.display());
        if let Some(log) = std::env::var_os("ROBERTA_SKIP_LOG") {
            let test = std::thread::current().name().unwrap_or("?").to_string();
            let line = format!("{test}: ../shared/data/{path} is absent\n");
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(log)
                .and_then(|mut f| f.write_all(line.as_bytes()))
                .ok();
        }
        None
    }
}
