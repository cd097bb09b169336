//! `export`: a checkpoint (pretraining or fine-tuning) as an HF model directory.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};

use crate::checkpoint;
use crate::models::export_checkpoint;
use roberta_model::TrainingBackend;

/// `export`: an HF directory (config.json with id2label, model.safetensors, tokenizer
/// files) from a checkpoint, or from a run's newest checkpoint.
pub fn export<B: TrainingBackend>(
    device: B::Device,
    checkpoint: PathBuf,
    out: PathBuf,
) -> Result<()> {
    crate::outputs::refuse_existing(&out, "--out")?;
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
