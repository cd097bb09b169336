//! `pretrain`: the loop reads top to bottom: next micro-batches, forward, backward,
//! accumulate, clip, step, schedule, log, evaluate, checkpoint.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::{AdamWConfig, GradientsAccumulator, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::backend::AutodiffBackend;
use roberta_data::loader::validation_batches;
use roberta_data::preprocess::{self, Outcome, PreprocessOptions, tokenizer_sha256};
use roberta_data::{
    Batch, Corpus, Loader, LoaderConfig, LoaderState, MaskVocab, Meta, RobertaTokenizer, Split,
};
use roberta_model::loss::cross_entropy_sum;
use roberta_model::{LoadOptions, RobertaForMaskedLM, RobertaInput, save_pretrained};
use serde::Serialize;

use crate::checkpoint::{self, TrainerState};
use crate::config::PretrainConfig;
use crate::infer::load_model;

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

/// Linear warmup from 0 to `peak` over `warmup` updates, then linear decay to 0 at
/// `total`. `step` counts from 1 (the update about to be taken).
pub fn learning_rate(step: u64, peak: f64, warmup: u64, total: u64) -> f64 {
    if step <= warmup {
        peak * step as f64 / warmup.max(1) as f64
    } else {
        peak * (total.saturating_sub(step)) as f64 / (total - warmup).max(1) as f64
    }
}

type Recorder32 = BinFileRecorder<FullPrecisionSettings>;

/// Parameter ids split the way weight decay is: matrices (weights, embeddings) decay,
/// vectors (biases, LayerNorm) do not.
#[derive(Default)]
struct ParamGroups {
    matrices: Vec<ParamId>,
    vectors: Vec<ParamId>,
}

impl<B: Backend> ModuleVisitor<B> for ParamGroups {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        assert!(D <= 2, "RoBERTa has only vector and matrix parameters");
        if D == 1 {
            self.vectors.push(param.id);
        } else {
            self.matrices.push(param.id);
        }
    }
}

impl ParamGroups {
    fn of<B: Backend, M: Module<B>>(module: &M) -> Self {
        let mut groups = Self::default();
        module.visit(&mut groups);
        groups
    }

    /// PyTorch's `clip_grad_norm_` norm: over all gradients at once, not per tensor.
    fn global_norm<B: Backend>(&self, grads: &GradientsParams, device: &B::Device) -> f64 {
        let mut total = Tensor::<B, 1>::zeros([1], device);
        for &id in &self.matrices {
            if let Some(g) = grads.get::<B, 2>(id) {
                total = total + g.powi_scalar(2).sum();
            }
        }
        for &id in &self.vectors {
            if let Some(g) = grads.get::<B, 1>(id) {
                total = total + g.powi_scalar(2).sum();
            }
        }
        (total.into_scalar().elem::<f64>()).sqrt()
    }

    fn scale<B: Backend>(&self, grads: &mut GradientsParams, factor: f64) {
        for &id in &self.matrices {
            if let Some(g) = grads.remove::<B, 2>(id) {
                grads.register(id, g * factor);
            }
        }
        for &id in &self.vectors {
            if let Some(g) = grads.remove::<B, 1>(id) {
                grads.register(id, g * factor);
            }
        }
    }

    /// Moves the vector parameters' gradients into their own set, for the optimizer
    /// without weight decay.
    fn take_vectors<B: Backend>(&self, grads: &mut GradientsParams) -> GradientsParams {
        let mut vectors = GradientsParams::new();
        for &id in &self.vectors {
            if let Some(g) = grads.remove::<B, 1>(id) {
                vectors.register(id, g);
            }
        }
        vectors
    }
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
    let resume_from = match args.resume.as_deref() {
        None => {
            if !checkpoint::list(&run_dir)?.is_empty() {
                bail!(
                    "{} already holds checkpoints: pass --resume auto to continue it, or another --run-dir",
                    run_dir.display()
                );
            }
            None
        }
        Some("auto") => {
            let (found, skipped) = checkpoint::latest_valid(&run_dir)?;
            for s in &skipped {
                tracing::warn!("skipping a checkpoint that does not verify: {s}");
            }
            if found.is_none() {
                tracing::info!(
                    "no checkpoint in {}: starting from step 0",
                    run_dir.display()
                );
            }
            found
        }
        Some(path) => {
            let path = PathBuf::from(path);
            let state = checkpoint::verify(&path)?;
            Some((path, state))
        }
    };
    if let Some((path, _)) = &resume_from {
        let saved_text = std::fs::read_to_string(path.join(checkpoint::CONFIG))?;
        let saved: PretrainConfig = toml::from_str(&saved_text)
            .with_context(|| format!("{}: saved config", path.display()))?;
        let changes = config.exactness_changes(&saved);
        if !changes.is_empty() && !args.force {
            bail!(
                "the config differs from the checkpoint's in ways that break an exact resume:\n  {}\npass --force to resume anyway",
                changes.join("\n  ")
            );
        }
        for c in &changes {
            tracing::warn!("resuming with a changed config (--force): {c}");
        }
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
    let o = &config.optim;
    let adamw = |decay: f64| {
        AdamWConfig::new()
            .with_beta_1(o.beta1 as f32)
            .with_beta_2(o.beta2 as f32)
            .with_epsilon(o.eps as f32)
            .with_weight_decay(decay as f32)
    };
    let mut optim_decay = adamw(o.weight_decay).init::<B, RobertaForMaskedLM<B>>();
    let mut optim_plain = adamw(0.0).init::<B, RobertaForMaskedLM<B>>();
    let recorder = Recorder32::new();
    let mut state = TrainerState {
        step: 0,
        loader: LoaderState::default(),
        bad_steps: 0,
        bad_in_a_row: 0,
        tokens: 0,
    };
    if let Some((path, saved)) = &resume_from {
        model = model
            .load_file(path.join("model"), &recorder, &device)
            .with_context(|| format!("{}: model", path.display()))?;
        optim_decay = optim_decay.load_record(
            recorder
                .load(path.join("optim-decay"), &device)
                .with_context(|| format!("{}: optimizer", path.display()))?,
        );
        optim_plain = optim_plain.load_record(
            recorder
                .load(path.join("optim-no-decay"), &device)
                .with_context(|| format!("{}: optimizer", path.display()))?,
        );
        state = saved.clone();
        truncate_metrics(&run_dir.join("metrics.jsonl"), state.step)?;
        tracing::info!("resumed from {} at step {}", path.display(), state.step);
    }
    let groups = ParamGroups::of(&model);

    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the signal handler")?;
    }

    let loader_config = LoaderConfig {
        batch_size: config.train.batch_size,
        seed: config.train.seed,
        rank: 0,
        world: 1,
        pad_to: None,
        queue_depth: config.train.loader_queue,
    };
    let mut loader = Loader::new(corpus.clone(), loader_config, state.loader);
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(run_dir.join("metrics.jsonl"))
        .with_context(|| format!("opening {}", run_dir.join("metrics.jsonl").display()))?;

    let total = config.schedule.total_steps;
    let bar = crate::progress::steps_bar(total, state.step);
    let save = |model: &RobertaForMaskedLM<B>,
                optim_decay: &_,
                optim_plain: &_,
                state: &TrainerState|
     -> Result<PathBuf> {
        checkpoint::save(
            &run_dir,
            state,
            &config_toml,
            config.checkpoint.keep,
            |tmp| {
                model.clone().save_file(tmp.join("model"), &recorder)?;
                save_optimizer::<B>(optim_decay, &tmp.join("optim-decay"))?;
                save_optimizer::<B>(optim_plain, &tmp.join("optim-no-decay"))?;
                Ok(())
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
            B::seed(
                &device,
                config.train.seed ^ (state.step << 16) ^ i as u64 ^ 0xD0_0000_0000,
            );
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
        let mut grads = accumulator.grads();
        let loss = loss_sum / window_masked.max(1) as f64;
        state.tokens += window.iter().map(|b| b.tokens as u64).sum::<u64>();
        interval_tokens += window.iter().map(|b| b.tokens as u64).sum::<u64>();

        // 3. A non-finite loss skips the update; too many in a row abort.
        if !loss.is_finite() || window_masked == 0 {
            state.bad_steps += 1;
            state.bad_in_a_row += 1;
            tracing::warn!(
                "step {}: loss {loss}: update skipped ({} in a row)",
                state.step + 1,
                state.bad_in_a_row
            );
            if state.bad_in_a_row >= config.train.max_bad_steps {
                bail!(
                    "{} updates in a row had a non-finite loss (NaN/inf); lower optim.lr or raise schedule.warmup_steps",
                    state.bad_in_a_row
                );
            }
            continue;
        }
        state.bad_in_a_row = 0;

        // 4. Clip the global norm, then step both AdamW groups at the scheduled rate.
        let norm = groups.global_norm::<B::InnerBackend>(&grads, &device);
        if config.optim.clip_norm > 0.0 && norm > config.optim.clip_norm {
            groups.scale::<B::InnerBackend>(&mut grads, config.optim.clip_norm / (norm + 1e-6));
        }
        let lr = learning_rate(
            state.step + 1,
            config.optim.lr,
            config.schedule.warmup_steps,
            total,
        );
        let vectors = groups.take_vectors::<B::InnerBackend>(&mut grads);
        model = optim_decay.step(lr, model, grads);
        model = optim_plain.step(lr, model, vectors);
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
            writeln!(metrics, "{}", serde_json::to_string(&line)?)?;
            metrics.flush()?;
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
            metrics.sync_data().ok();
            let path = save(&model, &optim_decay, &optim_plain, &state)?;
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

fn save_optimizer<B: AutodiffBackend>(
    optim: &impl Optimizer<RobertaForMaskedLM<B>, B>,
    path: &Path,
) -> Result<()> {
    Recorder32::new()
        .record(optim.to_record(), path.to_path_buf())
        .with_context(|| format!("writing {}", path.display()))
}

/// Drops metric lines past `step`: a run killed after its last checkpoint logged steps
/// that the resumed run will take again.
fn truncate_metrics(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    roberta_model::hf::write_atomic(path, kept.as_bytes())?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(learning_rate(5, 1.0, 10, 110), 0.5);
        assert_eq!(learning_rate(10, 1.0, 10, 110), 1.0);
        assert!((learning_rate(60, 1.0, 10, 110) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(110, 1.0, 10, 110), 0.0);
        assert_eq!(learning_rate(1, 2.0, 0, 100), 2.0 * 99.0 / 100.0);
    }
}
