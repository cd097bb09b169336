//! A run on disk and on screen: its directory and lock (`run_dir`), checkpoints and the
//! HF directories written from them (`checkpoint`), where metrics go (`sinks`:
//! `metrics.jsonl`, the console with `progress`, TensorBoard's event files in
//! `tensorboard`), the curves (`plot`), and which paths a command may write
//! (`outputs`).

pub mod checkpoint;
pub mod outputs;
pub mod plot;
pub mod progress;
pub mod run_dir;
pub mod sinks;
pub mod tensorboard;
