//! `finetune`, `eval`, `predict` and `export`. The loop reads like pretraining's (next
//! micro-batches, forward, backward, accumulate, clip, step, schedule, log, evaluate,
//! checkpoint) and shares its optimizer, schedule, checkpoints and metrics file; what
//! differs per task lives in `task.rs`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use roberta_data::loader::permutation;
use roberta_data::{LoaderState, RobertaTokenizer};
use roberta_model::hf::write_atomic;
use roberta_model::{
    LoadOptions, Pretrained, RobertaConfig, RobertaForMaskedLM, RobertaForQuestionAnswering,
    RobertaForSequenceClassification, RobertaForTokenClassification,
};
use serde::Serialize;

use crate::checkpoint::{self, Best, TrainerState};
use crate::config::{FinetuneConfig, TaskKind, TaskSection};
use crate::infer::{load_model, load_tokenizer};
use crate::metrics::Metrics;
use crate::task::{
    self, Examples, Feature, Outputs, TASK_KEY, TaskData, TaskModel, argmax, decode_answers, infer,
    loss_sum, loss_terms, read_task_data, train_labels, word_labels,
};
use crate::trainer::{
    AdamWGroups, MetricsFile, check_precision, check_resume_changes, learning_rate, resume_point,
    seed_dropout, stop_flag,
};

pub struct FinetuneArgs {
    pub config: FinetuneConfig,
    pub init: Option<PathBuf>,
    pub resume: Option<String>,
    pub run_dir: PathBuf,
    pub force: bool,
}

/// The results file written next to the best model and by `eval`.
pub const EVAL_RESULTS: &str = "eval_results.json";

pub fn finetune<B: AutodiffBackend>(device: B::Device, args: FinetuneArgs) -> Result<()> {
    match args.config.task.kind {
        TaskKind::Classification | TaskKind::PairClassification | TaskKind::Regression => {
            train::<B, RobertaForSequenceClassification<B>>(device, args)
        }
        TaskKind::Qa => train::<B, RobertaForQuestionAnswering<B>>(device, args),
        TaskKind::TokenClassification => train::<B, RobertaForTokenClassification<B>>(device, args),
    }
}

/// An HF model directory to start from: `dir` itself, a run's `final/` (or its newest
/// checkpoint), or a checkpoint exported into `scratch` first.
fn init_dir<B: Backend>(dir: &Path, scratch: &Path, device: &B::Device) -> Result<PathBuf> {
    if dir.join(roberta_model::hf::WEIGHTS_FILE).exists() {
        return Ok(dir.to_path_buf());
    }
    if dir
        .join("final")
        .join(roberta_model::hf::WEIGHTS_FILE)
        .exists()
    {
        return Ok(dir.join("final"));
    }
    let checkpoint = if dir.join(checkpoint::MANIFEST).exists() {
        checkpoint::verify(dir)?;
        dir.to_path_buf()
    } else {
        match checkpoint::latest_valid(dir)? {
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

/// The task model's label count: 1 for regression, none for QA's two span outputs.
fn head_labels(kind: TaskKind, labels: &[String]) -> Option<usize> {
    match kind {
        TaskKind::Regression => Some(1),
        TaskKind::Qa => None,
        _ => Some(labels.len()),
    }
}

fn train<B, M>(device: B::Device, args: FinetuneArgs) -> Result<()>
where
    B: AutodiffBackend,
    M: TaskModel<B> + AutodiffModule<B>,
    M::InnerModule: TaskModel<B::InnerBackend>,
{
    let config = args.config;
    let run_dir = args.run_dir;
    let task = &config.task;
    check_precision::<B>(config.train.precision, std::slice::from_ref(&device))?;

    let resume_from = resume_point(&run_dir, args.resume.as_deref())?;
    if let Some((path, _)) = &resume_from {
        let saved: FinetuneConfig =
            toml::from_str(&std::fs::read_to_string(path.join(checkpoint::CONFIG))?)
                .with_context(|| format!("{}: saved config", path.display()))?;
        check_resume_changes(&config.exactness_changes(&saved), args.force)?;
    }
    std::fs::create_dir_all(&run_dir).with_context(|| format!("creating {}", run_dir.display()))?;
    let config_toml = config.to_toml();
    write_atomic(&run_dir.join("config.toml"), config_toml.as_bytes())?;

    // Where the weights and the tokenizer come from.
    let init = args.init.clone().or_else(|| config.model.init.clone());
    let source = match &init {
        Some(dir) => Some(init_dir::<B::InnerBackend>(
            dir,
            &run_dir.join("init"),
            &device,
        )?),
        None => None,
    };
    let tokenizer = match (&config.data.tokenizer, &source) {
        (Some(path), _) => RobertaTokenizer::load(path)
            .with_context(|| format!("loading the tokenizer {}", path.display()))?,
        (None, Some(dir)) => load_tokenizer(dir)?,
        (None, None) => bail!(
            "no tokenizer: set data.tokenizer, or start from a model directory that holds one (model.init / --init)"
        ),
    };

    // Data.
    let labels = train_labels(&config.data.train, task)?;
    B::seed(&device, config.train.seed);
    let (mut model, mut model_config): (M, RobertaConfig) = match &source {
        Some(dir) => {
            let options = LoadOptions {
                allow_new_head: true,
                num_labels: head_labels(task.kind, &labels),
            };
            let loaded = load_model::<B, M>(dir, options, &device)?;
            (loaded.model, loaded.config)
        }
        None => {
            let preset = config.model.preset.as_deref().unwrap_or("roberta-base");
            let mut c = RobertaConfig::preset(preset).expect("validated preset");
            c.vocab_size = tokenizer.vocab_size();
            c.max_position_embeddings = task.max_length + c.pad_token_id + 1;
            tracing::warn!(
                "no model.init: fine-tuning a randomly initialised {preset} (results are not those of a pretrained model)"
            );
            let n = head_labels(task.kind, &labels).unwrap_or(2);
            (M::init(&c, n, &device), c)
        }
    };
    ensure!(
        model_config.vocab_size >= tokenizer.vocab_size(),
        "the tokenizer has {} tokens but the model's vocabulary only {}: use the model's own tokenizer",
        tokenizer.vocab_size(),
        model_config.vocab_size
    );
    let m = &config.model;
    if let Some(p) = m.hidden_dropout_prob {
        model_config.hidden_dropout_prob = p;
    }
    if let Some(p) = m.attention_probs_dropout_prob {
        model_config.attention_probs_dropout_prob = p;
    }
    if m.classifier_dropout.is_some() {
        model_config.classifier_dropout = m.classifier_dropout;
    }
    model.backbone_mut().set_dropout(
        model_config.hidden_dropout_prob,
        model_config.attention_probs_dropout_prob,
    );
    model = model.with_head_dropout(model_config.classifier_dropout_prob());
    match task.kind {
        TaskKind::Regression => {
            model_config.set_labels(&["LABEL_0".to_string()]);
            model_config.problem_type = Some("regression".into());
        }
        TaskKind::Qa => {}
        _ => model_config.set_labels(&labels),
    }
    model_config
        .extra
        .insert(TASK_KEY.into(), serde_json::to_value(task)?);
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    model_config
        .extra
        .insert("finetuning_task".into(), serde_json::json!(name));

    let max_length = task.max_length.min(model_config.max_sequence_length());
    if max_length < task.max_length {
        tracing::info!(
            "task.max_length {} is more than the model takes: inputs are cut at {max_length} tokens",
            task.max_length
        );
    }
    let train_data = read_task_data(
        &config.data.train,
        task,
        &labels,
        &tokenizer,
        max_length,
        true,
    )?;
    let valid_data = config
        .data
        .valid
        .as_ref()
        .map(|p| read_task_data(p, task, &labels, &tokenizer, max_length, true))
        .transpose()?;
    let features = &train_data.features;
    let pad = tokenizer.specials().pad;

    // Schedule: whole epochs, or fewer updates.
    let t = &config.train;
    let per_update = t.batch_size * t.accumulation;
    let steps_per_epoch = features.len().div_ceil(per_update) as u64;
    let mut total = t.epochs * steps_per_epoch;
    if t.max_steps > 0 {
        total = total.min(t.max_steps);
    }
    let warmup = (t.warmup_ratio * total as f64).round() as u64;
    tracing::info!(
        "{}: {} train examples ({} features), {} labels, {total} updates of {per_update} ({steps_per_epoch} per epoch), warmup {warmup}",
        task.kind.name(),
        train_data.examples.len(),
        features.len(),
        labels.len()
    );

    let mut optim = AdamWGroups::<B, M>::new(&config.optim, &model);
    let mut state = TrainerState::default();
    if let Some((path, saved)) = &resume_from {
        model = model
            .load_file(
                path.join(checkpoint::MODEL),
                &crate::trainer::Recorder32::new(),
                &device,
            )
            .with_context(|| format!("{}: model", path.display()))?;
        optim = optim.load(path, &model, &device)?;
        state = saved.clone();
        tracing::info!("resumed from {} at step {}", path.display(), state.step);
    }
    let stop = stop_flag()?;
    let mut metrics = MetricsFile::open(&run_dir, state.step)?;
    let metric = config.metric().to_string();
    let higher = TaskKind::higher_is_better(&metric);
    let save = |model: &M, optim: &AdamWGroups<B, M>, state: &TrainerState| {
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

    let bar = crate::progress::steps_bar(total, state.step);
    let mut order = permutation(features.len(), t.seed, state.loader.epoch);
    let (mut interval_loss, mut interval_terms, mut interval_tokens) = (0.0f64, 0usize, 0u64);
    let mut interval_start = Instant::now();
    let mut stopped = false;
    let mut early_stop = false;
    while state.step < total {
        // 1. The window: `accumulation` micro-batches, in this epoch's order.
        let epoch_before = state.loader.epoch;
        let mut window: Vec<Vec<&Feature>> = Vec::new();
        for _ in 0..t.accumulation {
            let LoaderState { epoch, cursor } = state.loader;
            let start = cursor as usize;
            let end = (start + t.batch_size).min(features.len());
            window.push(
                order[start..end]
                    .iter()
                    .map(|&i| &features[i as usize])
                    .collect(),
            );
            state.loader = if end == features.len() {
                order = permutation(features.len(), t.seed, epoch + 1);
                LoaderState {
                    epoch: epoch + 1,
                    cursor: 0,
                }
            } else {
                LoaderState {
                    epoch,
                    cursor: end as u64,
                }
            };
            if end == features.len() {
                break;
            }
        }
        let terms: usize = window.iter().map(|b| loss_terms(b)).sum();

        // 2. Forward and backward; each micro-batch's summed loss over the window's terms.
        let mut accumulator = GradientsAccumulator::<M>::new();
        let forward = t.precision.forward_model(&model);
        let mut loss_total = 0.0f64;
        for (i, batch) in window.iter().enumerate() {
            seed_dropout::<B>(&device, t.seed, state.step, i);
            let logits = forward.logits(task::input(batch, pad, &device));
            let loss = loss_sum(logits, batch, &device);
            loss_total += loss.clone().inner().into_scalar().elem::<f64>();
            let grads = (loss / terms.max(1) as f64).backward();
            accumulator.accumulate(&model, GradientsParams::from_grads(grads, &model));
            let tokens: usize = batch.iter().map(|f| f.ids.len()).sum();
            interval_tokens += tokens as u64;
            state.tokens += tokens as u64;
        }
        let grads = accumulator.grads();
        let loss = loss_total / terms.max(1) as f64;
        if !loss.is_finite() {
            state.skip_update(loss, t.max_bad_steps)?;
            continue;
        }
        state.bad_in_a_row = 0;

        // 3. Clip and step at the scheduled rate.
        let lr = learning_rate(state.step + 1, config.optim.lr, warmup, total);
        let (stepped, norm) = optim.step(lr, model, grads, &device);
        model = stepped;
        state.step += 1;
        interval_loss += loss_total;
        interval_terms += terms;

        // 4. Log, evaluate, keep the best, checkpoint.
        let epoch_done = state.loader.epoch > epoch_before;
        let evaluate_now = valid_data.is_some()
            && (state.step == total
                || if config.eval.every > 0 {
                    state.step.is_multiple_of(config.eval.every)
                } else {
                    epoch_done
                });
        let mut line = serde_json::json!({ "step": state.step, "epoch": epoch_before });
        let log_now = state.step.is_multiple_of(t.log_every) || evaluate_now || state.step == total;
        if log_now {
            let seconds = interval_start.elapsed().as_secs_f64().max(1e-9);
            line["loss"] = serde_json::json!(interval_loss / interval_terms.max(1) as f64);
            line["lr"] = serde_json::json!(lr);
            line["grad_norm"] = serde_json::json!(norm);
            line["tokens_per_s"] = serde_json::json!(interval_tokens as f64 / seconds);
            bar.set_message(format!(
                "loss {:.4} lr {lr:.2e}",
                interval_loss / interval_terms.max(1) as f64
            ));
            (interval_loss, interval_terms, interval_tokens) = (0.0, 0, 0);
            interval_start = Instant::now();
        }
        if evaluate_now && let Some(valid) = &valid_data {
            let inner = model.valid();
            let outputs = infer(
                &inner,
                &valid.features,
                pad,
                config.eval.batch_size,
                &device,
            )?;
            let scores = task::score(task, &labels, valid, &outputs)?;
            let value = scores[&metric];
            for (k, v) in &scores {
                line[format!("valid_{k}")] = serde_json::json!(v);
            }
            let improved = state.best.as_ref().is_none_or(|b| {
                if higher {
                    value > b.value
                } else {
                    value < b.value
                }
            });
            bar.println(format!(
                "step {:>6}  valid {}{}",
                state.step,
                format_metrics(&scores),
                if improved { "  (best)" } else { "" }
            ));
            tracing::info!("step {} valid {}", state.step, format_metrics(&scores));
            if improved {
                state.best = Some(Best {
                    step: state.step,
                    value,
                    stale: 0,
                });
                checkpoint::save_hf_dir(
                    &run_dir.join("best"),
                    &inner,
                    &model_config,
                    &tokenizer,
                    Some(&scores),
                )?;
            } else if let Some(best) = &mut state.best {
                best.stale += 1;
                early_stop = config.eval.patience > 0 && best.stale >= config.eval.patience;
            }
        }
        if log_now {
            metrics.write(&line)?;
        }
        bar.set_position(state.step);
        stopped = stop.load(Ordering::Relaxed);
        let periodic =
            config.checkpoint.every > 0 && state.step.is_multiple_of(config.checkpoint.every);
        if periodic || evaluate_now || state.step == total || stopped || early_stop {
            metrics.sync();
            let path = save(&model, &optim, &state)?;
            tracing::info!("saved {}", path.display());
        }
        if stopped {
            break;
        }
        if early_stop {
            tracing::info!(
                "early stop: {} evaluations without a better {metric}",
                config.eval.patience
            );
            break;
        }
    }
    bar.finish_and_clear();
    if stopped {
        tracing::info!(
            "stopped by signal at step {}; continue with --resume auto --run-dir {}",
            state.step,
            run_dir.display()
        );
        return Ok(());
    }
    let final_dir = run_dir.join("final");
    checkpoint::save_hf_dir(&final_dir, &model.valid(), &model_config, &tokenizer, None)?;
    if let Err(e) = crate::plot::plot_run(&run_dir, &run_dir.join(crate::plot::PLOT_FILE)) {
        tracing::warn!("no plot: {e:#}");
    }
    match &state.best {
        Some(best) => tracing::info!(
            "done: {} updates; best {metric} {:.4} at step {} in {} (last model in {})",
            state.step,
            best.value,
            best.step,
            run_dir.join("best").display(),
            final_dir.display()
        ),
        None => tracing::info!(
            "done: {} updates; model in {}",
            state.step,
            final_dir.display()
        ),
    }
    Ok(())
}

fn format_metrics(m: &Metrics) -> String {
    m.iter()
        .map(|(k, v)| format!("{k} {v:.4}"))
        .collect::<Vec<_>>()
        .join("  ")
}

/// What `eval` and `predict` read: the model directory, the data, and how to read it.
pub struct ApplyArgs {
    pub model: PathBuf,
    pub data: PathBuf,
    pub output: Option<PathBuf>,
    pub overrides: TaskOverrides,
    pub batch_size: usize,
}

/// Command-line changes to how a model's task reads files: other column layouts.
#[derive(Debug, Clone, Default)]
pub struct TaskOverrides {
    pub task: Option<TaskKind>,
    pub text_a: Option<String>,
    pub text_b: Option<String>,
    pub label: Option<String>,
    pub no_header: bool,
    pub max_length: Option<usize>,
}

/// A model directory's task, with the command line's changes.
fn resolve_task(config: &RobertaConfig, dir: &Path, o: &TaskOverrides) -> Result<TaskSection> {
    let mut task = match (task::task_of(config), o.task) {
        (Some(saved), None) => saved,
        (Some(saved), Some(kind)) if saved.kind == kind => saved,
        (_, Some(kind)) => TaskSection::for_kind(kind),
        (None, None) => bail!(
            "{}: not a fine-tuned model ({}); pass --task",
            dir.display(),
            config.architectures.join(", ")
        ),
    };
    if let Some(a) = &o.text_a {
        task.text_a = Some(a.clone());
    }
    if let Some(b) = &o.text_b {
        task.text_b = Some(b.clone());
        if task.kind == TaskKind::Classification {
            task.kind = TaskKind::PairClassification;
        }
    }
    if let Some(l) = &o.label {
        task.label = l.clone();
    }
    if o.no_header {
        task.header = false;
    }
    if let Some(n) = o.max_length {
        task.max_length = n;
    }
    task.validate()?;
    Ok(task)
}

/// `eval` and `predict` open a model directory (an HF one, a run's `best/`, or a
/// checkpoint exported on the fly) and pick the head its task needs.
pub fn apply<B: AutodiffBackend>(device: B::Device, args: ApplyArgs, predict: bool) -> Result<()> {
    let scratch = ScratchDir::new();
    let dir = if args
        .model
        .join("best")
        .join(roberta_model::hf::WEIGHTS_FILE)
        .exists()
    {
        args.model.join("best")
    } else {
        init_dir::<B::InnerBackend>(&args.model, scratch.path(), &device)?
    };
    let config = RobertaConfig::load(&dir.join(roberta_model::hf::CONFIG_FILE))?;
    let task = resolve_task(&config, &dir, &args.overrides)?;
    type I<B> = <B as AutodiffBackend>::InnerBackend;
    match task.kind {
        TaskKind::Classification | TaskKind::PairClassification | TaskKind::Regression => {
            apply_with::<I<B>, RobertaForSequenceClassification<I<B>>>(
                &device, &dir, &task, &args, predict,
            )
        }
        TaskKind::Qa => apply_with::<I<B>, RobertaForQuestionAnswering<I<B>>>(
            &device, &dir, &task, &args, predict,
        ),
        TaskKind::TokenClassification => apply_with::<I<B>, RobertaForTokenClassification<I<B>>>(
            &device, &dir, &task, &args, predict,
        ),
    }
}

/// A scratch directory removed on drop, for checkpoints exported on the fly.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn new() -> Self {
        Self(std::env::temp_dir().join(format!("roberta-train-{}", std::process::id())))
    }
    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn apply_with<B: Backend, M: TaskModel<B>>(
    device: &B::Device,
    dir: &Path,
    task: &TaskSection,
    args: &ApplyArgs,
    predict: bool,
) -> Result<()> {
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let tokenizer = load_tokenizer(dir)?;
    let loaded = load_model::<B, M>(dir, LoadOptions::default(), device)?;
    let (model, config) = (loaded.model, loaded.config);
    let labels = match task.kind {
        TaskKind::Regression | TaskKind::Qa => Vec::new(),
        _ => config.labels(model.num_labels()),
    };
    let max_length = task.max_length.min(config.max_sequence_length());
    let data = read_task_data(&args.data, task, &labels, &tokenizer, max_length, !predict)?;
    let pad = tokenizer.specials().pad;
    let outputs = infer(&model, &data.features, pad, args.batch_size, device)?;
    if predict {
        let output = args.output.clone().expect("predict has --output");
        let lines = prediction_lines(task, &labels, &data, &outputs)?;
        let mut text = Vec::new();
        for line in &lines {
            writeln!(text, "{}", serde_json::to_string(line)?)?;
        }
        write_atomic(&output, &text).with_context(|| format!("writing {}", output.display()))?;
        tracing::info!("wrote {} predictions to {}", lines.len(), output.display());
    } else {
        let scores = task::score(task, &labels, &data, &outputs)?;
        let json = serde_json::to_string_pretty(&scores)?;
        let output = args
            .output
            .clone()
            .unwrap_or_else(|| PathBuf::from(EVAL_RESULTS));
        write_atomic(&output, json.as_bytes())
            .with_context(|| format!("writing {}", output.display()))?;
        // Written first, so a closed pipe on stdout (`| head`) loses nothing.
        let _ = writeln!(std::io::stdout(), "{json}");
    }
    Ok(())
}

/// One line of `predict`'s JSONL output.
#[derive(Serialize)]
#[serde(untagged)]
enum Prediction {
    Label {
        line: usize,
        label: String,
        probabilities: serde_json::Map<String, serde_json::Value>,
    },
    Value {
        line: usize,
        score: f32,
    },
    Answer {
        id: String,
        answer: String,
        start: usize,
        end: usize,
        score: f32,
    },
    Tags {
        line: usize,
        words: Vec<String>,
        tags: Vec<String>,
    },
}

fn prediction_lines(
    task: &TaskSection,
    labels: &[String],
    data: &TaskData,
    outputs: &Outputs,
) -> Result<Vec<Prediction>> {
    Ok(match (outputs, &data.examples) {
        (Outputs::Sequence(rows), Examples::Sentences(examples)) => rows
            .iter()
            .zip(examples)
            .map(|(row, ex)| {
                if task.kind == TaskKind::Regression {
                    Prediction::Value {
                        line: ex.line,
                        score: row[0],
                    }
                } else {
                    Prediction::Label {
                        line: ex.line,
                        label: labels[argmax(row)].clone(),
                        probabilities: labels
                            .iter()
                            .zip(row)
                            .map(|(l, p)| (l.clone(), serde_json::json!(p)))
                            .collect(),
                    }
                }
            })
            .collect(),
        (Outputs::Span(spans), Examples::Questions(examples)) => {
            decode_answers(task, examples, &data.features, spans)
                .into_iter()
                .zip(examples)
                .map(|(a, ex)| Prediction::Answer {
                    id: ex.id.clone(),
                    answer: a.text,
                    start: a.start,
                    end: a.end,
                    score: a.score,
                })
                .collect()
        }
        (Outputs::Tokens(tokens), Examples::Tagged(sentences)) => {
            let outside = labels.iter().position(|l| l == "O").unwrap_or(0);
            let lengths: Vec<usize> = sentences.iter().map(|s| s.words.len()).collect();
            word_labels(&data.features, tokens, &lengths, outside)
                .into_iter()
                .zip(sentences)
                .map(|(ids, s)| Prediction::Tags {
                    line: s.line,
                    words: s.words.clone(),
                    tags: ids.into_iter().map(|i| labels[i].clone()).collect(),
                })
                .collect()
        }
        _ => bail!("the model's outputs do not fit a {} task", task.kind.name()),
    })
}

/// `export`: an HF directory (config.json with id2label, model.safetensors, tokenizer
/// files) from a checkpoint, or from a run's newest checkpoint.
pub fn export<B: AutodiffBackend>(
    device: B::Device,
    checkpoint: PathBuf,
    out: PathBuf,
) -> Result<()> {
    let dir = if checkpoint.join(checkpoint::MANIFEST).exists() {
        checkpoint::verify(&checkpoint)?;
        checkpoint
    } else {
        let (found, skipped) = checkpoint::latest_valid(&checkpoint)?;
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

fn export_checkpoint<B: Backend>(dir: &Path, out: &Path, device: &B::Device) -> Result<()> {
    let config = checkpoint::model_config(dir)?;
    let tokenizer = RobertaTokenizer::from_file(&dir.join(checkpoint::TOKENIZER))?;
    fn write<B: Backend, M: Pretrained<B> + Module<B>>(
        dir: &Path,
        out: &Path,
        tokenizer: &RobertaTokenizer,
        device: &B::Device,
    ) -> Result<()> {
        let (model, config) = checkpoint::read_model::<B, M>(dir, device)?;
        checkpoint::save_hf_dir(out, &model, &config, tokenizer, None)
    }
    match config.architectures.first().map(String::as_str) {
        Some("RobertaForMaskedLM") => {
            write::<B, RobertaForMaskedLM<B>>(dir, out, &tokenizer, device)
        }
        Some("RobertaForSequenceClassification") => {
            write::<B, RobertaForSequenceClassification<B>>(dir, out, &tokenizer, device)
        }
        Some("RobertaForTokenClassification") => {
            write::<B, RobertaForTokenClassification<B>>(dir, out, &tokenizer, device)
        }
        Some("RobertaForQuestionAnswering") => {
            write::<B, RobertaForQuestionAnswering<B>>(dir, out, &tokenizer, device)
        }
        other => bail!(
            "{}: unknown architecture {other:?} in config.json",
            dir.display()
        ),
    }
}
