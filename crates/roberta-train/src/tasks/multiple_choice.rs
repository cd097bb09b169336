//! Multiple choice (SWAG): a context and its candidate endings → the right one, through
//! HF's `RobertaForMultipleChoice`. Each choice is the pair `<s> context </s></s> start
//! ending </s>` (the ending after the start of its sentence, `task.text_b`, as HF's
//! `run_swag` joins them), scored on its own; the scores are a distribution over the
//! example's choices.

use std::path::Path;

use anyhow::{Context, Result, ensure};
use burn::nn::DropoutConfig;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use roberta_data::RobertaTokenizer;
use roberta_data::labeled::read_rows;
use roberta_model::loss::cross_entropy_sum;
use roberta_model::{Kernels, RobertaConfig, RobertaForMultipleChoice};
use serde::Serialize;

use super::sequence::sentence_ids;
use super::{LabeledTask, TaskData, TaskModel, TaskSection, argmax, int_tensor};
use crate::tasks::metrics::{self, Metrics};

pub struct MultipleChoice {
    section: TaskSection,
}

/// SWAG's ending columns, HF `run_swag`'s `ending_names`.
pub const SWAG_CHOICES: [&str; 4] = ["ending0", "ending1", "ending2", "ending3"];

/// The keys only multiple choice reads.
pub fn check(section: &TaskSection) -> Result<()> {
    let choices = section.choices();
    let mut distinct = choices.clone();
    distinct.sort();
    distinct.dedup();
    ensure!(
        choices.len() >= 2 && distinct.len() == choices.len(),
        "task.choices must name at least two distinct columns (got {choices:?})"
    );
    Ok(())
}

/// One example: a row of token ids per choice.
#[derive(Debug, Clone)]
pub struct Feature {
    pub rows: Vec<Vec<u32>>,
    /// The right choice; `None` for unlabeled input.
    pub answer: Option<usize>,
}

/// HF's head drops out at `hidden_dropout_prob`, not `classifier_dropout`.
impl<B: Kernels> TaskModel<B> for RobertaForMultipleChoice<B> {
    fn with_head_dropout(mut self, config: &RobertaConfig) -> Self {
        self.dropout = DropoutConfig::new(config.hidden_dropout_prob).init();
        self
    }
}

#[derive(Serialize)]
struct Choice<'a> {
    line: usize,
    /// The index of the chosen column in `task.choices`, and its name.
    choice: usize,
    column: &'a str,
    probabilities: Vec<f32>,
}

impl LabeledTask for MultipleChoice {
    type Model<B: Kernels> = RobertaForMultipleChoice<B>;
    type Feature = Feature;
    /// The example's line, for predictions.
    type Example = usize;
    /// The distribution over the choices.
    type Output = Vec<f32>;

    fn new(section: TaskSection, _: Vec<String>) -> Self {
        Self { section }
    }

    fn section(&self) -> &TaskSection {
        &self.section
    }

    fn read(
        &self,
        path: &Path,
        tokenizer: &RobertaTokenizer,
        max_length: usize,
        labeled: bool,
    ) -> Result<TaskData<Self>> {
        let s = &self.section;
        let choices = s.choices();
        let mut names = vec![s.text_a()];
        names.extend(s.text_b());
        names.extend(&choices);
        if labeled {
            names.push(&s.label);
        }
        let mut features = Vec::new();
        let mut examples = Vec::new();
        for row in read_rows(path, &names, s.header)? {
            let (context, rest) = row.fields.split_first().expect("text_a is read");
            let (start, rest) = match s.text_b() {
                Some(_) => rest.split_first().map(|(b, r)| (Some(b), r)).expect("read"),
                None => (None, rest),
            };
            let (endings, label) = rest.split_at(choices.len());
            let answer = label
                .first()
                .map(|l| {
                    let l = l.trim();
                    l.parse::<usize>()
                        .ok()
                        .filter(|&i| i < choices.len())
                        .with_context(|| {
                            format!(
                                "{}: line {}: label \"{l}\" is not the index of a choice (0 to {})",
                                path.display(),
                                row.line,
                                choices.len() - 1
                            )
                        })
                })
                .transpose()?;
            let rows = endings
                .iter()
                .map(|ending| {
                    let second = match start {
                        Some(start) => format!("{start} {ending}"),
                        None => ending.clone(),
                    };
                    Ok(sentence_ids(tokenizer, context, Some(&second), max_length)?.0)
                })
                .collect::<Result<_>>()?;
            features.push(Feature { rows, answer });
            examples.push(row.line);
        }
        Ok(TaskData { features, examples })
    }

    fn rows(feature: &Feature) -> &[Vec<u32>] {
        &feature.rows
    }

    fn targets(batch: &[Feature]) -> usize {
        batch.len()
    }

    /// Cross-entropy over each example's choices (HF's loss).
    fn loss<B: Kernels>(
        &self,
        model: &RobertaForMultipleChoice<B>,
        batch: &[Feature],
        pad: u32,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let scores = model.forward(
            Self::input(batch, pad, device),
            self.section.choices().len(),
        );
        let answers = batch
            .iter()
            .map(|f| {
                f.answer
                    .map_or(roberta_data::masking::IGNORE_INDEX, |a| a as i64)
            })
            .collect();
        cross_entropy_sum(scores, int_tensor(answers, device))
    }

    fn outputs<B: Kernels>(
        &self,
        model: &RobertaForMultipleChoice<B>,
        batch: &[Feature],
        pad: u32,
        device: &B::Device,
    ) -> Result<Vec<Vec<f32>>> {
        let n = self.section.choices().len();
        let scores = model.forward(Self::input(batch, pad, device), n);
        let values = softmax(scores, 1)
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()?;
        Ok(values.chunks(n).map(<[f32]>::to_vec).collect())
    }

    /// Accuracy, as `run_swag` reports it.
    fn score(&self, data: &TaskData<Self>, outputs: &[Vec<f32>]) -> Result<Metrics> {
        let predicted: Vec<usize> = outputs.iter().map(|r| argmax(r)).collect();
        let gold: Vec<usize> = data
            .features
            .iter()
            .map(|f| f.answer.unwrap_or(usize::MAX))
            .collect();
        Ok(Metrics::from([(
            "accuracy".into(),
            metrics::accuracy(&predicted, &gold),
        )]))
    }

    fn predictions(
        &self,
        data: &TaskData<Self>,
        outputs: &[Vec<f32>],
    ) -> Result<Vec<serde_json::Value>> {
        let choices = self.section.choices();
        outputs
            .iter()
            .zip(&data.examples)
            .map(|(row, &line)| {
                let choice = argmax(row);
                Ok(serde_json::to_value(Choice {
                    line,
                    choice,
                    column: choices[choice],
                    probabilities: row.clone(),
                })?)
            })
            .collect()
    }
}
