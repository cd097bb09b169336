//! Labeled datasets for fine-tuning: GLUE-style TSV/CSV and JSONL (single sentences,
//! pairs, classification or regression), SQuAD v1.1/v2.0 (character spans turned into
//! token spans over doc-stride windows) and CoNLL token tags. Errors name the file, the
//! line and the column.

use std::collections::BTreeSet;
use std::path::Path;

use serde::Deserialize;

use arrow_array::cast::AsArray;

use crate::columnar::{self, Table, cell_text};
use crate::error::{DataError, Result};
use crate::input;
use crate::masking::IGNORE_INDEX;
use crate::tokenizer::RobertaTokenizer;

mod conll;
mod delimited;
mod jsonl;
mod squad;
mod table;
#[cfg(test)]
mod tests;

pub use conll::{TaggedSentence, encode_words, read_conll};
use delimited::read_delimited;
use jsonl::read_jsonl;
pub use squad::{QaExample, QaFeature, qa_features, read_squad};
use table::read_columnar;

fn error(path: &Path, message: impl Into<String>) -> DataError {
    DataError::Corpus {
        path: path.to_path_buf(),
        message: message.into(),
    }
}

/// Which columns (or JSONL fields) hold what. A column is named by its header, or by
/// its 0-based index when the file has no header.
#[derive(Debug, Clone, PartialEq)]
pub struct Columns {
    pub text_a: String,
    pub text_b: Option<String>,
    /// Absent for unlabeled (prediction) input.
    pub label: Option<String>,
    pub header: bool,
}

impl Default for Columns {
    fn default() -> Self {
        Self {
            text_a: "sentence".into(),
            text_b: None,
            label: Some("label".into()),
            header: true,
        }
    }
}

/// One sentence or sentence pair with its raw label.
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    pub text_a: String,
    pub text_b: Option<String>,
    pub label: Option<String>,
    /// 1-based line in the source file, for error messages.
    pub line: usize,
}

/// One row of a labeled file: the text of the columns asked for, in their order.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub fields: Vec<String>,
    /// 1-based line (or row) in the source file, for error messages.
    pub line: usize,
}

/// Reads the columns `names` of every row of a labeled file: `.jsonl` by field,
/// Parquet and Arrow IPC (HF `datasets` files) by column, anything else as TSV
/// (`.csv`: comma with CSV quoting), by header name or, when `header` is false,
/// 0-based index. TSV fields are taken verbatim: GLUE files hold unbalanced quotes.
pub fn read_rows(path: &Path, names: &[&str], header: bool) -> Result<Vec<Row>> {
    let bytes = input::open(path)?
        .metadata()
        .map_err(|source| DataError::Io {
            path: path.to_path_buf(),
            source,
        })?
        .len();
    if bytes == 0 {
        return Err(DataError::EmptyFile {
            path: path.to_path_buf(),
        });
    }
    let rows = match path.extension().and_then(|e| e.to_str()) {
        _ if columnar::is_columnar(path) => read_columnar(path, names)?,
        Some("jsonl" | "json") => read_jsonl(path, names)?,
        Some("csv") => read_delimited(path, names, header, b',', true)?,
        _ => read_delimited(path, names, header, b'\t', false)?,
    };
    if rows.is_empty() {
        return Err(error(path, "no examples (empty split)"));
    }
    for row in &rows {
        if let Some(text) = row.fields.iter().find(|t| t.len() > MAX_TEXT_BYTES) {
            return Err(error(
                path,
                format!("line {}: {}", row.line, too_long("text", text.len())),
            ));
        }
    }
    Ok(rows)
}

/// Reads a file of single sentences or pairs, with their labels unless unlabeled;
/// see [`read_rows`].
pub fn read_examples(path: &Path, columns: &Columns) -> Result<Vec<Example>> {
    let names: Vec<&str> = [
        Some(columns.text_a.as_str()),
        columns.text_b.as_deref(),
        columns.label.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    let examples: Vec<Example> = read_rows(path, &names, columns.header)?
        .into_iter()
        .map(|row| {
            let mut fields = row.fields.into_iter();
            Example {
                text_a: fields.next().unwrap_or_default(),
                text_b: columns.text_b.as_ref().and_then(|_| fields.next()),
                label: fields.next().map(|l| l.trim().to_string()),
                line: row.line,
            }
        })
        .collect();
    // An empty label would become a class named "".
    if let Some(e) = examples
        .iter()
        .find(|e| e.label.as_deref().is_some_and(str::is_empty))
    {
        return Err(error(path, format!("line {}: the label is empty", e.line)));
    }
    Ok(examples)
}

/// The label names of a classification dataset, in a stable order: numeric labels by
/// value (so "0", "1", "2" keep their meaning), others alphabetically.
pub fn label_set(examples: &[Example]) -> Vec<String> {
    let set: BTreeSet<&str> = examples.iter().filter_map(|e| e.label.as_deref()).collect();
    let mut labels: Vec<String> = set.into_iter().map(str::to_string).collect();
    if labels.iter().all(|l| l.parse::<i64>().is_ok()) {
        labels.sort_by_key(|l| l.parse::<i64>().unwrap_or_default());
    }
    labels
}

/// Label indices against `labels`; a label outside the set names its line.
pub fn label_ids(path: &Path, examples: &[Example], labels: &[String]) -> Result<Vec<usize>> {
    examples
        .iter()
        .map(|e| {
            let label = e
                .label
                .as_deref()
                .ok_or_else(|| error(path, format!("line {}: no label", e.line)))?;
            labels.iter().position(|l| l == label).ok_or_else(|| {
                error(
                    path,
                    format!(
                        "line {}: label \"{label}\" is not one of {}",
                        e.line,
                        labels.join(", ")
                    ),
                )
            })
        })
        .collect()
}

/// Regression targets; a label that is not a number names its line.
pub fn regression_targets(path: &Path, examples: &[Example]) -> Result<Vec<f32>> {
    examples
        .iter()
        .map(|e| {
            let label = e
                .label
                .as_deref()
                .ok_or_else(|| error(path, format!("line {}: no label", e.line)))?;
            match label.parse::<f32>() {
                Ok(v) if v.is_finite() => Ok(v),
                // `nan`, `inf` and numbers past f32's range would make every loss NaN.
                Ok(_) => Err(error(
                    path,
                    format!(
                        "line {}: label \"{label}\" is not a finite number (NaN, infinite, or beyond ±3.4e38)",
                        e.line
                    ),
                )),
                Err(_) => Err(error(
                    path,
                    format!("line {}: label \"{label}\" is not a number", e.line),
                )),
            }
        })
        .collect()
}

/// Text one field of an example may hold: a model reads at most 8192 tokens of it, and
/// tokenizing megabytes to keep a few hundred tokens costs gigabytes of memory.
pub const MAX_TEXT_BYTES: usize = 1 << 20;

fn too_long(what: &str, bytes: usize) -> String {
    format!(
        "the {what} is {bytes} bytes, over the {} MiB of text a field may hold (a model reads at most 8192 tokens of it)",
        MAX_TEXT_BYTES >> 20
    )
}
