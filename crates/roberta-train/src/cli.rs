//! The command line: every command, flag and value list, parsed by clap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use roberta_data::corpus::{CorpusFormat, ReadOptions};
use roberta_data::{BreakMode, MaskingConfig};

use crate::backend::DeviceSpec;
use crate::commands::apply::{ApplyArgs, TaskOverrides};
use crate::commands::average::Inputs;
use crate::commands::data::{InspectArgs, PreprocessArgs, RunAt};
use crate::commands::embed::EmbedArgs;
use crate::commands::evaluate::EvaluateArgs;
use crate::commands::export::SentenceTransformers;
use crate::commands::probe::ProbeArgs;
use crate::tasks::TaskKind;
use roberta_data::labeled::Columns;
use roberta_model::pooling::Pooling;

#[derive(Parser)]
#[command(
    name = "roberta-train",
    version,
    about = "RoBERTa pretraining, fine-tuning and inference on burn"
)]
pub struct Cli {
    /// Device to run on: cpu, wgpu, wgpu:N, wgpu-cpu, cuda:N, tch-cpu, tch-cuda:N
    /// (each needs its backend compiled in; default: the first compiled-in one). `cuda`
    /// alone is the GPU of the process's node-local rank under mpirun or srun, else 0.
    #[arg(long, global = true)]
    pub device: Option<DeviceSpec>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
    /// Pretrain a masked language model (the RoBERTa recipe) from a TOML config.
    ///
    /// Raw text named in [data] is tokenized into shards on first use. The run
    /// directory receives config.toml, metrics.jsonl, train.log, checkpoints/ and, at
    /// the end, final/ (an HF model directory with its tokenizer). SIGINT/SIGTERM finish
    /// the current update, save a checkpoint and exit 0.
    Pretrain {
        #[command(flatten)]
        run: RunCli,
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
    /// The paper's dev-set table for one model: fine-tune and score each GLUE/SQuAD task
    /// with its recipe (configs/finetune/, built in), one after another.
    ///
    /// Each task's run directory is --out/TASK; --out receives results.json and
    /// results.md (task, metric, dev score, updates, time). Tasks whose data is absent
    /// are listed as skipped; running again continues unfinished tasks and keeps
    /// finished ones.
    Evaluate(EvaluateCli),
    /// Score a fine-tuned model on labeled data; prints the metrics as JSON and writes
    /// them to --output.
    ///
    /// The model directory remembers its task and column layout; the flags below read
    /// files laid out otherwise.
    Eval {
        /// A fine-tuned HF model directory, a fine-tuning run (its best/), or a checkpoint.
        #[arg(long)]
        model: PathBuf,
        /// Labeled data: TSV/CSV/JSONL/Parquet/Arrow, SQuAD JSON or Parquet, or CoNLL, as
        /// the task reads.
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
    ///
    /// With --sentence-transformers, the directory is also a sentence-transformers model
    /// (modules.json, 1_Pooling/, sentence_bert_config.json): `SentenceTransformer(out)`
    /// encodes as `embed --pool` does.
    Export(ExportCli),
    /// Average the weights of several checkpoints (fairseq's average_checkpoints.py)
    /// into one HF model directory: the element-wise mean in fp32, of checkpoints of one
    /// architecture and tokenizer.
    Average(AverageCli),
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
    /// Write the hidden states of every input: every token's (a safetensors file), or one
    /// pooled vector per input with --pool (safetensors, .npy or JSONL, by extension).
    ///
    /// Input: JSONL, one {"text": "..."} (needs the model dir's tokenizer) or
    /// {"input_ids": [...]} per line, with an optional "id"; or a labeled file
    /// (TSV/CSV/JSONL/Parquet/Arrow) read by column (--text-a, default `sentence`).
    /// Per-token output, for input i (0-based among non-empty lines):
    /// `i.last_hidden_state` [tokens, hidden], `i.input_ids` [tokens], and with
    /// --all-layers `i.hidden_states` [layers + 1, tokens, hidden] (the embedding output
    /// first, as in HF's output_hidden_states). Pooled output: `embeddings`
    /// [inputs, hidden] and `ids` [inputs] (each input's 1-based line) in safetensors; one
    /// float32 [inputs, hidden] array in .npy; {"line", "id", "embedding"} per input in JSONL.
    Embed(EmbedCli),
    /// Fit a linear probe on frozen sentence vectors: an L2-regularised logistic
    /// regression (ridge regression with --regression) on the pooled vectors of --train,
    /// scored on --valid (accuracy and macro F1; Pearson and Spearman). Prints the
    /// results as JSON and writes them to --output.
    Probe(ProbeCli),
}

/// `evaluate`'s arguments.
#[derive(Args)]
pub struct EvaluateCli {
    /// The model to fine-tune: an HF model directory, a hub name, a pretraining run
    /// or a checkpoint.
    #[arg(long)]
    pub init: PathBuf,
    /// Tasks, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "sst2,mrpc,rte,cola,stsb,squad"
    )]
    pub tasks: Vec<crate::commands::evaluate::Recipe>,
    /// Where the recipes' data paths start: DIR/glue_data/TASK/{train,dev}.tsv as
    /// download_glue_data.py lays GLUE out, and DIR/squad/{train,dev}-v1.1.json.
    #[arg(long, default_value = ".")]
    pub data_dir: PathBuf,
    /// Output directory: a run directory per task, results.json, results.md.
    #[arg(long, default_value = "runs/evaluate")]
    pub out: PathBuf,
    /// Override a value of every task's recipe: --set train.epochs=3 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Data-parallel replicas, as for finetune.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    pub devices: Option<Vec<DeviceSpec>>,
}

impl EvaluateCli {
    pub fn into_args(self) -> EvaluateArgs {
        EvaluateArgs {
            init: self.init,
            tasks: self.tasks,
            data_dir: self.data_dir,
            out: self.out,
            sets: self.sets,
        }
    }
}

/// `export`'s arguments.
#[derive(Args)]
pub struct ExportCli {
    /// A checkpoint directory, or a run directory (its newest valid checkpoint); with
    /// --sentence-transformers also an HF model directory.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// The HF directory to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Write the encoder as a sentence-transformers model.
    #[arg(long)]
    pub sentence_transformers: bool,
    /// Its pooling (with --sentence-transformers).
    #[arg(long, value_enum, requires = "sentence_transformers")]
    pub pool: Option<PooledArg>,
    /// Its vectors divided by their L2 norm (with --sentence-transformers).
    #[arg(long, requires = "sentence_transformers")]
    pub normalize: bool,
}

impl ExportCli {
    /// The sentence-transformers model to write beside the HF one, if asked for.
    pub fn sentence_transformers(&self) -> Option<SentenceTransformers> {
        self.sentence_transformers.then(|| SentenceTransformers {
            pooling: self.pool.map_or(Pooling::Mean, Into::into),
            normalize: self.normalize,
        })
    }
}

/// `average`'s arguments.
#[derive(Args)]
pub struct AverageCli {
    /// Checkpoint or HF model directories.
    #[arg(long, num_args = 1.., required_unless_present_any = ["last", "run"], conflicts_with_all = ["last", "run"])]
    pub checkpoints: Vec<PathBuf>,
    /// The run's newest N checkpoints that verify (with --run).
    #[arg(long, requires = "run")]
    pub last: Option<usize>,
    /// The run directory (with --last).
    #[arg(long, requires = "last")]
    pub run: Option<PathBuf>,
    /// The HF directory to write (new).
    #[arg(long)]
    pub out: PathBuf,
}

impl AverageCli {
    pub fn inputs(&self) -> Inputs {
        match (self.last, &self.run) {
            (Some(last), Some(run)) => Inputs::Last {
                run: run.clone(),
                last,
            },
            _ => Inputs::Dirs(self.checkpoints.clone()),
        }
    }
}

/// `embed`'s arguments.
#[derive(Args)]
pub struct EmbedCli {
    /// HF model directory (any RoBERTa architecture; task heads are ignored), run
    /// directory or checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    /// JSONL input, or a labeled file read by column.
    #[arg(long)]
    pub input: PathBuf,
    /// Output file, written atomically; never replaces an existing one.
    #[arg(long)]
    pub output: PathBuf,
    /// Also write the output of every layer (per-token output only).
    #[arg(long)]
    pub all_layers: bool,
    /// How tokens become one vector: mean over tokens (sentence-transformers' mean
    /// pooling), the <s> token (cls), the element-wise max, or none (every token).
    #[arg(long, value_enum, default_value = "none")]
    pub pool: PoolArg,
    /// Divide each pooled vector by its L2 norm.
    #[arg(long)]
    pub normalize: bool,
    /// The hidden state pooled: 0 is the embedding output, -1 the last layer (HF's
    /// hidden_states index).
    #[arg(long, allow_negative_numbers = true)]
    pub layer: Option<i64>,
    #[command(flatten)]
    pub columns: TextColumnsCli,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 16)]
    pub batch_size: usize,
    /// Cut inputs longer than the model's maximum (keeping the final </s>) instead of failing.
    #[arg(long)]
    pub truncate: bool,
}

impl EmbedCli {
    pub fn into_args(self) -> EmbedArgs {
        EmbedArgs {
            model: self.model,
            input: self.input,
            output: self.output,
            all_layers: self.all_layers,
            batch_size: self.batch_size,
            truncate: self.truncate,
            pool: self.pool.pooling(),
            normalize: self.normalize,
            layer: self.layer,
            columns: self.columns.columns(None),
        }
    }
}

/// `probe`'s arguments.
#[derive(Args)]
pub struct ProbeCli {
    /// HF model directory, run directory or checkpoint.
    #[arg(long)]
    pub model: PathBuf,
    /// Labeled training file (TSV/CSV/JSONL/Parquet/Arrow).
    #[arg(long)]
    pub train: PathBuf,
    /// Labeled file the probe is scored on.
    #[arg(long)]
    pub valid: PathBuf,
    /// Results JSON, written atomically (default: print only).
    #[arg(long)]
    pub output: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "mean")]
    pub pool: PooledArg,
    /// The hidden state pooled (0: embeddings, -1: the last layer).
    #[arg(long, allow_negative_numbers = true, default_value_t = -1)]
    pub layer: i64,
    #[command(flatten)]
    pub columns: TextColumnsCli,
    /// Label column.
    #[arg(long, default_value = "label")]
    pub label: String,
    /// Numeric labels: a ridge regression scored by Pearson and Spearman.
    #[arg(long)]
    pub regression: bool,
    /// Inverse regularisation strength, as scikit-learn's C (ridge: alpha = 1/C).
    #[arg(long, default_value_t = 1.0)]
    pub c: f64,
    /// Use at most this many examples of each file (the first ones).
    #[arg(long)]
    pub max_examples: Option<usize>,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

impl ProbeCli {
    pub fn into_args(self) -> ProbeArgs {
        ProbeArgs {
            model: self.model,
            train: self.train,
            valid: self.valid,
            output: self.output,
            pool: self.pool.into(),
            layer: self.layer,
            columns: self
                .columns
                .columns(Some(self.label))
                .expect("a label column is named"),
            regression: self.regression,
            c: self.c,
            max_examples: self.max_examples,
            batch_size: self.batch_size,
        }
    }
}

/// The text columns of a labeled file, for `embed` and `probe`.
#[derive(Args)]
pub struct TextColumnsCli {
    /// First text column (header name, or 0-based index with --no-header), JSONL field or
    /// Parquet/Arrow column. Without it, embed reads .jsonl as its own format.
    #[arg(long)]
    pub text_a: Option<String>,
    /// Second text column, for pairs (encoded as `<s> A </s></s> B </s>`).
    #[arg(long)]
    pub text_b: Option<String>,
    /// The TSV/CSV file has no header line: columns are 0-based indices.
    #[arg(long)]
    pub no_header: bool,
}

impl TextColumnsCli {
    /// The columns when some flag names them (`label` for a labeled read).
    pub fn columns(&self, label: Option<String>) -> Option<Columns> {
        let named = self.text_a.is_some() || self.text_b.is_some() || self.no_header;
        (named || label.is_some()).then(|| Columns {
            text_a: self.text_a.clone().unwrap_or_else(|| "sentence".into()),
            text_b: self.text_b.clone(),
            label,
            header: !self.no_header,
        })
    }
}

/// `--pool`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PoolArg {
    None,
    Mean,
    Cls,
    Max,
}

impl PoolArg {
    pub fn pooling(self) -> Option<Pooling> {
        match self {
            PoolArg::None => None,
            PoolArg::Mean => Some(Pooling::Mean),
            PoolArg::Cls => Some(Pooling::Cls),
            PoolArg::Max => Some(Pooling::Max),
        }
    }
}

/// `--pool` where a vector is needed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PooledArg {
    Mean,
    Cls,
    Max,
}

impl From<PooledArg> for Pooling {
    fn from(p: PooledArg) -> Self {
        match p {
            PooledArg::Mean => Pooling::Mean,
            PooledArg::Cls => Pooling::Cls,
            PooledArg::Max => Pooling::Max,
        }
    }
}

/// What a training run is given: `pretrain` and `finetune` alike.
#[derive(Args)]
pub struct RunCli {
    /// The TOML config (see configs/ and configs/finetune/).
    #[arg(long)]
    pub config: PathBuf,
    /// Override a config value: --set train.batch_size=32 (repeatable).
    #[arg(long = "set", value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// Continue a run: `auto` takes the newest checkpoint of the run directory that
    /// verifies; or a checkpoint directory.
    #[arg(long)]
    pub resume: Option<String>,
    /// Run directory (default: runs/<config name>).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Resume even if the config changed in ways that break an exact continuation.
    #[arg(long)]
    pub force: bool,
    /// Data-parallel replicas, one per device of one backend: cuda:0,cuda:1 (or
    /// wgpu:0,wgpu:1; cpu,cpu runs two replicas on the CPU). Each takes
    /// train.batch_size rows of every micro-batch; an update is batch_size ×
    /// accumulation × devices rows.
    #[arg(long, value_delimiter = ',', conflicts_with = "device")]
    pub devices: Option<Vec<DeviceSpec>>,
}

impl RunCli {
    pub fn run_dir(&self) -> PathBuf {
        self.run_dir
            .clone()
            .unwrap_or_else(|| crate::commands::pretrain::default_run_dir(&self.config))
    }
}

/// How `eval` and `predict` read files laid out otherwise than the training data.
#[derive(Args)]
pub struct TaskCli {
    /// The task, when the model directory does not say (an HF model fine-tuned
    /// elsewhere): classification, pair-classification, regression, qa,
    /// token-classification, multiple-choice.
    #[arg(long)]
    pub task: Option<TaskKind>,
    /// First text column (header name, or 0-based index with --no-header), JSONL field or
    /// Parquet/Arrow column.
    #[arg(long)]
    pub text_a: Option<String>,
    /// Second text column, for pairs; multiple choice: the start of each ending.
    #[arg(long)]
    pub text_b: Option<String>,
    /// Label column.
    #[arg(long)]
    pub label: Option<String>,
    /// Multiple choice: the ending columns, comma-separated (default
    /// ending0,ending1,ending2,ending3, as SWAG).
    #[arg(long, value_delimiter = ',')]
    pub choices: Option<Vec<String>>,
    /// The TSV/CSV file has no header line: columns are 0-based indices.
    #[arg(long)]
    pub no_header: bool,
    /// Tokens per input (default: the model's fine-tuning setting).
    #[arg(long)]
    pub max_length: Option<usize>,
    /// Inputs per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch_size: usize,
}

impl TaskCli {
    /// What `eval` (no `output`: the default file) and `predict` run with.
    pub fn apply_args(self, model: PathBuf, data: PathBuf, output: Option<PathBuf>) -> ApplyArgs {
        ApplyArgs {
            model,
            data,
            output,
            batch_size: self.batch_size,
            overrides: self.overrides(),
        }
    }

    fn overrides(&self) -> TaskOverrides {
        TaskOverrides {
            task: self.task,
            text_a: self.text_a.clone(),
            text_b: self.text_b.clone(),
            label: self.label.clone(),
            choices: self.choices.clone(),
            no_header: self.no_header,
            max_length: self.max_length,
        }
    }
}

#[derive(Args)]
pub struct PreprocessCli {
    /// Training text: files, directories (walked recursively) or globs.
    #[arg(long, required = true, num_args = 1..)]
    pub input: Vec<PathBuf>,
    /// The tokenizer: tokenizer.json, or a directory with it or vocab.json + merges.txt.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// Held-out files for the valid split.
    #[arg(long, num_args = 1.., conflicts_with = "valid_fraction")]
    pub valid: Vec<PathBuf>,
    /// Hold out this fraction of the documents as the valid split.
    #[arg(long, default_value_t = 0.0)]
    pub valid_fraction: f64,
    #[command(flatten)]
    pub read: ReadCli,
    /// Tokenizer threads (default: all cores).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Tokens per shard file.
    #[arg(long, default_value_t = 1 << 28)]
    pub shard_tokens: u64,
    /// Seed of the train/valid draw.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Rebuild even when the output is up to date or was made with another tokenizer (a
    /// directory holding files preprocess did not write is refused all the same).
    #[arg(long)]
    pub force: bool,
}

#[derive(Args)]
pub struct ReadCli {
    /// Input format; default: by extension (.jsonl/.json → jsonl, .parquet → parquet,
    /// .arrow/.ipc/.feather → arrow, else text).
    #[arg(long, value_enum)]
    pub format: Option<FormatArg>,
    /// The JSONL field, or Arrow/Parquet column (Utf8 or LargeUtf8), holding the text.
    #[arg(long, alias = "text-column", default_value = "text")]
    pub text_field: String,
    /// Text files hold one document per line (default: one sentence per line, blank
    /// lines between documents).
    #[arg(long)]
    pub doc_per_line: bool,
    /// Skip lines that are not valid UTF-8 instead of failing.
    #[arg(long)]
    pub skip_invalid: bool,
}

/// `--format`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FormatArg {
    Text,
    Jsonl,
    Parquet,
    Arrow,
}

impl From<FormatArg> for CorpusFormat {
    fn from(f: FormatArg) -> Self {
        match f {
            FormatArg::Text => CorpusFormat::Text,
            FormatArg::Jsonl => CorpusFormat::Jsonl,
            FormatArg::Parquet => CorpusFormat::Parquet,
            FormatArg::Arrow => CorpusFormat::Arrow,
        }
    }
}

/// The splits `preprocess` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SplitArg {
    Train,
    Valid,
}

impl SplitArg {
    pub fn name(self) -> &'static str {
        match self {
            SplitArg::Train => "train",
            SplitArg::Valid => "valid",
        }
    }
}

/// `--break-mode`'s values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BreakModeArg {
    FullSentences,
    DocSentences,
}

impl From<BreakModeArg> for BreakMode {
    fn from(b: BreakModeArg) -> Self {
        match b {
            BreakModeArg::FullSentences => BreakMode::FullSentences,
            BreakModeArg::DocSentences => BreakMode::DocSentences,
        }
    }
}

impl From<ReadCli> for ReadOptions {
    fn from(r: ReadCli) -> Self {
        ReadOptions {
            format: r.format.map(CorpusFormat::from),
            text_field: r.text_field,
            doc_per_line: r.doc_per_line,
            skip_invalid: r.skip_invalid,
        }
    }
}

#[derive(Subcommand)]
pub enum TokenizerCommand {
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
pub enum DataCommand {
    /// Write masked batches as JSONL and print the mask rate, the 80/10/10 split and
    /// the block fill rate.
    Inspect(InspectCli),
}

#[derive(Args)]
pub struct InspectCli {
    /// A preprocessed data directory.
    #[arg(long, required_unless_present = "config")]
    pub data: Option<PathBuf>,
    /// A pretraining config: show the micro-batches of update --step as the run serves
    /// them (its phase, batch, masks and data seed; no update skipped).
    #[arg(long, requires = "step", conflicts_with_all = ["data", "split", "epoch", "batch_size", "block_size", "break_mode", "seed", "mask_prob", "whole_word", "batches"])]
    pub config: Option<PathBuf>,
    /// Overrides of the config's keys, as `pretrain --set`.
    #[arg(long = "set", value_name = "KEY=VALUE", requires = "config")]
    pub sets: Vec<String>,
    /// The update (from 1) whose micro-batches to show, with --config.
    #[arg(long, requires = "config")]
    pub step: Option<u64>,
    /// The devices the run trains on, with --config: the first one's share is shown.
    #[arg(long, requires = "config", default_value_t = 1)]
    pub devices: usize,
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    #[arg(long, default_value_t = 4)]
    pub batches: usize,
    /// The epoch whose permutation and masks to show.
    #[arg(long, default_value_t = 0)]
    pub epoch: u64,
    #[arg(long, default_value_t = 8)]
    pub batch_size: usize,
    #[arg(long, default_value_t = 512)]
    pub block_size: usize,
    #[arg(long, value_enum, default_value = "full-sentences")]
    pub break_mode: BreakModeArg,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 0.15)]
    pub mask_prob: f64,
    #[arg(long)]
    pub whole_word: bool,
    #[arg(long, default_value = "inspect.jsonl")]
    pub output: PathBuf,
}

impl InspectCli {
    pub fn into_args(self) -> InspectArgs {
        InspectArgs {
            data: self.data.unwrap_or_default(),
            run: self.config.map(|config| RunAt {
                config,
                sets: self.sets,
                step: self.step.unwrap_or(1),
                devices: self.devices,
            }),
            split: self.split.name().to_string(),
            batches: self.batches,
            epoch: self.epoch,
            batch_size: self.batch_size,
            block_size: self.block_size,
            break_mode: self.break_mode.into(),
            seed: self.seed,
            masking: MaskingConfig {
                mask_prob: self.mask_prob,
                whole_word: self.whole_word,
                ..Default::default()
            },
            output: self.output,
        }
    }
}

impl PreprocessCli {
    pub fn into_args(self) -> PreprocessArgs {
        PreprocessArgs {
            inputs: self.input,
            valid: self.valid,
            valid_fraction: self.valid_fraction,
            tokenizer: self.tokenizer,
            out: self.out,
            read: self.read.into(),
            workers: self.workers,
            shard_tokens: self.shard_tokens,
            seed: self.seed,
            force: self.force,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from([
            "roberta-train",
            "data",
            "inspect",
            "--data",
            "d",
            "--split",
            "valid",
            "--break-mode",
            "doc-sentences",
        ])
        .unwrap();
        let Command::Data(DataCommand::Inspect(inspect)) = cli.command else {
            panic!("parsed as another command")
        };
        let args = inspect.into_args();
        assert_eq!(
            (args.split.as_str(), args.break_mode),
            ("valid", BreakMode::DocSentences)
        );
        assert!(Cli::try_parse_from(["roberta-train", "preprocess", "--format", "csv"]).is_err());
    }
}
