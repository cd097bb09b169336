//! Data commands: `tokenizer train`, `tokenizer encode`, `preprocess`, `data inspect`.

use std::fmt::Display;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail, ensure};
use roberta_data::corpus::{ReadOptions, expand_inputs};
use roberta_data::loader::batch_at;
use roberta_data::masking::IGNORE_INDEX;
use roberta_data::preprocess::{Outcome, PreprocessOptions, preprocess};
use roberta_data::tokenizer::train_bpe;
use roberta_data::{
    BreakMode, Corpus, LoaderConfig, LoaderState, MaskVocab, MaskingConfig, RobertaTokenizer, Split,
};

use crate::run::outputs::refuse_existing;

pub fn tokenizer_train(
    inputs: &[PathBuf],
    vocab_size: usize,
    min_frequency: u64,
    out: &Path,
) -> Result<()> {
    refuse_existing(out, "--out")?;
    // Everything is read before anything is written, and the output is new, so a
    // tokenizer written inside an input directory is never read back as training text.
    let files = expand_inputs(inputs, &|| false)?;
    let tokenizer = train_bpe(&files, vocab_size, min_frequency)?;
    tokenizer.save_new_dir(out)?;
    println!(
        "trained a byte-level BPE of {} tokens on {} file(s): {}",
        tokenizer.vocab_size(),
        files.len(),
        out.display()
    );
    Ok(())
}

/// A new `--output` file, written through its temporary ([`roberta_fs::TempFile`]) and
/// linked into place once complete and synced: a signal, a crash or a full disk leaves
/// nothing under the user's name, and no existing file is replaced.
struct NewOutput {
    temp: roberta_fs::TempFile,
    lines: Option<BufWriter<File>>,
    /// Set by SIGINT/SIGTERM; checked before every line.
    stop: Arc<AtomicBool>,
}

impl NewOutput {
    fn create(path: &Path) -> Result<Self> {
        refuse_existing(path, "--output")?;
        if path.file_name().is_none() {
            bail!("--output {}: names no file", path.display());
        }
        let stop = crate::trainer::stop_flag()?;
        let mut temp = roberta_fs::TempFile::create(path)?;
        let lines = temp
            .file()
            .try_clone()
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(Self {
            temp,
            lines: Some(BufWriter::new(lines)),
            stop,
        })
    }

    fn check_stop(&self) -> Result<()> {
        if self.stop.load(Ordering::Relaxed) {
            bail!(
                "interrupted: nothing written to {}",
                self.temp.path().display()
            );
        }
        Ok(())
    }

    fn write_line(&mut self, line: impl Display) -> Result<()> {
        self.check_stop()?;
        let lines = self.lines.as_mut().expect("open until finished");
        writeln!(lines, "{line}").with_context(|| format!("writing {}", self.temp.path().display()))
    }

    fn finish(mut self) -> Result<()> {
        let path = self.temp.path().to_path_buf();
        let lines = self.lines.take().expect("open until finished");
        lines
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", path.display()))?;
        self.check_stop()?;
        if let Err(e) = self.temp.publish(roberta_fs::Publish::New) {
            refuse_existing(&path, "--output")?;
            return Err(e.into());
        }
        Ok(())
    }
}

pub fn tokenizer_encode(
    tokenizer: &Path,
    input: &Path,
    output: &Path,
    special_tokens: bool,
) -> Result<()> {
    refuse_existing(output, "--output")?;
    // The error names the path already.
    let tokenizer = RobertaTokenizer::load(tokenizer)?;
    let lines = roberta_data::input::lines(input)?;
    let mut out = NewOutput::create(output)?;
    for line in lines {
        let (_, line) = line?;
        let e = tokenizer.encode(&line, special_tokens)?;
        let offsets: Vec<[usize; 2]> = e.offsets.iter().map(|&(a, b)| [a, b]).collect();
        out.write_line(serde_json::json!({ "ids": e.ids, "offsets": offsets }))?;
    }
    out.finish()
}

pub struct PreprocessArgs {
    pub inputs: Vec<PathBuf>,
    pub valid: Vec<PathBuf>,
    pub valid_fraction: f64,
    pub tokenizer: PathBuf,
    pub out: PathBuf,
    pub read: ReadOptions,
    pub workers: Option<usize>,
    pub shard_tokens: u64,
    pub seed: u64,
    pub force: bool,
}

pub fn run_preprocess(args: PreprocessArgs) -> Result<()> {
    let tokenizer = RobertaTokenizer::load(&args.tokenizer)?;
    let mut options = PreprocessOptions {
        inputs: args.inputs,
        valid: args.valid,
        valid_fraction: args.valid_fraction,
        read: args.read,
        shard_tokens: args.shard_tokens,
        seed: args.seed,
        ..Default::default()
    };
    if let Some(w) = args.workers {
        ensure!(w > 0, "--workers must be at least 1");
        options.workers = w;
    }
    // SIGINT/SIGTERM stop the workers; the error says nothing was written.
    options.stop = Some(crate::trainer::stop_flag()?);
    let bar = crate::run::progress::bytes_bar("preprocessing");
    let start = std::time::Instant::now();
    let outcome = preprocess(&tokenizer, &options, &args.out, args.force, &|p| {
        crate::run::progress::update_bytes(&bar, p)
    });
    bar.finish_and_clear();
    let outcome = outcome?;
    if let Outcome::Rebuilt { why, .. } = &outcome {
        println!("{} rebuilt: {why}", args.out.display());
    }
    match outcome {
        Outcome::UpToDate(_) => println!(
            "{} is up to date (pass --force to rebuild)",
            args.out.display()
        ),
        Outcome::Written(meta) | Outcome::Rebuilt { meta, .. } => {
            let seconds = start.elapsed().as_secs_f64();
            let bytes: u64 = meta.sources.iter().map(|s| s.bytes).sum();
            for (name, split) in &meta.splits {
                println!(
                    "{name}: {} documents, {} sentences, {} tokens in {} shard(s)",
                    split.documents,
                    split.sentences,
                    split.tokens,
                    split.shards.len()
                );
            }
            if meta.skipped_invalid > 0 {
                println!("skipped {} invalid lines", meta.skipped_invalid);
            }
            println!(
                "{:.1} MB in {seconds:.1} s ({:.2} MB/s) → {}",
                bytes as f64 / 1e6,
                bytes as f64 / 1e6 / seconds,
                args.out.display()
            );
        }
    }
    Ok(())
}

/// `data inspect --config --step`: what update `step` of a run serves.
pub struct RunAt {
    pub config: PathBuf,
    pub sets: Vec<String>,
    pub step: u64,
    /// Replicas the run trains on.
    pub devices: usize,
}

pub struct InspectArgs {
    pub data: PathBuf,
    /// Instead of the flags below: a run's config and an update.
    pub run: Option<RunAt>,
    pub split: String,
    pub batches: usize,
    pub epoch: u64,
    pub batch_size: usize,
    pub block_size: usize,
    pub break_mode: BreakMode,
    pub seed: u64,
    pub masking: MaskingConfig,
    pub output: PathBuf,
}

/// What `data inspect` shows: batches of one loader from one position.
struct Served {
    data: PathBuf,
    tokenizer: RobertaTokenizer,
    corpus: Corpus,
    config: LoaderConfig,
    state: LoaderState,
    batches: usize,
}

pub fn inspect(args: InspectArgs) -> Result<()> {
    refuse_existing(&args.output, "--output")?;
    let served = match &args.run {
        Some(run) => served_at(run)?,
        None => served_by_flags(&args)?,
    };
    write_batches(served, &args.output)
}

/// The data directory's tokenizer.
fn open_tokenizer(data: &Path) -> Result<RobertaTokenizer> {
    RobertaTokenizer::load(&data.join("tokenizer.json"))
        .with_context(|| format!("{}: the data directory's tokenizer", data.display()))
}

/// One split of the data directory, checked against its `tokenizer`.
fn open_split(
    data: &Path,
    split: &str,
    tokenizer: &RobertaTokenizer,
) -> Result<(Split, MaskVocab)> {
    let split = Split::open(
        data,
        split,
        Some(&roberta_data::preprocess::tokenizer_sha256(tokenizer)),
    )?;
    split.check_vocab(tokenizer.vocab_size())?;
    let vocab = MaskVocab::new(tokenizer.specials(), tokenizer.vocab_size(), |id| {
        tokenizer.id_to_token(id)
    });
    Ok((split, vocab))
}

/// The micro-batches of update `run.step` of a pretraining run, as its loader serves
/// them when no update was skipped.
fn served_at(run: &RunAt) -> Result<Served> {
    let (config, _) = crate::config::PretrainConfig::load(&run.config, &run.sets)?;
    let settings = crate::commands::pretrain::settings(&config, Path::new("."));
    ensure!(
        (1..=settings.total).contains(&run.step),
        "--step {} is outside the run's updates 1..={}",
        run.step,
        settings.total
    );
    ensure!(run.devices > 0, "--devices must be at least 1");
    let data = config.data.data_dir.clone();
    ensure!(
        data.join("meta.json").is_file(),
        "{}: not preprocessed yet (data.data_dir of {}): a pretraining run, or `preprocess`, writes it first",
        data.display(),
        run.config.display()
    );
    let world = run.devices;
    let tokenizer = open_tokenizer(&data)?;
    let mut corpora = Vec::new();
    for phase in config.phases() {
        let (split, vocab) = open_split(&data, "train", &tokenizer)?;
        let masking = MaskingConfig {
            mask_prob: phase.mask_prob,
            ..config.masking.clone()
        };
        let corpus = Corpus::open(
            split,
            phase.block_size,
            config.data.break_mode,
            vocab,
            masking,
        )?;
        ensure!(
            !corpus.is_empty(),
            "{}: the train split has no blocks",
            data.display()
        );
        corpora.push(corpus);
    }
    let blocks: Vec<u64> = corpora.iter().map(Corpus::len).collect();
    let (phase, state, start) = settings.loader_position(run.step, world, &blocks);
    let corpus = corpora.swap_remove(phase);
    let batches = settings.accumulation_at(run.step, phase, world);
    let batch_size = settings.phases[phase].batch_size;
    println!(
        "update {}: phase {} of {}, blocks of {} tokens, {batches} micro-batch(es) of {batch_size} on the first of {world} device(s), from epoch {} position {}",
        run.step,
        phase + 1,
        blocks.len(),
        corpus.block_size,
        state.epoch,
        state.cursor
    );
    let config = LoaderConfig {
        batch_size,
        seed: config.data_seed(),
        rank: 0,
        world,
        pad_to: None,
        queue_depth: 1,
        mask_ramp: crate::tasks::mlm::mask_ramp(
            &corpus,
            crate::tasks::mlm::mask_prob_end(&config),
            start,
            settings.phase_sequences(phase, world),
        ),
    };
    Ok(Served {
        data,
        tokenizer,
        corpus,
        config,
        state,
        batches,
    })
}

/// `--batches` batches of the loader the flags describe, from the start of `--epoch`.
fn served_by_flags(args: &InspectArgs) -> Result<Served> {
    args.masking.validate().map_err(|e| anyhow::anyhow!(e))?;
    roberta_data::blocks::check_block_size("--block-size", args.block_size)
        .map_err(anyhow::Error::msg)?;
    ensure!(
        args.batch_size > 0 && args.batches > 0,
        "--batches and --batch-size must be at least 1"
    );
    // A batch is built whole before its rows are written: token ids, mask and labels.
    let bytes = args.batch_size as f64 * args.block_size as f64 * 16.0;
    if let Some(memory) = crate::trainer::machine_memory()
        && bytes > memory as f64
    {
        bail!(
            "--batch-size {}: a batch of {} × {} tokens needs {:.1} GiB, more than this machine's {:.1} GiB",
            args.batch_size,
            args.batch_size,
            args.block_size,
            bytes / f64::from(1u32 << 30),
            memory as f64 / f64::from(1u32 << 30)
        );
    }
    let tokenizer = open_tokenizer(&args.data)?;
    let (split, vocab) = open_split(&args.data, &args.split, &tokenizer)?;
    let corpus = Corpus::open(
        split,
        args.block_size,
        args.break_mode,
        vocab,
        args.masking.clone(),
    )?;
    ensure!(
        !corpus.is_empty(),
        "{}: the {} split has no blocks",
        args.data.display(),
        args.split
    );
    let config = LoaderConfig {
        batch_size: args.batch_size,
        seed: args.seed,
        rank: 0,
        world: 1,
        pad_to: None,
        queue_depth: 1,
        mask_ramp: None,
    };
    Ok(Served {
        data: args.data.clone(),
        tokenizer,
        corpus,
        config,
        state: LoaderState {
            epoch: args.epoch,
            cursor: 0,
        },
        batches: args.batches,
    })
}

/// The batches as JSONL rows into `output`, and their mask statistics on stdout.
fn write_batches(served: Served, output: &Path) -> Result<()> {
    let Served {
        data,
        tokenizer,
        corpus,
        config,
        mut state,
        batches,
    } = served;
    let mut out = NewOutput::create(output)?;
    let mask = tokenizer.specials().mask;
    let (mut maskable, mut chosen, mut as_mask, mut as_random, mut kept) =
        (0usize, 0usize, 0usize, 0usize, 0usize);
    let mut original = Vec::new();
    // Ids the tokenizer does not have: how many, and the first (batch, row, id).
    let vocab_size = tokenizer.vocab_size();
    let (mut out_of_vocab, mut first_out_of_vocab) = (0usize, None);
    for b in 0..batches {
        let batch = batch_at(&corpus, &config, state, None)?;
        for row in 0..batch.batch_size {
            let range = row * batch.seq_len..(row + 1) * batch.seq_len;
            let len = batch.attention_mask[range.clone()]
                .iter()
                .filter(|&&m| m == 1)
                .count();
            let ids = &batch.input_ids[range.start..range.start + len];
            let labels = &batch.labels[range.start..range.start + len];
            original.clear();
            original.extend(
                ids.iter()
                    .zip(labels)
                    .map(|(&i, &l)| if l == IGNORE_INDEX { i } else { l as u32 }),
            );
            for &id in original.iter().filter(|&&id| id as usize >= vocab_size) {
                out_of_vocab += 1;
                first_out_of_vocab.get_or_insert((b, row, id));
            }
            maskable += original
                .iter()
                .filter(|&&t| !tokenizer.specials().contains(t))
                .count();
            let positions: Vec<usize> = (0..len).filter(|&p| labels[p] != IGNORE_INDEX).collect();
            for &p in &positions {
                chosen += 1;
                if ids[p] == mask {
                    as_mask += 1;
                } else if ids[p] == original[p] {
                    kept += 1;
                } else {
                    as_random += 1;
                }
            }
            let tokens: Vec<String> = ids
                .iter()
                .map(|&i| tokenizer.id_to_token(i).unwrap_or_default())
                .collect();
            out.write_line(serde_json::json!({
                "batch": b, "row": row, "epoch": batch.epoch,
                "input_ids": ids, "tokens": tokens,
                "masked_positions": positions, "labels": labels,
            }))?;
        }
        state = batch.next;
    }
    out.finish()?;
    let pct = |x: usize, of: usize| 100.0 * x as f64 / of.max(1) as f64;
    println!("wrote {} batches to {}", batches, output.display());
    println!(
        "mask rate: {:.2}% of {maskable} maskable tokens",
        pct(chosen, maskable)
    );
    println!(
        "of the masked: {:.1}% <mask>, {:.1}% random, {:.1}% unchanged",
        pct(as_mask, chosen),
        pct(as_random, chosen),
        pct(kept, chosen)
    );
    println!(
        "block fill rate: {:.1}% of {} tokens over {} blocks",
        corpus.fill_rate() * 100.0,
        corpus.block_size,
        corpus.len()
    );
    if let Some((batch, row, id)) = first_out_of_vocab {
        bail!(
            "{}: {out_of_vocab} token id(s) outside the tokenizer's {vocab_size} (first: {id}, batch {batch} row {row}): the shards do not match their tokenizer; preprocess again",
            data.display()
        );
    }
    Ok(())
}
