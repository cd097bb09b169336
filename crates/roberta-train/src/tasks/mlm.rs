//! Pretraining's task: masked language modelling on packed blocks with fresh masks every
//! time a block is served (the data crate's loader), and the MLM head on the masked
//! positions only.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::Result;
use burn::prelude::*;
use roberta_data::loader::validation_batch;
use roberta_data::{Batch, Corpus, Loader, LoaderConfig, LoaderState, MaskRamp};
use roberta_model::loss::cross_entropy_sum;
use roberta_model::{Kernels, RobertaForMaskedLM, RobertaInput, TrainingBackend};

use super::{BatchPlan, Batches, StepLoss, Task, Window};
use crate::config::{PretrainConfig, RampShape};
use crate::sentences::probe::Probe;
use crate::tasks::metrics::Metrics;
use crate::trainer::TrainPhase;

pub struct Mlm {
    /// The train split as each phase of the run cuts and masks it (one corpus without
    /// `[[schedule.phases]]`).
    pub corpora: Vec<Arc<Corpus>>,
    /// Validation data, masked the same way at every evaluation of the run.
    pub valid: Option<Validation>,
    /// Batches the background loader may prepare ahead.
    pub queue_depth: usize,
    /// The masking rate each phase ends at, and whether it gets there along a half
    /// cosine (else linearly), from the phase's own.
    pub mask_prob_end: Option<(f64, bool)>,
    /// The model's vocabulary: every token id must be below it.
    pub vocab_size: usize,
    /// A linear probe of the encoder at every evaluation (`[eval.probe]`).
    pub probe: Option<Probe>,
    /// Per phase, the tokens per block the earlier phases trained on, where the phase
    /// reaches further and its new positions start as copies of those
    /// (`schedule.extend_positions = "copy"`).
    pub copy_positions: Vec<Option<usize>>,
}

/// Per phase of blocks of `block_sizes` tokens, the positions trained before it when it
/// is the first to reach past them (none for the first phase, which starts from the
/// initialisation).
pub fn positions_to_copy(block_sizes: &[usize]) -> Vec<Option<usize>> {
    let mut trained = 0;
    block_sizes
        .iter()
        .map(|&b| {
            let copy = (trained > 0 && b > trained).then_some(trained);
            trained = trained.max(b);
            copy
        })
        .collect()
}

/// The validation split and how it is cut into batches: each batch is built when it is
/// evaluated, so the split costs no memory between evaluations.
pub struct Validation {
    pub corpus: Corpus,
    pub batches: usize,
    pub batch_size: usize,
    pub seed: u64,
}

/// `schedule.mask_prob_end` and whether its shape is the cosine.
pub fn mask_prob_end(config: &PretrainConfig) -> Option<(f64, bool)> {
    let cosine = config.schedule.mask_prob_shape == RampShape::Cosine;
    config.schedule.mask_prob_end.map(|end| (end, cosine))
}

/// The masking rate of a phase whose data begins at `start` and runs `sequences` long:
/// from the phase's own rate to `end`, if there is one.
pub fn mask_ramp(
    corpus: &Corpus,
    end: Option<(f64, bool)>,
    start: LoaderState,
    sequences: u64,
) -> Option<MaskRamp> {
    end.map(|(to, cosine)| MaskRamp {
        from: corpus.masking.mask_prob,
        to,
        cosine,
        start,
        sequences,
    })
}

/// A batch as tensors: the model input, flat indices of the masked positions, targets.
pub struct MlmTensors<B: Backend> {
    pub input: RobertaInput<B>,
    pub positions: Tensor<B, 1, Int>,
    pub targets: Tensor<B, 1, Int>,
}

/// `None` for a batch without a masked token.
pub fn to_tensors<B: Backend>(batch: &Batch, device: &B::Device) -> Option<MlmTensors<B>> {
    let shape = [batch.batch_size, batch.seq_len];
    let ids: Vec<i64> = batch.input_ids.iter().map(|&t| i64::from(t)).collect();
    let mask: Vec<i64> = batch.attention_mask.iter().map(|&m| i64::from(m)).collect();
    let (positions, targets): (Vec<i64>, Vec<i64>) = batch
        .labels
        .iter()
        .enumerate()
        .filter(|(_, l)| **l >= 0)
        .map(|(i, &l)| (i as i64, l))
        .unzip();
    if positions.is_empty() {
        return None;
    }
    let n = positions.len();
    Some(MlmTensors {
        input: RobertaInput::new(
            Tensor::from_data(TensorData::new(ids, shape), device),
            Tensor::from_data(TensorData::new(mask, shape), device),
        ),
        positions: Tensor::from_data(TensorData::new(positions, [n]), device),
        targets: Tensor::from_data(TensorData::new(targets, [n]), device),
    })
}

/// The summed loss and the number of right predictions of the masked tokens, both on
/// the device.
fn loss_and_correct<B: Kernels>(
    model: &RobertaForMaskedLM<B>,
    t: MlmTensors<B>,
) -> (Tensor<B, 1>, Tensor<B, 1>) {
    let logits = model.forward_positions(t.input, t.positions);
    let n = t.targets.dims()[0];
    let correct = logits
        .clone()
        .argmax(1)
        .reshape([n])
        .equal(t.targets.clone())
        .float()
        .sum();
    (cross_entropy_sum(logits, t.targets), correct)
}

/// Mean loss, perplexity and accuracy over the validation batches, summed on the device
/// and read once.
fn evaluate<B: Kernels>(
    model: &RobertaForMaskedLM<B>,
    valid: &Validation,
    device: &B::Device,
    stop: &AtomicBool,
) -> Result<Option<Metrics>> {
    let (mut loss, mut correct, mut count) = (
        Tensor::<B, 1>::zeros([1], device),
        Tensor::<B, 1>::zeros([1], device),
        0.0,
    );
    for b in 0..valid.batches {
        if stop.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let batch = validation_batch(&valid.corpus, valid.batch_size, valid.seed, b)?;
        let Some(t) = to_tensors::<B>(&batch, device) else {
            continue;
        };
        count += t.targets.dims()[0] as f64;
        let (sum, right) = loss_and_correct(model, t);
        loss = loss + sum;
        correct = correct + right;
    }
    let sums: Vec<f64> = Tensor::cat(vec![loss, correct], 0)
        .cast(burn::tensor::DType::F32)
        .into_data()
        .iter::<f32>()
        .map(f64::from)
        .collect();
    let (loss, correct) = (sums[0], sums[1]);
    let mean = loss / f64::max(count, 1.0);
    Ok(Some(Metrics::from([
        ("loss".into(), mean),
        ("ppl".into(), mean.exp()),
        ("acc".into(), correct / f64::max(count, 1.0)),
    ])))
}

struct LoaderBatches(Loader);

impl Batches<Batch> for LoaderBatches {
    /// Windows run across epoch ends: blocks are served as one stream.
    fn next_window(&mut self, accumulation: usize) -> Result<Window<Batch>> {
        let batches = (0..accumulation)
            .map(|_| self.0.next_batch())
            .collect::<roberta_data::Result<Vec<Batch>>>()?;
        Ok(Window {
            epoch: batches[0].epoch,
            next: batches.last().expect("accumulation ≥ 1").next,
            batches,
        })
    }
}

impl<B: TrainingBackend> Task<B> for Mlm {
    type Model = RobertaForMaskedLM<B>;
    type Batch = Batch;

    fn batches(&self, plan: BatchPlan) -> Box<dyn Batches<Batch> + '_> {
        let config = LoaderConfig {
            batch_size: plan.batch_size,
            seed: plan.seed,
            rank: plan.rank,
            world: plan.world,
            pad_to: None,
            queue_depth: self.queue_depth,
            mask_ramp: mask_ramp(
                &self.corpora[plan.phase],
                self.mask_prob_end,
                plan.phase_start,
                plan.phase_sequences,
            ),
        };
        Box::new(LoaderBatches(Loader::new(
            self.corpora[plan.phase].clone(),
            config,
            plan.start,
            plan.stop,
        )))
    }

    fn log_phase(&self, phase: usize, settings: TrainPhase, world: usize, step: u64) {
        if self.corpora.len() < 2 && self.mask_prob_end.is_none() {
            return;
        }
        let corpus = &self.corpora[phase];
        let sequences = settings.batch_size * settings.accumulation * world;
        let masked = corpus.masking.mask_prob * 100.0;
        let masking = match self.mask_prob_end {
            Some((end, cosine)) => format!(
                "{masked:.0}% → {:.0}% masked ({})",
                end * 100.0,
                if cosine { "cosine" } else { "linear" }
            ),
            None => format!("{masked:.0}% masked"),
        };
        // Positions count from 2 (after RoBERTa's padding index), as the model's rows.
        let copied = self.copy_positions[phase].map_or(String::new(), |trained| {
            format!(
                ", positions {}–{} started as copies of {}–{}",
                2 + trained,
                1 + corpus.block_size,
                2,
                1 + trained
            )
        });
        let restart = settings.warmup.map_or(String::new(), |w| {
            format!(", a new learning-rate cycle warming up over {w} updates")
        });
        tracing::info!(
            "phase {} of {} from update {}: blocks of {} tokens, {sequences} sequences ({} × {} × {world} devices) ≈ {} tokens per update, {masking}{copied}{restart}",
            phase + 1,
            self.corpora.len(),
            step + 1,
            corpus.block_size,
            settings.batch_size,
            settings.accumulation,
            sequences * corpus.block_size,
        );
    }

    fn enter_phase(
        &self,
        phase: usize,
        model: RobertaForMaskedLM<B>,
        average: Option<&mut RobertaForMaskedLM<B::InnerBackend>>,
    ) -> RobertaForMaskedLM<B> {
        let Some(trained) = self.copy_positions[phase] else {
            return model;
        };
        if let Some(average) = average {
            *average = average.clone().copy_positions(trained);
        }
        model.copy_positions(trained)
    }

    fn targets(&self, batch: &Batch) -> usize {
        batch.masked
    }

    /// The accuracy on the masked tokens, as fairseq's `--log-format` and HF's
    /// `run_mlm` evaluation report it.
    fn logged(&self) -> &'static [&'static str] {
        &["masked_acc"]
    }

    fn tokens(&self, batch: &Batch) -> usize {
        batch.tokens
    }

    fn check(&self, batch: &Batch) -> std::result::Result<(), String> {
        match batch
            .input_ids
            .iter()
            .find(|&&id| id as usize >= self.vocab_size)
        {
            Some(id) => Err(format!(
                "a batch holds token id {id}, outside the model's vocabulary of {}: the shards in {} were made with another tokenizer or are damaged; preprocess again (--force)",
                self.vocab_size,
                self.corpora[0].split.dir.display()
            )),
            None => Ok(()),
        }
    }

    fn loss(
        &self,
        model: &RobertaForMaskedLM<B>,
        batch: &Batch,
        device: &B::Device,
    ) -> Option<StepLoss<B>> {
        let (sum, correct) = loss_and_correct(model, to_tensors(batch, device)?);
        Some(StepLoss {
            sum,
            logged: vec![correct],
        })
    }

    fn has_valid(&self) -> bool {
        self.valid.as_ref().is_some_and(|v| v.batches > 0) || self.probe.is_some()
    }

    fn evaluate(
        &self,
        model: &RobertaForMaskedLM<B::InnerBackend>,
        device: &B::Device,
        stop: &AtomicBool,
    ) -> Result<Option<Metrics>> {
        let metrics = match &self.valid {
            Some(valid) => evaluate(model, valid, device, stop)?,
            None => Some(Metrics::new()),
        };
        match (metrics, &self.probe) {
            (Some(_), Some(_)) if stop.load(Ordering::Relaxed) => Ok(None),
            (Some(mut metrics), Some(probe)) => {
                metrics.extend(probe.score(&model.roberta, device)?);
                Ok(Some(metrics))
            }
            (metrics, _) => Ok(metrics),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::positions_to_copy;

    #[test]
    fn only_a_phase_reaching_past_every_earlier_one_copies_their_positions() {
        assert_eq!(positions_to_copy(&[64, 128]), [None, Some(64)]);
        assert_eq!(
            positions_to_copy(&[128, 64, 128, 512, 256]),
            [None, None, None, Some(128), None]
        );
        assert_eq!(positions_to_copy(&[512]), [None]);
    }
}
