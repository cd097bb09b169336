//! `roberta-train`: pretrain, fine-tune and use RoBERTa models.

mod backend;
mod checkpoint;
mod config;
mod data_cmd;
mod finetune;
mod infer;
mod metrics;
mod parallel;
mod plot;
mod pretrain;
mod progress;
mod task;
mod trainer;

use std::path::{Path, PathBuf};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use roberta_data::corpus::{CorpusFormat, ReadOptions};
use roberta_data::{BreakMode, MaskingConfig};

use backend::DeviceSpec;
use finetune::{apply, export, finetune};
use infer::{embed, fill_mask};
use pretrain::pretrain;

#[derive(Parser)]
#[command(
    name = "roberta-train",
    version,
    about = "RoBERTa pretraining, fine-tuning and inference on burn"
)]
struct Cli {
    /// Device to run on: cpu, wgpu, wgpu:N, wgpu-cpu, cuda:N, tch-cpu, tch-cuda:N
    /// (each needs its backend compiled in; default: the first compiled-in one).
    #[arg(long, global = true)]
    device: Option<DeviceSpec>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Pretrain a masked language model (the RoBERTa recipe) from a TOML config.
    ///
    /// Raw text named in [data] is tokenized into shards on first use. The run
    /// directory receives config.toml, metrics.jsonl, train.log, checkpoints/ and, at
    /// the end, final/ (an HF model directory with its tokenizer). SIGINT/SIGTERM finish
    /// the current update, save a checkpoint and exit 0.
    Pretrain {
        #[command(flatten)]
        run: RunCli,
        /// Data-parallel replicas, one per device of one backend: cuda:0,cuda:1 (or
        /// wgpu:0,wgpu:1; cpu,cpu runs two replicas on the CPU). Each takes
        /// train.batch_size sequences of every micro-batch; an update is batch_size ×
        /// accumulation × devices sequences.
        #[arg(long, value_delimiter = ',', conflicts_with = "device")]
        devices: Option<Vec<DeviceSpec>>,
    },
    /// Fine-tune a task head (classification, pair-classification, regression, qa,
    /// token-classification) from a TOML config (see configs/finetune/).
    ///
    /// Starts from --init (or model.init): an HF model directory, a pretraining run
    /// directory (its final/ or newest checkpoint) or a checkpoint; a head absent there
    /// is newly initialised and the log says so. The run directory receives config.toml,
    /// metrics.jsonl, train.log, checkpoints/, best/ (the HF model with the best
    /// validation metric, with eval_results.json) and final/ (the last model).
    Finetune {
        #[command(flatten)]
        run: RunCli,
        /// The model to start from (overrides model.init).
        #[arg(long)]
        init: Option<PathBuf>,
    },
    /// Score a fine-tuned model on labeled data; prints the metrics as JSON and writes
    /// them to --output.
    ///
    /// The model directory remembers its task and column layout; the flags below read
    /// files laid out otherwise.
    Eval {
        /// A fine-tuned HF model directory, a fine-tuning run (its best/), or a checkpoint.
        #[arg(long)]
        model: PathBuf,
        /// Labeled data: TSV/CSV/JSONL, SQuAD JSON or CoNLL, as the task reads.
        #[arg(long)]
        data: PathBuf,
        /// Metrics JSON (default: eval_results.json).
        #[arg(long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        task: TaskCli,
    },
    /// Write one prediction per input as JSONL: the label and its probabilities (or the
    /// score for regression; the answer text and its character span for QA; a tag per
    /// word for token classification).
    Predict {
        /// A fine-tuned HF model directory, a fine-tuning run (its best/), or a checkpoint.
        #[arg(long)]
        model: PathBuf,
        /// Input in the task's format; a label column, if present, is ignored.
        #[arg(long)]
        input: PathBuf,
        /// JSONL output, written atomically.
        #[arg(long)]
        output: PathBuf,
        #[command(flatten)]
        task: TaskCli,
    },
    /// Turn a checkpoint (pretraining or fine-tuning) into an HF model directory:
    /// config.json with id2label, model.safetensors, tokenizer.json, vocab.json and
    /// merges.txt, which transformers' AutoModelFor… and AutoTokenizer load.
    Export {
        /// A checkpoint directory, or a run directory (its newest valid checkpoint).
        #[arg(long)]
        checkpoint: PathBuf,
        /// The HF directory to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Draw a run's loss, learning-rate and accuracy curves into a PNG.
    Plot {
        /// The run directory (holds metrics.jsonl).
        #[arg(long)]
        run: PathBuf,
        /// Output PNG (default: RUN/curves.png).
        #[arg(long)]
        output: Option<PathBuf>,
    },
    /// Tokenize corpus files into token shards (data-bin/) for pretraining.
    Preprocess(PreprocessCli),
    /// Train or apply byte-level BPE tokenizers.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
    /// Look at what the loader serves.
    #[command(subcommand)]
    Data(DataCommand),
    /// Predict the tokens behind each <mask>, like HF's fill-mask pipeline.
    ///
    /// The model directory holds an HF RobertaForMaskedLM (config.json +
    /// model.safetensors) and its tokenizer (tokenizer.json, or vocab.json + merges.txt).
    FillMask {
        /// HF model directory.
        #[arg(long)]
        model: PathBuf,
        /// Candidates printed per <mask>.
        #[arg(long, default_value_t = 5)]
        top_k: usize,
        /// Texts with one or more <mask> tokens.
        #[arg(required = true)]
        texts: Vec<String>,
    },
    /// Write hidden states of every input to a safetensors file.
    ///
    /// Input: JSONL, one {"text": "..."} (needs the model dir's tokenizer) or
    /// {"input_ids": [...]} per line. Output tensors, for input i (0-based line among
    /// non-empty lines): `i.last_hidden_state` [tokens, hidden], `i.input_ids` [tokens],
    /// and with --all-layers `i.hidden_states` [layers + 1, tokens, hidden] (the
    /// embedding output first, as in HF's output_hidden_states).
    Embed {
        /// HF model directory (any RoBERTa architecture; task heads are ignored).
        #[arg(long)]
        model: PathBuf,
        /// JSONL input.
        #[arg(long)]
        input: PathBuf,
        /// safetensors output, written atomically.
        #[arg(long)]
        output: PathBuf,
        /// Also write the output of every layer.
        #[arg(long)]
        all_layers: bool,
        /// Inputs per forward pass.
        #[arg(long, default_value_t = 16)]
        batch_size: usize,
        /// Cut inputs longer than the model's maximum (keeping the final </s>) instead of failing.
        #[arg(long)]
        truncate: bool,
    },
}

/// What a training run is given: `pretrain` and `finetune` alike.
#[derive(Args)]
struct RunCli {
    /// The TOML config (see configs/ and configs/finetune/).
    #[arg(long)]
    config: PathBuf,
    /// Override a config value: --set train.batch_size=32 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    sets: Vec<String>,
    /// Continue a run: `auto` takes the newest checkpoint of the run directory that
    /// verifies; or a checkpoint directory.
    #[arg(long)]
    resume: Option<String>,
    /// Run directory (default: runs/<config name>).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// Resume even if the config changed in ways that break an exact continuation.
    #[arg(long)]
    force: bool,
}

impl RunCli {
    fn run_dir(&self) -> PathBuf {
        self.run_dir
            .clone()
            .unwrap_or_else(|| pretrain::default_run_dir(&self.config))
    }
}

/// How `eval` and `predict` read files laid out otherwise than the training data.
#[derive(Args)]
struct TaskCli {
    /// The task, when the model directory does not say (an HF model fine-tuned
    /// elsewhere): classification, pair-classification, regression, qa,
    /// token-classification.
    #[arg(long)]
    task: Option<config::TaskKind>,
    /// First text column (header name, or 0-based index with --no-header) or JSONL field.
    #[arg(long)]
    text_a: Option<String>,
    /// Second text column, for pairs.
    #[arg(long)]
    text_b: Option<String>,
    /// Label column.
    #[arg(long)]
    label: Option<String>,
    /// The TSV/CSV file has no header line: columns are 0-based indices.
    #[arg(long)]
    no_header: bool,
    /// Tokens per input (default: the model's fine-tuning setting).
    #[arg(long)]
    max_length: Option<usize>,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 64)]
    batch_size: usize,
}

impl TaskCli {
    fn overrides(&self) -> finetune::TaskOverrides {
        finetune::TaskOverrides {
            task: self.task,
            text_a: self.text_a.clone(),
            text_b: self.text_b.clone(),
            label: self.label.clone(),
            no_header: self.no_header,
            max_length: self.max_length,
        }
    }
}

#[derive(Args)]
struct PreprocessCli {
    /// Training text: files, directories (walked recursively) or globs.
    #[arg(long, required = true, num_args = 1..)]
    input: Vec<PathBuf>,
    /// The tokenizer: tokenizer.json, or a directory with it or vocab.json + merges.txt.
    #[arg(long)]
    tokenizer: PathBuf,
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// Held-out files for the valid split.
    #[arg(long, num_args = 1.., conflicts_with = "valid_fraction")]
    valid: Vec<PathBuf>,
    /// Hold out this fraction of the documents as the valid split.
    #[arg(long, default_value_t = 0.0)]
    valid_fraction: f64,
    #[command(flatten)]
    read: ReadCli,
    /// Tokenizer threads (default: all cores).
    #[arg(long)]
    workers: Option<usize>,
    /// Tokens per shard file.
    #[arg(long, default_value_t = 1 << 28)]
    shard_tokens: u64,
    /// Seed of the train/valid draw.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Rebuild even when the output is up to date.
    #[arg(long)]
    force: bool,
}

#[derive(Args)]
struct ReadCli {
    /// Input format; default: by extension (.jsonl/.json → jsonl, .parquet → parquet,
    /// .arrow/.ipc/.feather → arrow, else text).
    #[arg(long, value_parser = ["text", "jsonl", "parquet", "arrow"])]
    format: Option<String>,
    /// The JSONL field, or Arrow/Parquet column (Utf8 or LargeUtf8), holding the text.
    #[arg(long, alias = "text-column", default_value = "text")]
    text_field: String,
    /// Text files hold one document per line (default: one sentence per line, blank
    /// lines between documents).
    #[arg(long)]
    doc_per_line: bool,
    /// Skip lines that are not valid UTF-8 instead of failing.
    #[arg(long)]
    skip_invalid: bool,
}

impl From<ReadCli> for ReadOptions {
    fn from(r: ReadCli) -> Self {
        ReadOptions {
            format: r.format.map(|f| {
                if f == "jsonl" {
                    CorpusFormat::Jsonl
                } else {
                    CorpusFormat::Text
                }
            }),
            text_field: r.text_field,
            doc_per_line: r.doc_per_line,
            skip_invalid: r.skip_invalid,
        }
    }
}

#[derive(Subcommand)]
enum TokenizerCommand {
    /// Train a byte-level BPE with RoBERTa's special tokens (<s>=0 <pad>=1 </s>=2
    /// <unk>=3, <mask> last); writes tokenizer.json, vocab.json and merges.txt.
    Train {
        /// Text files, directories or globs.
        #[arg(long, required = true, num_args = 1..)]
        input: Vec<PathBuf>,
        #[arg(long, default_value_t = 50265)]
        vocab_size: usize,
        /// Merges need a pair seen at least this often.
        #[arg(long, default_value_t = 2)]
        min_frequency: u64,
        #[arg(long)]
        out: PathBuf,
    },
    /// Encode each line of a text file: JSONL of ids and character offsets.
    Encode {
        #[arg(long)]
        tokenizer: PathBuf,
        #[arg(long)]
        input: PathBuf,
        #[arg(long)]
        output: PathBuf,
        /// Leave out <s> and </s>.
        #[arg(long)]
        no_special_tokens: bool,
    },
}

#[derive(Subcommand)]
enum DataCommand {
    /// Write masked batches as JSONL and print the mask rate, the 80/10/10 split and
    /// the block fill rate.
    Inspect {
        /// A preprocessed data directory.
        #[arg(long)]
        data: PathBuf,
        #[arg(long, default_value = "train")]
        split: String,
        #[arg(long, default_value_t = 4)]
        batches: usize,
        /// The epoch whose permutation and masks to show.
        #[arg(long, default_value_t = 0)]
        epoch: u64,
        #[arg(long, default_value_t = 8)]
        batch_size: usize,
        #[arg(long, default_value_t = 512)]
        block_size: usize,
        #[arg(long, value_parser = ["full-sentences", "doc-sentences"], default_value = "full-sentences")]
        break_mode: String,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        #[arg(long, default_value_t = 0.15)]
        mask_prob: f64,
        #[arg(long)]
        whole_word: bool,
        #[arg(long, default_value = "inspect.jsonl")]
        output: PathBuf,
    },
}

fn init_logging(log_file: Option<&Path>) -> Result<()> {
    use tracing_subscriber::prelude::*;
    let filter = || {
        tracing_subscriber::EnvFilter::try_from_default_env()
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(filter());
    let file = match log_file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
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
    let cli = Cli::parse();
    // The config is checked before anything is created, the run directory included.
    let loaded = match &cli.command {
        Command::Pretrain { run, .. } => Some(
            config::PretrainConfig::load(&run.config, &run.sets)
                .map(|c| (run.run_dir(), Configs::Pretrain(c))),
        ),
        Command::Finetune { run, .. } => Some(
            config::FinetuneConfig::load(&run.config, &run.sets)
                .map(|c| (run.run_dir(), Configs::Finetune(c))),
        ),
        _ => None,
    };
    let (run_dir, configs) = match loaded {
        Some(Ok((dir, configs))) => (Some(dir), configs),
        Some(Err(e)) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
        None => (None, Configs::None),
    };
    if let Err(e) = init_logging(run_dir.as_ref().map(|d| d.join("train.log")).as_deref()) {
        eprintln!("error: setting up logging: {e:#}");
        std::process::exit(1);
    }
    if let Err(e) = run(cli, run_dir, configs) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// A training command's config, loaded and checked before logging starts.
enum Configs {
    None,
    Pretrain(config::PretrainConfig),
    Finetune(config::FinetuneConfig),
}

fn run(cli: Cli, run_dir: Option<PathBuf>, configs: Configs) -> Result<()> {
    let device = cli.device.unwrap_or_else(DeviceSpec::default_compiled);
    match cli.command {
        Command::Finetune { run, init } => {
            let Configs::Finetune(config) = configs else {
                unreachable!("loaded in main")
            };
            let run_dir = run_dir.expect("computed for finetune");
            dispatch!(
                device,
                finetune(finetune::FinetuneArgs {
                    config,
                    init,
                    resume: run.resume,
                    run_dir,
                    force: run.force
                })
            )
        }
        Command::Eval {
            model,
            data,
            output,
            task,
        } => dispatch!(
            device,
            apply(
                finetune::ApplyArgs {
                    model,
                    data,
                    output,
                    overrides: task.overrides(),
                    batch_size: task.batch_size,
                },
                false
            )
        ),
        Command::Predict {
            model,
            input,
            output,
            task,
        } => dispatch!(
            device,
            apply(
                finetune::ApplyArgs {
                    model,
                    data: input,
                    output: Some(output),
                    overrides: task.overrides(),
                    batch_size: task.batch_size,
                },
                true
            )
        ),
        Command::Export { checkpoint, out } => dispatch!(device, export(checkpoint, out)),
        Command::Pretrain { run, devices } => {
            let run_dir = run_dir.expect("computed for pretrain");
            let Configs::Pretrain(config) = configs else {
                unreachable!("loaded in main")
            };
            dispatch_devices!(
                devices.unwrap_or_else(|| vec![device]),
                pretrain(pretrain::PretrainArgs {
                    config,
                    resume: run.resume,
                    run_dir,
                    force: run.force
                })
            )
        }
        Command::Plot { run, output } => {
            let output = output.unwrap_or_else(|| run.join(plot::PLOT_FILE));
            plot::plot_run(&run, &output)?;
            println!("wrote {}", output.display());
            Ok(())
        }
        Command::Preprocess(p) => data_cmd::run_preprocess(data_cmd::PreprocessArgs {
            inputs: p.input,
            valid: p.valid,
            valid_fraction: p.valid_fraction,
            tokenizer: p.tokenizer,
            out: p.out,
            read: p.read.into(),
            workers: p.workers,
            shard_tokens: p.shard_tokens,
            seed: p.seed,
            force: p.force,
        }),
        Command::Tokenizer(TokenizerCommand::Train {
            input,
            vocab_size,
            min_frequency,
            out,
        }) => data_cmd::tokenizer_train(&input, vocab_size, min_frequency, &out),
        Command::Tokenizer(TokenizerCommand::Encode {
            tokenizer,
            input,
            output,
            no_special_tokens,
        }) => data_cmd::tokenizer_encode(&tokenizer, &input, &output, !no_special_tokens),
        Command::Data(DataCommand::Inspect {
            data,
            split,
            batches,
            epoch,
            batch_size,
            block_size,
            break_mode,
            seed,
            mask_prob,
            whole_word,
            output,
        }) => data_cmd::inspect(data_cmd::InspectArgs {
            data,
            split,
            batches,
            epoch,
            batch_size,
            block_size,
            break_mode: if break_mode == "doc-sentences" {
                BreakMode::DocSentences
            } else {
                BreakMode::FullSentences
            },
            seed,
            masking: MaskingConfig {
                mask_prob,
                whole_word,
                ..Default::default()
            },
            output,
        }),
        Command::FillMask {
            model,
            top_k,
            texts,
        } => {
            dispatch!(
                device,
                fill_mask(infer::FillMaskArgs {
                    model,
                    texts,
                    top_k
                })
            )
        }
        Command::Embed {
            model,
            input,
            output,
            all_layers,
            batch_size,
            truncate,
        } => dispatch!(
            device,
            embed(infer::EmbedArgs {
                model,
                input,
                output,
                all_layers,
                batch_size,
                truncate
            })
        ),
    }
}
