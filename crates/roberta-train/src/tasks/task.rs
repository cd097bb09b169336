//! What the trainer needs of a task: its batches, each micro-batch's summed loss with
//! its target count, and its evaluation. Pretraining's masked LM is one task; every
//! fine-tuning type is another through [`super::Finetuning`].

use std::sync::atomic::AtomicBool;

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::prelude::*;
use roberta_data::LoaderState;
use roberta_model::{Kernels, Pretrained, TrainingBackend};

use crate::tasks::metrics::Metrics;
use crate::trainer::TrainPhase;

/// The micro-batches of one update, for one replica.
pub struct Window<T> {
    pub batches: Vec<T>,
    /// The epoch the window started in.
    pub epoch: u64,
    /// Where the data stands after the window (the same on every replica).
    pub next: LoaderState,
}

impl<T> Window<T> {
    /// No batches, the data where it was: what a replica holds when its read failed.
    pub fn empty(at: LoaderState) -> Self {
        Self {
            batches: Vec::new(),
            epoch: at.epoch,
            next: at,
        }
    }
}

/// A replica's stream of training batches.
pub trait Batches<T>: Send {
    /// The next update's micro-batches: `accumulation` of them, or fewer where the
    /// source ends its windows at an epoch's end.
    fn next_window(&mut self, accumulation: usize) -> Result<Window<T>>;
}

/// Where replica `rank` of `world` starts reading, and how much per micro-batch.
#[derive(Debug, Clone)]
pub struct BatchPlan {
    pub rank: usize,
    pub world: usize,
    /// Rows per micro-batch on each replica.
    pub batch_size: usize,
    pub seed: u64,
    pub start: LoaderState,
    /// The phase of the run (see [`crate::trainer::TrainPhase`]) the batches are for,
    /// where its data began, and how many sequences it serves over all replicas.
    pub phase: usize,
    pub phase_start: LoaderState,
    pub phase_sequences: u64,
    /// Raised by a signal: a loader building a batch stops midway.
    pub stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
}

/// One micro-batch's summed loss, and the sums of what the task logs beside it
/// ([`Task::logged`], in that order); all `[1]` on the device, read once per update by
/// the trainer.
pub struct StepLoss<B: Kernels> {
    pub sum: Tensor<B, 1>,
    pub logged: Vec<Tensor<B, 1>>,
}

/// What the trainer needs of a task.
pub trait Task<B: TrainingBackend>: Sync {
    type Model: AutodiffModule<B, InnerModule: Pretrained<B::InnerBackend>> + Pretrained<B>;
    type Batch: Send;

    fn batches(&self, plan: BatchPlan) -> Box<dyn Batches<Self::Batch> + '_>;
    /// Says what a phase of a run with several trains on, when it starts (after update
    /// `step`).
    fn log_phase(&self, _phase: usize, _settings: TrainPhase, _world: usize, _step: u64) {}
    /// Prepares the model for `phase` as it starts, and the average of its weights
    /// alike when one is kept (pretraining's `schedule.extend_positions`). A function
    /// of the phase alone, so that a resumed run does the same at the same update.
    fn enter_phase(
        &self,
        _phase: usize,
        model: Self::Model,
        _average: Option<&mut <Self::Model as AutodiffModule<B>>::InnerModule>,
    ) -> Self::Model {
        model
    }
    /// The terms a batch's summed loss has (masked tokens, examples, labeled tokens):
    /// the window's loss is divided by their total over every replica.
    fn targets(&self, batch: &Self::Batch) -> usize;
    /// What the task logs from its training batches beside the loss, by the names of
    /// `metrics.jsonl`: each a sum over a batch's targets ([`StepLoss::logged`]) that the
    /// log divides by their count.
    fn logged(&self) -> &'static [&'static str] {
        &[]
    }
    /// Non-padding tokens, for throughput.
    fn tokens(&self, batch: &Self::Batch) -> usize;
    /// Refuses a batch the model cannot take, before any replica runs it (a model fed
    /// token ids outside its vocabulary would fail deep inside the backend).
    fn check(&self, _batch: &Self::Batch) -> std::result::Result<(), String> {
        Ok(())
    }
    /// The summed loss of a micro-batch; `None` for a batch with nothing to learn.
    fn loss(
        &self,
        model: &Self::Model,
        batch: &Self::Batch,
        device: &B::Device,
    ) -> Option<StepLoss<B>>;
    /// Whether there is validation data at all.
    fn has_valid(&self) -> bool;
    /// Scores on the validation data, named without the `valid_` prefix; `None` when
    /// `stop` (a signal) was raised before it finished: it looks between batches.
    fn evaluate(
        &self,
        model: &<Self::Model as AutodiffModule<B>>::InnerModule,
        device: &B::Device,
        stop: &AtomicBool,
    ) -> Result<Option<Metrics>>;
}
