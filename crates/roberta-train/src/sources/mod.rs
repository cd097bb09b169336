//! Where models come from: HF model directories, runs and checkpoints (`models`), and
//! hub names resolved in the local HF cache (`hub`).

pub mod hub;
pub mod models;
