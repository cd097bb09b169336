//! Sentence vectors from a frozen encoder: the inputs `embed` and `probe` read (embed's
//! JSONL, or a labeled file's text columns), and the batched, length-sorted forward
//! passes that pool them (`roberta_model::pooling`).

use std::borrow::Cow;
use std::path::Path;

use anyhow::{Context, Result, bail, ensure};
use roberta_data::RobertaTokenizer;
use roberta_data::labeled::{Columns, Example, read_examples};
use roberta_model::pooling::{self, Pooling};
use roberta_model::{Kernels, RobertaConfig, RobertaInput, RobertaModel};
use serde::Deserialize;

use crate::sources::models::load_tokenizer_for;

pub mod probe;

/// One input: where it came from, its optional `id`, and its token ids.
#[derive(Debug, Clone)]
pub struct Row {
    /// 1-based line in the input file.
    pub line: usize,
    pub id: Option<serde_json::Value>,
    pub ids: Vec<u32>,
    /// The raw label of a labeled file's row, when a label column was named.
    pub label: Option<String>,
}

/// One line of `embed`'s own JSONL input.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedLine {
    text: Option<String>,
    input_ids: Option<Vec<u32>>,
    id: Option<serde_json::Value>,
}

/// Reads inputs one at a time: embed's JSONL (`{"text"}` or `{"input_ids"}`, with an
/// optional `"id"`) line by line, or a labeled file's rows by column. Inputs longer than
/// the model takes are refused with their line, or cut (keeping `</s>`) with `truncate`.
pub struct Rows<'a> {
    path: &'a Path,
    /// Where the tokenizer comes from when it is not given: loaded at the first text.
    model_dir: Option<&'a Path>,
    config: &'a RobertaConfig,
    truncate: bool,
    tokenizer: Option<Cow<'a, RobertaTokenizer>>,
    source: Source,
}

/// The tokenizer of the texts: a model directory's (loaded when a text needs it), or one
/// at hand (a pretraining run's).
pub enum TokenizerFrom<'a> {
    ModelDir(&'a Path),
    Given(&'a RobertaTokenizer),
}

enum Source {
    Jsonl(roberta_data::input::Lines),
    Examples(std::vec::IntoIter<Example>),
}

impl<'a> Rows<'a> {
    /// `columns` names a labeled file's text columns; without it, a `.jsonl`/`.json`
    /// file is embed's own format and anything else a GLUE-style file with `sentence`.
    pub fn open(
        path: &'a Path,
        columns: Option<&Columns>,
        tokenizer: TokenizerFrom<'a>,
        config: &'a RobertaConfig,
        truncate: bool,
    ) -> Result<Self> {
        let own_jsonl = columns.is_none()
            && matches!(
                path.extension().and_then(|e| e.to_str()),
                Some("jsonl" | "json")
            );
        let source = if own_jsonl {
            Source::Jsonl(roberta_data::input::lines(path)?)
        } else {
            let unlabeled = Columns {
                label: None,
                ..Columns::default()
            };
            let examples = read_examples(path, columns.unwrap_or(&unlabeled))?;
            Source::Examples(examples.into_iter())
        };
        let (model_dir, tokenizer) = match tokenizer {
            TokenizerFrom::ModelDir(dir) => (Some(dir), None),
            TokenizerFrom::Given(t) => (None, Some(Cow::Borrowed(t))),
        };
        Ok(Self {
            path,
            model_dir,
            config,
            truncate,
            tokenizer,
            source,
        })
    }

    fn tokenizer(&mut self) -> Result<&RobertaTokenizer> {
        if let (None, Some(dir)) = (&self.tokenizer, self.model_dir) {
            self.tokenizer = Some(Cow::Owned(load_tokenizer_for(dir, self.config)?));
        }
        Ok(self.tokenizer.as_ref().expect("loaded"))
    }

    /// Refuses an input of `len` tokens that the model cannot take whole, unless told
    /// to cut it.
    fn check_length(&self, line: usize, len: usize) -> Result<()> {
        let max = self.config.max_sequence_length();
        ensure!(
            len <= max || self.truncate,
            "{}:{line}: {len} tokens, more than the model's {max} (pass --truncate to cut)",
            self.path.display(),
        );
        Ok(())
    }

    fn jsonl_row(&mut self, line: usize, text: &str) -> Result<Option<Row>> {
        let at = || format!("{}:{line}", self.path.display());
        if text.trim().is_empty() {
            return Ok(None);
        }
        let parsed: EmbedLine = serde_json::from_str(text).with_context(|| {
            format!(
                "{}: expected {{\"text\": …}} or {{\"input_ids\": […]}} (and an optional \"id\")",
                at()
            )
        })?;
        let ids = match (parsed.text, parsed.input_ids) {
            (Some(text), None) => self.tokenizer()?.encode(&text, true)?.ids,
            (None, Some(ids)) => {
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= self.config.vocab_size) {
                    bail!(
                        "{}: token id {bad} is outside the vocabulary of {}",
                        at(),
                        self.config.vocab_size
                    );
                }
                ids
            }
            _ => bail!(
                "{}: expected exactly one of \"text\" or \"input_ids\"",
                at()
            ),
        };
        ensure!(!ids.is_empty(), "{}: empty input_ids", at());
        self.check_length(line, ids.len())?;
        let mut ids = ids;
        let max = self.config.max_sequence_length();
        if ids.len() > max {
            let eos = ids[ids.len() - 1];
            ids.truncate(max);
            ids[max - 1] = eos;
        }
        Ok(Some(Row {
            line,
            id: parsed.id,
            ids,
            label: None,
        }))
    }

    fn example_row(&mut self, e: Example) -> Result<Row> {
        let max = self.config.max_sequence_length();
        let (ids, whole) = crate::tasks::sequence::sentence_ids(
            self.tokenizer()?,
            &e.text_a,
            e.text_b.as_deref(),
            max,
        )?;
        self.check_length(e.line, whole)?;
        Ok(Row {
            line: e.line,
            id: None,
            ids,
            label: e.label,
        })
    }
}

impl Iterator for Rows<'_> {
    type Item = Result<Row>;

    fn next(&mut self) -> Option<Result<Row>> {
        loop {
            let next = match &mut self.source {
                Source::Jsonl(lines) => match lines.next()? {
                    Ok((n, text)) => self.jsonl_row(n, &text).transpose(),
                    Err(e) => Some(Err(e.into())),
                },
                Source::Examples(examples) => {
                    let e = examples.next()?;
                    Some(self.example_row(e))
                }
            };
            if next.is_some() {
                return next;
            }
        }
    }
}

/// How token states become one vector per input.
#[derive(Debug, Clone, Copy)]
pub struct PoolingChoice {
    pub pooling: Pooling,
    pub normalize: bool,
    /// The hidden state pooled: 0 is the embedding output, `num_hidden_layers` the last.
    pub layer: usize,
}

impl PoolingChoice {
    /// `layer` counts as HF's `hidden_states` index; negative counts from the end (−1:
    /// the last layer).
    pub fn new(pooling: Pooling, normalize: bool, layer: i64, layers: usize) -> Result<Self> {
        let states = layers as i64 + 1;
        let index = if layer < 0 { states + layer } else { layer };
        ensure!(
            (0..states).contains(&index),
            "--layer {layer}: the model has {layers} layers (hidden states 0..={layers}, or -1..=-{states})"
        );
        Ok(Self {
            pooling,
            normalize,
            layer: index as usize,
        })
    }
}

/// Rows pooled per forward pass, sorted by length within a window so that a batch pads
/// little; vectors come back in the rows' order.
pub fn encode<B: Kernels, R: AsRef<[u32]>>(
    model: &RobertaModel<B>,
    rows: &[R],
    pad: u32,
    batch_size: usize,
    choice: PoolingChoice,
    device: &B::Device,
) -> Result<Vec<Vec<f32>>> {
    let layers = model.num_layers();
    let mut order: Vec<usize> = (0..rows.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(rows[i].as_ref().len()));
    let mut out = vec![Vec::new(); rows.len()];
    for batch in order.chunks(batch_size) {
        let batch_rows: Vec<&[u32]> = batch.iter().map(|&i| rows[i].as_ref()).collect();
        let input = RobertaInput::from_rows(&batch_rows, pad, device);
        let mask = input.attention_mask.clone();
        let output = model.forward(input, choice.layer < layers);
        let hidden = if choice.layer < layers {
            output
                .hidden_states
                .into_iter()
                .nth(choice.layer)
                .expect("one state per layer")
        } else {
            output.last_hidden_state
        };
        let mut vectors = pooling::pool(hidden, mask, choice.pooling);
        if choice.normalize {
            vectors = pooling::normalize(vectors);
        }
        let [_, width] = vectors.dims();
        let values = vectors.into_data().convert::<f32>().into_vec::<f32>()?;
        for (r, &i) in batch.iter().enumerate() {
            out[i] = values[r * width..(r + 1) * width].to_vec();
        }
    }
    Ok(out)
}
