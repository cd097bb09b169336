//! Fine-tuning's side of tasks: a [`LabeledTask`] reads labeled files into features,
//! computes its loss, outputs, metrics and predictions; [`Finetuning`] makes one a
//! trainer [`Task`].

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use burn::module::AutodiffModule;
use burn::prelude::*;
use roberta_data::rng::Shuffle;
use roberta_data::{LoaderState, RobertaTokenizer};
use roberta_model::{Kernels, Pretrained, RobertaConfig, RobertaInput, TrainingBackend};

use super::TaskSection;
use super::task::{BatchPlan, Batches, StepLoss, Task, Window};
use crate::tasks::metrics::Metrics;

/// A model with a task head, as the fine-tuning tasks use it.
pub trait TaskModel<B: Kernels>: Pretrained<B> + Module<B> {
    /// Sets the head's dropout from `config`, for heads that have one, at the rate its
    /// HF class reads (`classifier_dropout` for the classification heads).
    fn with_head_dropout(self, config: &RobertaConfig) -> Self;
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
    // The label methods default to a task without label names (question answering,
    // multiple choice), whose head has a fixed size.

    /// The label names to train on: `task.labels`, or those of the train file.
    fn train_labels(_path: &Path, _section: &TaskSection) -> Result<Vec<String>> {
        Ok(Vec::new())
    }
    /// The label names of a fine-tuned model whose head has `outputs` outputs.
    fn model_labels(
        _section: &TaskSection,
        _config: &RobertaConfig,
        _outputs: usize,
    ) -> Vec<String> {
        Vec::new()
    }
    /// The head's outputs for `labels`: `None` where the head has a fixed size.
    fn head_size(&self) -> Option<usize> {
        None
    }
    /// Writes the labels (and problem type) into a model's HF config.
    fn describe(&self, _config: &mut RobertaConfig) {}

    fn read(
        &self,
        path: &Path,
        tokenizer: &RobertaTokenizer,
        max_length: usize,
        labeled: bool,
    ) -> Result<TaskData<Self>>;
    /// The token ids the model reads for a feature: one row, or (multiple choice) one
    /// per choice.
    fn rows(feature: &Self::Feature) -> &[Vec<u32>];
    /// A batch's rows, one after the other, as a padded model input.
    fn input<B: Kernels>(batch: &[Self::Feature], pad: u32, device: &B::Device) -> RobertaInput<B> {
        let rows: Vec<&[u32]> = batch
            .iter()
            .flat_map(Self::rows)
            .map(Vec::as_slice)
            .collect();
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
        batch.iter().flat_map(T::rows).map(Vec::len).sum()
    }

    fn loss(
        &self,
        model: &Self::Model,
        batch: &Self::Batch,
        device: &B::Device,
    ) -> Option<StepLoss<B>> {
        (!batch.is_empty()).then(|| StepLoss {
            sum: self.task.loss(model, batch, self.pad, device),
            logged: Vec::new(),
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
