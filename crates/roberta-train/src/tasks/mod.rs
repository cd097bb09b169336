//! What the trainer trains: a [`Task`] supplies the batches, the summed loss with its
//! target count, and the evaluation; the trainer's one loop does the rest. Pretraining's
//! masked LM ([`mlm`]) is one task; the fine-tuning tasks ([`sequence`], [`qa`],
//! [`tagging`]) are [`LabeledTask`]s, which read labeled files, score and predict, and
//! become trainer tasks through [`Finetuning`]. [`with_task`] is the one place that maps
//! `task.type` to an implementation.

pub mod metrics;
pub mod mlm;
pub mod qa;
pub mod sequence;
pub mod tagging;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::nn::DropoutConfig;
use burn::prelude::*;
use roberta_data::rng::Shuffle;
use roberta_data::{LoaderState, RobertaTokenizer};
use roberta_model::{
    Pretrained, RobertaConfig, RobertaForQuestionAnswering, RobertaForSequenceClassification,
    RobertaForTokenClassification, RobertaInput,
};

use crate::config::{TaskKind, TaskSection};
use crate::tasks::metrics::Metrics;
use crate::trainer::TrainPhase;
use roberta_model::{Kernels, TrainingBackend};

/// The config.json key under which a fine-tuned model keeps its [`TaskSection`].
pub const TASK_KEY: &str = "roberta_train_task";

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

/// One micro-batch's summed loss, and (masked LM) how many of its targets the model
/// predicted right; both `[1]` on the device, read once per update by the trainer.
pub struct StepLoss<B: Kernels> {
    pub sum: Tensor<B, 1>,
    pub correct: Option<Tensor<B, 1>>,
}

/// What the trainer needs of a task.
pub trait Task<B: TrainingBackend>: Sync {
    type Model: AutodiffModule<B, InnerModule: Pretrained<B::InnerBackend>> + Pretrained<B>;
    type Batch: Send;

    fn batches(&self, plan: BatchPlan) -> Box<dyn Batches<Self::Batch> + '_>;
    /// Says what a phase of a run with several trains on, when it starts (after update
    /// `step`).
    fn log_phase(&self, _phase: usize, _settings: TrainPhase, _world: usize, _step: u64) {}
    /// The terms a batch's summed loss has (masked tokens, examples, labeled tokens):
    /// the window's loss is divided by their total over every replica.
    fn targets(&self, batch: &Self::Batch) -> usize;
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

/// A model with a task head, as the fine-tuning tasks use it.
pub trait TaskModel<B: Kernels>: Pretrained<B> + Module<B> {
    /// Sets the head's dropout (HF's `classifier_dropout`), for heads that have one.
    fn with_head_dropout(self, p: f64) -> Self;
}

impl<B: Kernels> TaskModel<B> for RobertaForSequenceClassification<B> {
    fn with_head_dropout(mut self, p: f64) -> Self {
        self.classifier.dropout = DropoutConfig::new(p).init();
        self
    }
}

impl<B: Kernels> TaskModel<B> for RobertaForTokenClassification<B> {
    fn with_head_dropout(mut self, p: f64) -> Self {
        self.dropout = DropoutConfig::new(p).init();
        self
    }
}

impl<B: Kernels> TaskModel<B> for RobertaForQuestionAnswering<B> {
    fn with_head_dropout(self, _: f64) -> Self {
        self
    }
}

/// A labeled (or, for `predict`, unlabeled) file turned into features.
pub struct TaskData<T: LabeledTask> {
    pub features: Vec<T::Feature>,
    /// The examples behind the features, for metrics and prediction output.
    pub examples: Vec<T::Example>,
}

/// A fine-tuning task: how its files are read, its loss, its outputs, its metrics and
/// its predictions.
pub trait LabeledTask: Sized + Send + Sync {
    type Model<B: Kernels>: TaskModel<B>;
    type Feature: Clone + Send + Sync;
    type Example: Send + Sync;
    /// The host-side output of one feature.
    type Output: Send;

    /// The task of `section`, with its label names in index order.
    fn new(section: TaskSection, labels: Vec<String>) -> Self;
    fn section(&self) -> &TaskSection;
    /// The label names to train on: `task.labels`, or those of the train file.
    fn train_labels(path: &Path, section: &TaskSection) -> Result<Vec<String>>;
    /// The label names of a fine-tuned model whose head has `outputs` outputs.
    fn model_labels(section: &TaskSection, config: &RobertaConfig, outputs: usize) -> Vec<String>;
    /// The head's outputs for `labels`: `None` where the head has a fixed size.
    fn head_size(&self) -> Option<usize>;
    /// Writes the labels (and problem type) into a model's HF config.
    fn describe(&self, config: &mut RobertaConfig);

    fn read(
        &self,
        path: &Path,
        tokenizer: &RobertaTokenizer,
        max_length: usize,
        labeled: bool,
    ) -> Result<TaskData<Self>>;
    fn ids(feature: &Self::Feature) -> &[u32];
    /// A batch's token ids as a padded model input.
    fn input<B: Kernels>(batch: &[Self::Feature], pad: u32, device: &B::Device) -> RobertaInput<B> {
        let rows: Vec<&[u32]> = batch.iter().map(Self::ids).collect();
        RobertaInput::from_rows(&rows, pad, device)
    }
    /// Terms of a batch's summed loss.
    fn targets(batch: &[Self::Feature]) -> usize;
    fn loss<B: Kernels>(
        &self,
        model: &Self::Model<B>,
        batch: &[Self::Feature],
        pad: u32,
        device: &B::Device,
    ) -> Tensor<B, 1>;
    fn outputs<B: Kernels>(
        &self,
        model: &Self::Model<B>,
        batch: &[Self::Feature],
        pad: u32,
        device: &B::Device,
    ) -> Result<Vec<Self::Output>>;
    fn score(&self, data: &TaskData<Self>, outputs: &[Self::Output]) -> Result<Metrics>;
    /// One JSON object per input, in input order.
    fn predictions(
        &self,
        data: &TaskData<Self>,
        outputs: &[Self::Output],
    ) -> Result<Vec<serde_json::Value>>;
}

/// Calls back with the [`LabeledTask`] that implements a task type.
pub trait WithTask<B: TrainingBackend> {
    type Output;
    fn run<T: LabeledTask>(self) -> Self::Output
    where
        T::Model<B>: AutodiffModule<B, InnerModule = T::Model<B::InnerBackend>>;
}

/// The one place that maps `task.type` to its implementation.
pub fn with_task<B: TrainingBackend, W: WithTask<B>>(kind: TaskKind, w: W) -> W::Output {
    match kind {
        TaskKind::Classification | TaskKind::PairClassification | TaskKind::Regression => {
            w.run::<sequence::Sequence>()
        }
        TaskKind::Qa => w.run::<qa::Qa>(),
        TaskKind::TokenClassification => w.run::<tagging::Tagging>(),
    }
}

pub fn int_tensor<B: Kernels>(values: Vec<i64>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// Runs the model over all features, `batch_size` at a time; `None` when `stop` was
/// raised before the last batch.
pub fn infer<B: Kernels, T: LabeledTask>(
    task: &T,
    model: &T::Model<B>,
    features: &[T::Feature],
    pad: u32,
    batch_size: usize,
    device: &B::Device,
    stop: Option<&AtomicBool>,
) -> Result<Option<Vec<T::Output>>> {
    let mut outputs = Vec::with_capacity(features.len());
    let bar = indicatif::ProgressBar::new(features.len() as u64);
    for chunk in features.chunks(batch_size) {
        if stop.is_some_and(|s| s.load(Ordering::Relaxed)) {
            return Ok(None);
        }
        outputs.extend(task.outputs(model, chunk, pad, device)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Some(outputs))
}

pub fn argmax(row: &[f32]) -> usize {
    (0..row.len())
        .max_by(|&a, &b| row[a].total_cmp(&row[b]).then(b.cmp(&a)))
        .unwrap_or(0)
}

/// The task a model directory was fine-tuned for: its saved [`TaskSection`], or one
/// inferred from the architecture.
pub fn task_of(config: &RobertaConfig) -> Option<TaskSection> {
    if let Some(saved) = config.extra.get(TASK_KEY) {
        return serde_json::from_value(saved.clone()).ok();
    }
    let kind = match config.architectures.first().map(String::as_str) {
        Some("RobertaForSequenceClassification") => {
            if config.num_labels() == Some(1)
                || config.problem_type.as_deref() == Some("regression")
            {
                TaskKind::Regression
            } else {
                TaskKind::Classification
            }
        }
        Some("RobertaForQuestionAnswering") => TaskKind::Qa,
        Some("RobertaForTokenClassification") => TaskKind::TokenClassification,
        _ => return None,
    };
    Some(TaskSection::for_kind(kind))
}

/// A fine-tuning task as the trainer sees it: its training features, its validation
/// data, and how to evaluate.
pub struct Finetuning<T: LabeledTask> {
    pub task: T,
    pub train: Vec<T::Feature>,
    pub valid: Option<TaskData<T>>,
    pub pad: u32,
    pub eval_batch_size: usize,
}

impl<B: TrainingBackend, T: LabeledTask> Task<B> for Finetuning<T>
where
    T::Model<B>: AutodiffModule<B, InnerModule = T::Model<B::InnerBackend>>,
{
    type Model = T::Model<B>;
    type Batch = Vec<T::Feature>;

    fn batches(&self, plan: BatchPlan) -> Box<dyn Batches<Self::Batch> + '_> {
        Box::new(FeatureBatches::new(&self.train, plan))
    }

    fn targets(&self, batch: &Self::Batch) -> usize {
        T::targets(batch)
    }

    fn tokens(&self, batch: &Self::Batch) -> usize {
        batch.iter().map(|f| T::ids(f).len()).sum()
    }

    fn loss(
        &self,
        model: &Self::Model,
        batch: &Self::Batch,
        device: &B::Device,
    ) -> Option<StepLoss<B>> {
        (!batch.is_empty()).then(|| StepLoss {
            sum: self.task.loss(model, batch, self.pad, device),
            correct: None,
        })
    }

    fn has_valid(&self) -> bool {
        self.valid.is_some()
    }

    fn evaluate(
        &self,
        model: &T::Model<B::InnerBackend>,
        device: &B::Device,
        stop: &AtomicBool,
    ) -> Result<Option<Metrics>> {
        let Some(valid) = &self.valid else {
            return Ok(Some(Metrics::new()));
        };
        let Some(outputs) = infer(
            &self.task,
            model,
            &valid.features,
            self.pad,
            self.eval_batch_size,
            device,
            Some(stop),
        )?
        else {
            return Ok(None);
        };
        self.task.score(valid, &outputs).map(Some)
    }
}

/// Fine-tuning's batches: the features in a keyed order per epoch. Each
/// micro-batch takes `world × batch_size` rows of it, of which replica `rank` trains on
/// its slice; a window ends early at the end of an epoch, so an update never mixes two.
struct FeatureBatches<'a, F> {
    features: &'a [F],
    order: Shuffle,
    plan: BatchPlan,
    state: LoaderState,
}

impl<'a, F> FeatureBatches<'a, F> {
    fn new(features: &'a [F], plan: BatchPlan) -> Self {
        Self {
            features,
            order: Shuffle::new(features.len() as u64, plan.seed, plan.start.epoch),
            state: plan.start,
            plan,
        }
    }
}

impl<F: Clone + Send + Sync> Batches<Vec<F>> for FeatureBatches<'_, F> {
    fn next_window(&mut self, accumulation: usize) -> Result<Window<Vec<F>>> {
        let n = self.features.len();
        let BatchPlan {
            rank,
            world,
            batch_size,
            seed,
            ..
        } = self.plan.clone();
        let epoch = self.state.epoch;
        let mut batches = Vec::with_capacity(accumulation);
        for _ in 0..accumulation {
            let start = self.state.cursor as usize;
            let end = (start + batch_size * world).min(n);
            let mine =
                (start + rank * batch_size).min(end)..(start + (rank + 1) * batch_size).min(end);
            batches.push(
                mine.map(|i| self.features[self.order.at(i as u64) as usize].clone())
                    .collect(),
            );
            if end == n {
                self.state = LoaderState {
                    epoch: epoch + 1,
                    cursor: 0,
                };
                self.order = Shuffle::new(n as u64, seed, epoch + 1);
                break;
            }
            self.state.cursor = end as u64;
        }
        Ok(Window {
            batches,
            epoch,
            next: self.state,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(rank: usize, world: usize, batch_size: usize) -> BatchPlan {
        BatchPlan {
            rank,
            world,
            batch_size,
            seed: 7,
            start: LoaderState::default(),
            phase: 0,
            phase_start: LoaderState::default(),
            phase_sequences: 0,
            stop: None,
        }
    }

    #[test]
    fn replicas_split_each_micro_batch_and_windows_stop_at_the_epoch_end() {
        let features: Vec<u32> = (0..10).collect();
        let mut one = FeatureBatches::new(&features, plan(0, 1, 4));
        let mut halves: Vec<_> = (0..2)
            .map(|r| FeatureBatches::new(&features, plan(r, 2, 2)))
            .collect();
        for _ in 0..3 {
            let whole = one.next_window(2).unwrap();
            let parts: Vec<_> = halves
                .iter_mut()
                .map(|h| h.next_window(2).unwrap())
                .collect();
            assert_eq!(whole.batches.len(), parts[0].batches.len());
            for (i, batch) in whole.batches.iter().enumerate() {
                let joined: Vec<u32> =
                    [parts[0].batches[i].clone(), parts[1].batches[i].clone()].concat();
                assert_eq!(*batch, joined);
            }
            assert_eq!(whole.next, parts[1].next);
        }
        // 10 features in micro-batches of 4: the second window holds the last 2 and ends
        // the epoch; the third starts epoch 1 in a new order.
        let mut one = FeatureBatches::new(&features, plan(0, 1, 4));
        let first = one.next_window(2).unwrap();
        let second = one.next_window(2).unwrap();
        assert_eq!((first.batches.len(), second.batches.len()), (2, 1));
        assert_eq!(second.batches[0].len(), 2);
        assert_eq!(
            second.next,
            LoaderState {
                epoch: 1,
                cursor: 0
            }
        );
        let mut seen: Vec<u32> = first.batches.concat();
        seen.extend(second.batches.concat());
        seen.sort();
        assert_eq!(seen, features);
    }
}
