//! Fine-tuning tasks: labeled files → token features, a task model's logits → loss,
//! predictions and metrics. One home for what differs between classification,
//! regression, QA and tagging; the loops in `finetune.rs` are generic over it.

use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use burn::nn::DropoutConfig;
use burn::prelude::*;
use burn::tensor::activation::softmax;
use roberta_data::RobertaTokenizer;
use roberta_data::labeled::{
    self, Columns, Example, QaExample, TaggedSentence, encode_words, qa_features, read_conll,
    read_examples, read_squad,
};
use roberta_model::loss::{IGNORE_INDEX, cross_entropy_sum, squared_error_sum};
use roberta_model::{
    Pretrained, RobertaConfig, RobertaForQuestionAnswering, RobertaForSequenceClassification,
    RobertaForTokenClassification, RobertaInput,
};
use serde::Serialize;

use crate::config::{TaskKind, TaskSection};
use crate::metrics::{self, Metrics};

/// The config.json key under which a fine-tuned model keeps its [`TaskSection`].
pub const TASK_KEY: &str = "roberta_train_task";

/// What a feature is trained towards.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    Class(usize),
    Value(f32),
    /// Token positions of the answer's first and last token (0, 0: none in this window).
    Span(usize, usize),
    /// A label per token, [`IGNORE_INDEX`] where none.
    Tags(Vec<i64>),
    /// Unlabeled input, for `predict`.
    None,
}

/// One model input: token ids and what to learn from them.
#[derive(Debug, Clone)]
pub struct Feature {
    pub ids: Vec<u32>,
    pub target: Target,
    /// Index of the example this feature came from (QA: many windows per question).
    pub example: usize,
    /// QA: the context's character span of each token, `None` outside the context.
    pub offsets: Vec<Option<(usize, usize)>>,
    /// Token classification: the token position of each word's first sub-word.
    pub word_starts: Vec<usize>,
}

/// The examples behind the features, kept for metrics and prediction output.
#[derive(Debug, Clone)]
pub enum Examples {
    Sentences(Vec<Example>),
    Questions(Vec<QaExample>),
    Tagged(Vec<TaggedSentence>),
}

impl Examples {
    pub fn len(&self) -> usize {
        match self {
            Self::Sentences(e) => e.len(),
            Self::Questions(e) => e.len(),
            Self::Tagged(e) => e.len(),
        }
    }
}

/// A labeled (or, for `predict`, unlabeled) file turned into features.
pub struct TaskData {
    pub features: Vec<Feature>,
    pub examples: Examples,
}

/// Reads a task's file. `labels` are the label names in index order (empty for
/// regression and QA); `labeled` is false for `predict` input, whose labels are ignored.
pub fn read_task_data(
    path: &Path,
    task: &TaskSection,
    labels: &[String],
    tokenizer: &RobertaTokenizer,
    max_length: usize,
    labeled: bool,
) -> Result<TaskData> {
    let s = tokenizer.specials();
    match task.kind {
        TaskKind::Classification | TaskKind::PairClassification | TaskKind::Regression => {
            let columns = Columns {
                text_a: task.text_a().to_string(),
                text_b: task.text_b().map(str::to_string),
                label: labeled.then(|| task.label.clone()),
                header: task.header,
            };
            let examples = read_examples(path, &columns)?;
            let targets: Vec<Target> = if !labeled {
                vec![Target::None; examples.len()]
            } else if task.kind == TaskKind::Regression {
                labeled::regression_targets(path, &examples)?
                    .into_iter()
                    .map(Target::Value)
                    .collect()
            } else {
                labeled::label_ids(path, &examples, &matchable(labels))?
                    .into_iter()
                    .map(Target::Class)
                    .collect()
            };
            let mut features = Vec::with_capacity(examples.len());
            for (i, (ex, target)) in examples.iter().zip(targets).enumerate() {
                let mut a = tokenizer.encode(&ex.text_a, false)?.ids;
                let ids = match &ex.text_b {
                    None => {
                        a.truncate(max_length - 2);
                        [vec![s.bos], a, vec![s.eos]].concat()
                    }
                    Some(text_b) => {
                        let mut b = tokenizer.encode(text_b, false)?.ids;
                        // HF's "longest_first": drop from the longer text until both fit.
                        while a.len() + b.len() > max_length - 4 {
                            if a.len() >= b.len() {
                                a.pop();
                            } else {
                                b.pop();
                            }
                        }
                        [vec![s.bos], a, vec![s.eos, s.eos], b, vec![s.eos]].concat()
                    }
                };
                features.push(Feature {
                    ids,
                    target,
                    example: i,
                    offsets: Vec::new(),
                    word_starts: Vec::new(),
                });
            }
            Ok(TaskData {
                features,
                examples: Examples::Sentences(examples),
            })
        }
        TaskKind::Qa => {
            let examples = read_squad(path)?;
            let features = qa_features(tokenizer, &examples, max_length, task.doc_stride)?
                .into_iter()
                .map(|f| Feature {
                    ids: f.input_ids,
                    target: if labeled {
                        Target::Span(f.start, f.end)
                    } else {
                        Target::None
                    },
                    example: f.example,
                    offsets: f.offsets,
                    word_starts: Vec::new(),
                })
                .collect();
            Ok(TaskData {
                features,
                examples: Examples::Questions(examples),
            })
        }
        TaskKind::TokenClassification => {
            let sentences = read_conll(path)?;
            let mut features = Vec::with_capacity(sentences.len());
            for (i, sentence) in sentences.iter().enumerate() {
                let label_ids = if labeled {
                    sentence
                        .tags
                        .iter()
                        .enumerate()
                        .map(|(w, tag)| {
                            labels.iter().position(|l| l == tag).with_context(|| {
                                format!(
                                    "{}: line {}: tag \"{tag}\" is not one of {}",
                                    path.display(),
                                    sentence.line + w,
                                    labels.join(", ")
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
                    ids.push(s.eos);
                    tags.truncate(max_length - 1);
                    tags.push(IGNORE_INDEX);
                }
                let word_starts = (0..tags.len())
                    .filter(|&t| tags[t] != IGNORE_INDEX)
                    .collect();
                features.push(Feature {
                    ids,
                    target: if labeled {
                        Target::Tags(tags)
                    } else {
                        Target::None
                    },
                    example: i,
                    offsets: Vec::new(),
                    word_starts,
                });
            }
            Ok(TaskData {
                features,
                examples: Examples::Tagged(sentences),
            })
        }
    }
}

/// The names data labels are matched against: a model whose config names no labels
/// (HF's default `LABEL_0`, `LABEL_1`, …) takes the label `i` for index `i`, as GLUE files
/// write them.
fn matchable(labels: &[String]) -> Vec<String> {
    let generic = labels
        .iter()
        .enumerate()
        .all(|(i, l)| *l == format!("LABEL_{i}"));
    if generic {
        (0..labels.len()).map(|i| i.to_string()).collect()
    } else {
        labels.to_vec()
    }
}

/// The label names a task trains on: `task.labels`, or those of the train file (numeric
/// labels by value, others sorted); empty for regression and QA.
pub fn train_labels(path: &Path, task: &TaskSection) -> Result<Vec<String>> {
    if let Some(labels) = &task.labels {
        return Ok(labels.clone());
    }
    let labels = match task.kind {
        TaskKind::Regression | TaskKind::Qa => return Ok(Vec::new()),
        TaskKind::TokenClassification => {
            let sentences = read_conll(path)?;
            let mut tags: Vec<String> = sentences.into_iter().flat_map(|s| s.tags).collect();
            tags.sort();
            tags.dedup();
            tags
        }
        TaskKind::Classification | TaskKind::PairClassification => {
            let columns = Columns {
                text_a: task.text_a().to_string(),
                text_b: task.text_b().map(str::to_string),
                label: Some(task.label.clone()),
                header: task.header,
            };
            labeled::label_set(&read_examples(path, &columns)?)
        }
    };
    ensure!(
        labels.len() >= 2,
        "{}: the `{}` column holds {} distinct label(s); a classifier needs at least two",
        path.display(),
        task.label,
        labels.len()
    );
    Ok(labels)
}

/// The raw outputs of a task head.
pub enum Logits<B: Backend> {
    /// `[batch, labels]` (regression: `[batch, 1]`).
    Sequence(Tensor<B, 2>),
    /// `[batch, seq, labels]`.
    Tokens(Tensor<B, 3>),
    /// Start and end logits, each `[batch, seq]`.
    Span(Tensor<B, 2>, Tensor<B, 2>),
}

/// A model with a task head: its logits for a batch.
pub trait TaskModel<B: Backend>: Pretrained<B> + Module<B> {
    fn logits(&self, input: RobertaInput<B>) -> Logits<B>;
    /// Sets the head's dropout (HF's `classifier_dropout`), for heads that have one.
    fn with_head_dropout(self, p: f64) -> Self;
}

impl<B: Backend> TaskModel<B> for RobertaForSequenceClassification<B> {
    fn logits(&self, input: RobertaInput<B>) -> Logits<B> {
        Logits::Sequence(self.forward(input))
    }
    fn with_head_dropout(mut self, p: f64) -> Self {
        self.classifier.dropout = DropoutConfig::new(p).init();
        self
    }
}

impl<B: Backend> TaskModel<B> for RobertaForTokenClassification<B> {
    fn logits(&self, input: RobertaInput<B>) -> Logits<B> {
        Logits::Tokens(self.forward(input))
    }
    fn with_head_dropout(mut self, p: f64) -> Self {
        self.dropout = DropoutConfig::new(p).init();
        self
    }
}

impl<B: Backend> TaskModel<B> for RobertaForQuestionAnswering<B> {
    fn logits(&self, input: RobertaInput<B>) -> Logits<B> {
        let (start, end) = self.forward(input);
        Logits::Span(start, end)
    }
    fn with_head_dropout(self, _: f64) -> Self {
        self
    }
}

/// Token ids as a padded model input.
pub fn input<B: Backend>(features: &[&Feature], pad: u32, device: &B::Device) -> RobertaInput<B> {
    let rows: Vec<Vec<u32>> = features.iter().map(|f| f.ids.clone()).collect();
    RobertaInput::from_rows(&rows, pad, device)
}

/// How many terms a batch's summed loss has: examples, or labeled tokens for tagging.
/// The trainer divides the window's summed loss by this, summed over the window.
pub fn loss_terms(features: &[&Feature]) -> usize {
    features
        .iter()
        .map(|f| match &f.target {
            Target::Tags(tags) => tags.iter().filter(|&&t| t != IGNORE_INDEX).count(),
            _ => 1,
        })
        .sum()
}

fn int_tensor<B: Backend>(values: Vec<i64>, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = values.len();
    Tensor::from_data(TensorData::new(values, [n]), device)
}

/// The summed loss of a batch: cross-entropy for labels and tags, squared error for
/// regression (HF's MSELoss), the mean of start and end cross-entropy for QA.
pub fn loss_sum<B: Backend>(
    logits: Logits<B>,
    features: &[&Feature],
    device: &B::Device,
) -> Tensor<B, 1> {
    match logits {
        Logits::Sequence(logits) => {
            let [n, labels] = logits.dims();
            if labels == 1 {
                let targets: Vec<f32> = features
                    .iter()
                    .map(|f| match f.target {
                        Target::Value(v) => v,
                        _ => 0.0,
                    })
                    .collect();
                let targets = Tensor::from_data(TensorData::new(targets, [n]), device);
                squared_error_sum(logits.reshape([n]), targets)
            } else {
                let targets = features
                    .iter()
                    .map(|f| match f.target {
                        Target::Class(c) => c as i64,
                        _ => IGNORE_INDEX,
                    })
                    .collect();
                cross_entropy_sum(logits, int_tensor(targets, device))
            }
        }
        Logits::Tokens(logits) => {
            let [batch, seq, labels] = logits.dims();
            let mut targets = vec![IGNORE_INDEX; batch * seq];
            for (b, f) in features.iter().enumerate() {
                if let Target::Tags(tags) = &f.target {
                    targets[b * seq..b * seq + tags.len()].copy_from_slice(tags);
                }
            }
            cross_entropy_sum(
                logits.reshape([batch * seq, labels]),
                int_tensor(targets, device),
            )
        }
        Logits::Span(start, end) => {
            let (starts, ends): (Vec<i64>, Vec<i64>) = features
                .iter()
                .map(|f| match f.target {
                    Target::Span(s, e) => (s as i64, e as i64),
                    _ => (IGNORE_INDEX, IGNORE_INDEX),
                })
                .unzip();
            (cross_entropy_sum(start, int_tensor(starts, device))
                + cross_entropy_sum(end, int_tensor(ends, device)))
                / 2.0
        }
    }
}

/// The host-side outputs of every feature, in feature order.
pub enum Outputs {
    /// Per feature: class probabilities (or the regression value alone).
    Sequence(Vec<Vec<f32>>),
    /// Per feature: the predicted label index at each token.
    Tokens(Vec<Vec<usize>>),
    /// Per feature: start and end logits.
    Span(Vec<(Vec<f32>, Vec<f32>)>),
}

fn rows(values: Vec<f32>, width: usize) -> Vec<Vec<f32>> {
    values.chunks(width).map(<[f32]>::to_vec).collect()
}

/// Runs the model over all features, `batch_size` at a time.
pub fn infer<B: Backend, M: TaskModel<B>>(
    model: &M,
    features: &[Feature],
    pad: u32,
    batch_size: usize,
    device: &B::Device,
) -> Result<Outputs> {
    let mut sequence = Vec::new();
    let mut tokens = Vec::new();
    let mut spans = Vec::new();
    let bar = indicatif::ProgressBar::new(features.len() as u64);
    for chunk in features.chunks(batch_size) {
        let refs: Vec<&Feature> = chunk.iter().collect();
        match model.logits(input(&refs, pad, device)) {
            Logits::Sequence(logits) => {
                let [_, labels] = logits.dims();
                let values = if labels == 1 {
                    logits
                } else {
                    softmax(logits, 1)
                };
                let values = values.into_data().convert::<f32>().into_vec::<f32>()?;
                sequence.extend(rows(values, labels));
            }
            Logits::Tokens(logits) => {
                let [_, seq, _] = logits.dims();
                let best = logits.argmax(2).into_data().convert::<i64>();
                let best = best.into_vec::<i64>()?;
                for (b, f) in chunk.iter().enumerate() {
                    tokens.push(
                        best[b * seq..b * seq + f.ids.len()]
                            .iter()
                            .map(|&l| l as usize)
                            .collect(),
                    );
                }
            }
            Logits::Span(start, end) => {
                let [_, seq] = start.dims();
                let start = rows(start.into_data().convert::<f32>().into_vec()?, seq);
                let end = rows(end.into_data().convert::<f32>().into_vec()?, seq);
                for (b, f) in chunk.iter().enumerate() {
                    let n = f.ids.len();
                    spans.push((start[b][..n].to_vec(), end[b][..n].to_vec()));
                }
            }
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(if !spans.is_empty() {
        Outputs::Span(spans)
    } else if !tokens.is_empty() {
        Outputs::Tokens(tokens)
    } else {
        Outputs::Sequence(sequence)
    })
}

/// A QA answer: its text, its character span in the context, its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

fn top_indices(values: &[f32], n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..values.len()).collect();
    order.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    order.truncate(n);
    order
}

/// HF `run_qa`'s post-processing: in every window of a question, the `n_best` start and
/// end positions; spans inside the context, start ≤ end, at most `max_answer_length`
/// tokens; the best start + end score wins. With `version_2`, no answer (an empty one)
/// when the `<s>` score of the best window beats every span by more than the threshold.
pub fn decode_answers(
    task: &TaskSection,
    examples: &[QaExample],
    features: &[Feature],
    spans: &[(Vec<f32>, Vec<f32>)],
) -> Vec<Answer> {
    let mut best: Vec<Option<Answer>> = vec![None; examples.len()];
    let mut null: Vec<f32> = vec![f32::INFINITY; examples.len()];
    for (f, (start, end)) in features.iter().zip(spans) {
        let chars: Vec<char> = examples[f.example].context.chars().collect();
        null[f.example] = null[f.example].min(start[0] + end[0]);
        for &s in &top_indices(start, task.n_best) {
            for &e in &top_indices(end, task.n_best) {
                let (Some(Some((cs, _))), Some(Some((_, ce)))) =
                    (f.offsets.get(s), f.offsets.get(e))
                else {
                    continue;
                };
                if e < s || e - s + 1 > task.max_answer_length {
                    continue;
                }
                let score = start[s] + end[e];
                if best[f.example].as_ref().is_none_or(|b| score > b.score) {
                    best[f.example] = Some(Answer {
                        text: chars[*cs..*ce].iter().collect(),
                        start: *cs,
                        end: *ce,
                        score,
                    });
                }
            }
        }
    }
    best.into_iter()
        .zip(null)
        .map(|(answer, null)| {
            let none = Answer {
                text: String::new(),
                start: 0,
                end: 0,
                score: null,
            };
            match answer {
                Some(a)
                    if !task.version_2_with_negative
                        || f64::from(null - a.score) <= task.null_score_diff_threshold =>
                {
                    a
                }
                Some(_) => none,
                None => none,
            }
        })
        .collect()
}

/// Per word of each sentence: the label index predicted on its first sub-word (words cut
/// off by `max_length` get label `fallback`).
pub fn word_labels(
    features: &[Feature],
    tokens: &[Vec<usize>],
    words: &[usize],
    fallback: usize,
) -> Vec<Vec<usize>> {
    features
        .iter()
        .zip(tokens)
        .zip(words)
        .map(|((f, t), &n)| {
            (0..n)
                .map(|w| f.word_starts.get(w).map_or(fallback, |&p| t[p]))
                .collect()
        })
        .collect()
}

/// The task's metrics for `outputs` against the gold targets of `data`.
pub fn score(
    task: &TaskSection,
    labels: &[String],
    data: &TaskData,
    outputs: &Outputs,
) -> Result<Metrics> {
    Ok(match (outputs, &data.examples) {
        (Outputs::Sequence(rows), _) if task.kind == TaskKind::Regression => {
            let predicted: Vec<f64> = rows.iter().map(|r| f64::from(r[0])).collect();
            let gold: Vec<f64> = data
                .features
                .iter()
                .map(|f| match f.target {
                    Target::Value(v) => f64::from(v),
                    _ => f64::NAN,
                })
                .collect();
            metrics::regression(&predicted, &gold)
        }
        (Outputs::Sequence(rows), _) => {
            let predicted: Vec<usize> = rows.iter().map(|r| argmax(r)).collect();
            let gold: Vec<usize> = data
                .features
                .iter()
                .map(|f| match f.target {
                    Target::Class(c) => c,
                    _ => usize::MAX,
                })
                .collect();
            metrics::classification(&predicted, &gold, labels.len())
        }
        (Outputs::Span(spans), Examples::Questions(examples)) => {
            let answers = decode_answers(task, examples, &data.features, spans);
            let predicted: Vec<String> = answers.into_iter().map(|a| a.text).collect();
            let gold: Vec<Vec<String>> = examples
                .iter()
                .map(|e| e.answers.iter().map(|a| a.2.clone()).collect())
                .collect();
            let (em, f1) = metrics::squad(&predicted, &gold);
            Metrics::from([("exact_match".into(), em), ("f1".into(), f1)])
        }
        (Outputs::Tokens(tokens), Examples::Tagged(sentences)) => {
            let outside = labels.iter().position(|l| l == "O").unwrap_or(0);
            let lengths: Vec<usize> = sentences.iter().map(|s| s.words.len()).collect();
            let predicted = word_labels(&data.features, tokens, &lengths, outside);
            let name = |ids: &Vec<usize>| -> Vec<String> {
                ids.iter().map(|&i| labels[i].clone()).collect()
            };
            let predicted: Vec<Vec<String>> = predicted.iter().map(name).collect();
            let gold: Vec<Vec<String>> = sentences.iter().map(|s| s.tags.clone()).collect();
            let (precision, recall, f1) = metrics::entity_prf(&predicted, &gold);
            let flat_p: Vec<&String> = predicted.iter().flatten().collect();
            let flat_g: Vec<&String> = gold.iter().flatten().collect();
            let correct = flat_p.iter().zip(&flat_g).filter(|(p, g)| p == g).count();
            Metrics::from([
                ("precision".into(), precision),
                ("recall".into(), recall),
                ("f1".into(), f1),
                (
                    "accuracy".into(),
                    correct as f64 / flat_g.len().max(1) as f64,
                ),
            ])
        }
        _ => bail!("the model's outputs do not fit a {} task", task.kind.name()),
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    fn qa_task() -> TaskSection {
        TaskSection::for_kind(TaskKind::Qa)
    }

    #[test]
    fn span_decoding_stays_in_the_context_and_prefers_the_best_sum() {
        let examples = vec![QaExample {
            id: "q".into(),
            question: "?".into(),
            context: "Paris is big".into(),
            answers: vec![],
            is_impossible: false,
        }];
        // Tokens: <s> ? </s></s> Paris is big </s>
        let offsets = vec![
            None,
            None,
            None,
            None,
            Some((0, 5)),
            Some((6, 8)),
            Some((9, 12)),
            None,
        ];
        let feature = Feature {
            ids: vec![0; 8],
            target: Target::None,
            example: 0,
            offsets,
            word_starts: vec![],
        };
        // The question token (1) has the highest start logit but is outside the context.
        let start = vec![0.0, 9.0, 0.0, 0.0, 5.0, 2.0, 0.0, 0.0];
        let end = vec![0.0, 9.0, 0.0, 0.0, 0.0, 4.0, 1.0, 0.0];
        let answers = decode_answers(
            &qa_task(),
            &examples,
            std::slice::from_ref(&feature),
            &[(start.clone(), end.clone())],
        );
        assert_eq!(answers[0].text, "Paris is");
        assert_eq!((answers[0].start, answers[0].end), (0, 8));
        // Too long for max_answer_length 1: the best one-token span wins.
        let mut short = qa_task();
        short.max_answer_length = 1;
        let answers = decode_answers(
            &short,
            &examples,
            std::slice::from_ref(&feature),
            &[(start.clone(), end.clone())],
        );
        assert_eq!(answers[0].text, "is");
        // SQuAD v2.0: a strong <s> score means no answer.
        let mut v2 = qa_task();
        v2.version_2_with_negative = true;
        let mut start_null = start;
        start_null[0] = 20.0;
        let answers = decode_answers(&v2, &examples, &[feature], &[(start_null, end)]);
        assert_eq!(answers[0].text, "");
    }

    #[test]
    fn generic_hf_label_names_match_index_labels() {
        let generic = vec!["LABEL_0".to_string(), "LABEL_1".to_string()];
        assert_eq!(matchable(&generic), vec!["0", "1"]);
        let named = vec!["negative".to_string(), "positive".to_string()];
        assert_eq!(matchable(&named), named);
    }

    #[test]
    fn task_kind_parses_its_names() {
        for k in [
            TaskKind::Classification,
            TaskKind::PairClassification,
            TaskKind::Regression,
            TaskKind::Qa,
            TaskKind::TokenClassification,
        ] {
            assert_eq!(k.name().parse::<TaskKind>().unwrap(), k);
        }
        assert!("ner".parse::<TaskKind>().is_err());
    }
}
