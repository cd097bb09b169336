//! One module per command (or family of commands); each is a function the binary calls
//! with the device(s) and its parsed arguments.

pub mod apply;
pub mod average;
pub mod data;
pub mod embed;
pub mod evaluate;
pub mod export;
pub mod finetune;
pub mod infer;
pub mod pretrain;
pub mod probe;
