//! One sentence or a pair → a label (`classification`, `pair-classification`) or a
//! number (`regression`), on `<s>` through HF's `RobertaForSequenceClassification`.

use std::path::Path;

use anyhow::{Result, ensure};
use burn::nn::DropoutConfig;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use roberta_data::RobertaTokenizer;
use roberta_data::labeled::{self, Columns, Example, read_examples};
use roberta_model::loss::{cross_entropy_sum, squared_error_sum};
use roberta_model::{RobertaConfig, RobertaForSequenceClassification};
use serde::Serialize;

use super::{LabeledTask, TaskData, TaskModel, argmax, int_tensor};
use super::{TaskKind, TaskSection};
use crate::tasks::metrics::{self, Metrics};
use roberta_model::Kernels;

pub struct Sequence {
    section: TaskSection,
    labels: Vec<String>,
    /// One output trained with squared error (STS-B), instead of labels.
    regression: bool,
}

/// What a sentence (pair) is trained towards: a label index, or a value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    Class(usize),
    Value(f32),
    /// Unlabeled input, for `predict`.
    None,
}

#[derive(Debug, Clone)]
pub struct Feature {
    pub ids: Vec<u32>,
    pub target: Target,
}

impl Sequence {
    fn columns(section: &TaskSection, labeled: bool) -> Columns {
        Columns {
            text_a: section.text_a().to_string(),
            text_b: section.text_b().map(str::to_string),
            label: labeled.then(|| section.label.clone()),
            header: section.header,
        }
    }
}

/// The names data labels are matched against: a model whose config names no labels
/// (HF's default `LABEL_0`, `LABEL_1`, …) takes the label `i` for index `i`, as GLUE files
/// write them; so does a model whose labels have names when the data's labels are all
/// indices of them and none is a name (HF `datasets` stores RTE's "entailment" and
/// "not_entailment" as 0 and 1).
fn matchable(labels: &[String], examples: &[Example]) -> Vec<String> {
    let generic = labels
        .iter()
        .enumerate()
        .all(|(i, l)| *l == format!("LABEL_{i}"));
    let mut data = examples.iter().filter_map(|e| e.label.as_deref());
    let indices = data.clone().next().is_some()
        && data.all(|l| {
            l.parse::<usize>().is_ok_and(|i| i < labels.len()) && !labels.iter().any(|n| n == l)
        });
    if generic || indices {
        (0..labels.len()).map(|i| i.to_string()).collect()
    } else {
        labels.to_vec()
    }
}

/// `<s> A </s>`, or `<s> A </s></s> B </s>` for a pair, in at most `max_length` tokens:
/// a pair is cut as HF's "longest_first" cuts it (from the longer text until both fit).
/// Also the length it would have whole.
pub fn sentence_ids(
    tokenizer: &RobertaTokenizer,
    text_a: &str,
    text_b: Option<&str>,
    max_length: usize,
) -> Result<(Vec<u32>, usize)> {
    let s = tokenizer.specials();
    let mut a = tokenizer.encode(text_a, false)?.ids;
    Ok(match text_b {
        None => {
            let whole = a.len() + 2;
            a.truncate(max_length - 2);
            ([vec![s.bos], a, vec![s.eos]].concat(), whole)
        }
        Some(text_b) => {
            let mut b = tokenizer.encode(text_b, false)?.ids;
            let whole = a.len() + b.len() + 4;
            while a.len() + b.len() > max_length - 4 {
                if a.len() >= b.len() {
                    a.pop();
                } else {
                    b.pop();
                }
            }
            (
                [vec![s.bos], a, vec![s.eos, s.eos], b, vec![s.eos]].concat(),
                whole,
            )
        }
    })
}

#[derive(Serialize)]
struct Label<'a> {
    line: usize,
    label: &'a str,
    probabilities: serde_json::Map<String, serde_json::Value>,
}

#[derive(Serialize)]
struct Score {
    line: usize,
    score: f32,
}

impl<B: Kernels> TaskModel<B> for RobertaForSequenceClassification<B> {
    fn with_head_dropout(mut self, config: &RobertaConfig) -> Self {
        self.classifier.dropout = DropoutConfig::new(config.classifier_dropout_prob()).init();
        self
    }
}

impl LabeledTask for Sequence {
    type Model<B: Kernels> = RobertaForSequenceClassification<B>;
    type Feature = Feature;
    type Example = Example;
    /// Class probabilities, or the regression value alone.
    type Output = Vec<f32>;

    fn new(section: TaskSection, labels: Vec<String>) -> Self {
        let regression = section.kind == TaskKind::Regression;
        Self {
            section,
            labels,
            regression,
        }
    }

    fn section(&self) -> &TaskSection {
        &self.section
    }

    fn train_labels(path: &Path, section: &TaskSection) -> Result<Vec<String>> {
        if section.kind == TaskKind::Regression {
            return Ok(Vec::new());
        }
        if let Some(labels) = &section.labels {
            return Ok(labels.clone());
        }
        let labels = labeled::label_set(&read_examples(path, &Self::columns(section, true))?);
        ensure!(
            labels.len() >= 2,
            "{}: the `{}` column holds {} distinct label(s); a classifier needs at least two",
            path.display(),
            section.label,
            labels.len()
        );
        Ok(labels)
    }

    fn model_labels(section: &TaskSection, config: &RobertaConfig, outputs: usize) -> Vec<String> {
        if section.kind == TaskKind::Regression {
            Vec::new()
        } else {
            config.labels(outputs)
        }
    }

    fn head_size(&self) -> Option<usize> {
        Some(if self.regression {
            1
        } else {
            self.labels.len()
        })
    }

    fn describe(&self, config: &mut RobertaConfig) {
        if self.regression {
            config.set_labels(&["LABEL_0".to_string()]);
            config.problem_type = Some("regression".into());
        } else {
            config.set_labels(&self.labels);
        }
    }

    fn read(
        &self,
        path: &Path,
        tokenizer: &RobertaTokenizer,
        max_length: usize,
        labeled: bool,
    ) -> Result<TaskData<Self>> {
        let examples = read_examples(path, &Self::columns(&self.section, labeled))?;
        let targets: Vec<Target> = if !labeled {
            vec![Target::None; examples.len()]
        } else if self.regression {
            labeled::regression_targets(path, &examples)?
                .into_iter()
                .map(Target::Value)
                .collect()
        } else {
            labeled::label_ids(path, &examples, &matchable(&self.labels, &examples))?
                .into_iter()
                .map(Target::Class)
                .collect()
        };
        let mut features = Vec::with_capacity(examples.len());
        for (ex, target) in examples.iter().zip(targets) {
            let (ids, _) = sentence_ids(tokenizer, &ex.text_a, ex.text_b.as_deref(), max_length)?;
            features.push(Feature { ids, target });
        }
        Ok(TaskData { features, examples })
    }

    fn rows(feature: &Feature) -> &[Vec<u32>] {
        std::slice::from_ref(&feature.ids)
    }

    fn targets(batch: &[Feature]) -> usize {
        batch.len()
    }

    /// Cross-entropy for labels, squared error for regression (HF's MSELoss).
    fn loss<B: Kernels>(
        &self,
        model: &RobertaForSequenceClassification<B>,
        batch: &[Feature],
        pad: u32,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let logits = model.forward(Self::input(batch, pad, device));
        let n = batch.len();
        if self.regression {
            let targets: Vec<f32> = batch
                .iter()
                .map(|f| match f.target {
                    Target::Value(v) => v,
                    _ => 0.0,
                })
                .collect();
            let targets = Tensor::from_data(TensorData::new(targets, [n]), device);
            squared_error_sum(logits.reshape([n]), targets)
        } else {
            let targets = batch
                .iter()
                .map(|f| match f.target {
                    Target::Class(c) => c as i64,
                    _ => roberta_data::masking::IGNORE_INDEX,
                })
                .collect();
            cross_entropy_sum(logits, int_tensor(targets, device))
        }
    }

    fn outputs<B: Kernels>(
        &self,
        model: &RobertaForSequenceClassification<B>,
        batch: &[Feature],
        pad: u32,
        device: &B::Device,
    ) -> Result<Vec<Vec<f32>>> {
        let logits = model.forward(Self::input(batch, pad, device));
        let [_, width] = logits.dims();
        let values = if self.regression {
            logits
        } else {
            softmax(logits, 1)
        };
        let values = values.into_data().convert::<f32>().into_vec::<f32>()?;
        Ok(values.chunks(width).map(<[f32]>::to_vec).collect())
    }

    fn score(&self, data: &TaskData<Self>, outputs: &[Vec<f32>]) -> Result<Metrics> {
        Ok(if self.regression {
            let predicted: Vec<f64> = outputs.iter().map(|r| f64::from(r[0])).collect();
            let gold: Vec<f64> = data
                .features
                .iter()
                .map(|f| match f.target {
                    Target::Value(v) => f64::from(v),
                    _ => f64::NAN,
                })
                .collect();
            metrics::regression(&predicted, &gold)
        } else {
            let predicted: Vec<usize> = outputs.iter().map(|r| argmax(r)).collect();
            let gold: Vec<usize> = data
                .features
                .iter()
                .map(|f| match f.target {
                    Target::Class(c) => c,
                    _ => usize::MAX,
                })
                .collect();
            metrics::classification(&predicted, &gold, self.labels.len())
        })
    }

    fn predictions(
        &self,
        data: &TaskData<Self>,
        outputs: &[Vec<f32>],
    ) -> Result<Vec<serde_json::Value>> {
        outputs
            .iter()
            .zip(&data.examples)
            .map(|(row, ex)| {
                Ok(if self.regression {
                    serde_json::to_value(Score {
                        line: ex.line,
                        score: row[0],
                    })?
                } else {
                    serde_json::to_value(Label {
                        line: ex.line,
                        label: &self.labels[argmax(row)],
                        probabilities: self
                            .labels
                            .iter()
                            .zip(row)
                            .map(|(l, p)| (l.clone(), serde_json::json!(p)))
                            .collect(),
                    })?
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generic_hf_label_names_and_integer_data_labels_match_indices() {
        let data = |labels: &[&str]| -> Vec<Example> {
            labels
                .iter()
                .map(|l| Example {
                    text_a: "x".into(),
                    text_b: None,
                    label: Some(l.to_string()),
                    line: 1,
                })
                .collect()
        };
        let generic = vec!["LABEL_0".to_string(), "LABEL_1".to_string()];
        assert_eq!(matchable(&generic, &data(&["1"])), vec!["0", "1"]);
        let named = vec!["negative".to_string(), "positive".to_string()];
        assert_eq!(matchable(&named, &data(&["positive", "negative"])), named);
        assert_eq!(matchable(&named, &data(&["0", "1"])), vec!["0", "1"]);
        // An index past the labels, or a mix, is matched by name (and refused there).
        assert_eq!(matchable(&named, &data(&["0", "2"])), named);
        assert_eq!(matchable(&named, &data(&["0", "positive"])), named);
        assert_eq!(matchable(&named, &[]), named);
    }
}
