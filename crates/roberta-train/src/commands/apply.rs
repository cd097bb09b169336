//! `eval` and `predict`: a fine-tuned model on labeled or unlabeled files, read the way
//! its task reads them (or as the command line says).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use burn::module::AutodiffModule;
use roberta_fs::create_file;
use roberta_model::{LoadOptions, Pretrained, RobertaConfig, TrainingBackend};

use crate::run::checkpoint::{BEST, EVAL_RESULTS};
use crate::run::outputs::refuse_existing;
use crate::sources::models::{ScratchDir, init_dir, load_model, load_tokenizer_for};
use crate::tasks::{LabeledTask, WithTask, infer, task_of, with_task};
use crate::tasks::{TaskKind, TaskSection};

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
    pub choices: Option<Vec<String>>,
    pub no_header: bool,
    pub max_length: Option<usize>,
}

/// A model directory's task, with the command line's changes.
fn resolve_task(config: &RobertaConfig, dir: &Path, o: &TaskOverrides) -> Result<TaskSection> {
    let mut task = match (task_of(config), o.task) {
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
    if let Some(c) = &o.choices {
        task.choices = Some(c.clone());
    }
    if o.no_header {
        task.header = false;
    }
    if let Some(n) = o.max_length {
        roberta_data::blocks::check_block_size("--max-length", n).map_err(anyhow::Error::msg)?;
        task.max_length = n;
    }
    Ok(task)
}

/// `eval` and `predict` open a model directory (an HF one, a run's `best/`, or a
/// checkpoint exported on the fly) and pick the head its task needs.
pub fn apply<B: TrainingBackend>(
    device: B::Device,
    mut args: ApplyArgs,
    predict: bool,
) -> Result<()> {
    let output = args
        .output
        .get_or_insert_with(|| PathBuf::from(EVAL_RESULTS));
    refuse_existing(output, "--output")?;
    let scratch = ScratchDir::for_this_process();
    let dir = if roberta_model::hf::has_weights(&args.model.join(BEST)) {
        args.model.join(BEST)
    } else {
        init_dir::<B::InnerBackend>(&args.model, scratch.path(), &device)?
    };
    let config = RobertaConfig::load(&dir.join(roberta_model::hf::CONFIG_FILE))?;
    let section = resolve_task(&config, &dir, &args.overrides)?;
    let apply = Apply::<B> {
        device,
        architecture: config.architectures.first().cloned(),
        dir,
        section,
        args,
        predict,
    };
    with_task::<B, _>(apply.section.kind, apply)
}

struct Apply<B: TrainingBackend> {
    device: B::Device,
    /// The model directory's class, when its config.json names one.
    architecture: Option<String>,
    dir: PathBuf,
    section: TaskSection,
    args: ApplyArgs,
    predict: bool,
}

impl<B: TrainingBackend> WithTask<B> for Apply<B> {
    type Output = Result<()>;
    fn run<T: LabeledTask>(self) -> Result<()>
    where
        T::Model<B>: AutodiffModule<B, InnerModule = T::Model<B::InnerBackend>>,
    {
        apply_with::<B, T>(self)
    }
}

/// Inference runs on the backend without autodiff.
fn apply_with<AB: TrainingBackend, T: LabeledTask>(a: Apply<AB>) -> Result<()> {
    let (dir, args) = (&a.dir, &a.args);
    ensure!(args.batch_size > 0, "--batch-size must be at least 1");
    let architecture = <T::Model<AB::InnerBackend> as Pretrained<AB::InnerBackend>>::ARCHITECTURE;
    if let Some(found) = &a.architecture
        && found != architecture
    {
        bail!(
            "{} holds a {found}; a {} task needs a {architecture}",
            dir.display(),
            a.section.kind.name()
        );
    }
    a.section.validate()?;
    let loaded = load_model::<AB::InnerBackend, T::Model<AB::InnerBackend>>(
        dir,
        LoadOptions::default(),
        &a.device,
    )?;
    let (model, config) = (loaded.model, loaded.config);
    let tokenizer = load_tokenizer_for(dir, &config)?;
    let labels = T::model_labels(&a.section, &config, model.num_labels());
    let max_length = a.section.max_length.min(config.max_sequence_length());
    let task = T::new(a.section, labels);
    if let Some(needed) = task.head_size()
        && needed != model.num_labels()
    {
        bail!(
            "{}: the model's head has {} output(s), but {} needs {needed}",
            dir.display(),
            model.num_labels(),
            task.section().kind.name()
        );
    }
    let data = task.read(&args.data, &tokenizer, max_length, !a.predict)?;
    let pad = tokenizer.specials().pad;
    let outputs = infer(
        &task,
        &model,
        &data.features,
        pad,
        args.batch_size,
        &a.device,
        None,
    )?
    .expect("runs to the end without a stop flag");
    if a.predict {
        let output = args.output.clone().expect("set in apply");
        let lines = task.predictions(&data, &outputs)?;
        let mut text = Vec::new();
        for line in &lines {
            writeln!(text, "{}", serde_json::to_string(line)?)?;
        }
        create_file(&output, &text).with_context(|| format!("writing {}", output.display()))?;
        tracing::info!("wrote {} predictions to {}", lines.len(), output.display());
    } else {
        let scores = task.score(&data, &outputs)?;
        let json = serde_json::to_string_pretty(&scores)?;
        let output = args.output.clone().expect("set in apply");
        create_file(&output, json.as_bytes())
            .with_context(|| format!("writing {}", output.display()))?;
        // Written first, so a closed pipe on stdout (`| head`) loses nothing.
        let _ = writeln!(std::io::stdout(), "{json}");
    }
    Ok(())
}
