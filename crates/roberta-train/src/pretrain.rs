//! `pretrain`: the loop reads top to bottom: next micro-batches, forward, backward,
//! accumulate, clip, step, schedule, log, evaluate, checkpoint.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use roberta_data::loader::validation_batches;
use roberta_data::preprocess::{self, Outcome, PreprocessOptions, tokenizer_sha256};
use roberta_data::{Batch, Corpus, Loader, LoaderConfig, MaskVocab, Meta, RobertaTokenizer, Split};
use roberta_model::loss::cross_entropy_sum;
use roberta_model::{LoadOptions, RobertaForMaskedLM, RobertaInput, save_pretrained};
use serde::Serialize;

use crate::checkpoint::{self, TrainerState};
use crate::config::PretrainConfig;
use crate::infer::load_model;
use crate::trainer::{
    AdamWGroups, MetricsFile, Recorder32, check_resume_changes, learning_rate, resume_point,
    seed_dropout, stop_flag,
};

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

/// A batch as tensors: the model input, flat indices of the masked positions, targets.
pub struct MlmTensors<B: Backend> {
    pub input: RobertaInput<B>,
    pub positions: Tensor<B, 1, Int>,
    pub targets: Tensor<B, 1, Int>,
}

pub fn to_tensors<B: Backend>(batch: &Batch, device: &B::Device) -> Option<MlmTensors<B>> {
    let shape = [batch.batch_size, batch.seq_len];
    let ids: Vec<i64> = batch.input_ids.iter().map(|&t| i64::from(t)).collect();
    let mask: Vec<i64> = batch.attention_mask.iter().map(|&m| i64::from(m)).collect();
    let (positions, targets): (Vec<i64>, Vec<i64>) = batch
        .labels
        .iter()
        .enumerate()
        .filter(|(_, l)| **l >= 0)
        .map(|(i, &l)| (i as i64, l))
        .unzip();
    if positions.is_empty() {
        return None;
    }
    let n = positions.len();
    Some(MlmTensors {
        input: RobertaInput::new(
            Tensor::from_data(TensorData::new(ids, shape), device),
            Tensor::from_data(TensorData::new(mask, shape), device),
        ),
        positions: Tensor::from_data(TensorData::new(positions, [n]), device),
        targets: Tensor::from_data(TensorData::new(targets, [n]), device),
    })
}

/// Summed loss, correct predictions and targets over validation batches.
pub fn evaluate<B: Backend>(
    model: &RobertaForMaskedLM<B>,
    batches: &[Batch],
    device: &B::Device,
) -> (f64, f64, f64) {
    let (mut loss, mut correct, mut count) = (0.0, 0.0, 0.0);
    for batch in batches {
        let Some(t) = to_tensors::<B>(batch, device) else {
            continue;
        };
        let logits = model.forward_positions(t.input, t.positions);
        let n = t.targets.dims()[0];
        correct += logits
            .clone()
            .argmax(1)
            .reshape([n])
            .equal(t.targets.clone())
            .int()
            .sum()
            .into_scalar()
            .elem::<f64>();
        loss += cross_entropy_sum(logits, t.targets)
            .into_scalar()
            .elem::<f64>();
        count += n as f64;
    }
    let mean = loss / count.max(1.0);
    (mean, mean.exp(), correct / count.max(1.0))
}

#[derive(Serialize, Default)]
struct MetricsLine {
    step: u64,
    epoch: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<f64>,
    lr: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    grad_norm: Option<f64>,
    tokens_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    masked_acc: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_loss: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_ppl: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    valid_acc: Option<f64>,
    bad_steps: u64,
}

/// Makes sure `data_dir` holds shards of the configured inputs, made with `tokenizer`.
pub fn prepare_data(config: &PretrainConfig, tokenizer: &RobertaTokenizer) -> Result<PathBuf> {
    let data = &config.data;
    if let [single] = data.train.as_slice()
        && Meta::read(single).is_ok()
    {
        return Ok(single.clone());
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
        seed: config.train.seed,
        ..Default::default()
    };
    let bar = crate::progress::bytes_bar("preprocessing");
    let outcome = preprocess::preprocess(tokenizer, &options, &data.data_dir, false, &|p| {
        crate::progress::update_bytes(&bar, p)
    })
    .with_context(|| format!("preprocessing into {}", data.data_dir.display()))?;
    bar.finish_and_clear();
    match outcome {
        Outcome::Written(meta) => tracing::info!(
            "preprocessed {} train tokens into {}",
            meta.splits["train"].tokens,
            data.data_dir.display()
        ),
        Outcome::UpToDate(_) => tracing::info!("{} is up to date", data.data_dir.display()),
    }
    Ok(data.data_dir.clone())
}

pub fn pretrain<B: AutodiffBackend>(device: B::Device, args: PretrainArgs) -> Result<()> {
    let config = args.config;
    let run_dir = args.run_dir.clone();

    // Where to start: a verified checkpoint, or step 0.
    let resume_from = resume_point(&run_dir, args.resume.as_deref())?;
    if let Some((path, _)) = &resume_from {
        let saved_text = std::fs::read_to_string(path.join(checkpoint::CONFIG))?;
        let saved: PretrainConfig = toml::from_str(&saved_text)
            .with_context(|| format!("{}: saved config", path.display()))?;
        check_resume_changes(&config.exactness_changes(&saved), args.force)?;
    }

    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let config_toml = config.to_toml();
    roberta_model::hf::write_atomic(&run_dir.join("config.toml"), config_toml.as_bytes())?;

    let tokenizer = RobertaTokenizer::load(&config.data.tokenizer)
        .with_context(|| format!("loading the tokenizer {}", config.data.tokenizer.display()))?;
    let data_dir = prepare_data(&config, &tokenizer)?;
    let hash = tokenizer_sha256(&tokenizer);
    let vocab = MaskVocab::new(tokenizer.specials(), tokenizer.vocab_size(), |id| {
        tokenizer.id_to_token(id)
    });
    let train_split = Split::open(&data_dir, "train", Some(&hash))?;
    let corpus = Arc::new(Corpus::new(
        train_split,
        config.data.block_size,
        config.data.break_mode,
        vocab.clone(),
        config.masking.clone(),
    ));
    if corpus.is_empty() {
        bail!("{}: the train split has no blocks", data_dir.display());
    }
    let valid = match Split::open(&data_dir, "valid", Some(&hash)) {
        Ok(split) => {
            let c = Corpus::new(
                split,
                config.data.block_size,
                config.data.break_mode,
                vocab,
                config.masking.clone(),
            );
            let max = (config.log.valid_batches > 0).then_some(config.log.valid_batches);
            validation_batches(&c, config.train.batch_size, config.train.seed, max)
        }
        Err(roberta_data::DataError::MissingSplit { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    tracing::info!(
        "{} train blocks of ≤{} tokens ({} fill), {} validation batches",
        corpus.len(),
        config.data.block_size,
        format_args!("{:.0}%", corpus.fill_rate() * 100.0),
        valid.len()
    );

    // Model and optimizers.
    B::seed(&device, config.train.seed);
    let mut model_config = config.model_config(tokenizer.vocab_size());
    let mut model: RobertaForMaskedLM<B> = match &config.model.init {
        Some(dir) => {
            let loaded =
                load_model::<B, RobertaForMaskedLM<B>>(dir, LoadOptions::default(), &device)?;
            model_config = loaded.config;
            loaded.model
        }
        None => RobertaForMaskedLM::new(&model_config, &device),
    };
    let mut optim = AdamWGroups::<B, RobertaForMaskedLM<B>>::new(&config.optim, &model);
    let recorder = Recorder32::new();
    let mut state = TrainerState::default();
    if let Some((path, saved)) = &resume_from {
        model = model
            .load_file(path.join("model"), &recorder, &device)
            .with_context(|| format!("{}: model", path.display()))?;
        optim = optim.load(path, &model, &device)?;
        state = saved.clone();
        tracing::info!("resumed from {} at step {}", path.display(), state.step);
    }
    let stop = stop_flag()?;

    let loader_config = LoaderConfig {
        batch_size: config.train.batch_size,
        seed: config.train.seed,
        rank: 0,
        world: 1,
        pad_to: None,
        queue_depth: config.train.loader_queue,
    };
    let mut loader = Loader::new(corpus.clone(), loader_config, state.loader);
    let mut metrics = MetricsFile::open(&run_dir, state.step)?;

    let total = config.schedule.total_steps;
    let bar = crate::progress::steps_bar(total, state.step);
    let save = |model: &RobertaForMaskedLM<B>,
                optim: &AdamWGroups<B, RobertaForMaskedLM<B>>,
                state: &TrainerState|
     -> Result<PathBuf> {
        checkpoint::save(
            &run_dir,
            state,
            &config_toml,
            config.checkpoint.keep,
            |tmp| {
                checkpoint::write_model(tmp, model, &model_config, &tokenizer)?;
                optim.save(tmp)
            },
        )
    };
    let (mut interval_tokens, mut interval_start) = (0u64, Instant::now());
    let (mut interval_loss, mut interval_masked, mut interval_correct) = (0.0f64, 0.0f64, 0.0f64);
    let mut stopped = false;

    while state.step < total {
        // 1. The window: every micro-batch of this update, and its masked-token count.
        let window: Vec<Batch> = (0..config.train.accumulation)
            .map(|_| loader.next_batch())
            .collect();
        let window_masked: usize = window.iter().map(|b| b.masked).sum();
        state.loader = window.last().expect("accumulation ≥ 1").next;
        let epoch = window[0].epoch;

        // 2. Forward and backward each micro-batch; the loss is its token sum over the
        //    window's count, so the accumulated gradient is that of one big batch.
        let mut accumulator = GradientsAccumulator::<RobertaForMaskedLM<B>>::new();
        let (mut loss_sum, mut correct) = (0.0f64, 0.0f64);
        for (i, batch) in window.iter().enumerate() {
            let Some(t) = to_tensors::<B>(batch, &device) else {
                continue;
            };
            // Dropout masks become a function of (seed, step, micro-batch): exact resume.
            seed_dropout::<B>(&device, config.train.seed, state.step, i);
            let logits = model.forward_positions(t.input, t.positions);
            let n = t.targets.dims()[0];
            let loss = cross_entropy_sum(logits.clone(), t.targets.clone());
            correct += logits
                .inner()
                .argmax(1)
                .reshape([n])
                .equal(t.targets.inner())
                .int()
                .sum()
                .into_scalar()
                .elem::<f64>();
            loss_sum += loss.clone().inner().into_scalar().elem::<f64>();
            let grads = (loss / window_masked as f64).backward();
            accumulator.accumulate(&model, GradientsParams::from_grads(grads, &model));
        }
        let grads = accumulator.grads();
        let loss = loss_sum / window_masked.max(1) as f64;
        state.tokens += window.iter().map(|b| b.tokens as u64).sum::<u64>();
        interval_tokens += window.iter().map(|b| b.tokens as u64).sum::<u64>();

        // 3. A non-finite loss skips the update; too many in a row abort.
        if !loss.is_finite() || window_masked == 0 {
            state.skip_update(loss, config.train.max_bad_steps)?;
            continue;
        }
        state.bad_in_a_row = 0;

        // 4. Clip the global norm, then step both AdamW groups at the scheduled rate.
        let lr = learning_rate(
            state.step + 1,
            config.optim.lr,
            config.schedule.warmup_steps,
            total,
        );
        let (stepped, norm) = optim.step(lr, model, grads, &device);
        model = stepped;
        state.step += 1;
        interval_loss += loss_sum;
        interval_masked += window_masked as f64;
        interval_correct += correct;

        // 5. Log, evaluate, checkpoint.
        let evaluate_now = !valid.is_empty()
            && ((config.log.valid_every > 0 && state.step.is_multiple_of(config.log.valid_every))
                || state.step == total);
        if state.step.is_multiple_of(config.log.every) || evaluate_now || state.step == total {
            let seconds = interval_start.elapsed().as_secs_f64();
            let mut line = MetricsLine {
                step: state.step,
                epoch,
                loss: Some(interval_loss / interval_masked.max(1.0)),
                lr,
                grad_norm: Some(norm),
                tokens_per_s: interval_tokens as f64 / seconds.max(1e-9),
                masked_acc: Some(interval_correct / interval_masked.max(1.0)),
                bad_steps: state.bad_steps,
                ..Default::default()
            };
            if evaluate_now {
                let (vl, ppl, acc) = evaluate(&model.valid(), &valid, &device);
                line.valid_loss = Some(vl);
                line.valid_ppl = Some(ppl);
                line.valid_acc = Some(acc);
                bar.println(format!(
                    "step {:>7}  valid loss {vl:.4}  ppl {ppl:.2}  masked acc {:.2}%",
                    state.step,
                    acc * 100.0
                ));
                tracing::info!(
                    "step {} valid_loss {vl:.4} valid_ppl {ppl:.2} valid_acc {acc:.4}",
                    state.step
                );
            }
            metrics.write(&line)?;
            bar.set_message(format!(
                "loss {:.4} lr {:.2e} {:.0} tok/s",
                line.loss.unwrap_or(f64::NAN),
                lr,
                line.tokens_per_s
            ));
            (
                interval_tokens,
                interval_loss,
                interval_masked,
                interval_correct,
            ) = (0, 0.0, 0.0, 0.0);
            interval_start = Instant::now();
        }
        bar.set_position(state.step);
        stopped = stop.load(Ordering::Relaxed);
        let periodic =
            config.checkpoint.every > 0 && state.step.is_multiple_of(config.checkpoint.every);
        if periodic || state.step == total || stopped {
            metrics.sync();
            let path = save(&model, &optim, &state)?;
            tracing::info!("saved {}", path.display());
        }
        if stopped {
            break;
        }
    }
    bar.finish_and_clear();
    drop(loader);
    if stopped {
        tracing::info!(
            "stopped by signal at step {}; continue with --resume auto --run-dir {}",
            state.step,
            run_dir.display()
        );
        return Ok(());
    }
    let curves = run_dir.join(crate::plot::PLOT_FILE);
    match crate::plot::plot_run(&run_dir, &curves) {
        Ok(()) => tracing::info!("curves in {}", curves.display()),
        Err(e) => tracing::warn!("no plot: {e:#}"),
    }
    let final_dir = run_dir.join("final");
    save_pretrained(&model.valid(), &model_config, &final_dir)?;
    tokenizer
        .inner()
        .save(final_dir.join("tokenizer.json"), true)
        .map_err(|e| {
            anyhow::anyhow!(
                "writing {}: {e}",
                final_dir.join("tokenizer.json").display()
            )
        })?;
    tracing::info!(
        "done: {} updates, {} tokens; HF model in {} (try: roberta-train fill-mask --model {} \"… <mask> …\")",
        state.step,
        state.tokens,
        final_dir.display(),
        final_dir.display()
    );
    Ok(())
}
