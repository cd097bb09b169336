//! `fill-mask` on an HF model directory.

use std::path::PathBuf;

use anyhow::{Result, bail, ensure};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use roberta_data::RobertaTokenizer;
use roberta_model::{LoadOptions, Pretrained, RobertaConfig, RobertaForMaskedLM, RobertaInput};

use crate::sources::models::{load_model, load_tokenizer_for, model_dir};
use roberta_model::{Kernels, TrainingBackend};

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
