//! A tag per word (CoNLL NER, `token-classification`), predicted on each word's first
//! sub-word by HF's `RobertaForTokenClassification`, scored as conlleval scores.

use std::path::Path;

use anyhow::{Context, Result};
use burn::nn::DropoutConfig;
use burn::prelude::*;
use roberta_data::RobertaTokenizer;
use roberta_data::labeled::{TaggedSentence, encode_words, read_conll};
use roberta_data::masking::IGNORE_INDEX;
use roberta_model::loss::cross_entropy_sum;
use roberta_model::{RobertaConfig, RobertaForTokenClassification};
use serde::Serialize;

use super::{LabeledTask, TaskData, TaskModel, TaskSection, int_tensor};
use crate::tasks::metrics::{self, Metrics};
use roberta_model::Kernels;

pub struct Tagging {
    section: TaskSection,
    labels: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Feature {
    pub ids: Vec<u32>,
    /// A label per token, [`IGNORE_INDEX`] where none; `None` for unlabeled input.
    pub tags: Option<Vec<i64>>,
    /// The token position of each word's first sub-word.
    pub word_starts: Vec<usize>,
}

#[derive(Serialize)]
struct Prediction<'a> {
    line: usize,
    words: &'a [String],
    tags: Vec<&'a str>,
}

impl Tagging {
    /// The label used for words cut off by `max_length`.
    fn outside(&self) -> usize {
        self.labels.iter().position(|l| l == "O").unwrap_or(0)
    }

    /// Per word of each sentence: the label index predicted on its first sub-word.
    fn word_labels(&self, data: &TaskData<Self>, outputs: &[Vec<usize>]) -> Vec<Vec<usize>> {
        let fallback = self.outside();
        data.features
            .iter()
            .zip(outputs)
            .zip(&data.examples)
            .map(|((f, t), s)| {
                (0..s.words.len())
                    .map(|w| f.word_starts.get(w).map_or(fallback, |&p| t[p]))
                    .collect()
            })
            .collect()
    }
}

impl<B: Kernels> TaskModel<B> for RobertaForTokenClassification<B> {
    fn with_head_dropout(mut self, config: &RobertaConfig) -> Self {
        self.dropout = DropoutConfig::new(config.classifier_dropout_prob()).init();
        self
    }
}

impl LabeledTask for Tagging {
    type Model<B: Kernels> = RobertaForTokenClassification<B>;
    type Feature = Feature;
    type Example = TaggedSentence;
    /// The predicted label index at each token.
    type Output = Vec<usize>;

    fn new(section: TaskSection, labels: Vec<String>) -> Self {
        Self { section, labels }
    }

    fn section(&self) -> &TaskSection {
        &self.section
    }

    fn train_labels(path: &Path, section: &TaskSection) -> Result<Vec<String>> {
        if let Some(labels) = &section.labels {
            return Ok(labels.clone());
        }
        let mut tags: Vec<String> = read_conll(path)?.into_iter().flat_map(|s| s.tags).collect();
        tags.sort();
        tags.dedup();
        anyhow::ensure!(
            tags.len() >= 2,
            "{}: the tags column holds {} distinct tag(s); a tagger needs at least two",
            path.display(),
            tags.len()
        );
        Ok(tags)
    }

    fn model_labels(_: &TaskSection, config: &RobertaConfig, outputs: usize) -> Vec<String> {
        config.labels(outputs)
    }

    fn head_size(&self) -> Option<usize> {
        Some(self.labels.len())
    }

    fn describe(&self, config: &mut RobertaConfig) {
        config.set_labels(&self.labels);
    }

    fn read(
        &self,
        path: &Path,
        tokenizer: &RobertaTokenizer,
        max_length: usize,
        labeled: bool,
    ) -> Result<TaskData<Self>> {
        let eos = tokenizer.specials().eos;
        let sentences = read_conll(path)?;
        let mut features = Vec::with_capacity(sentences.len());
        for sentence in &sentences {
            let label_ids = if labeled {
                sentence
                    .tags
                    .iter()
                    .enumerate()
                    .map(|(w, tag)| {
                        self.labels.iter().position(|l| l == tag).with_context(|| {
                            format!(
                                "{}: line {}: tag \"{tag}\" is not one of {}",
                                path.display(),
                                sentence.line + w,
                                self.labels.join(", ")
                            )
                        })
                    })
                    .collect::<Result<Vec<_>>>()?
            } else {
                vec![0; sentence.words.len()]
            };
            let (mut ids, mut tags) = encode_words(tokenizer, &sentence.words, &label_ids)?;
            if ids.len() > max_length {
                ids.truncate(max_length - 1);
                ids.push(eos);
                tags.truncate(max_length - 1);
                tags.push(IGNORE_INDEX);
            }
            let word_starts = (0..tags.len())
                .filter(|&t| tags[t] != IGNORE_INDEX)
                .collect();
            features.push(Feature {
                ids,
                tags: labeled.then_some(tags),
                word_starts,
            });
        }
        Ok(TaskData {
            features,
            examples: sentences,
        })
    }

    fn rows(feature: &Feature) -> &[Vec<u32>] {
        std::slice::from_ref(&feature.ids)
    }

    /// The labeled tokens: each contributes one cross-entropy term.
    fn targets(batch: &[Feature]) -> usize {
        batch
            .iter()
            .filter_map(|f| f.tags.as_ref())
            .map(|tags| tags.iter().filter(|&&t| t != IGNORE_INDEX).count())
            .sum()
    }

    fn loss<B: Kernels>(
        &self,
        model: &RobertaForTokenClassification<B>,
        batch: &[Feature],
        pad: u32,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let logits = model.forward(Self::input(batch, pad, device));
        let [batch_size, seq, labels] = logits.dims();
        let mut targets = vec![IGNORE_INDEX; batch_size * seq];
        for (b, f) in batch.iter().enumerate() {
            if let Some(tags) = &f.tags {
                targets[b * seq..b * seq + tags.len()].copy_from_slice(tags);
            }
        }
        cross_entropy_sum(
            logits.reshape([batch_size * seq, labels]),
            int_tensor(targets, device),
        )
    }

    fn outputs<B: Kernels>(
        &self,
        model: &RobertaForTokenClassification<B>,
        batch: &[Feature],
        pad: u32,
        device: &B::Device,
    ) -> Result<Vec<Vec<usize>>> {
        let logits = model.forward(Self::input(batch, pad, device));
        let [_, seq, _] = logits.dims();
        let best = logits
            .argmax(2)
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()?;
        Ok(batch
            .iter()
            .enumerate()
            .map(|(b, f)| {
                best[b * seq..b * seq + f.ids.len()]
                    .iter()
                    .map(|&l| l as usize)
                    .collect()
            })
            .collect())
    }

    fn score(&self, data: &TaskData<Self>, outputs: &[Vec<usize>]) -> Result<Metrics> {
        let name = |ids: &Vec<usize>| -> Vec<String> {
            ids.iter().map(|&i| self.labels[i].clone()).collect()
        };
        let predicted: Vec<Vec<String>> =
            self.word_labels(data, outputs).iter().map(name).collect();
        let gold: Vec<Vec<String>> = data.examples.iter().map(|s| s.tags.clone()).collect();
        let (precision, recall, f1) = metrics::entity_prf(&predicted, &gold);
        let flat_p: Vec<&String> = predicted.iter().flatten().collect();
        let flat_g: Vec<&String> = gold.iter().flatten().collect();
        let correct = flat_p.iter().zip(&flat_g).filter(|(p, g)| p == g).count();
        Ok(Metrics::from([
            ("precision".into(), precision),
            ("recall".into(), recall),
            ("f1".into(), f1),
            (
                "accuracy".into(),
                correct as f64 / flat_g.len().max(1) as f64,
            ),
        ]))
    }

    fn predictions(
        &self,
        data: &TaskData<Self>,
        outputs: &[Vec<usize>],
    ) -> Result<Vec<serde_json::Value>> {
        self.word_labels(data, outputs)
            .into_iter()
            .zip(&data.examples)
            .map(|(ids, s)| {
                Ok(serde_json::to_value(Prediction {
                    line: s.line,
                    words: &s.words,
                    tags: ids.into_iter().map(|i| self.labels[i].as_str()).collect(),
                })?)
            })
            .collect()
    }
}
