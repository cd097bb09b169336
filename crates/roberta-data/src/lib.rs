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

/// Real datasets in `../shared/data` for tests; absent ones are skipped with a reason.
#[cfg(test)]
pub(crate) mod test_data {
    use std::path::{Path, PathBuf};

    pub fn shared(path: &str) -> Option<PathBuf> {
        let p = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../../shared/data")
            .join(path);
        if p.exists() {
            Some(p)
        } else {
            eprintln!("skipped: {} is absent", p.display());
            None
        }
    }
}
