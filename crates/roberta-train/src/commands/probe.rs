//! `probe`: how well a linear model on an encoder's frozen sentence vectors predicts a
//! labeled file's labels ([`crate::sentences::probe`]).

use std::path::PathBuf;

use anyhow::{Context, Result, ensure};
use roberta_model::TrainingBackend;
use roberta_model::pooling::Pooling;

use crate::sentences::probe::{Tokenized, fit_and_score};
use crate::sentences::{PoolingChoice, TokenizerFrom};
use crate::sources::models::{ScratchDir, load_encoder};
use roberta_data::labeled::Columns;

pub struct ProbeArgs {
    pub model: PathBuf,
    pub train: PathBuf,
    pub valid: PathBuf,
    pub output: Option<PathBuf>,
    pub pool: Pooling,
    pub layer: i64,
    pub columns: Columns,
    pub regression: bool,
    pub c: f64,
    pub max_examples: Option<usize>,
    pub batch_size: usize,
}

pub fn probe<B: TrainingBackend>(device: B::Device, args: ProbeArgs) -> Result<()> {
    if let Some(output) = &args.output {
        crate::run::outputs::refuse_existing(output, "--output")?;
    }
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    ensure!(
        args.max_examples != Some(0),
        "--max-examples must be at least 1"
    );
    ensure!(
        args.c > 0.0 && args.c.is_finite(),
        "--c must be a positive number"
    );
    let scratch = ScratchDir::for_this_process();
    let (dir, loaded) = load_encoder::<B::InnerBackend>(&args.model, &scratch, &device)?;
    let config = &loaded.config;
    let choice = PoolingChoice::new(args.pool, false, args.layer, config.num_hidden_layers)?;
    let max = args.max_examples.unwrap_or(usize::MAX);
    let read = |path| {
        Tokenized::read(
            path,
            &args.columns,
            TokenizerFrom::ModelDir(&dir),
            config,
            max,
        )
    };
    let started = std::time::Instant::now();
    let (train, valid) = (read(&args.train)?, read(&args.valid)?);
    let pad = config.pad_token_id as u32;
    let train = train.embed(&loaded.model, pad, args.batch_size, choice, &device)?;
    let valid = valid.embed(&loaded.model, pad, args.batch_size, choice, &device)?;
    let metrics = fit_and_score(&train, &valid, args.regression, args.c)?;
    let results = serde_json::json!({
        "model": args.model,
        "train": args.train,
        "valid": args.valid,
        "train_examples": train.vectors.len(),
        "valid_examples": valid.vectors.len(),
        "probe": if args.regression { "ridge" } else { "logistic" },
        "c": args.c,
        "pool": args.pool.name(),
        "layer": choice.layer,
        "metrics": metrics,
        "seconds": started.elapsed().as_secs_f64(),
    });
    let text = serde_json::to_string_pretty(&results)?;
    println!("{text}");
    if let Some(output) = &args.output {
        roberta_fs::create_file(output, text.as_bytes())
            .with_context(|| format!("writing {}", output.display()))?;
    }
    Ok(())
}
