//! `embed`: hidden states of every input, per token (a safetensors file) or pooled into
//! one vector per input (`--pool`: safetensors, `.npy` or JSONL, streamed as it goes).

use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;

use anyhow::{Context, Result, bail, ensure};
use roberta_fs::{Publish, write_file};
use roberta_model::pooling::Pooling;
use roberta_model::{RobertaInput, RobertaModel, TrainingBackend};

use crate::sentences::{PoolingChoice, Row, Rows, TokenizerFrom, encode};
use crate::sources::models::{ScratchDir, load_encoder};
use roberta_data::labeled::Columns;

pub struct EmbedArgs {
    pub model: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub all_layers: bool,
    pub batch_size: usize,
    pub truncate: bool,
    pub pool: Option<Pooling>,
    pub normalize: bool,
    pub layer: Option<i64>,
    pub columns: Option<Columns>,
}

/// Rows read, sorted by length and encoded together: bounds memory to this many inputs
/// whatever the file's size.
const WINDOW_BATCHES: usize = 64;

pub fn embed<B: TrainingBackend>(device: B::Device, args: EmbedArgs) -> Result<()> {
    crate::run::outputs::refuse_existing(&args.output, "--output")?;
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let format = match args.pool {
        None => {
            ensure!(
                !args.normalize && args.layer.is_none(),
                "--normalize and --layer apply to pooled vectors: add --pool mean|cls|max (or use --all-layers for every layer's token states)"
            );
            ensure!(
                !args
                    .output
                    .extension()
                    .is_some_and(|e| e == "npy" || e == "jsonl"),
                "--output {}: per-token states are written as safetensors (.npy and .jsonl take pooled vectors: add --pool mean|cls|max)",
                args.output.display()
            );
            OutputFormat::Tokens
        }
        Some(_) => {
            ensure!(
                !args.all_layers,
                "--all-layers writes token states: drop it with --pool, or pick one layer with --layer"
            );
            OutputFormat::of(&args.output)?
        }
    };
    let scratch = ScratchDir::for_this_process();
    let (dir, loaded) = load_encoder::<B::InnerBackend>(&args.model, &scratch, &device)?;
    let (model, config) = (loaded.model, loaded.config);
    let mut rows = Rows::open(
        &args.input,
        args.columns.as_ref(),
        TokenizerFrom::ModelDir(&dir),
        &config,
        args.truncate,
    )?;
    let pad = config.pad_token_id as u32;
    match args.pool {
        None => embed_tokens(&model, &config, &mut rows, &args, &device)?,
        Some(pooling) => {
            let choice = PoolingChoice::new(
                pooling,
                args.normalize,
                args.layer.unwrap_or(-1),
                config.num_hidden_layers,
            )?;
            let hidden = config.hidden_size;
            write_file(&args.output, Publish::New, |file| -> Result<()> {
                let mut sink = Sink::start(format, file, hidden)?;
                let bar = indicatif::ProgressBar::no_length();
                let window = args.batch_size * WINDOW_BATCHES;
                loop {
                    let chunk: Vec<Row> = rows.by_ref().take(window).collect::<Result<_>>()?;
                    if chunk.is_empty() {
                        break;
                    }
                    let ids: Vec<&[u32]> = chunk.iter().map(|r| r.ids.as_slice()).collect();
                    let vectors = encode(&model, &ids, pad, args.batch_size, choice, &device)?;
                    for (row, vector) in chunk.iter().zip(&vectors) {
                        sink.push(row, vector)?;
                    }
                    bar.inc(chunk.len() as u64);
                }
                bar.finish_and_clear();
                ensure!(sink.rows > 0, "{}: no inputs", args.input.display());
                sink.finish()
            })?
        }
    }
    tracing::info!(
        "wrote the embeddings of {} to {}",
        args.input.display(),
        args.output.display()
    );
    Ok(())
}

/// Per-token hidden states in one safetensors file, as earlier versions wrote them:
/// `i.last_hidden_state` `[tokens, hidden]`, `i.hidden_states` `[layers, tokens, hidden]`
/// with `--all-layers`, `i.input_ids` `[tokens]`. The inputs are tokenized first (their
/// ids are all that is held), so the header, which names every tensor with its offsets,
/// is written first and the states stream after it, batch by batch, in input order.
fn embed_tokens<B: roberta_model::Kernels>(
    model: &RobertaModel<B>,
    config: &roberta_model::RobertaConfig,
    rows: &mut Rows,
    args: &EmbedArgs,
    device: &B::Device,
) -> Result<()> {
    let rows: Vec<Vec<u32>> = rows.map(|r| r.map(|r| r.ids)).collect::<Result<_>>()?;
    ensure!(!rows.is_empty(), "{}: no inputs", args.input.display());
    // The embeddings' output, then every layer's.
    let (hidden, layers) = (config.hidden_size, config.num_hidden_layers + 1);
    let pad = config.pad_token_id as u32;
    let header = tokens_header(&rows, hidden, args.all_layers.then_some(layers))?;
    write_file(&args.output, Publish::New, |file| -> Result<()> {
        let mut out = BufWriter::new(file);
        out.write_all(&header)?;
        let bar = indicatif::ProgressBar::new(rows.len() as u64);
        for chunk in rows.chunks(args.batch_size) {
            let input = RobertaInput::from_rows(chunk, pad, device);
            let output = model.forward(input, args.all_layers);
            let [_, seq, _] = output.last_hidden_state.dims();
            let values =
                |t: burn::tensor::Tensor<B, 3>| t.into_data().convert::<f32>().into_vec::<f32>();
            let last = values(output.last_hidden_state)?;
            let all: Vec<Vec<f32>> = output
                .hidden_states
                .into_iter()
                .map(values)
                .collect::<std::result::Result<_, _>>()?;
            for (r, ids) in chunk.iter().enumerate() {
                let states =
                    |t: &[f32]| f32_bytes(&t[r * seq * hidden..(r * seq + ids.len()) * hidden]);
                out.write_all(&states(&last))?;
                for layer in &all {
                    out.write_all(&states(layer))?;
                }
                for &t in ids {
                    out.write_all(&i64::from(t).to_le_bytes())?;
                }
            }
            bar.inc(chunk.len() as u64);
        }
        bar.finish_and_clear();
        out.flush()?;
        Ok(())
    })
    .with_context(|| format!("writing {}", args.output.display()))
}

/// The safetensors header of [`embed_tokens`]'s file: each input's tensors in input
/// order, one after another, padded with spaces to 8 bytes as the format's writer does.
fn tokens_header(rows: &[Vec<u32>], hidden: usize, layers: Option<usize>) -> Result<Vec<u8>> {
    let mut entries = serde_json::Map::new();
    entries.insert(
        "__metadata__".into(),
        serde_json::json!({ "inputs": rows.len().to_string() }),
    );
    let mut at = 0usize;
    let mut add = |name: String, dtype: &str, shape: Vec<usize>, bytes: usize| {
        entries.insert(
            name,
            serde_json::json!({ "dtype": dtype, "shape": shape, "data_offsets": [at, at + bytes] }),
        );
        at += bytes;
    };
    for (i, ids) in rows.iter().enumerate() {
        let len = ids.len();
        add(
            format!("{i}.last_hidden_state"),
            "F32",
            vec![len, hidden],
            len * hidden * 4,
        );
        if let Some(layers) = layers {
            add(
                format!("{i}.hidden_states"),
                "F32",
                vec![layers, len, hidden],
                layers * len * hidden * 4,
            );
        }
        add(format!("{i}.input_ids"), "I64", vec![len], len * 8);
    }
    let mut json = serde_json::to_vec(&entries)?;
    json.resize(json.len().next_multiple_of(8), b' ');
    let mut header = (json.len() as u64).to_le_bytes().to_vec();
    header.extend_from_slice(&json);
    Ok(header)
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OutputFormat {
    /// Per-token states (`--pool none`).
    Tokens,
    /// `embeddings` `[inputs, hidden]` F32 and `ids` `[inputs]` I64 (each input's line).
    Safetensors,
    /// One `[inputs, hidden]` float32 array, as `numpy.save` writes it.
    Npy,
    /// `{"line": …, "id": …, "embedding": […]}` per input, in input order.
    Jsonl,
}

impl OutputFormat {
    fn of(path: &std::path::Path) -> Result<Self> {
        Ok(match path.extension().and_then(|e| e.to_str()) {
            Some("safetensors") => OutputFormat::Safetensors,
            Some("npy") => OutputFormat::Npy,
            Some("jsonl") => OutputFormat::Jsonl,
            _ => bail!(
                "--output {}: pooled vectors go to a .safetensors, .npy or .jsonl file (told by the extension)",
                path.display()
            ),
        })
    }
}

/// Bytes reserved for a header written before the row count is known, then filled in
/// (padded with spaces, which both formats allow).
const NPY_HEADER: usize = 128;
const SAFETENSORS_HEADER: usize = 1024;

/// Pooled vectors written as they come. The array formats reserve their header and
/// fill it in at the end, when the number of rows is known.
struct Sink<'f> {
    format: OutputFormat,
    out: BufWriter<&'f mut std::fs::File>,
    hidden: usize,
    rows: usize,
    lines: Vec<i64>,
}

impl<'f> Sink<'f> {
    fn start(format: OutputFormat, file: &'f mut std::fs::File, hidden: usize) -> Result<Self> {
        let mut out = BufWriter::new(file);
        let reserved = match format {
            OutputFormat::Npy => NPY_HEADER,
            OutputFormat::Safetensors => SAFETENSORS_HEADER,
            _ => 0,
        };
        out.write_all(&vec![b' '; reserved])?;
        Ok(Self {
            format,
            out,
            hidden,
            rows: 0,
            lines: Vec::new(),
        })
    }

    fn push(&mut self, row: &Row, vector: &[f32]) -> Result<()> {
        debug_assert_eq!(vector.len(), self.hidden);
        self.rows += 1;
        match self.format {
            OutputFormat::Jsonl => {
                let mut record = serde_json::Map::new();
                record.insert("line".into(), row.line.into());
                if let Some(id) = &row.id {
                    record.insert("id".into(), id.clone());
                }
                record.insert("embedding".into(), serde_json::json!(vector));
                serde_json::to_writer(&mut self.out, &record)?;
                self.out.write_all(b"\n")?;
            }
            _ => {
                self.lines.push(row.line as i64);
                self.out.write_all(&f32_bytes(vector))?;
            }
        }
        Ok(())
    }

    fn finish(mut self) -> Result<()> {
        let (rows, hidden) = (self.rows, self.hidden);
        let header = match self.format {
            OutputFormat::Npy => {
                let dict = format!(
                    "{{'descr': '<f4', 'fortran_order': False, 'shape': ({rows}, {hidden}), }}"
                );
                let mut h = b"\x93NUMPY\x01\x00".to_vec();
                h.extend_from_slice(&((NPY_HEADER - 10) as u16).to_le_bytes());
                h.extend_from_slice(dict.as_bytes());
                h.resize(NPY_HEADER - 1, b' ');
                h.push(b'\n');
                Some(h)
            }
            OutputFormat::Safetensors => {
                let floats = rows * hidden * 4;
                for line in &self.lines {
                    self.out.write_all(&line.to_le_bytes())?;
                }
                let json = serde_json::json!({
                    "embeddings": {"dtype": "F32", "shape": [rows, hidden], "data_offsets": [0, floats]},
                    "ids": {"dtype": "I64", "shape": [rows], "data_offsets": [floats, floats + rows * 8]},
                })
                .to_string();
                let mut h = ((SAFETENSORS_HEADER - 8) as u64).to_le_bytes().to_vec();
                h.extend_from_slice(json.as_bytes());
                h.resize(SAFETENSORS_HEADER, b' ');
                Some(h)
            }
            _ => None,
        };
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
        if let Some(header) = header {
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&header)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(line: usize) -> Row {
        Row {
            line,
            id: None,
            ids: vec![0, 2],
            label: None,
        }
    }

    fn written(format: OutputFormat) -> Vec<u8> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out");
        let mut file = std::fs::File::create(&path).unwrap();
        let mut sink = Sink::start(format, &mut file, 2).unwrap();
        sink.push(&row(3), &[1.0, -2.0]).unwrap();
        sink.push(&row(5), &[0.5, 4.0]).unwrap();
        sink.finish().unwrap();
        drop(file);
        std::fs::read(&path).unwrap()
    }

    #[test]
    fn safetensors_output_reads_back() {
        let bytes = written(OutputFormat::Safetensors);
        let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let e = tensors.tensor("embeddings").unwrap();
        assert_eq!(e.shape(), [2, 2]);
        assert_eq!(e.data(), f32_bytes(&[1.0, -2.0, 0.5, 4.0]));
        let ids = tensors.tensor("ids").unwrap();
        let lines: Vec<u8> = [3i64, 5].iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(ids.data(), lines);
    }

    #[test]
    fn npy_header_is_numpy_s() {
        let bytes = written(OutputFormat::Npy);
        assert_eq!(bytes.len(), NPY_HEADER + 16);
        assert_eq!(&bytes[..8], b"\x93NUMPY\x01\x00");
        let header = std::str::from_utf8(&bytes[10..NPY_HEADER]).unwrap();
        assert!(header.contains("'shape': (2, 2)"), "{header}");
        assert!(header.ends_with('\n'));
        assert_eq!(&bytes[NPY_HEADER..], f32_bytes(&[1.0, -2.0, 0.5, 4.0]));
    }

    #[test]
    fn jsonl_output_keeps_lines() {
        let text = String::from_utf8(written(OutputFormat::Jsonl)).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[1]["line"], 5);
        assert_eq!(lines[1]["embedding"], serde_json::json!([0.5, 4.0]));
    }
}
