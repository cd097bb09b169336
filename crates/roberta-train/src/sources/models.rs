//! Where models come from: HF model directories, pretraining runs (their `final/` or
//! newest checkpoint) and checkpoints, which are exported into an HF directory first.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use roberta_data::RobertaTokenizer;
use roberta_model::{
    LoadOptions, Loaded, Pretrained, RobertaConfig, RobertaModel, WithArchitecture,
    load_pretrained, with_architecture,
};

use crate::run::checkpoint;

/// Loads `M` from an HF directory and logs what loading had to adapt.
pub fn load_model<B: Backend, M: Pretrained<B>>(
    dir: &Path,
    options: LoadOptions,
    device: &B::Device,
) -> Result<Loaded<M>> {
    let context = || format!("loading {} from {}", M::ARCHITECTURE, dir.display());
    let config = RobertaConfig::load(&dir.join(roberta_model::hf::CONFIG_FILE))
        .map_err(anyhow::Error::new)
        .with_context(context)?;
    crate::trainer::check_model_memory(&config, false, &dir.display().to_string())?;
    let loaded = load_pretrained::<B, M>(dir, options, device).with_context(context)?;
    if !loaded.report.initialized.is_empty() {
        tracing::info!(
            "newly initialised (absent from {}): {}",
            dir.display(),
            loaded.report.initialized.join(", ")
        );
    }
    if !loaded.report.unused.is_empty() {
        tracing::info!(
            "not used (another task's head): {}",
            loaded.report.unused.join(", ")
        );
    }
    Ok(loaded)
}

pub fn load_tokenizer(dir: &Path) -> Result<RobertaTokenizer> {
    RobertaTokenizer::load(dir).with_context(|| {
        format!(
            "{} needs its tokenizer (tokenizer.json, or vocab.json + merges.txt)",
            dir.display()
        )
    })
}

/// `dir`'s tokenizer, refused when it has more tokens than the model (`config`) can
/// embed: the backend would fail on the first id past the model's vocabulary.
pub fn load_tokenizer_for(dir: &Path, config: &RobertaConfig) -> Result<RobertaTokenizer> {
    let tokenizer = load_tokenizer(dir)?;
    if tokenizer.vocab_size() > config.vocab_size {
        bail!(
            "{}: the tokenizer has {} tokens but the model's vocabulary only {}: the directory holds another model's tokenizer",
            dir.display(),
            tokenizer.vocab_size(),
            config.vocab_size
        );
    }
    Ok(tokenizer)
}

/// The HF model directory behind `dir`: itself, a run directory's `final/`, or a hub
/// name's snapshot in the HF cache ([`crate::sources::hub`]).
pub fn model_dir(dir: &Path) -> Result<PathBuf> {
    let dir = crate::sources::hub::resolve(dir)?;
    let last = dir.join(checkpoint::FINAL);
    if !dir.join(roberta_model::hf::CONFIG_FILE).exists()
        && last.join(roberta_model::hf::CONFIG_FILE).exists()
    {
        Ok(last)
    } else {
        Ok(dir)
    }
}

/// An HF model directory to start from: `dir` itself, a hub name's snapshot, a run's
/// `final/` (or its newest checkpoint), or a checkpoint exported into `scratch` first.
pub fn init_dir<B: Backend>(dir: &Path, scratch: &Path, device: &B::Device) -> Result<PathBuf> {
    let dir = &crate::sources::hub::resolve(dir)?;
    if roberta_model::hf::has_weights(dir) {
        return Ok(dir.to_path_buf());
    }
    let last = dir.join(checkpoint::FINAL);
    if roberta_model::hf::has_weights(&last) {
        return Ok(last);
    }
    let checkpoint = if dir.join(checkpoint::MANIFEST).exists() {
        checkpoint::verify_model(dir)?;
        dir.to_path_buf()
    } else {
        match checkpoint::latest_valid_model(dir)? {
            (Some((found, _)), _) => found,
            _ => bail!(
                "{}: neither an HF model directory (config.json + model.safetensors), nor a run directory, nor a checkpoint",
                dir.display()
            ),
        }
    };
    tracing::info!("starting from checkpoint {}", checkpoint.display());
    export_checkpoint::<B>(&checkpoint, scratch, device)?;
    Ok(scratch.to_path_buf())
}

/// The encoder (`RobertaModel`, any task head left out) of an HF directory, run or
/// checkpoint, and the HF directory it was read from (in `scratch` for a checkpoint).
pub fn load_encoder<B: Backend>(
    model: &Path,
    scratch: &ScratchDir,
    device: &B::Device,
) -> Result<(PathBuf, Loaded<RobertaModel<B>>)> {
    let dir = init_dir::<B>(model, scratch.path(), device)?;
    let loaded = load_model::<B, RobertaModel<B>>(&dir, LoadOptions::default(), device)?;
    Ok((dir, loaded))
}

/// A scratch directory removed on drop, for checkpoints exported on the fly.
pub struct ScratchDir(PathBuf);

impl ScratchDir {
    pub fn for_this_process() -> Self {
        Self(std::env::temp_dir().join(format!("roberta-train-{}", std::process::id())))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the HF model directory of a checkpoint into `out`.
pub fn export_checkpoint<B: Backend>(dir: &Path, out: &Path, device: &B::Device) -> Result<()> {
    let config = checkpoint::model_config(dir)?;
    let tokenizer = RobertaTokenizer::from_file(&dir.join(checkpoint::TOKENIZER))?;
    struct Export<'a, B: Backend> {
        dir: &'a Path,
        out: &'a Path,
        tokenizer: &'a RobertaTokenizer,
        device: &'a B::Device,
    }
    impl<B: Backend> WithArchitecture<B> for Export<'_, B> {
        type Output = Result<()>;
        fn run<M: Pretrained<B> + Module<B>>(self) -> Result<()> {
            let (model, config) = checkpoint::read_model::<B, M>(self.dir, self.device)?;
            checkpoint::save_hf_dir(self.out, &model, &config, self.tokenizer, None)
        }
    }
    let architecture = config.architectures.first().map(String::as_str);
    let export = Export::<B> {
        dir,
        out,
        tokenizer: &tokenizer,
        device,
    };
    match architecture.and_then(|name| with_architecture(name, export)) {
        Some(result) => result,
        None => bail!(
            "{}: unknown architecture {architecture:?} in config.json",
            dir.display()
        ),
    }
}
