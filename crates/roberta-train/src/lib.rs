//! roberta-train as a library: the command line, the configs, the one training loop and
//! the tasks it trains, checkpoints, and the commands built on them. `main.rs` parses
//! arguments and calls one function per command.

pub mod backend;
pub mod checkpoint;
pub mod cli;
pub mod commands;
pub mod config;
pub mod ema;
pub mod hub;
pub mod metrics;
pub mod models;
pub mod optim;
pub mod outputs;
pub mod parallel;
pub mod plot;
pub mod probe;
pub mod processes;
pub mod progress;
pub mod run_dir;
pub mod sentences;
pub mod sinks;
pub mod tasks;
pub mod tensorboard;
pub mod trainer;
