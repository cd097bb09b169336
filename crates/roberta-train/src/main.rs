//! `roberta-train`: pretrain, fine-tune and use RoBERTa models.

mod backend;
mod infer;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use backend::DeviceSpec;

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

fn main() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    if let Err(e) = run(Cli::parse()) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let device = cli.device.unwrap_or_else(DeviceSpec::default_compiled);
    match cli.command {
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
                truncate,
            })
        ),
    }
}

use infer::{embed, fill_mask};
