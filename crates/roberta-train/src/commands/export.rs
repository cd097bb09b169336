//! `export`: a checkpoint (pretraining or fine-tuning) as an HF model directory, or any
//! encoder as a sentence-transformers model.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use roberta_model::TrainingBackend;
use roberta_model::pooling::{Pooling, save_sentence_transformers};

use crate::run::checkpoint;
use crate::sources::models::{ScratchDir, export_checkpoint, load_encoder, load_tokenizer_for};

/// What makes the export a sentence-transformers model.
pub struct SentenceTransformers {
    pub pooling: Pooling,
    pub normalize: bool,
}

/// `export`: an HF directory (config.json with id2label, model.safetensors, tokenizer
/// files) from a checkpoint, or from a run's newest checkpoint.
pub fn export<B: TrainingBackend>(
    device: B::Device,
    checkpoint: PathBuf,
    out: PathBuf,
    sentence_transformers: Option<SentenceTransformers>,
) -> Result<()> {
    crate::run::outputs::refuse_existing(&out, "--out")?;
    crate::run::outputs::refuse_inside_run(&out, "--out")?;
    if let Some(st) = sentence_transformers {
        return export_sentence_transformers::<B>(device, checkpoint, out, st);
    }
    if !checkpoint.join(checkpoint::MANIFEST).exists()
        && roberta_model::hf::has_weights(&checkpoint)
    {
        bail!(
            "{} is already an HF model directory (config.json and weights): use it as it is, or copy it",
            checkpoint.display()
        );
    }
    let dir = if checkpoint.join(checkpoint::MANIFEST).exists() {
        checkpoint::verify_model(&checkpoint)?;
        checkpoint
    } else {
        let (found, skipped) = checkpoint::latest_valid_model(&checkpoint)?;
        for s in &skipped {
            tracing::warn!("skipping a checkpoint that does not verify: {s}");
        }
        found
            .map(|(p, _)| p)
            .with_context(|| format!("{}: no checkpoint that verifies", checkpoint.display()))?
    };
    export_checkpoint::<B::InnerBackend>(&dir, &out, &device)?;
    println!("exported {} to {}", dir.display(), out.display());
    Ok(())
}

/// The encoder alone (`RobertaModel`: task heads left out, as sentence-transformers'
/// Transformer module loads it) with its tokenizer and the pooling modules.
fn export_sentence_transformers<B: TrainingBackend>(
    device: B::Device,
    from: PathBuf,
    out: PathBuf,
    st: SentenceTransformers,
) -> Result<()> {
    let scratch = ScratchDir::for_this_process();
    let (dir, loaded) = load_encoder::<B::InnerBackend>(&from, &scratch, &device)?;
    let tokenizer = load_tokenizer_for(&dir, &loaded.config)?;
    let (hidden, max_length) = (
        loaded.config.hidden_size,
        loaded.config.max_sequence_length(),
    );
    checkpoint::save_hf_dir_with(&out, &loaded.model, &loaded.config, &tokenizer, |tmp| {
        Ok(save_sentence_transformers(
            tmp,
            st.pooling,
            st.normalize,
            hidden,
            max_length,
        )?)
    })?;
    println!(
        "exported {} to {} as a sentence-transformers model ({} pooling{})",
        dir.display(),
        out.display(),
        st.pooling.name(),
        if st.normalize { ", normalised" } else { "" }
    );
    Ok(())
}
