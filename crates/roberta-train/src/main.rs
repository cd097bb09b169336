//! `roberta-train`: parses the command line, loads and checks a training config before
//! anything is created, sets up logging, and calls the command.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use roberta_train::cli::{Cli, Command, DataCommand, TokenizerCommand};
use roberta_train::commands::{
    self, apply::apply, average::average, embed::embed, evaluate::evaluate, export::export,
    finetune::finetune, infer::fill_mask, pretrain::pretrain, probe::probe,
};
use roberta_train::config::{FinetuneConfig, PretrainConfig};
use roberta_train::parallel::processes::{self, Processes};
use roberta_train::run::progress;
use roberta_train::run::run_dir::{self, RunLock};
use roberta_train::{backend::DeviceSpec, dispatch, dispatch_devices};

/// burn's CPU backend allocates a fresh buffer for every op's output, up to the 60 MB
/// logits of the vocabulary projection. glibc's malloc hands buffers that large back to
/// the OS on free and page-faults them in again on the next step; a third of a training
/// step went there. mimalloc told never to purge keeps them for reuse
/// (scripts/bench_vs_hf.py, README "Benchmarks").
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn keep_freed_memory() {
    /// `mi_option_purge_delay` in mimalloc v3's `mi_option_e` (between
    /// `mi_option_eager_commit_delay`, 14, and `mi_option_use_numa_nodes`, 16, which
    /// libmimalloc-sys names); -1 never purges.
    const PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;
    // SAFETY: sets one of mimalloc's global options, which it reads atomically.
    unsafe { libmimalloc_sys::mi_option_set(PURGE_DELAY, -1) }
}

fn main() {
    keep_freed_memory();
    // Before parsing: `--device cuda` means the GPU of this process's local rank.
    // Held to the end of main, which finalises MPI.
    let _launch = match processes::launch() {
        Ok(launch) => launch,
        Err(e) => fail(&e),
    };
    let cli = Cli::parse();
    let leader = Processes::current().is_leader();
    if Processes::current().count > 1
        && !matches!(
            cli.command,
            Command::Pretrain { .. } | Command::Finetune { .. }
        )
    {
        fail(&anyhow::anyhow!(
            "only pretrain and finetune run as several processes: start this command without mpirun"
        ));
    }
    // The config is checked before anything is created, the run directory included.
    let loaded = match &cli.command {
        Command::Pretrain { run, .. } => Some(
            PretrainConfig::load(&run.config, &run.sets)
                .and_then(|(c, warnings)| {
                    c.check_data_dir(&run.run_dir())?;
                    Ok((c, warnings))
                })
                .map(|(c, warnings)| (run.run_dir(), Configs::Pretrain(c), warnings)),
        ),
        Command::Finetune { run, .. } => Some(
            FinetuneConfig::load(&run.config, &run.sets)
                .and_then(|(c, warnings)| {
                    c.check_data_files()
                        .with_context(|| format!("{}", run.config.display()))?;
                    Ok((c, warnings))
                })
                .map(|(c, warnings)| (run.run_dir(), Configs::Finetune(c), warnings)),
        ),
        // evaluate's output directory holds its log and a run directory per task.
        Command::Evaluate(e) => Some(
            run_dir::check_evaluation_dir(&e.out)
                .map(|()| (e.out.clone(), Configs::None, Vec::new())),
        ),
        _ => None,
    };
    let (run_dir, configs, warnings) = match loaded {
        Some(Ok((dir, configs, warnings))) => (Some(dir), configs, warnings),
        Some(Err(e)) => fail(&e),
        None => (None, Configs::None, Vec::new()),
    };
    // One process per run directory, before anything is written there (the log included);
    // under MPI, rank 0 holds it for the job and is the only one to write there.
    let owned_dir = run_dir.as_deref().filter(|_| leader);
    let flag = match cli.command {
        Command::Evaluate(_) => "--out",
        _ => "--run-dir",
    };
    let _lock = match owned_dir.map(|d| RunLock::acquire(d, flag)).transpose() {
        Ok(lock) => lock,
        Err(e) => fail(&e),
    };
    if let Err(e) = init_logging(owned_dir.map(|d| d.join(run_dir::LOG)).as_deref(), leader) {
        fail(&e.context("setting up logging"));
    }
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    if let Err(e) = run(cli, run_dir, configs) {
        fail(&e);
    }
}

/// Reports the error on one line and exits; under MPI the whole job ends with it.
fn fail(e: &anyhow::Error) -> ! {
    for cause in e.chain() {
        if let Some(roberta_model::ModelError::WeightMismatch { details, .. }) =
            cause.downcast_ref()
        {
            tracing::debug!("every key that does not match:\n{details}");
        }
    }
    let rank = Processes::current();
    if rank.count > 1 {
        eprintln!(
            "error (rank {} of {}): {}",
            rank.rank,
            rank.count,
            one_line(e)
        );
    } else {
        eprintln!("error: {}", one_line(e));
    }
    processes::abort_job(1);
    std::process::exit(1)
}

/// The error and its causes on one line, each cause once: a library error that already
/// quotes its OS error would otherwise print it twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain() {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// A training command's config, loaded and checked before logging starts.
enum Configs {
    None,
    Pretrain(PretrainConfig),
    Finetune(FinetuneConfig),
}

/// Logs to stderr and the run's log file. Ranks other than 0 of an MPI job say only
/// what goes wrong: rank 0 reports the run.
fn init_logging(log_file: Option<&Path>, leader: bool) -> Result<()> {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            // burn-collective logs each replica's whole config at info.
            tracing_subscriber::EnvFilter::new(if leader {
                "info,burn_collective=warn"
            } else {
                "warn"
            })
        })
    };
    // On a terminal the progress bar shows the per-interval lines, in colour; piped or
    // redirected, stderr gets them as plain text.
    let terminal = progress::on_terminal();
    let mut stderr_filter = filter();
    if terminal {
        stderr_filter = stderr_filter.add_directive("roberta_train::run::progress=off".parse()?);
    }
    let stderr = tracing_subscriber::fmt::layer()
        .with_ansi(terminal)
        .with_writer(std::io::stderr)
        .with_filter(stderr_filter);
    let file = match log_file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("opening {}", path.display()))?;
            Some(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(std::sync::Mutex::new(f))
                    .with_filter(filter()),
            )
        }
        None => None,
    };
    tracing_subscriber::registry()
        .with(stderr)
        .with(file)
        .init();
    Ok(())
}

/// One function per command.
fn run(cli: Cli, run_dir: Option<PathBuf>, configs: Configs) -> Result<()> {
    let device = cli.device.unwrap_or_else(DeviceSpec::default_compiled);
    match cli.command {
        Command::Finetune { run, init } => {
            let Configs::Finetune(config) = configs else {
                unreachable!("loaded in main")
            };
            let run_dir = run_dir.expect("computed for finetune");
            dispatch_devices!(
                run.devices.unwrap_or_else(|| vec![device]),
                finetune(commands::finetune::FinetuneArgs {
                    config,
                    init,
                    resume: run.resume,
                    run_dir,
                    force: run.force
                })
            )
        }
        Command::Evaluate(mut e) => dispatch_devices!(
            e.devices.take().unwrap_or_else(|| vec![device]),
            evaluate(e.into_args())
        ),
        Command::Eval {
            model,
            data,
            output,
            task,
        } => dispatch!(device, apply(task.apply_args(model, data, output), false)),
        Command::Predict {
            model,
            input,
            output,
            task,
        } => dispatch!(
            device,
            apply(task.apply_args(model, input, Some(output)), true)
        ),
        Command::Average(a) => dispatch!(device, average(a.inputs(), a.out)),
        Command::Export(e) => {
            let st = e.sentence_transformers();
            dispatch!(device, export(e.checkpoint, e.out, st))
        }
        Command::Pretrain { run } => {
            let run_dir = run_dir.expect("computed for pretrain");
            let Configs::Pretrain(config) = configs else {
                unreachable!("loaded in main")
            };
            dispatch_devices!(
                run.devices.unwrap_or_else(|| vec![device]),
                pretrain(commands::pretrain::PretrainArgs {
                    config,
                    resume: run.resume,
                    run_dir,
                    force: run.force
                })
            )
        }
        Command::Plot { run, output } => roberta_train::run::plot::plot_command(&run, output),
        Command::Preprocess(p) => commands::data::run_preprocess(p.into_args()),
        Command::Tokenizer(TokenizerCommand::Train {
            input,
            vocab_size,
            min_frequency,
            out,
        }) => commands::data::tokenizer_train(&input, vocab_size, min_frequency, &out),
        Command::Tokenizer(TokenizerCommand::Encode {
            tokenizer,
            input,
            output,
            no_special_tokens,
        }) => commands::data::tokenizer_encode(&tokenizer, &input, &output, !no_special_tokens),
        Command::Data(DataCommand::Inspect(inspect)) => {
            commands::data::inspect(inspect.into_args())
        }
        Command::FillMask {
            model,
            top_k,
            texts,
        } => {
            dispatch!(
                device,
                fill_mask(commands::infer::FillMaskArgs {
                    model,
                    texts,
                    top_k
                })
            )
        }
        Command::Embed(e) => dispatch!(device, embed(e.into_args())),
        Command::Probe(p) => dispatch!(device, probe(p.into_args())),
    }
}
