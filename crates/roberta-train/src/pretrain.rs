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
use roberta_model::{LoadOptions, RobertaForMaskedLM, RobertaInput};
use serde::Serialize;

use crate::checkpoint::{self, TrainerState};
use crate::config::PretrainConfig;
use crate::infer::load_model;
use crate::parallel;
use crate::trainer::{
    AdamWGroups, MetricsFile, Recorder32, check_precision, check_resume_changes, learning_rate,
    resume_point, seed_dropout, stop_flag,
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

pub fn pretrain<B: AutodiffBackend>(devices: Vec<B::Device>, args: PretrainArgs) -> Result<()> {
    let mut config = args.config;
    let run_dir = args.run_dir.clone();
    let world = devices.len();
    let device = devices[0].clone();
    check_precision::<B>(config.train.precision, &devices)?;

    // Where to start: a verified checkpoint, or step 0.
    let resume_from = resume_point(&run_dir, args.resume.as_deref())?;
    if let Some((path, saved_state)) = &resume_from {
        let saved_text = std::fs::read_to_string(path.join(checkpoint::CONFIG))?;
        let mut saved: PretrainConfig = toml::from_str(&saved_text)
            .with_context(|| format!("{}: saved config", path.display()))?;
        if saved_state.devices != world {
            let accumulation = parallel::rescale_accumulation(
                saved.train.accumulation,
                saved_state.devices,
                world,
            )?;
            tracing::info!(
                "resuming on {world} device(s), the checkpoint ran on {}: train.accumulation {} → {accumulation} keeps {} sequences per update",
                saved_state.devices,
                saved.train.accumulation,
                saved.train.batch_size * saved.train.accumulation * saved_state.devices
            );
            saved.train.accumulation = accumulation;
            config.train.accumulation = accumulation;
        }
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

    // Model and optimizers, on the first device; the other replicas are copies of it.
    B::seed(&device, config.train.seed);
    let mut model_config = config.model_config(tokenizer.vocab_size());
    let mut model: RobertaForMaskedLM<B> = match &config.model.init {
        Some(dir) => {
            let mut loaded =
                load_model::<B, RobertaForMaskedLM<B>>(dir, LoadOptions::default(), &device)?;
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
        None => RobertaForMaskedLM::new(&model_config, &device),
    };
    let mut state = TrainerState {
        devices: world,
        ..TrainerState::default()
    };
    if let Some((path, saved)) = &resume_from {
        model = model
            .load_file(path.join(checkpoint::MODEL), &Recorder32::new(), &device)
            .with_context(|| format!("{}: model", path.display()))?;
        state = TrainerState {
            devices: world,
            ..saved.clone()
        };
        tracing::info!("resumed from {} at step {}", path.display(), state.step);
    }
    let model = parallel::number_params(model);
    let optimizer = |model: &RobertaForMaskedLM<B>, device: &B::Device| {
        let optim = AdamWGroups::<B, RobertaForMaskedLM<B>>::new(&config.optim, model);
        match &resume_from {
            Some((path, _)) => optim.load(path, model, device),
            None => Ok(optim),
        }
    };

    // Replicas 1…N-1 run on their own threads; replica 0, on this one, also logs,
    // evaluates and checkpoints.
    let shared = Arc::new(Shared {
        config: config.clone(),
        corpus,
        world,
        collective: parallel::collective_config(world),
    });
    let mut replicas = Vec::new();
    for (rank, replica_device) in devices.iter().enumerate().skip(1) {
        let replica = model.clone().fork(replica_device);
        let optim = optimizer(&replica, replica_device)?;
        let (shared, replica_device, state) =
            (shared.clone(), replica_device.clone(), state.clone());
        replicas.push(std::thread::spawn(move || {
            train_replica::<B>(&shared, rank, replica_device, replica, optim, state, None)
                .map(|_| ())
        }));
    }
    let optim = optimizer(&model, &device)?;
    let config_toml = &config_toml;
    let leader = Leader {
        run_dir: &run_dir,
        valid: &valid,
        metrics: MetricsFile::open(&run_dir, state.step)?,
        stop: stop_flag()?,
        save: &|model: &RobertaForMaskedLM<B>,
                optim: &AdamWGroups<B, RobertaForMaskedLM<B>>,
                state: &TrainerState|
         -> Result<PathBuf> {
            checkpoint::save(
                &run_dir,
                state,
                config_toml,
                config.checkpoint.keep,
                |tmp| {
                    checkpoint::write_model(tmp, model, &model_config, &tokenizer)?;
                    optim.save(tmp)
                },
            )
        },
    };
    let (model, state, stopped) = train_replica::<B>(
        &shared,
        0,
        device.clone(),
        model,
        optim,
        state,
        Some(leader),
    )?;
    for replica in replicas {
        replica
            .join()
            .map_err(|_| anyhow::anyhow!("a replica thread panicked"))??;
    }
    if stopped {
        return Ok(());
    }
    let curves = run_dir.join(crate::plot::PLOT_FILE);
    match crate::plot::plot_run(&run_dir, &curves) {
        Ok(()) => tracing::info!("curves in {}", curves.display()),
        Err(e) => tracing::warn!("no plot: {e:#}"),
    }
    let final_dir = run_dir.join("final");
    checkpoint::save_hf_dir(&final_dir, &model.valid(), &model_config, &tokenizer, None)?;
    tracing::info!(
        "done: {} updates, {} tokens; HF model in {} (try: roberta-train fill-mask --model {} \"… <mask> …\")",
        state.step,
        state.tokens,
        final_dir.display(),
        final_dir.display()
    );
    Ok(())
}

/// What every replica reads: the config, the corpus, and how many replicas there are.
struct Shared {
    config: PretrainConfig,
    corpus: Arc<Corpus>,
    world: usize,
    collective: burn::collective::CollectiveConfig,
}

type SaveFn<'a, B> = dyn Fn(
        &RobertaForMaskedLM<B>,
        &AdamWGroups<B, RobertaForMaskedLM<B>>,
        &TrainerState,
    ) -> Result<PathBuf>
    + 'a;

/// What only replica 0 does: metrics, validation, checkpoints, the stop signal.
struct Leader<'a, B: AutodiffBackend> {
    run_dir: &'a Path,
    valid: &'a [Batch],
    metrics: MetricsFile,
    stop: Arc<std::sync::atomic::AtomicBool>,
    save: &'a SaveFn<'a, B>,
}

/// The training loop of one replica. With several replicas each takes its rank's share
/// of every micro-batch; the window's masked-token count, the gradients and the logged
/// sums are all-reduced, so every replica takes the same update. Returns the model, the
/// state, and whether a signal stopped the run.
fn train_replica<B: AutodiffBackend>(
    shared: &Shared,
    rank: usize,
    device: B::Device,
    mut model: RobertaForMaskedLM<B>,
    mut optim: AdamWGroups<B, RobertaForMaskedLM<B>>,
    mut state: TrainerState,
    mut leader: Option<Leader<'_, B>>,
) -> Result<(RobertaForMaskedLM<B>, TrainerState, bool)> {
    let config = &shared.config;
    let group =
        parallel::Group::<B::InnerBackend>::join(rank, shared.world, &device, &shared.collective)?;
    let loader_config = LoaderConfig {
        batch_size: config.train.batch_size,
        seed: config.train.seed,
        rank,
        world: shared.world,
        pad_to: None,
        queue_depth: config.train.loader_queue,
    };
    let mut loader = Loader::new(shared.corpus.clone(), loader_config, state.loader);
    let total = config.schedule.total_steps;
    let bar = match &leader {
        Some(_) => crate::progress::steps_bar(total, state.step),
        None => indicatif::ProgressBar::hidden(),
    };
    let (mut interval_tokens, mut interval_start) = (0f64, Instant::now());
    let (mut interval_loss, mut interval_masked, mut interval_correct) = (0.0f64, 0.0f64, 0.0f64);
    let mut stopped = false;

    while state.step < total {
        // 1. The window: every micro-batch of this update, and its masked-token count
        //    over all replicas.
        let window: Vec<Batch> = (0..config.train.accumulation)
            .map(|_| loader.next_batch())
            .collect();
        let local_masked: usize = window.iter().map(|b| b.masked).sum();
        let window_masked = group.sum(&[local_masked as f64])?[0];
        state.loader = window.last().expect("accumulation ≥ 1").next;
        let epoch = window[0].epoch;

        // 2. Forward and backward each micro-batch; the loss is its token sum over the
        //    window's count, so the accumulated gradient is that of one big batch.
        let mut accumulator = GradientsAccumulator::<RobertaForMaskedLM<B>>::new();
        let forward = config.train.precision.forward_model(&model);
        let (mut loss_sum, mut correct) = (0.0f64, 0.0f64);
        for (i, batch) in window.iter().enumerate() {
            let Some(t) = to_tensors::<B>(batch, &device) else {
                continue;
            };
            // Dropout masks become a function of (seed, step, micro-batch): exact resume.
            seed_dropout::<B>(
                &device,
                config.train.seed,
                state.step,
                i * shared.world + rank,
            );
            let logits = forward.forward_positions(t.input, t.positions);
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
            let grads = (loss / window_masked.max(1.0)).backward();
            accumulator.accumulate(&model, GradientsParams::from_grads(grads, &model));
        }
        let grads = group.sum_gradients(accumulator.grads())?;
        let local_tokens = window.iter().map(|b| b.tokens as f64).sum::<f64>();
        let stop_now = leader
            .as_ref()
            .is_some_and(|l| l.stop.load(Ordering::Relaxed));
        let [loss_sum, correct, tokens, stop_votes] = <[f64; 4]>::try_from(group.sum(&[
            loss_sum,
            correct,
            local_tokens,
            f64::from(u8::from(stop_now)),
        ])?)
        .expect("four sums");
        let loss = loss_sum / window_masked.max(1.0);
        state.tokens += tokens as u64;
        interval_tokens += tokens;

        // 3. A non-finite loss skips the update; too many in a row abort.
        if !loss.is_finite() || window_masked == 0.0 {
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
        interval_masked += window_masked;
        interval_correct += correct;
        stopped = stop_votes > 0.0;

        // 5. Log, evaluate, checkpoint (replica 0).
        let Some(leader) = leader.as_mut() else {
            if stopped {
                break;
            }
            continue;
        };
        let evaluate_now = !leader.valid.is_empty()
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
                tokens_per_s: interval_tokens / seconds.max(1e-9),
                masked_acc: Some(interval_correct / interval_masked.max(1.0)),
                bad_steps: state.bad_steps,
                ..Default::default()
            };
            if evaluate_now {
                let (vl, ppl, acc) = evaluate(&model.valid(), leader.valid, &device);
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
            leader.metrics.write(&line)?;
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
            ) = (0.0, 0.0, 0.0, 0.0);
            interval_start = Instant::now();
        }
        bar.set_position(state.step);
        let periodic =
            config.checkpoint.every > 0 && state.step.is_multiple_of(config.checkpoint.every);
        if periodic || state.step == total || stopped {
            leader.metrics.sync();
            let path = (leader.save)(&model, &optim, &state)?;
            tracing::info!("saved {}", path.display());
        }
        if stopped {
            tracing::info!(
                "stopped by signal at step {}; continue with --resume auto --run-dir {}",
                state.step,
                leader.run_dir.display()
            );
            break;
        }
    }
    bar.finish_and_clear();
    group.leave()?;
    Ok((model, state, stopped))
}
