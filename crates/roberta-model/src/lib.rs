//! The RoBERTa Transformer (Liu et al., 2019) as burn modules, numerically equal to
//! HuggingFace's `modeling_roberta.py`, with its checkpoint keys and directory layout.
//!
//! The module tree is HF's key tree: `RobertaForMaskedLM { roberta: RobertaModel {
//! embeddings, encoder: { layer: [..] } }, lm_head }`. This crate knows nothing of
//! training, corpora or the command line; its only files are HF model directories.

pub mod activation;
pub mod attention;
pub mod config;
pub mod embeddings;
pub mod encoder;
pub mod error;
pub mod heads;
pub mod hf;
mod init;
pub use init::without_drawing;
pub mod kernels;
pub mod loss;
pub mod model;
pub mod pooling;
pub mod precision;

pub use config::RobertaConfig;
pub use error::{ModelError, Result};
pub use heads::*;
pub use hf::{LoadOptions, LoadReport, Loaded, Pretrained, load_pretrained, save_pretrained};
pub use kernels::{Kernels, TrainingBackend};
pub use model::{RobertaInput, RobertaModel, RobertaModelOutput};
pub use precision::Precision;

/// burn's CPU generator is one per process: tests that seed it, or draw from it (a
/// model's initialisation does), hold this while they run, or another test's draws
/// would land between a seed and its use.
#[cfg(test)]
pub(crate) fn generator_lock() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}
