//! `pretrain`: the corpus into shards (once), the masked-LM task on them, the model from
//! a preset or an HF directory, then the trainer's loop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail, ensure};
use roberta_data::loader::validation_batch_count;
use roberta_data::preprocess::{self, Outcome, PreprocessOptions, tokenizer_sha256};
use roberta_data::{Corpus, DataError, MaskVocab, MaskingConfig, Meta, RobertaTokenizer, Split};
use roberta_model::{LoadOptions, RobertaConfig, RobertaForMaskedLM};

use crate::config::{ExtendPositions, PretrainConfig, ProbeSection, RunConfig};
use crate::parallel::processes::Processes;
use crate::run::checkpoint::{self, DataFingerprint};
use crate::sentences::probe::{Probe, Tokenized};
use crate::sentences::{PoolingChoice, TokenizerFrom};
use crate::sources::models::load_model;
use crate::tasks::mlm::{Mlm, Validation};
use crate::trainer::{
    self, Buffer, RunFiles, Settings, TrainPhase, check_precision, seed_init, start_run, stop_flag,
};
use roberta_data::labeled::Columns;
use roberta_model::TrainingBackend;

pub struct PretrainArgs {
    pub config: PretrainConfig,
    pub resume: Option<String>,
    pub run_dir: PathBuf,
    pub force: bool,
}

/// `runs/<config file stem>` unless `--run-dir` says otherwise.
pub fn default_run_dir(config: &Path) -> PathBuf {
    Path::new("runs").join(config.file_stem().unwrap_or_default())
}

/// Makes sure `data_dir` holds shards of the configured inputs, made with `tokenizer`.
/// A signal (`stop`) ends preprocessing with nothing written, and the command with an
/// error saying so.
pub fn prepare_data(
    config: &PretrainConfig,
    tokenizer: &RobertaTokenizer,
    stop: &Arc<AtomicBool>,
) -> Result<PathBuf> {
    let data = &config.data;
    if let [single] = data.train.as_slice()
        && Meta::read(single).is_ok()
    {
        return Ok(single.clone());
    }
    for (key, inputs) in [("data.train", &data.train), ("data.valid", &data.valid)] {
        if let Some(missing) = inputs.iter().find(|p| {
            let text = p.to_string_lossy();
            !text.contains(['*', '?']) && std::fs::symlink_metadata(p).is_err()
        }) {
            bail!(
                "{key}: {}: no such file or directory (give the corpus there, or --set {key}=PATH)",
                missing.display()
            );
        }
    }
    let options = PreprocessOptions {
        inputs: data.train.clone(),
        valid: data.valid.clone(),
        valid_fraction: if data.valid.is_empty() {
            data.valid_fraction
        } else {
            0.0
        },
        read: roberta_data::corpus::ReadOptions {
            text_field: data.text_field.clone(),
            doc_per_line: data.doc_per_line,
            ..Default::default()
        },
        seed: config.data_seed(),
        stop: Some(stop.clone()),
        ..Default::default()
    };
    let bar = crate::run::progress::bytes_bar("preprocessing");
    let outcome = preprocess::preprocess(tokenizer, &options, &data.data_dir, false, &|p| {
        crate::run::progress::update_bytes(&bar, p)
    })
    .map_err(|e| match e {
        DataError::Interrupted { .. } => anyhow::Error::new(e),
        e => {
            anyhow::Error::new(e).context(format!("preprocessing into {}", data.data_dir.display()))
        }
    })?;
    bar.finish_and_clear();
    match outcome {
        Outcome::Written(meta) => tracing::info!(
            "preprocessed {} train tokens into {}",
            meta.splits["train"].tokens,
            data.data_dir.display()
        ),
        Outcome::Rebuilt { meta, why } => tracing::info!(
            "preprocessed {} train tokens into {} again: {why}",
            meta.splits["train"].tokens,
            data.data_dir.display()
        ),
        Outcome::UpToDate(_) => tracing::info!("{} is up to date", data.data_dir.display()),
    }
    Ok(data.data_dir.clone())
}

/// The train split packed into blocks as each phase cuts and masks it (the last: as
/// the config does), and the validation split when there is one.
fn open_corpora(
    config: &PretrainConfig,
    tokenizer: &RobertaTokenizer,
    stop: &Arc<AtomicBool>,
) -> Result<(Vec<Corpus>, Option<Validation>)> {
    let data_dir = prepare_data(config, tokenizer, stop)?;
    let hash = tokenizer_sha256(tokenizer);
    let vocab = MaskVocab::new(tokenizer.specials(), tokenizer.vocab_size(), |id| {
        tokenizer.id_to_token(id)
    });
    let corpus = |split: Split, block_size: usize, mask_prob: f64| {
        Corpus::open(
            split,
            block_size,
            config.data.break_mode,
            vocab.clone(),
            MaskingConfig {
                mask_prob,
                ..config.masking.clone()
            },
        )
    };
    let mut train = Vec::new();
    for phase in config.phases() {
        let split = Split::open(&data_dir, "train", Some(&hash))?;
        let blocks = corpus(split, phase.block_size, phase.mask_prob)?;
        if blocks.is_empty() {
            bail!("{}: the train split has no blocks", data_dir.display());
        }
        train.push(blocks);
    }
    let valid = match Split::open(&data_dir, "valid", Some(&hash)) {
        Ok(split) => {
            let corpus = corpus(split, config.data.block_size, config.masking.mask_prob)?;
            let max = (config.eval.batches > 0).then_some(config.eval.batches);
            Some(Validation {
                batches: validation_batch_count(&corpus, config.train.batch_size, max),
                corpus,
                batch_size: config.train.batch_size,
                seed: config.data_seed(),
            })
        }
        Err(DataError::MissingSplit { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    Ok((train, valid))
}

/// How the trainer runs a pretraining config.
pub fn settings(config: &PretrainConfig, run_dir: &std::path::Path) -> Settings {
    let c = config;
    Settings {
        phases: c
            .phases()
            .iter()
            .map(|p| TrainPhase {
                until_step: p.until_step,
                batch_size: p.batch_size,
                accumulation: p.accumulation,
                warmup: p.warmup_steps,
            })
            .collect(),
        batch_warmup: (c.schedule.batch_warmup_steps > 0)
            .then_some((c.schedule.batch_warmup_steps, c.schedule.batch_warmup_start)),
        seed: c.train.seed,
        data_seed: c.data_seed(),
        precision: c.train.precision,
        max_bad_steps: c.train.max_bad_steps,
        optim: c.optim.clone(),
        warmup: c.schedule.warmup_steps,
        total: c.schedule.total_steps,
        log_every: c.log.every,
        profile_every: c.log.profile_every,
        tensorboard: c.log.tensorboard_dir(run_dir),
        ema_decay: c.train.ema_decay,
        eval_every: c.eval.every,
        best: None,
        checkpoint_every: c.checkpoint.every,
        keep: c.checkpoint.keep,
    }
}

pub fn pretrain<B: TrainingBackend>(devices: Vec<B::Device>, args: PretrainArgs) -> Result<()> {
    let mut config = args.config;
    let run_dir = args.run_dir;
    let device = devices[0].clone();
    check_precision::<B>(config.train.precision, &devices)?;
    let resume = start_run(
        &run_dir,
        args.resume.as_deref(),
        &mut config,
        crate::parallel::processes::world(devices.len()),
        args.force,
    )?;

    let tokenizer = RobertaTokenizer::load(&config.data.tokenizer)
        .with_context(|| format!("loading the tokenizer {}", config.data.tokenizer.display()))?;
    let stop = stop_flag()?;
    // Rank 0 writes the shards and packs them (the block indexes); the other ranks
    // find both up to date.
    let processes = Processes::current();
    if !processes.is_leader() {
        processes.barrier();
    }
    let opened = open_corpora(&config, &tokenizer, &stop);
    if processes.is_leader() {
        processes.barrier();
    }
    let (phases, valid) = opened?;
    let train = phases.last().expect("a phase at least");
    tracing::info!(
        "{} train blocks of ≤{} tokens ({} fill), {} validation batches",
        train.len(),
        config.data.block_size,
        format_args!("{:.0}%", train.fill_rate() * 100.0),
        valid.as_ref().map_or(0, |v| v.batches)
    );

    // The model, on the first device; the trainer copies it to the others.
    let (model, model_config) = pretraining_model::<B>(&mut config, &tokenizer, &device)?;

    check_phase_memory::<B>(&config, &model_config, &device)?;
    ensure!(
        model_config.vocab_size >= tokenizer.vocab_size(),
        "the tokenizer {} has {} tokens but the model's vocabulary only {}: use the model's own tokenizer (data.tokenizer)",
        config.data.tokenizer.display(),
        tokenizer.vocab_size(),
        model_config.vocab_size
    );
    let data = fingerprint(&tokenizer, train);
    if let Some((path, saved)) = &resume {
        data.check_resume(path, saved, args.force)?;
    }
    let probe = config
        .eval
        .probe
        .as_ref()
        .map(|p| probe_of(p, &tokenizer, &model_config, config.train.batch_size))
        .transpose()?;
    let copy_positions = match config.schedule.extend_positions {
        ExtendPositions::Copy => crate::tasks::mlm::positions_to_copy(
            &phases.iter().map(|c| c.block_size).collect::<Vec<_>>(),
        ),
        ExtendPositions::Keep => vec![None; phases.len()],
    };
    let task = Mlm {
        copy_positions,
        corpora: phases.into_iter().map(Arc::new).collect(),
        valid,
        queue_depth: config.train.loader_queue,
        mask_prob_end: crate::tasks::mlm::mask_prob_end(&config),
        vocab_size: model_config.vocab_size,
        probe,
    };
    let files = RunFiles {
        run_dir: run_dir.clone(),
        config_toml: config.to_toml(),
        model_config,
        tokenizer,
        data,
    };
    let outcome = trainer::train(
        &task,
        &devices,
        model,
        resume.as_ref(),
        &settings(&config, &run_dir),
        &files,
        stop,
    )?;
    if !outcome.stopped {
        let final_dir = run_dir.join(checkpoint::FINAL);
        tracing::info!(
            "done: {} updates, {} tokens; HF model in {} (try: roberta-train fill-mask --model {} \"… <mask> …\")",
            outcome.state.step,
            outcome.state.tokens,
            final_dir.display(),
            final_dir.display()
        );
    }
    Ok(())
}

/// The model to pretrain: new (from `model` and the tokenizer's vocabulary), or
/// `model.init`'s, whose directory brings the architecture (the config may still set
/// dropout). With its config.
fn pretraining_model<B: TrainingBackend>(
    config: &mut PretrainConfig,
    tokenizer: &RobertaTokenizer,
    device: &B::Device,
) -> Result<(RobertaForMaskedLM<B>, RobertaConfig)> {
    seed_init::<B>(device, config.init_seed());
    let mut model_config = config.model_config(tokenizer.vocab_size());
    if config.model.init.is_none() {
        trainer::check_model_memory(&model_config, true, "model")?;
    }
    let model: RobertaForMaskedLM<B> = match &config.model.init {
        Some(dir) => {
            let dir = crate::sources::hub::resolve(dir)?;
            let mut loaded =
                load_model::<B, RobertaForMaskedLM<B>>(&dir, LoadOptions::default(), device)?;
            // The directory brings the architecture; the config may still set dropout.
            config.model.override_dropout(&mut loaded.config);
            let c = &loaded.config;
            loaded
                .model
                .roberta
                .set_dropout(c.hidden_dropout_prob, c.attention_probs_dropout_prob);
            model_config = loaded.config;
            loaded.model
        }
        None => RobertaForMaskedLM::new(&model_config, device),
    };
    Ok((model, model_config))
}

/// Every phase's batches fit the memory here (checked before any work), the MLM head's
/// logits included: the masking picks at most `⌈rate × (block_size − 2)⌉` tokens of a
/// block (whole-word masking picks that many words), at the highest rate of the run.
fn check_phase_memory<B: TrainingBackend>(
    config: &PretrainConfig,
    model_config: &RobertaConfig,
    device: &B::Device,
) -> Result<()> {
    let precision = config.train.precision;
    let end_rate = crate::tasks::mlm::mask_prob_end(config).map_or(0.0, |(end, _)| end);
    for (i, phase) in config.phases().iter().enumerate() {
        let key = match i < config.schedule.phases.len() {
            true => format!("schedule.phases[{i}].batch_size"),
            false => "train.batch_size".into(),
        };
        trainer::check_batch_memory::<B>(
            device,
            &key,
            phase.batch_size,
            phase.block_size,
            config.train.loader_queue,
            model_config,
            precision,
        )?;
        let rate = phase.mask_prob.max(end_rate);
        let per_block = (rate * phase.block_size.saturating_sub(2) as f64).ceil() as usize;
        let logits = [phase.batch_size * per_block, model_config.vocab_size];
        trainer::check_buffers(
            &[Buffer::new(
                "the MLM head's logits",
                &logits,
                precision.bytes(),
            )],
            &format!("{key} = {}", phase.batch_size),
            &format!("lower {key} and raise train.accumulation to keep the update's size"),
        )?;
    }
    Ok(())
}

/// The tokenizer and training data a checkpoint of this run was trained on.
fn fingerprint(tokenizer: &RobertaTokenizer, train: &Corpus) -> DataFingerprint {
    DataFingerprint {
        tokenizer: tokenizer_sha256(tokenizer),
        train: train.split.sha256.clone(),
        describe: format!(
            "{}: {} train tokens, sha256 {}…",
            train.split.dir.display(),
            train.split.tokens(),
            train.split.sha256.chars().take(12).collect::<String>()
        ),
    }
}

/// `[eval.probe]`'s files, tokenized once with the run's tokenizer.
fn probe_of(
    section: &ProbeSection,
    tokenizer: &RobertaTokenizer,
    model_config: &RobertaConfig,
    batch_size: usize,
) -> Result<Probe> {
    let columns = Columns {
        text_a: section.text.clone(),
        text_b: section.text_b.clone(),
        label: Some(section.label.clone()),
        header: section.header,
    };
    let read = |path: &Path| {
        Tokenized::read(
            path,
            &columns,
            TokenizerFrom::Given(tokenizer),
            model_config,
            section.max_examples,
        )
        .with_context(|| format!("eval.probe: reading {}", path.display()))
    };
    Ok(Probe {
        train: read(&section.train)?,
        valid: read(&section.valid)?,
        choice: PoolingChoice::new(section.pool, false, -1, model_config.num_hidden_layers)?,
        regression: section.regression,
        c: section.c,
        batch_size,
        pad: model_config.pad_token_id as u32,
    })
}
