//! roberta-train as a library: the command line, the configs, the one training loop and
//! the tasks it trains, checkpoints, and the commands built on them. `main.rs` parses
//! arguments and calls one function per command.

pub mod backend;
pub mod cli;
pub mod commands;
pub mod config;
pub mod parallel;
pub mod run;
pub mod sentences;
pub mod sources;
pub mod tasks;
pub mod trainer;
