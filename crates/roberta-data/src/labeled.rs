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

/// Reads a labeled file: `.jsonl` by field, Parquet and Arrow IPC (HF `datasets`
/// files) by column, anything else as TSV (`.csv`: comma with CSV quoting). TSV fields
/// are taken verbatim: GLUE files hold unbalanced quotes.
pub fn read_examples(path: &Path, columns: &Columns) -> Result<Vec<Example>> {
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
    let examples = match path.extension().and_then(|e| e.to_str()) {
        _ if columnar::is_columnar(path) => read_columnar(path, columns)?,
        Some("jsonl" | "json") => read_jsonl(path, columns)?,
        Some("csv") => read_delimited(path, columns, b',', true)?,
        _ => read_delimited(path, columns, b'\t', false)?,
    };
    if examples.is_empty() {
        return Err(error(path, "no examples (empty split)"));
    }
    for e in &examples {
        let fields = [Some(&e.text_a), e.text_b.as_ref()];
        if let Some(text) = fields
            .into_iter()
            .flatten()
            .find(|t| t.len() > MAX_TEXT_BYTES)
        {
            return Err(error(
                path,
                format!("line {}: {}", e.line, too_long("text", text.len())),
            ));
        }
    }
    // An empty label would become a class named "".
    if let Some(e) = examples
        .iter()
        .find(|e| e.label.as_deref().is_some_and(|l| l.trim().is_empty()))
    {
        return Err(error(path, format!("line {}: the label is empty", e.line)));
    }
    Ok(examples)
}

fn read_delimited(
    path: &Path,
    columns: &Columns,
    delimiter: u8,
    quoting: bool,
) -> Result<Vec<Example>> {
    let mut reader = csv::ReaderBuilder::new()
        .delimiter(delimiter)
        .quoting(quoting)
        .has_headers(columns.header)
        .flexible(true)
        .from_reader(input::text(path)?);
    let index = |name: &str, headers: &[String]| -> Result<usize> {
        if columns.header {
            headers.iter().position(|h| h == name).ok_or_else(|| {
                error(
                    path,
                    format!(
                        "no column \"{name}\" in the header (columns: {})",
                        headers.join(", ")
                    ),
                )
            })
        } else {
            name.parse().map_err(|_| {
                error(
                    path,
                    format!("column \"{name}\": without a header, columns are 0-based indices"),
                )
            })
        }
    };
    let headers: Vec<String> = if columns.header {
        reader
            .headers()
            .map_err(|e| error(path, e.to_string()))?
            .iter()
            .map(|h| h.trim_start_matches('\u{feff}').trim().to_string())
            .collect()
    } else {
        Vec::new()
    };
    if columns.header && headers.iter().all(String::is_empty) {
        return Err(error(
            path,
            "no header line (the file holds only blank lines)",
        ));
    }
    let a = index(&columns.text_a, &headers)?;
    let b = columns
        .text_b
        .as_deref()
        .map(|c| index(c, &headers))
        .transpose()?;
    let l = columns
        .label
        .as_deref()
        .map(|c| index(c, &headers))
        .transpose()?;
    let mut examples = Vec::new();
    // Every row has as many fields as the header (or, without one, the first row): GLUE
    // TSV is read verbatim, so a tab inside a quoted text splits it into two fields,
    // and an extra field read as text or label would train on the wrong column.
    let mut width = columns.header.then_some(headers.len());
    for record in reader.records() {
        let record = record.map_err(|e| error(path, e.to_string()))?;
        let line = record.position().map_or(0, |p| p.line() as usize);
        if record.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        let expected = *width.get_or_insert(record.len());
        if record.len() > expected {
            return Err(error(
                path,
                format!(
                    "line {line}: {} fields where {} has {expected} (a {} inside a text field?)",
                    record.len(),
                    if columns.header {
                        "the header"
                    } else {
                        "the first row"
                    },
                    if delimiter == b'\t' { "tab" } else { "comma" }
                ),
            ));
        }
        let field = |i: usize, name: &str| -> Result<String> {
            record.get(i).map(str::to_string).ok_or_else(|| {
                error(
                    path,
                    format!(
                        "line {line}: no column \"{name}\" ({} fields)",
                        record.len()
                    ),
                )
            })
        };
        examples.push(Example {
            text_a: field(a, &columns.text_a)?,
            text_b: b
                .map(|i| field(i, columns.text_b.as_deref().unwrap_or_default()))
                .transpose()?,
            label: l
                .map(|i| {
                    field(i, columns.label.as_deref().unwrap_or_default())
                        .map(|s| s.trim().to_string())
                })
                .transpose()?,
            line,
        });
    }
    Ok(examples)
}

/// Parquet or Arrow IPC rows; `line` is the 1-based row. Integer labels (an HF
/// `ClassLabel`) read as their numbers.
fn read_columnar(path: &Path, columns: &Columns) -> Result<Vec<Example>> {
    let table = Table::open(path, input::open(path)?)?;
    let names: Vec<&str> = [
        Some(columns.text_a.as_str()),
        columns.text_b.as_deref(),
        columns.label.as_deref(),
    ]
    .into_iter()
    .flatten()
    .collect();
    for name in &names {
        table.require(
            name,
            "; task.text_a, task.text_b and task.label name columns",
        )?;
    }
    let mut examples = Vec::new();
    table.for_each_batch(&names, &mut |batch| {
        for row in 0..batch.rows() {
            let line = batch.row_number(row);
            let get = |name: &str| batch.required_text(name, row);
            examples.push(Example {
                text_a: get(&columns.text_a)?,
                text_b: columns.text_b.as_deref().map(get).transpose()?,
                label: columns.label.as_deref().map(get).transpose()?,
                line,
            });
        }
        Ok(())
    })?;
    Ok(examples)
}

fn read_jsonl(path: &Path, columns: &Columns) -> Result<Vec<Example>> {
    let mut examples = Vec::new();
    for line in input::lines(path)? {
        let (line_no, line) = line?;
        if line.trim().is_empty() {
            continue;
        }
        let v: serde_json::Value = serde_json::from_str(&line)
            .map_err(|e| error(path, format!("line {line_no}: invalid JSON: {e}")))?;
        let get = |name: &str| -> Result<String> {
            match v.get(name) {
                Some(serde_json::Value::String(s)) => Ok(s.clone()),
                Some(serde_json::Value::Number(n)) => Ok(n.to_string()),
                Some(serde_json::Value::Bool(b)) => Ok(b.to_string()),
                _ => Err(error(path, format!("line {line_no}: no field \"{name}\""))),
            }
        };
        examples.push(Example {
            text_a: get(&columns.text_a)?,
            text_b: columns.text_b.as_deref().map(get).transpose()?,
            label: columns.label.as_deref().map(get).transpose()?,
            line: line_no,
        });
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

/// A SQuAD question with its context and (for training) answers.
#[derive(Debug, Clone, PartialEq)]
pub struct QaExample {
    pub id: String,
    pub question: String,
    pub context: String,
    /// Character spans `(start, end)` of the answers in `context`.
    pub answers: Vec<(usize, usize, String)>,
    pub is_impossible: bool,
}

#[derive(Deserialize)]
struct SquadFile {
    data: Vec<SquadArticle>,
}
#[derive(Deserialize)]
struct SquadArticle {
    paragraphs: Vec<SquadParagraph>,
}
#[derive(Deserialize)]
struct SquadParagraph {
    context: String,
    qas: Vec<SquadQa>,
}
#[derive(Deserialize)]
struct SquadQa {
    id: String,
    question: String,
    #[serde(default)]
    answers: Vec<SquadAnswer>,
    #[serde(default)]
    is_impossible: bool,
}
#[derive(Deserialize)]
struct SquadAnswer {
    text: String,
    answer_start: usize,
}

/// Reads SQuAD v1.1 or v2.0: the original JSON, or HF `datasets`' Parquet/Arrow form
/// (columns id, question, context and answers, a struct of lists `text` and
/// `answer_start` or its flattened `answers.text` and `answers.answer_start`; no answer
/// means unanswerable). Every answer must sit at its `answer_start` (a character offset)
/// in the context; one that does not names the question id.
pub fn read_squad(path: &Path) -> Result<Vec<QaExample>> {
    let examples = if columnar::is_columnar(path) {
        read_squad_columnar(path)?
    } else {
        read_squad_json(path)?
    };
    if examples.is_empty() {
        return Err(error(path, "no questions (empty split)"));
    }
    for e in &examples {
        for (what, text) in [("context", &e.context), ("question", &e.question)] {
            if text.len() > MAX_TEXT_BYTES {
                return Err(error(
                    path,
                    format!("question {}: {}", e.id, too_long(what, text.len())),
                ));
            }
        }
    }
    Ok(examples)
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

fn read_squad_json(path: &Path) -> Result<Vec<QaExample>> {
    let text = input::read_to_string(path)?;
    let file: SquadFile =
        serde_json::from_str(&text).map_err(|e| error(path, format!("not SQuAD JSON: {e}")))?;
    let mut examples = Vec::new();
    for article in file.data {
        for paragraph in article.paragraphs {
            for qa in paragraph.qas {
                let answers = qa.answers.into_iter().map(|a| (a.text, a.answer_start));
                examples.push(qa_example(
                    path,
                    qa.id,
                    qa.question,
                    paragraph.context.clone(),
                    answers.collect(),
                    qa.is_impossible,
                )?);
            }
        }
    }
    Ok(examples)
}

fn read_squad_columnar(path: &Path) -> Result<Vec<QaExample>> {
    let table = Table::open(path, input::open(path)?)?;
    let hint = "; SQuAD as HF datasets writes it has id, question, context and answers";
    let flat = table.has("answers.text") && table.has("answers.answer_start");
    let mut wanted = vec!["id", "question", "context"];
    if flat {
        wanted.extend(["answers.text", "answers.answer_start"]);
    } else {
        wanted.push("answers");
    }
    for name in &wanted {
        table.require(name, hint)?;
    }
    let mut examples = Vec::new();
    table.for_each_batch(&wanted, &mut |batch| {
        let (texts, starts) = if flat {
            (
                batch.column("answers.text")?.clone(),
                batch.column("answers.answer_start")?.clone(),
            )
        } else {
            let answers = batch.column("answers")?;
            let Some(answers) = answers.as_struct_opt() else {
                return Err(error(
                    path,
                    format!(
                        "column \"answers\" holds {}; expected a struct of lists text and answer_start",
                        answers.data_type()
                    ),
                ));
            };
            let field = |name: &str| {
                answers.column_by_name(name).cloned().ok_or_else(|| {
                    error(path, format!("column \"answers\" has no field \"{name}\""))
                })
            };
            (field("text")?, field("answer_start")?)
        };
        for row in 0..batch.rows() {
            let number = batch.row_number(row);
            let text = |name: &str| batch.required_text(name, row);
            let answer_texts = list_texts(path, "answers.text", texts.as_ref(), row)?;
            let answer_starts = list_texts(path, "answers.answer_start", starts.as_ref(), row)?;
            if answer_texts.len() != answer_starts.len() {
                return Err(error(
                    path,
                    format!(
                        "row {number}: {} answer texts but {} answer_start values",
                        answer_texts.len(),
                        answer_starts.len()
                    ),
                ));
            }
            let mut answers = Vec::new();
            for (t, start) in answer_texts.into_iter().zip(answer_starts) {
                let start = start.parse::<usize>().map_err(|_| {
                    error(path, format!("row {number}: answer_start {start:?} is not an offset"))
                })?;
                answers.push((t, start));
            }
            let impossible = answers.is_empty();
            examples.push(qa_example(
                path,
                text("id")?,
                text("question")?,
                text("context")?,
                answers,
                impossible,
            )?);
        }
        Ok(())
    })?;
    Ok(examples)
}

/// The cells of a list cell (a `List` or `LargeList` column), as text.
fn list_texts(
    path: &Path,
    name: &str,
    array: &dyn arrow_array::Array,
    row: usize,
) -> Result<Vec<String>> {
    let values = match array.data_type() {
        arrow_schema::DataType::List(_) => array.as_list::<i32>().value(row),
        arrow_schema::DataType::LargeList(_) => array.as_list::<i64>().value(row),
        other => {
            return Err(error(
                path,
                format!("column \"{name}\" holds {other}; expected a list"),
            ));
        }
    };
    (0..values.len())
        .map(|i| {
            cell_text(path, name, values.as_ref(), i)?
                .ok_or_else(|| error(path, format!("column \"{name}\" holds a null")))
        })
        .collect()
}

/// A question whose answers are checked against its context.
fn qa_example(
    path: &Path,
    id: String,
    question: String,
    context: String,
    answers: Vec<(String, usize)>,
    is_impossible: bool,
) -> Result<QaExample> {
    let chars: Vec<char> = context.chars().collect();
    let mut spans = Vec::new();
    for (text, start) in answers {
        let end = start + text.chars().count();
        let found: String = chars
            .get(start..end)
            .map(|c| c.iter().collect())
            .unwrap_or_default();
        if found != text {
            return Err(error(
                path,
                format!(
                    "question {id}: answer {text:?} is not at character {start} of its context (found {found:?})"
                ),
            ));
        }
        spans.push((start, end, text));
    }
    if spans.is_empty() && !is_impossible {
        return Err(error(
            path,
            format!("question {id}: no answer and not marked is_impossible"),
        ));
    }
    Ok(QaExample {
        id,
        question,
        context,
        answers: spans,
        is_impossible,
    })
}

/// One window of a QA example: `<s> question </s></s> context-window </s>`.
#[derive(Debug, Clone, PartialEq)]
pub struct QaFeature {
    pub example: usize,
    pub input_ids: Vec<u32>,
    /// Character span in the context of each token; `None` outside the context.
    pub offsets: Vec<Option<(usize, usize)>>,
    /// Token positions of the first answer, or `(0, 0)` (the `<s>` token) when the
    /// window does not hold it or the question has none, as in HF's `run_qa`.
    pub start: usize,
    pub end: usize,
}

/// Splits each example into windows of at most `max_length` tokens whose contexts
/// overlap by `doc_stride` tokens, as HF's `run_qa` does.
pub fn qa_features(
    tokenizer: &RobertaTokenizer,
    examples: &[QaExample],
    max_length: usize,
    doc_stride: usize,
) -> Result<Vec<QaFeature>> {
    let s = tokenizer.specials();
    let mut features = Vec::new();
    for (index, ex) in examples.iter().enumerate() {
        let mut question = tokenizer.encode(&ex.question, false)?.ids;
        let context = tokenizer.encode(&ex.context, false)?;
        // Long questions are cut to leave room for some context, as run_qa's truncation.
        question.truncate(max_length.saturating_sub(4) / 2);
        let room = max_length.saturating_sub(question.len() + 4);
        if room == 0 || doc_stride >= room {
            return Err(DataError::Invalid(format!(
                "task.max_length {max_length} leaves {room} context tokens after the question, not more than task.doc_stride {doc_stride}: raise task.max_length or lower task.doc_stride"
            )));
        }
        let mut start_token = 0;
        loop {
            let end_token = (start_token + room).min(context.ids.len());
            let mut input_ids = vec![s.bos];
            input_ids.extend(&question);
            input_ids.extend([s.eos, s.eos]);
            let context_start = input_ids.len();
            input_ids.extend(&context.ids[start_token..end_token]);
            input_ids.push(s.eos);
            let mut offsets = vec![None; input_ids.len()];
            for (k, t) in (start_token..end_token).enumerate() {
                offsets[context_start + k] = Some(context.offsets[t]);
            }
            let (mut start, mut end) = (0, 0);
            if let Some(&(a, b, _)) = ex.answers.first() {
                let first = (start_token..end_token).find(|&t| context.offsets[t].1 > a);
                let last = (start_token..end_token)
                    .rev()
                    .find(|&t| context.offsets[t].0 < b);
                if let (Some(f), Some(l)) = (first, last)
                    && context.offsets[start_token].0 <= a
                    && context.offsets[end_token - 1].1 >= b
                {
                    start = context_start + f - start_token;
                    end = context_start + l - start_token;
                }
            }
            features.push(QaFeature {
                example: index,
                input_ids,
                offsets,
                start,
                end,
            });
            if end_token >= context.ids.len() {
                break;
            }
            start_token += room - doc_stride;
        }
    }
    Ok(features)
}

/// A CoNLL sentence: words and their tags.
#[derive(Debug, Clone, PartialEq)]
pub struct TaggedSentence {
    pub words: Vec<String>,
    pub tags: Vec<String>,
    pub line: usize,
}

/// Reads CoNLL-style files: one `word … tag` per line (the tag is the last
/// whitespace-separated column), blank lines between sentences, `-DOCSTART-` ignored.
pub fn read_conll(path: &Path) -> Result<Vec<TaggedSentence>> {
    let mut sentences = Vec::new();
    let mut current = TaggedSentence {
        words: Vec::new(),
        tags: Vec::new(),
        line: 1,
    };
    // Every token line has the columns of the first: with one fewer, the last column
    // would be another one (a POS tag) taken as the tag.
    let mut width: Option<(usize, usize)> = None;
    let mut sentence_bytes = 0;
    for line in input::lines(path)? {
        let (n, line) = line?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        if fields.is_empty() || fields[0] == "-DOCSTART-" {
            sentence_bytes = 0;
            if !current.words.is_empty() {
                sentences.push(std::mem::replace(
                    &mut current,
                    TaggedSentence {
                        words: Vec::new(),
                        tags: Vec::new(),
                        line: n + 1,
                    },
                ));
            } else {
                current.line = n + 1;
            }
            continue;
        }
        if fields.len() < 2 {
            return Err(error(
                path,
                format!("line {n}: expected a word and a tag, found {line:?}"),
            ));
        }
        let (columns, first) = *width.get_or_insert((fields.len(), n));
        if fields.len() != columns {
            return Err(error(
                path,
                format!(
                    "line {n}: {} columns where line {first} has {columns}: the tag is the last column of every line",
                    fields.len()
                ),
            ));
        }
        current.words.push(fields[0].to_string());
        current.tags.push(fields[fields.len() - 1].to_string());
        sentence_bytes += fields[0].len();
        if sentence_bytes > MAX_TEXT_BYTES {
            return Err(error(
                path,
                format!(
                    "the sentence from line {}: {}",
                    current.line,
                    too_long("sentence", sentence_bytes)
                ),
            ));
        }
    }
    if !current.words.is_empty() {
        sentences.push(current);
    }
    if sentences.is_empty() {
        return Err(error(path, "no sentences (empty split)"));
    }
    Ok(sentences)
}

/// Token ids of pre-split words (each with a leading space, as HF's `add_prefix_space`),
/// with `labels[i]` on each word's first sub-word and [`IGNORE_INDEX`] elsewhere.
pub fn encode_words(
    tokenizer: &RobertaTokenizer,
    words: &[String],
    labels: &[usize],
) -> Result<(Vec<u32>, Vec<i64>)> {
    let s = tokenizer.specials();
    let (mut ids, mut targets) = (vec![s.bos], vec![IGNORE_INDEX]);
    for (word, &label) in words.iter().zip(labels) {
        let pieces = tokenizer.encode(&format!(" {word}"), false)?.ids;
        for (k, id) in pieces.into_iter().enumerate() {
            ids.push(id);
            targets.push(if k == 0 { label as i64 } else { IGNORE_INDEX });
        }
    }
    ids.push(s.eos);
    targets.push(IGNORE_INDEX);
    Ok((ids, targets))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_data::shared;
    use std::sync::Arc;

    use arrow_array::builder::{Int32Builder, ListBuilder, StringBuilder};
    use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray, StructArray};

    fn write_parquet(path: &Path, batch: &RecordBatch) {
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(path).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(batch).unwrap();
        w.close().unwrap();
    }

    fn write_arrow_stream(path: &Path, batch: &RecordBatch) {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(
            std::fs::File::create(path).unwrap(),
            &batch.schema(),
        )
        .unwrap();
        w.write(batch).unwrap();
        w.finish().unwrap();
    }

    /// GLUE as HF `datasets` stores it: text columns and an integer `label`.
    #[test]
    fn parquet_and_arrow_rows_are_examples_with_integer_labels() {
        let dir = tempfile::tempdir().unwrap();
        let text: ArrayRef = Arc::new(StringArray::from(vec!["good film", "dull", "fine"]));
        let other: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some("b"), None]));
        let label: ArrayRef = Arc::new(Int64Array::from(vec![1, 0, 1]));
        let batch = RecordBatch::try_from_iter([
            ("sentence", text),
            ("sentence2", other),
            ("label", label),
        ])
        .unwrap();
        let pq = dir.path().join("train-00000-of-00001.parquet");
        write_parquet(&pq, &batch);
        let arrow = dir.path().join("data-00000-of-00001.arrow");
        write_arrow_stream(&arrow, &batch);
        // Feather as pandas and pyarrow write it by default: the file format, LZ4.
        let feather = dir.path().join("frame.feather");
        let options = arrow_ipc::writer::IpcWriteOptions::default()
            .try_with_compression(Some(arrow_ipc::CompressionType::LZ4_FRAME))
            .unwrap();
        let mut w = arrow_ipc::writer::FileWriter::try_new_with_options(
            std::fs::File::create(&feather).unwrap(),
            &batch.schema(),
            options,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.finish().unwrap();
        for p in [&pq, &arrow, &feather] {
            let ex = read_examples(p, &Columns::default()).unwrap();
            assert_eq!(ex.len(), 3);
            assert_eq!(
                (ex[0].text_a.as_str(), ex[0].label.as_deref()),
                ("good film", Some("1"))
            );
            assert_eq!(ex[2].line, 3);
            assert_eq!(label_set(&ex), vec!["0", "1"]);
            let missing = Columns {
                text_a: "text".into(),
                ..Columns::default()
            };
            let err = read_examples(p, &missing).unwrap_err().to_string();
            assert!(
                err.contains("no column \"text\"") && err.contains("sentence, sentence2, label"),
                "{err}"
            );
            let pairs = Columns {
                text_b: Some("sentence2".into()),
                ..Columns::default()
            };
            let err = read_examples(p, &pairs).unwrap_err().to_string();
            assert!(err.contains("row 3: column \"sentence2\" is null"), "{err}");
        }
    }

    /// SQuAD as HF `datasets` stores it: `answers` a struct of lists, or flattened.
    #[test]
    fn squad_from_parquet_struct_or_flattened_answers() {
        let dir = tempfile::tempdir().unwrap();
        let context = "Paris is the capital of France.";
        let mut texts = ListBuilder::new(StringBuilder::new());
        let mut starts = ListBuilder::new(Int32Builder::new());
        texts.values().append_value("Paris");
        texts.values().append_value("Paris");
        texts.append(true);
        starts.values().append_value(0);
        starts.values().append_value(0);
        starts.append(true);
        texts.append(true);
        starts.append(true);
        let (texts, starts): (ArrayRef, ArrayRef) =
            (Arc::new(texts.finish()), Arc::new(starts.finish()));
        let strings = |v: [&str; 2]| -> ArrayRef { Arc::new(StringArray::from(v.to_vec())) };
        let common = [
            ("id", strings(["q1", "q2"])),
            ("question", strings(["Capital?", "Largest city?"])),
            ("context", strings([context, context])),
        ];
        let answers: ArrayRef = Arc::new(StructArray::from(vec![
            (
                Arc::new(arrow_schema::Field::new(
                    "text",
                    texts.data_type().clone(),
                    true,
                )),
                texts.clone(),
            ),
            (
                Arc::new(arrow_schema::Field::new(
                    "answer_start",
                    starts.data_type().clone(),
                    true,
                )),
                starts.clone(),
            ),
        ]));
        let nested =
            RecordBatch::try_from_iter(common.iter().cloned().chain([("answers", answers)]))
                .unwrap();
        let flat = RecordBatch::try_from_iter(
            common
                .iter()
                .cloned()
                .chain([("answers.text", texts), ("answers.answer_start", starts)]),
        )
        .unwrap();
        for (name, batch) in [("nested", nested), ("flat", flat)] {
            let p = dir.path().join(format!("{name}.parquet"));
            write_parquet(&p, &batch);
            let ex = read_squad(&p).unwrap();
            assert_eq!(ex.len(), 2, "{name}");
            assert_eq!(ex[0].answers, vec![(0, 5, "Paris".to_string()); 2]);
            assert!(!ex[0].is_impossible && ex[1].is_impossible && ex[1].answers.is_empty());
        }
        let wrong = RecordBatch::try_from_iter(
            common
                .iter()
                .cloned()
                .chain([("answers", strings(["Paris", "x"]))]),
        )
        .unwrap();
        let p = dir.path().join("wrong.parquet");
        write_parquet(&p, &wrong);
        let err = read_squad(&p).unwrap_err().to_string();
        assert!(err.contains("expected a struct of lists"), "{err}");
    }

    #[test]
    fn glue_sst2_and_mrpc() {
        let Some(sst2) = shared("sst2/dev.tsv") else {
            return;
        };
        let ex = read_examples(&sst2, &Columns::default()).unwrap();
        assert_eq!(ex.len(), 872);
        assert_eq!(label_set(&ex), vec!["0", "1"]);
        let Some(mrpc) = shared("mrpc/dev.tsv") else {
            return;
        };
        let cols = Columns {
            text_a: "#1 String".into(),
            text_b: Some("#2 String".into()),
            label: Some("Quality".into()),
            header: true,
        };
        let ex = read_examples(&mrpc, &cols).unwrap();
        assert_eq!(ex.len(), 408);
        assert!(
            ex[0]
                .text_b
                .as_deref()
                .unwrap()
                .starts_with("\"The foodservice"),
            "quotes kept verbatim"
        );
    }

    /// The hostile campaign's labeled inputs, each once accepted: non-finite regression
    /// labels, an empty label, a row wider than its header, a CoNLL line short of a
    /// column, and a byte-order mark in JSONL.
    #[test]
    fn hostile_labels_rows_and_columns_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let cols = Columns {
            text_a: "text".into(),
            ..Default::default()
        };
        let p = dir.path().join("r.tsv");
        for bad in ["nan", "inf", "-inf", "1e999"] {
            std::fs::write(&p, format!("text\tlabel\nfine\t0.5\nodd\t{bad}\n")).unwrap();
            let ex = read_examples(&p, &cols).unwrap();
            let err = regression_targets(&p, &ex).unwrap_err().to_string();
            assert!(
                err.contains("line 3") && err.contains("not a finite number"),
                "{err}"
            );
        }
        std::fs::write(&p, "text\tlabel\nfine\t1\nblank\t\n").unwrap();
        let err = read_examples(&p, &cols).unwrap_err().to_string();
        assert!(err.contains("line 3: the label is empty"), "{err}");
        std::fs::write(&p, "text\tlabel\n\"a quoted\ttab inside\"\t1\n").unwrap();
        let err = read_examples(&p, &cols).unwrap_err().to_string();
        assert!(
            err.contains("line 2: 3 fields where the header has 2 (a tab inside a text field?)"),
            "{err}"
        );
        let conll = dir.path().join("t.conll");
        std::fs::write(&conll, "EU NNP B-ORG\nrejects VBZ O\n\nGerman JJ\n").unwrap();
        let err = read_conll(&conll).err().unwrap().to_string();
        assert!(
            err.contains("line 4: 2 columns where line 1 has 3"),
            "{err}"
        );
        let j = dir.path().join("b.jsonl");
        std::fs::write(&j, "\u{feff}{\"text\": \"a\", \"label\": \"x\"}\n").unwrap();
        assert_eq!(read_examples(&j, &cols).unwrap()[0].text_a, "a");
    }

    #[test]
    fn bad_columns_labels_and_empty_splits_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.tsv");
        std::fs::write(&p, "text\tlabel\ngood\tpos\nbad\tneg\nodd\tmaybe\n").unwrap();
        let err = read_examples(&p, &Columns::default())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("\"sentence\"") && err.contains("text, label"),
            "{err}"
        );
        let cols = Columns {
            text_a: "text".into(),
            ..Default::default()
        };
        let ex = read_examples(&p, &cols).unwrap();
        let err = label_ids(&p, &ex, &["neg".into(), "pos".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 4") && err.contains("maybe"), "{err}");
        assert!(
            regression_targets(&p, &ex)
                .unwrap_err()
                .to_string()
                .contains("line 2")
        );
        for (name, text) in [("e.tsv", ""), ("e.csv", ""), ("b.tsv", "\n\n")] {
            let empty = dir.path().join(name);
            std::fs::write(&empty, text).unwrap();
            let err = read_examples(&empty, &cols).unwrap_err().to_string();
            let expected = if text.is_empty() {
                format!("{} is empty", empty.display())
            } else {
                format!("{}: no header line", empty.display())
            };
            assert!(err.starts_with(&expected), "{err}");
        }
        std::fs::write(&p, "text\tlabel\n").unwrap();
        assert!(
            read_examples(&p, &cols)
                .unwrap_err()
                .to_string()
                .contains("empty split")
        );
        let j = dir.path().join("d.jsonl");
        std::fs::write(&j, "{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\"}\n").unwrap();
        assert!(
            read_examples(&j, &cols)
                .unwrap_err()
                .to_string()
                .contains("line 2: no field \"label\"")
        );
    }

    #[test]
    fn squad_offsets_become_token_spans() {
        let Some(squad) = shared("squad_v1.1/dev-v1.1.json") else {
            return;
        };
        let Some(tok) = shared("roberta_base_tokenizer") else {
            return;
        };
        let tokenizer = RobertaTokenizer::load(&tok).unwrap();
        let examples = read_squad(&squad).unwrap();
        assert_eq!(examples.len(), 10570);
        let subset = &examples[..200];
        let features = qa_features(&tokenizer, subset, 128, 32).unwrap();
        assert!(
            features.len() > subset.len(),
            "long contexts are split into windows"
        );
        let mut found = 0;
        for f in &features {
            assert!(f.input_ids.len() <= 128);
            if f.start > 0 {
                found += 1;
                let ex = &subset[f.example];
                let (a, _) = f.offsets[f.start].unwrap();
                let (_, b) = f.offsets[f.end].unwrap();
                let span: String = ex.context.chars().skip(a).take(b - a).collect();
                assert!(
                    span.contains(ex.answers[0].2.trim()),
                    "{span:?} vs {:?}",
                    ex.answers[0].2
                );
            }
        }
        assert!(
            found >= 200,
            "every example has a window holding its answer"
        );
    }

    #[test]
    fn squad_answer_at_the_wrong_offset_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.json");
        std::fs::write(
            &p,
            r#"{"version":"2.0","data":[{"paragraphs":[{"context":"Paris is in France.","qas":[
            {"id":"q1","question":"Where?","answers":[{"text":"France","answer_start":12}]},
            {"id":"q2","question":"Why?","answers":[],"is_impossible":true},
            {"id":"q3","question":"What?","answers":[{"text":"Paris","answer_start":3}]}]}]}]}"#,
        )
        .unwrap();
        let err = read_squad(&p).unwrap_err().to_string();
        assert!(err.contains("question q3"), "{err}");
    }

    #[test]
    fn conll_tags_land_on_first_subwords() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.txt");
        std::fs::write(
            &p,
            "-DOCSTART- -X- O O\n\nEU NNP B-NP B-ORG\nrejects VBZ B-VP O\n\nPeter NNP B-NP B-PER\n",
        )
        .unwrap();
        let s = read_conll(&p).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0].tags, vec!["B-ORG", "O"]);
        let Some(tok) = shared("roberta_base_tokenizer") else {
            return;
        };
        let tokenizer = RobertaTokenizer::load(&tok).unwrap();
        let (ids, labels) =
            encode_words(&tokenizer, &["Huggingface".into(), "rocks".into()], &[3, 0]).unwrap();
        assert_eq!(ids.len(), labels.len());
        assert_eq!(labels[1], 3);
        assert_eq!(labels.iter().filter(|&&l| l != IGNORE_INDEX).count(), 2);
        std::fs::write(&p, "lonely\n").unwrap();
        assert!(read_conll(&p).unwrap_err().to_string().contains("line 1"));
    }
}
