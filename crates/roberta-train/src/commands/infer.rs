//! Inference commands on HF model directories: `fill-mask` and `embed`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use roberta_data::RobertaTokenizer;
use roberta_model::hf::write_new;
use roberta_model::{
    LoadOptions, Pretrained, RobertaConfig, RobertaForMaskedLM, RobertaInput, RobertaModel,
};

use crate::models::{load_model, load_tokenizer_for, model_dir};
use roberta_model::{Kernels, TrainingBackend};
use safetensors::{Dtype, tensor::TensorView};
use serde::Deserialize;

pub struct FillMaskArgs {
    pub model: PathBuf,
    pub texts: Vec<String>,
    pub top_k: usize,
}

/// One candidate for one `<mask>`, as HF's fill-mask pipeline reports it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Candidate {
    pub score: f32,
    pub token: u32,
    pub token_str: String,
    pub sequence: String,
}

pub fn fill_mask<B: TrainingBackend>(device: B::Device, args: FillMaskArgs) -> Result<()> {
    let dir = model_dir(&args.model)?;
    let config = RobertaConfig::load(&dir.join(roberta_model::hf::CONFIG_FILE))?;
    let masked_lm =
        <RobertaForMaskedLM<B::InnerBackend> as Pretrained<B::InnerBackend>>::ARCHITECTURE;
    if let Some(other) = config.architectures.first().filter(|a| *a != masked_lm) {
        bail!(
            "{} holds a {other}; fill-mask needs a {masked_lm} (such as a pretraining run's final/)",
            dir.display()
        );
    }
    let model = load_model::<B::InnerBackend, RobertaForMaskedLM<B::InnerBackend>>(
        &dir,
        LoadOptions::default(),
        &device,
    )?;
    let tokenizer = load_tokenizer_for(&dir, &model.config)?;
    for text in &args.texts {
        let per_mask = predict_masks(
            &model.model,
            &model.config,
            &tokenizer,
            text,
            args.top_k,
            &device,
        )?;
        println!("{text}");
        for (m, candidates) in per_mask.iter().enumerate() {
            if per_mask.len() > 1 {
                println!("  <mask> #{}", m + 1);
            }
            for c in candidates {
                println!(
                    "  {:>8.5}  {:<16} {}",
                    c.score,
                    format!("{:?}", c.token_str),
                    c.sequence
                );
            }
        }
    }
    Ok(())
}

/// The start of a long input, for an error message that stays one line.
fn excerpt(text: &str) -> String {
    const SHOWN: usize = 60;
    match text.char_indices().nth(SHOWN) {
        Some((end, _)) => format!("{}…", &text[..end]),
        None => text.to_string(),
    }
}

/// The `top_k` most probable tokens at each `<mask>` of `text`.
pub fn predict_masks<B: Kernels>(
    model: &RobertaForMaskedLM<B>,
    config: &roberta_model::RobertaConfig,
    tokenizer: &RobertaTokenizer,
    text: &str,
    top_k: usize,
    device: &B::Device,
) -> Result<Vec<Vec<Candidate>>> {
    ensure!(top_k > 0, "--top-k must be at least 1");
    let encoded = tokenizer.encode(text, true)?;
    let mask_id = tokenizer.specials().mask;
    let positions: Vec<usize> = (0..encoded.ids.len())
        .filter(|&i| encoded.ids[i] == mask_id)
        .collect();
    if positions.is_empty() {
        bail!("no <mask> token in {:?}", excerpt(text));
    }
    let max = config.max_sequence_length();
    ensure!(
        encoded.ids.len() <= max,
        "{:?} is {} tokens long; the model takes at most {max}",
        excerpt(text),
        encoded.ids.len()
    );
    let input = RobertaInput::from_rows(
        std::slice::from_ref(&encoded.ids),
        tokenizer.specials().pad,
        device,
    );
    let index: Vec<i64> = positions.iter().map(|&p| p as i64).collect();
    let logits = model.forward_positions(
        input,
        Tensor::from_data(TensorData::new(index, [positions.len()]), device),
    );
    let (scores, tokens) = softmax(logits, 1).topk_with_indices(top_k.min(config.vocab_size), 1);
    let scores = scores.into_data().convert::<f32>().into_vec::<f32>()?;
    let tokens = tokens.into_data().convert::<i64>().into_vec::<i64>()?;
    let k = scores.len() / positions.len();
    let mut result = Vec::new();
    for (m, &pos) in positions.iter().enumerate() {
        let mut candidates = Vec::new();
        for j in 0..k {
            let token = tokens[m * k + j] as u32;
            let mut filled = encoded.ids.clone();
            filled[pos] = token;
            let specials = tokenizer.specials();
            let body: Vec<u32> = filled
                .into_iter()
                .filter(|&t| t != specials.bos && t != specials.eos && t != specials.pad)
                .collect();
            candidates.push(Candidate {
                score: scores[m * k + j],
                token,
                token_str: tokenizer.decode(&[token])?,
                sequence: tokenizer.decode(&body)?,
            });
        }
        result.push(candidates);
    }
    Ok(result)
}

pub struct EmbedArgs {
    pub model: PathBuf,
    pub input: PathBuf,
    pub output: PathBuf,
    pub all_layers: bool,
    pub batch_size: usize,
    pub truncate: bool,
}

/// One line of `embed`'s input: text, or ids already tokenized.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmbedLine {
    text: Option<String>,
    input_ids: Option<Vec<u32>>,
}

pub fn embed<B: TrainingBackend>(device: B::Device, args: EmbedArgs) -> Result<()> {
    crate::outputs::refuse_existing(&args.output, "--output")?;
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let dir = model_dir(&args.model)?;
    let loaded = load_model::<B::InnerBackend, RobertaModel<B::InnerBackend>>(
        &dir,
        LoadOptions::default(),
        &device,
    )?;
    let (model, config) = (loaded.model, loaded.config);
    let rows = read_embed_input(&args.input, &dir, &config, args.truncate)?;
    ensure!(!rows.is_empty(), "{}: no input lines", args.input.display());

    let mut out: BTreeMap<String, (Vec<usize>, Vec<u8>, Dtype)> = BTreeMap::new();
    let pad = config.pad_token_id as u32;
    let bar = indicatif::ProgressBar::new(rows.len() as u64);
    for (chunk_index, chunk) in rows.chunks(args.batch_size).enumerate() {
        let input = RobertaInput::from_rows(chunk, pad, &device);
        let output = model.forward(input, args.all_layers);
        let [_, seq, hidden] = output.last_hidden_state.dims();
        let last = output
            .last_hidden_state
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()?;
        let layers: Vec<Vec<f32>> = output
            .hidden_states
            .into_iter()
            .map(|h| h.into_data().convert::<f32>().into_vec::<f32>())
            .collect::<std::result::Result<_, _>>()?;
        for (r, ids) in chunk.iter().enumerate() {
            let i = chunk_index * args.batch_size + r;
            let len = ids.len();
            let rows_of = |t: &[f32]| bytes(&t[r * seq * hidden..(r * seq + len) * hidden]);
            out.insert(
                format!("{i}.last_hidden_state"),
                (vec![len, hidden], rows_of(&last), Dtype::F32),
            );
            if args.all_layers {
                let all: Vec<u8> = layers.iter().flat_map(|l| rows_of(l)).collect();
                out.insert(
                    format!("{i}.hidden_states"),
                    (vec![layers.len(), len, hidden], all, Dtype::F32),
                );
            }
            let ids: Vec<u8> = ids
                .iter()
                .flat_map(|&t| i64::from(t).to_le_bytes())
                .collect();
            out.insert(format!("{i}.input_ids"), (vec![len], ids, Dtype::I64));
        }
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    let views = out
        .iter()
        .map(|(k, (shape, data, dtype))| {
            Ok((k.clone(), TensorView::new(*dtype, shape.clone(), data)?))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some([("inputs".to_string(), rows.len().to_string())].into());
    let file = safetensors::serialize(views, metadata)?;
    write_new(&args.output, &file).with_context(|| format!("writing {}", args.output.display()))?;
    tracing::info!(
        "wrote {} embeddings to {}",
        rows.len(),
        args.output.display()
    );
    Ok(())
}

fn bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

/// Token ids per input line; the tokenizer is loaded only if some line holds text.
fn read_embed_input(
    path: &Path,
    model_dir: &Path,
    config: &roberta_model::RobertaConfig,
    truncate: bool,
) -> Result<Vec<Vec<u32>>> {
    let mut tokenizer: Option<RobertaTokenizer> = None;
    let max = config.max_sequence_length();
    let mut rows = Vec::new();
    for line in roberta_data::input::lines(path)? {
        let (n, line) = line?;
        let at = || format!("{}:{n}", path.display());
        if line.trim().is_empty() {
            continue;
        }
        let parsed: EmbedLine = serde_json::from_str(&line).with_context(|| {
            format!(
                "{}: expected {{\"text\": …}} or {{\"input_ids\": […]}}",
                at()
            )
        })?;
        let mut ids = match (parsed.text, parsed.input_ids) {
            (Some(text), None) => {
                if tokenizer.is_none() {
                    tokenizer = Some(load_tokenizer_for(model_dir, config)?);
                }
                tokenizer.as_ref().expect("loaded").encode(&text, true)?.ids
            }
            (None, Some(ids)) => {
                if let Some(bad) = ids.iter().find(|&&t| t as usize >= config.vocab_size) {
                    bail!(
                        "{}: token id {bad} is outside the vocabulary of {}",
                        at(),
                        config.vocab_size
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
        if ids.len() > max {
            ensure!(
                truncate,
                "{}: {} tokens, more than the model's {max} (pass --truncate to cut)",
                at(),
                ids.len()
            );
            let eos = ids[ids.len() - 1];
            ids.truncate(max);
            ids[max - 1] = eos;
        }
        rows.push(ids);
    }
    Ok(rows)
}
