//! Extractive question answering (SQuAD v1.1/v2.0): start and end logits over windows
//! of the context, HF's `RobertaForQuestionAnswering`, decoded as `run_qa` does.

use std::path::Path;

use anyhow::{Result, bail};
use burn::prelude::*;
use roberta_data::RobertaTokenizer;
use roberta_data::labeled::{QaExample, qa_features, read_squad};
use roberta_data::masking::IGNORE_INDEX;
use roberta_model::loss::cross_entropy_sum;
use roberta_model::{RobertaConfig, RobertaForQuestionAnswering};
use serde::Serialize;

use super::{LabeledTask, TaskData, TaskModel, TaskSection, int_tensor};
use crate::tasks::metrics::{self, Metrics};
use roberta_model::Kernels;

pub struct Qa {
    section: TaskSection,
}

/// The keys only QA reads.
pub fn check(section: &TaskSection) -> Result<()> {
    if section.doc_stride == 0 || section.doc_stride >= section.max_length {
        bail!(
            "task.doc_stride = {} must be in [1, max_length)",
            section.doc_stride
        );
    }
    if section.max_answer_length == 0 || section.n_best == 0 {
        bail!("task.max_answer_length and task.n_best must be at least 1");
    }
    Ok(())
}

/// One window of a question's context.
#[derive(Debug, Clone)]
pub struct Feature {
    pub ids: Vec<u32>,
    /// Token positions of the answer's first and last token (0, 0: none in this
    /// window); `None` for unlabeled input.
    pub span: Option<(usize, usize)>,
    /// The question this window belongs to.
    pub example: usize,
    /// The context's character span of each token, `None` outside the context.
    pub offsets: Vec<Option<(usize, usize)>>,
}

/// A QA answer: its text, its character span in the context, its score.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Answer {
    pub text: String,
    pub start: usize,
    pub end: usize,
    pub score: f32,
}

#[derive(Serialize)]
struct Prediction<'a> {
    id: &'a str,
    answer: String,
    start: usize,
    end: usize,
    score: f32,
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

/// HF's span head has no dropout of its own.
impl<B: Kernels> TaskModel<B> for RobertaForQuestionAnswering<B> {
    fn with_head_dropout(self, _: &RobertaConfig) -> Self {
        self
    }
}

impl LabeledTask for Qa {
    type Model<B: Kernels> = RobertaForQuestionAnswering<B>;
    type Feature = Feature;
    type Example = QaExample;
    /// Start and end logits of the window's tokens.
    type Output = (Vec<f32>, Vec<f32>);

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
        let examples = read_squad(path)?;
        let features = qa_features(tokenizer, &examples, max_length, self.section.doc_stride)?
            .into_iter()
            .map(|f| Feature {
                ids: f.input_ids,
                span: labeled.then_some((f.start, f.end)),
                example: f.example,
                offsets: f.offsets,
            })
            .collect();
        Ok(TaskData { features, examples })
    }

    fn rows(feature: &Feature) -> &[Vec<u32>] {
        std::slice::from_ref(&feature.ids)
    }

    fn targets(batch: &[Feature]) -> usize {
        batch.len()
    }

    /// The mean of the start and end cross-entropy, summed over windows.
    fn loss<B: Kernels>(
        &self,
        model: &RobertaForQuestionAnswering<B>,
        batch: &[Feature],
        pad: u32,
        device: &B::Device,
    ) -> Tensor<B, 1> {
        let (start, end) = model.forward(Self::input(batch, pad, device));
        let (starts, ends): (Vec<i64>, Vec<i64>) = batch
            .iter()
            .map(|f| match f.span {
                Some((s, e)) => (s as i64, e as i64),
                None => (IGNORE_INDEX, IGNORE_INDEX),
            })
            .unzip();
        (cross_entropy_sum(start, int_tensor(starts, device))
            + cross_entropy_sum(end, int_tensor(ends, device)))
            / 2.0
    }

    fn outputs<B: Kernels>(
        &self,
        model: &RobertaForQuestionAnswering<B>,
        batch: &[Feature],
        pad: u32,
        device: &B::Device,
    ) -> Result<Vec<(Vec<f32>, Vec<f32>)>> {
        let (start, end) = model.forward(Self::input(batch, pad, device));
        let [_, seq] = start.dims();
        let start = start.into_data().convert::<f32>().into_vec::<f32>()?;
        let end = end.into_data().convert::<f32>().into_vec::<f32>()?;
        Ok(batch
            .iter()
            .enumerate()
            .map(|(b, f)| {
                let row = b * seq..b * seq + f.ids.len();
                (start[row.clone()].to_vec(), end[row].to_vec())
            })
            .collect())
    }

    fn score(&self, data: &TaskData<Self>, outputs: &[(Vec<f32>, Vec<f32>)]) -> Result<Metrics> {
        let answers = decode_answers(&self.section, &data.examples, &data.features, outputs);
        let predicted: Vec<String> = answers.into_iter().map(|a| a.text).collect();
        let gold: Vec<Vec<String>> = data
            .examples
            .iter()
            .map(|e| e.answers.iter().map(|a| a.2.clone()).collect())
            .collect();
        let (em, f1) = metrics::squad(&predicted, &gold);
        Ok(Metrics::from([
            ("exact_match".into(), em),
            ("f1".into(), f1),
        ]))
    }

    fn predictions(
        &self,
        data: &TaskData<Self>,
        outputs: &[(Vec<f32>, Vec<f32>)],
    ) -> Result<Vec<serde_json::Value>> {
        decode_answers(&self.section, &data.examples, &data.features, outputs)
            .into_iter()
            .zip(&data.examples)
            .map(|(a, ex)| {
                Ok(serde_json::to_value(Prediction {
                    id: &ex.id,
                    answer: a.text,
                    start: a.start,
                    end: a.end,
                    score: a.score,
                })?)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tasks::TaskKind;

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
            span: None,
            example: 0,
            offsets,
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
}
