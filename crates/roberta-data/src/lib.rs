//! Everything between raw text and a batch of token ids: tokenizers, corpus shards,
//! packing, the streaming loader and dynamic masking. No tensors live here, so the data
//! pipeline is the same whatever backend trains on it.

pub mod error;
pub mod tokenizer;

pub use error::{DataError, Result};
pub use tokenizer::{Encoded, RobertaTokenizer, SpecialTokens};
