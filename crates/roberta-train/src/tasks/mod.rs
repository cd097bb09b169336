//! What the trainer trains, and the registry of task types. A [`Task`] supplies the
//! batches, the summed loss with its target count, and the evaluation; the trainer's one
//! loop does the rest. Pretraining's masked LM ([`mlm`]) is one task; the fine-tuning
//! types are [`LabeledTask`]s (reading, featurizing, loss, outputs, scoring and
//! predictions in one file each: [`sequence`], [`qa`], [`tagging`]), which become
//! trainer tasks through [`Finetuning`].
//!
//! This file is the one place a fine-tuning type is declared: its `task.type` name
//! ([`TaskKind`]), the HF class of its model, its metrics with their direction, the
//! columns it reads by default, the checks of its own keys ([`TaskKind::entry`]), and
//! its implementation ([`with_task`]). `[task]` ([`TaskSection`]) lives here too: it
//! travels with the model (in its config.json), not with a run's config.

mod labeled;
pub mod metrics;
pub mod mlm;
pub mod multiple_choice;
pub mod qa;
pub mod sequence;
pub mod tagging;
mod task;

pub use labeled::*;
pub use task::*;

use anyhow::{Result, bail};
use burn::module::AutodiffModule;
use roberta_model::{RobertaConfig, TrainingBackend};
use serde::{Deserialize, Serialize};

use crate::config::resume_rule;

/// The config.json key under which a fine-tuned model keeps its [`TaskSection`].
pub const TASK_KEY: &str = "roberta_train_task";

/// The types of task `finetune` trains, by the head they use and how inputs are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum TaskKind {
    /// One sentence → a label (SST-2, CoLA).
    Classification,
    /// `<s> A </s></s> B </s>` → a label (MRPC, RTE, MNLI).
    PairClassification,
    /// One sentence or a pair → a number (STS-B).
    Regression,
    /// Extractive question answering (SQuAD v1.1/v2.0).
    Qa,
    /// A tag per word (CoNLL NER), predicted on each word's first sub-word.
    TokenClassification,
    /// A context and its candidate endings → the right one (SWAG).
    MultipleChoice,
}

/// Runs `w` with the [`LabeledTask`] that implements `kind`.
pub fn with_task<B: TrainingBackend, W: WithTask<B>>(kind: TaskKind, w: W) -> W::Output {
    match kind {
        TaskKind::Classification | TaskKind::PairClassification | TaskKind::Regression => {
            w.run::<sequence::Sequence>()
        }
        TaskKind::Qa => w.run::<qa::Qa>(),
        TaskKind::TokenClassification => w.run::<tagging::Tagging>(),
        TaskKind::MultipleChoice => w.run::<multiple_choice::MultipleChoice>(),
    }
}

/// What the program knows of a task type besides its implementation.
pub struct Entry {
    pub name: &'static str,
    /// The HF class of its model: the `architectures` entry of a model fine-tuned for it.
    pub architecture: &'static str,
    /// Whether a model of that class that saved no task is one of this type (HF's
    /// convention: a sequence classifier with one output is a regressor).
    pub inferred: fn(&RobertaConfig) -> bool,
    /// What it reports (the choices of `eval.metric`), each with the way it improves.
    pub metrics: &'static [Metric],
    /// The metric that picks the best checkpoint unless `eval.metric` says otherwise.
    pub default_metric: &'static str,
    /// `task.text_a`'s default.
    pub text_a: &'static str,
    pub text_b: SecondText,
    /// `task.max_length` for a model that saved no task (QA windows take 384 tokens, as
    /// HF's `run_qa`).
    pub max_length: usize,
    /// Checks of the keys only this type reads.
    pub check: fn(&TaskSection) -> Result<()>,
}

/// Whether a type reads a second text column (`task.text_b`).
pub enum SecondText {
    /// Always, from this column unless `task.text_b` names another.
    Always(&'static str),
    /// Where `task.text_b` names one.
    Optional,
    Never,
}

/// A metric a task reports, and which way is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metric {
    pub name: &'static str,
    pub higher_is_better: bool,
}

const fn higher(name: &'static str) -> Metric {
    Metric {
        name,
        higher_is_better: true,
    }
}

const CLASSIFICATION_METRICS: &[Metric] = &[
    higher("accuracy"),
    higher("f1"),
    higher("f1_macro"),
    higher("mcc"),
];

fn no_check(_: &TaskSection) -> Result<()> {
    Ok(())
}

fn regression(config: &RobertaConfig) -> bool {
    config.num_labels() == Some(1) || config.problem_type.as_deref() == Some("regression")
}

impl TaskKind {
    pub const ALL: [TaskKind; 6] = [
        Self::Classification,
        Self::PairClassification,
        Self::Regression,
        Self::Qa,
        Self::TokenClassification,
        Self::MultipleChoice,
    ];

    pub fn entry(self) -> Entry {
        const SEQUENCE: &str = "RobertaForSequenceClassification";
        match self {
            Self::Classification => Entry {
                name: "classification",
                architecture: SEQUENCE,
                inferred: |c| !regression(c),
                metrics: CLASSIFICATION_METRICS,
                default_metric: "accuracy",
                text_a: "sentence",
                text_b: SecondText::Never,
                max_length: 128,
                check: no_check,
            },
            Self::PairClassification => Entry {
                name: "pair-classification",
                // Saved as a classifier's; only its saved task tells a pair classifier.
                inferred: |_| false,
                text_a: "sentence1",
                text_b: SecondText::Always("sentence2"),
                ..Self::Classification.entry()
            },
            Self::Regression => Entry {
                name: "regression",
                architecture: SEQUENCE,
                inferred: regression,
                metrics: const {
                    &[
                        higher("pearson"),
                        higher("spearman"),
                        Metric {
                            name: "mse",
                            higher_is_better: false,
                        },
                    ]
                },
                default_metric: "pearson",
                text_a: "sentence",
                text_b: SecondText::Optional,
                max_length: 128,
                check: no_check,
            },
            Self::Qa => Entry {
                name: "qa",
                architecture: "RobertaForQuestionAnswering",
                inferred: |_| true,
                metrics: const { &[higher("exact_match"), higher("f1")] },
                default_metric: "f1",
                text_a: "sentence",
                text_b: SecondText::Never,
                max_length: 384,
                check: qa::check,
            },
            Self::TokenClassification => Entry {
                name: "token-classification",
                architecture: "RobertaForTokenClassification",
                inferred: |_| true,
                metrics: const {
                    &[
                        higher("f1"),
                        higher("precision"),
                        higher("recall"),
                        higher("accuracy"),
                    ]
                },
                default_metric: "f1",
                text_a: "sentence",
                text_b: SecondText::Never,
                max_length: 128,
                check: no_check,
            },
            Self::MultipleChoice => Entry {
                name: "multiple-choice",
                architecture: "RobertaForMultipleChoice",
                inferred: |_| true,
                metrics: const { &[higher("accuracy")] },
                default_metric: "accuracy",
                // SWAG's context; its `sent2` (the start of each ending's sentence) is
                // `text_b`, and the endings are `task.choices`.
                text_a: "sent1",
                text_b: SecondText::Optional,
                max_length: 128,
                check: multiple_choice::check,
            },
        }
    }

    pub fn name(self) -> &'static str {
        self.entry().name
    }

    /// The metric that picks the best checkpoint unless `eval.metric` says otherwise.
    pub fn default_metric(self) -> &'static str {
        self.entry().default_metric
    }

    /// Metrics this task reports (the choices for `eval.metric`).
    pub fn metrics(self) -> &'static [Metric] {
        self.entry().metrics
    }

    /// The metric `name` of this task, if it reports one.
    pub fn metric(self, name: &str) -> Option<Metric> {
        self.metrics().iter().find(|m| m.name == name).copied()
    }
}

/// The task a model directory was fine-tuned for: its saved [`TaskSection`], or one
/// inferred from the architecture.
pub fn task_of(config: &RobertaConfig) -> Option<TaskSection> {
    if let Some(saved) = config.extra.get(TASK_KEY) {
        return serde_json::from_value(saved.clone()).ok();
    }
    let architecture = config.architectures.first()?;
    TaskKind::ALL
        .into_iter()
        .find(|k| {
            let entry = k.entry();
            entry.architecture == architecture && (entry.inferred)(config)
        })
        .map(TaskSection::for_kind)
}

/// Calls back with the [`LabeledTask`] that implements a task type.
pub trait WithTask<B: TrainingBackend> {
    type Output;
    fn run<T: LabeledTask>(self) -> Self::Output
    where
        T::Model<B>: AutodiffModule<B, InnerModule = T::Model<B::InnerBackend>>;
}

/// What the task is and how its files are read. Saved into the model's `config.json`
/// (key `roberta_train_task`), so that `eval` and `predict` read new files the same way.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSection {
    #[serde(rename = "type")]
    pub kind: TaskKind,
    /// The first text column: a header name, or a 0-based index when `header = false`
    /// (default "sentence"; "sentence1" for pairs; "sent1", the context, for multiple
    /// choice).
    pub text_a: Option<String>,
    /// The second text column: of pairs (default "sentence2"), of regression where it
    /// reads pairs, and of multiple choice the start of each ending (SWAG's "sent2").
    pub text_b: Option<String>,
    /// The label column (GLUE TSV/CSV header name, index, or JSONL field).
    #[serde(default = "default_label")]
    pub label: String,
    /// Whether TSV/CSV files start with a header line.
    #[serde(default = "yes")]
    pub header: bool,
    /// The label names in index order; by default the sorted labels of the train split.
    pub labels: Option<Vec<String>>,
    /// Tokens per input with special tokens; longer inputs are truncated (pairs: the
    /// longer text first). QA windows longer contexts instead.
    #[serde(default = "default_max_length")]
    pub max_length: usize,
    /// Multiple choice: the columns of the candidate endings (default SWAG's
    /// `ending0`–`ending3`); the label is the index of the right one.
    pub choices: Option<Vec<String>>,
    /// QA: context tokens shared by consecutive windows of a long context.
    #[serde(default = "default_doc_stride")]
    pub doc_stride: usize,
    /// QA: the longest answer, in tokens, that span decoding considers.
    #[serde(default = "default_max_answer_length")]
    pub max_answer_length: usize,
    /// QA: start and end candidates kept per window in span decoding.
    #[serde(default = "default_n_best")]
    pub n_best: usize,
    /// QA: SQuAD v2.0, where a question may have no answer in its context.
    #[serde(default)]
    pub version_2_with_negative: bool,
    /// QA v2.0: predict no answer unless the best span beats the null score by this.
    #[serde(default)]
    pub null_score_diff_threshold: f64,
}

fn default_label() -> String {
    "label".into()
}
fn yes() -> bool {
    true
}
fn default_max_length() -> usize {
    128
}
fn default_doc_stride() -> usize {
    128
}
fn default_max_answer_length() -> usize {
    30
}
fn default_n_best() -> usize {
    20
}

impl TaskSection {
    /// The defaults for `kind`.
    pub fn for_kind(kind: TaskKind) -> Self {
        let mut section: Self =
            toml::from_str(&format!("type = \"{}\"", kind.name())).expect("defaults deserialise");
        section.max_length = kind.entry().max_length;
        section
    }

    pub fn text_a(&self) -> &str {
        self.text_a.as_deref().unwrap_or(self.kind.entry().text_a)
    }

    /// The second text column, for the types that read one.
    pub fn text_b(&self) -> Option<&str> {
        match self.kind.entry().text_b {
            SecondText::Always(default) => Some(self.text_b.as_deref().unwrap_or(default)),
            _ => self.text_b.as_deref(),
        }
    }

    /// The columns of a multiple-choice example's endings.
    pub fn choices(&self) -> Vec<&str> {
        match &self.choices {
            Some(columns) => columns.iter().map(String::as_str).collect(),
            None => multiple_choice::SWAG_CHOICES.to_vec(),
        }
    }

    pub fn validate(&self) -> Result<()> {
        roberta_data::blocks::check_block_size("task.max_length", self.max_length)
            .map_err(anyhow::Error::msg)?;
        let entry = self.kind.entry();
        (entry.check)(self)?;
        if self.text_b.is_some() && matches!(entry.text_b, SecondText::Never) {
            bail!(
                "task.text_b is for {}, not {}",
                TaskKind::ALL
                    .into_iter()
                    .filter(|k| !matches!(k.entry().text_b, SecondText::Never))
                    .map(TaskKind::name)
                    .collect::<Vec<_>>()
                    .join(", "),
                entry.name
            );
        }
        if self.choices.is_some() && self.kind != TaskKind::MultipleChoice {
            bail!("task.choices is for multiple-choice, not {}", entry.name);
        }
        if let Some(labels) = &self.labels {
            let mut unique = labels.clone();
            unique.sort();
            unique.dedup();
            if labels.len() < 2 || unique.len() != labels.len() {
                bail!("task.labels must name at least two distinct labels");
            }
        }
        Ok(())
    }
}

resume_rule!(TaskSection, kept: [
    "type", "text_a", "text_b", "label", "header", "labels", "max_length", "choices", "doc_stride",
    "max_answer_length", "n_best", "version_2_with_negative", "null_score_diff_threshold",
], free: []);

#[cfg(test)]
mod tests {
    use super::*;
    use roberta_model::Pretrained;

    type B = burn::backend::Autodiff<burn::backend::Flex>;

    struct Architecture;

    impl WithTask<B> for Architecture {
        type Output = &'static str;
        fn run<T: LabeledTask>(self) -> &'static str {
            <T::Model<B> as Pretrained<B>>::ARCHITECTURE
        }
    }

    #[test]
    fn each_entry_names_its_implementations_model_and_its_serde_name() {
        for kind in TaskKind::ALL {
            let entry = kind.entry();
            assert_eq!(entry.architecture, with_task::<B, _>(kind, Architecture));
            assert_eq!(TaskSection::for_kind(kind).kind, kind);
            assert!(
                kind.metric(entry.default_metric).is_some(),
                "{}",
                entry.name
            );
            assert!(
                TaskSection::for_kind(kind).validate().is_ok(),
                "{}",
                entry.name
            );
        }
    }

    #[test]
    fn a_model_without_a_saved_task_is_read_by_its_architecture() {
        let mut config = RobertaConfig::tiny(100);
        let kind = |config: &RobertaConfig| task_of(config).map(|t| t.kind);
        config.architectures = vec!["RobertaForSequenceClassification".into()];
        config.set_labels(&["a".to_string(), "b".to_string()]);
        assert_eq!(kind(&config), Some(TaskKind::Classification));
        config.set_labels(&["LABEL_0".to_string()]);
        assert_eq!(kind(&config), Some(TaskKind::Regression));
        config.architectures = vec!["RobertaForQuestionAnswering".into()];
        assert_eq!(kind(&config), Some(TaskKind::Qa));
        config.architectures = vec!["RobertaForMaskedLM".into()];
        assert_eq!(kind(&config), None);
    }
}
