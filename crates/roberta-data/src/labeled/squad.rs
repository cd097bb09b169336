//! SQuAD v1.1/v2.0 (JSON, or a `datasets` table with `answers`), and its features:
//! character spans turned into token spans over doc-stride windows.

use super::*;

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
    pub(super) context: String,
    qas: Vec<SquadQa>,
}
#[derive(Deserialize)]
struct SquadQa {
    id: String,
    question: String,
    #[serde(default)]
    pub(super) answers: Vec<SquadAnswer>,
    #[serde(default)]
    pub(super) is_impossible: bool,
}
#[derive(Deserialize)]
struct SquadAnswer {
    pub(super) text: String,
    pub(super) answer_start: usize,
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
