//! `finetune`: the task's labeled files into features, the model from `--init` with the
//! task's head, then the trainer's loop.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::module::AutodiffModule;
use roberta_data::RobertaTokenizer;
use roberta_data::preprocess::tokenizer_sha256;
use roberta_model::{LoadOptions, Pretrained, RobertaConfig, TrainingBackend};

use crate::config::{FinetuneConfig, RunConfig};
use crate::parallel::processes::Processes;
use crate::run::checkpoint::{self, DataFingerprint, TrainerState};
use crate::run::run_dir::INIT;
use crate::sources::models::{ScratchDir, init_dir, load_model, load_tokenizer};
use crate::tasks::{Finetuning, LabeledTask, TASK_KEY, TaskModel, WithTask, with_task};
use crate::trainer::{
    self, BestPolicy, RunFiles, Settings, TrainPhase, check_precision, start_run, stop_flag,
};

pub struct FinetuneArgs {
    pub config: FinetuneConfig,
    pub init: Option<PathBuf>,
    pub resume: Option<String>,
    pub run_dir: PathBuf,
    pub force: bool,
}

pub fn finetune<B: TrainingBackend>(devices: Vec<B::Device>, args: FinetuneArgs) -> Result<()> {
    with_task::<B, _>(args.config.task.kind, Finetune::<B> { devices, args })
}

struct Finetune<B: TrainingBackend> {
    devices: Vec<B::Device>,
    args: FinetuneArgs,
}

impl<B: TrainingBackend> WithTask<B> for Finetune<B> {
    type Output = Result<()>;
    fn run<T: LabeledTask>(self) -> Result<()>
    where
        T::Model<B>: AutodiffModule<B, InnerModule = T::Model<B::InnerBackend>>,
    {
        train::<B, T>(self.devices, self.args)
    }
}

/// How the trainer runs a fine-tuning config of `updates` updates.
fn settings(config: &FinetuneConfig, total: u64, run_dir: &std::path::Path) -> Settings {
    let t = &config.train;
    let metric = config.metric().to_string();
    Settings {
        phases: vec![TrainPhase {
            until_step: total,
            batch_size: t.batch_size,
            accumulation: t.accumulation,
            warmup: None,
        }],
        batch_warmup: None,
        seed: t.seed,
        data_seed: config.data_seed(),
        precision: t.precision,
        max_bad_steps: t.max_bad_steps,
        optim: config.optim.clone(),
        warmup: (t.warmup_ratio * total as f64).round() as u64,
        total,
        log_every: config.log.every,
        profile_every: config.log.profile_every,
        tensorboard: config.log.tensorboard_dir(run_dir),
        ema_decay: t.ema_decay,
        eval_every: config.eval.every,
        best: Some(BestPolicy {
            higher_is_better: config
                .task
                .kind
                .metric(&metric)
                .is_none_or(|m| m.higher_is_better),
            metric,
            patience: config.eval.patience,
        }),
        checkpoint_every: config.checkpoint.every,
        keep: config.checkpoint.keep,
    }
}

fn train<B: TrainingBackend, T: LabeledTask>(
    devices: Vec<B::Device>,
    args: FinetuneArgs,
) -> Result<()>
where
    T::Model<B>: AutodiffModule<B, InnerModule = T::Model<B::InnerBackend>>,
{
    let mut config = args.config;
    let run_dir = args.run_dir;
    let device = devices[0].clone();
    check_precision::<B>(config.train.precision, &devices)?;
    let world = crate::parallel::processes::world(devices.len());
    let resume = start_run(
        &run_dir,
        args.resume.as_deref(),
        &mut config,
        world,
        args.force,
    )?;

    let (source, tokenizer, _scratch) = model_source::<B>(&config, args.init, &run_dir, &device)?;
    let section = config.task.clone();
    let task = T::new(
        section.clone(),
        T::train_labels(&config.data.train, &section)?,
    );
    crate::trainer::seed_init::<B>(&device, config.init_seed());
    let (model, model_config) = build_model::<B, T>(
        &config,
        &task,
        source.as_deref(),
        &tokenizer,
        &run_dir,
        &device,
    )?;

    let max_length = max_length(section.max_length, &model_config);
    let train = task.read(&config.data.train, &tokenizer, max_length, true)?;
    let valid = config
        .data
        .valid
        .as_ref()
        .map(|p| task.read(p, &tokenizer, max_length, true))
        .transpose()?;

    // A multiple-choice example is a row per choice.
    let rows_per_feature = train.features.first().map_or(1, |f| T::rows(f).len());
    trainer::check_batch_memory::<B>(
        &device,
        "train.batch_size",
        config.train.batch_size.min(train.features.len()) * rows_per_feature,
        max_length,
        0,
        &model_config,
        config.train.precision,
    )?;
    let (total, per_update, steps_per_epoch) = schedule(&config, train.features.len(), world);
    let settings = settings(&config, total, &run_dir);
    tracing::info!(
        "{}: {} train examples ({} features), {total} updates of {per_update} ({steps_per_epoch} per epoch), warmup {}",
        section.kind.name(),
        train.examples.len(),
        train.features.len(),
        settings.warmup
    );

    let data = fingerprint(&tokenizer, &config.data.train)?;
    if let Some((path, saved)) = &resume {
        data.check_resume(path, saved, args.force)?;
    }
    let metric = config.metric().to_string();
    let finetuning = Finetuning {
        task,
        train: train.features,
        valid,
        pad: tokenizer.specials().pad,
        eval_batch_size: config.eval.batch_size,
    };
    let files = RunFiles {
        run_dir: run_dir.clone(),
        config_toml: config.to_toml(),
        model_config,
        tokenizer,
        data,
    };
    let outcome = trainer::train(
        &finetuning,
        &devices,
        model,
        resume.as_ref(),
        &settings,
        &files,
        stop_flag()?,
    )?;
    if !outcome.stopped {
        report_done(&outcome.state, &metric, &run_dir);
    }
    Ok(())
}

/// `task.max_length`, or less where the model takes fewer positions.
fn max_length(asked: usize, model_config: &RobertaConfig) -> usize {
    let max_length = asked.min(model_config.max_sequence_length());
    if max_length < asked {
        tracing::info!(
            "task.max_length {asked} is more than the model takes: inputs are cut at {max_length} tokens"
        );
    }
    max_length
}

/// Whole epochs, or fewer updates (`train.max_steps`): the number of updates, the
/// examples per update, and the updates per epoch.
fn schedule(config: &FinetuneConfig, features: usize, world: usize) -> (u64, usize, u64) {
    let t = &config.train;
    let per_update = t.batch_size * t.accumulation * world;
    let steps_per_epoch = features.div_ceil(per_update) as u64;
    let mut total = t.epochs * steps_per_epoch;
    if t.max_steps > 0 {
        total = total.min(t.max_steps);
    }
    (total, per_update, steps_per_epoch)
}

/// The tokenizer and training file a checkpoint of this run was trained on.
fn fingerprint(tokenizer: &RobertaTokenizer, train_file: &Path) -> Result<DataFingerprint> {
    let train_sha256 = checkpoint::sha256_file(train_file)?;
    Ok(DataFingerprint {
        tokenizer: tokenizer_sha256(tokenizer),
        describe: format!(
            "{}: {} bytes, sha256 {}…",
            train_file.display(),
            std::fs::metadata(train_file).map_or(0, |m| m.len()),
            &train_sha256[..12]
        ),
        train: train_sha256,
    })
}

/// Where a finished run's models are.
fn report_done(state: &TrainerState, metric: &str, run_dir: &Path) {
    let final_dir = run_dir.join(checkpoint::FINAL);
    match &state.best {
        Some(best) => tracing::info!(
            "done: {} updates; best {metric} {:.4} at step {} in {} (last model in {})",
            state.step,
            best.value,
            best.step,
            run_dir.join(checkpoint::BEST).display(),
            final_dir.display()
        ),
        None => tracing::info!(
            "done: {} updates; model in {}",
            state.step,
            final_dir.display()
        ),
    }
}

/// Where the weights and the tokenizer come from: `--init` (or `model.init`) as an HF
/// model directory, and `data.tokenizer` or that directory's tokenizer.
fn model_source<B: TrainingBackend>(
    config: &FinetuneConfig,
    init: Option<PathBuf>,
    run_dir: &Path,
    device: &B::Device,
) -> Result<(Option<PathBuf>, RobertaTokenizer, Option<ScratchDir>)> {
    let init = init.or_else(|| config.model.init.clone());
    // Rank 0 exports a checkpoint into the run directory, other ranks into scratch space.
    let scratch = (!Processes::current().is_leader()).then(ScratchDir::for_this_process);
    let export_to = scratch
        .as_ref()
        .map_or_else(|| run_dir.join(INIT), |s| s.path().to_path_buf());
    let source = match &init {
        Some(dir) => Some(init_dir::<B::InnerBackend>(dir, &export_to, device)?),
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
    Ok((source, tokenizer, scratch))
}

/// The task model: loaded from `source` with the task's head (new if absent), or random
/// weights of `model.preset`; with the config's dropout and the task in its HF config.
fn build_model<B: TrainingBackend, T: LabeledTask>(
    config: &FinetuneConfig,
    task: &T,
    source: Option<&Path>,
    tokenizer: &RobertaTokenizer,
    run_dir: &Path,
    device: &B::Device,
) -> Result<(T::Model<B>, RobertaConfig)> {
    let section = task.section();
    let (mut model, mut model_config): (T::Model<B>, RobertaConfig) = match source {
        Some(dir) => {
            let options = LoadOptions {
                allow_new_head: true,
                num_labels: task.head_size(),
            };
            let loaded = load_model::<B, T::Model<B>>(dir, options, device)?;
            (loaded.model, loaded.config)
        }
        None => {
            let preset = config.model.preset.as_deref().unwrap_or("roberta-base");
            let mut c = RobertaConfig::preset(preset).expect("validated preset");
            c.vocab_size = tokenizer.vocab_size();
            c.max_position_embeddings = section.max_length + c.pad_token_id + 1;
            tracing::warn!(
                "no model.init: fine-tuning a randomly initialised {preset} (results are not those of a pretrained model)"
            );
            crate::trainer::check_model_memory(&c, true, "model")?;
            let model = T::Model::<B>::init(&c, task.head_size().unwrap_or(2), device);
            (model, c)
        }
    };
    ensure!(
        model_config.vocab_size >= tokenizer.vocab_size(),
        "the tokenizer has {} tokens but the model's vocabulary only {}: use the model's own tokenizer",
        tokenizer.vocab_size(),
        model_config.vocab_size
    );
    config.model.override_dropout(&mut model_config);
    model.backbone_mut().set_dropout(
        model_config.hidden_dropout_prob,
        model_config.attention_probs_dropout_prob,
    );
    let model = model.with_head_dropout(&model_config);
    task.describe(&mut model_config);
    model_config
        .extra
        .insert(TASK_KEY.into(), serde_json::to_value(section)?);
    let name = run_dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned());
    model_config
        .extra
        .insert("finetuning_task".into(), serde_json::json!(name));
    Ok((model, model_config))
}
