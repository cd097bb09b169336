//! Checkpoints: `checkpoints/step-NNNNNNN/` with the model, both optimizers' state, the
//! trainer state (step, loader position, counters), the resolved config and a manifest of
//! sha256 checksums. Written into a temporary directory, fsynced, then renamed, so a
//! crash never leaves a directory that verifies but is incomplete.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::prelude::Backend;
use burn::record::{BinFileRecorder, FullPrecisionSettings, RecorderError};
use roberta_data::rng::STREAMS_VERSION;
use roberta_data::{LoaderState, RobertaTokenizer};
use roberta_fs::{Publish, replace_file};
use roberta_model::hf::CONFIG_FILE;
use roberta_model::save_pretrained;
use roberta_model::{Pretrained, RobertaConfig};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub const MANIFEST: &str = "manifest.json";
pub const TRAINER_STATE: &str = "trainer.json";
pub const CONFIG: &str = "config.toml";
/// The model's weights (burn's record; `.bin` is added by the recorder).
pub const MODEL: &str = "model";
pub const TOKENIZER: &str = "tokenizer.json";
/// The run directory's subdirectory of checkpoints.
pub const CHECKPOINTS: &str = "checkpoints";
/// A finished run's model, as an HF model directory.
pub const FINAL: &str = "final";
/// Fine-tuning: the model with the best validation metric, as an HF model directory.
pub const BEST: &str = "best";
/// The results file written next to the best model and by `eval`.
pub const EVAL_RESULTS: &str = "eval_results.json";

/// How models and optimizer states are stored in checkpoints: full precision.
pub type Recorder32 = BinFileRecorder<FullPrecisionSettings>;

/// burn's recorder errors print as Rust values (`Unknown("Io { … }")`). A failed write
/// keeps the OS's message inside (disk full), for a one-line error whose context names
/// the file.
pub fn write_error(e: RecorderError) -> anyhow::Error {
    let (RecorderError::FileNotFound(m)
    | RecorderError::DeserializeError(m)
    | RecorderError::Unknown(m)) = e;
    match crate::run::outputs::os_error_in(&m) {
        Some(io) => anyhow::Error::new(io),
        None => anyhow::anyhow!("{m}"),
    }
}

/// A failed read says what is wrong with the file rather than the decoder's state.
pub fn read_error(e: RecorderError) -> anyhow::Error {
    match e {
        RecorderError::FileNotFound(_) => anyhow::anyhow!("file not found"),
        _ => anyhow::anyhow!("unreadable: truncated, or not written by roberta-train"),
    }
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

/// Everything besides tensors that a resumed run needs to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainerState {
    /// Updates taken.
    pub step: u64,
    /// The loader position after the last micro-batch of `step`.
    pub loader: LoaderState,
    /// The phase (`[[schedule.phases]]`) whose data `loader` is a position in, and
    /// where that phase's data began.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub phase: usize,
    #[serde(default)]
    pub phase_start: LoaderState,
    /// Updates skipped for a non-finite loss or gradient, in total and in a row.
    pub bad_steps: u64,
    pub bad_in_a_row: u32,
    /// Non-padding tokens trained on.
    pub tokens: u64,
    /// Data-parallel replicas the run trained on: a resume on another number keeps the
    /// effective batch by changing the accumulation.
    #[serde(default = "one_device")]
    pub devices: usize,
    /// Fine-tuning: the best evaluation so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub best: Option<Best>,
    /// The version of the random streams the run's masks, orders and dropout came
    /// from ([`STREAMS_VERSION`]; 1 before they were keyed by a full hash).
    #[serde(default = "first_streams")]
    pub streams: u32,
    /// What the run trains on, so that a resume on other data or another tokenizer is
    /// caught. Absent in checkpoints of earlier releases.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<DataFingerprint>,
    /// The updates since the last metrics line: a resumed run's next line covers the
    /// same updates, with the same values, as the uninterrupted run's.
    #[serde(default)]
    pub pending: LogInterval,
    /// The last update, when a signal interrupted its evaluation before its metrics line
    /// was written: the resumed run writes it first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unlogged: Option<UpdateSummary>,
}

/// What a metrics line says of the update it ends with.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct UpdateSummary {
    pub lr: f64,
    pub norm: f64,
    pub epoch: u64,
    pub epoch_done: bool,
}

fn one_device() -> usize {
    1
}

fn first_streams() -> u32 {
    1
}

/// Sums over the updates since the last metrics line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "LogIntervalRecord")]
pub struct LogInterval {
    pub loss: f64,
    pub targets: f64,
    /// What the task logs beside the loss ([`crate::tasks::Task::logged`]), summed.
    pub logged: BTreeMap<String, f64>,
    pub tokens: f64,
    pub updates: u64,
    pub allreduce_s: f64,
    /// Seconds spent in these updates before the last checkpoint (for tokens/s).
    pub seconds: f64,
    /// The phases of the last profiled update (`log.profile_every`), in seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<BTreeMap<String, f64>>,
}

/// [`LogInterval`] as checkpoints hold it: those of releases before `logged` kept the
/// masked LM's right predictions as `correct`.
#[derive(Deserialize)]
struct LogIntervalRecord {
    loss: f64,
    targets: f64,
    #[serde(default)]
    correct: Option<f64>,
    #[serde(default)]
    logged: BTreeMap<String, f64>,
    tokens: f64,
    updates: u64,
    allreduce_s: f64,
    seconds: f64,
    #[serde(default)]
    profile: Option<BTreeMap<String, f64>>,
}

impl From<LogIntervalRecord> for LogInterval {
    fn from(r: LogIntervalRecord) -> Self {
        let mut logged = r.logged;
        if let Some(correct) = r.correct {
            logged.insert("masked_acc".into(), correct);
        }
        Self {
            loss: r.loss,
            targets: r.targets,
            logged,
            tokens: r.tokens,
            updates: r.updates,
            allreduce_s: r.allreduce_s,
            seconds: r.seconds,
            profile: r.profile,
        }
    }
}

/// The tokenizer and the training data of a run, as hashes, with a description of the
/// data for messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DataFingerprint {
    /// sha256 of the tokenizer's canonical JSON.
    pub tokenizer: String,
    /// sha256 of the training data: the train split's content hash (pretraining), or
    /// the training file's (fine-tuning).
    pub train: String,
    /// What that data is: its path and size.
    pub describe: String,
}

impl DataFingerprint {
    /// Refuses to resume on other data or with another tokenizer than the checkpoint's
    /// unless `force`: the loader would continue at its old position in data it never
    /// saw, or the embeddings would meet other ids. Checkpoints without a fingerprint
    /// (earlier releases) cannot be checked.
    pub fn check_resume(&self, checkpoint: &Path, saved: &TrainerState, force: bool) -> Result<()> {
        let Some(was) = &saved.data else {
            return Ok(());
        };
        let short = |h: &str| h.chars().take(12).collect::<String>();
        let change = if was.tokenizer != self.tokenizer {
            format!(
                "the tokenizer is another one (sha256 {}… → {}…): the embeddings were trained on the old one's ids",
                short(&was.tokenizer),
                short(&self.tokenizer)
            )
        } else if was.train != self.train {
            format!(
                "the training data changed ({} → {}): the loader would continue at its old position in other data",
                was.describe, self.describe
            )
        } else {
            return Ok(());
        };
        if force {
            tracing::warn!("resuming anyway (--force): {change}");
            return Ok(());
        }
        bail!(
            "{}: {change}; pass --force to resume anyway, or start a new run in another --run-dir",
            checkpoint.display()
        )
    }
}

/// Refuses a checkpoint whose masks, data orders and dropout came from another version
/// of the random streams, unless `force`.
pub fn check_streams(checkpoint: &Path, saved: &TrainerState, force: bool) -> Result<()> {
    if saved.streams == STREAMS_VERSION {
        return Ok(());
    }
    let why = format!(
        "written by an earlier roberta-train whose masks, data orders and dropout came from random streams of version {} (this one draws from version {STREAMS_VERSION})",
        saved.streams
    );
    if force {
        tracing::warn!(
            "{}: {why}; resuming with the new streams (--force): losses will not match the old run's bitwise",
            checkpoint.display()
        );
        return Ok(());
    }
    bail!(
        "{}: {why}; pass --force to resume with the new streams (losses will not match the old run's bitwise)",
        checkpoint.display()
    )
}

impl Default for TrainerState {
    fn default() -> Self {
        Self {
            step: 0,
            loader: LoaderState::default(),
            phase: 0,
            phase_start: LoaderState::default(),
            bad_steps: 0,
            bad_in_a_row: 0,
            tokens: 0,
            devices: 1,
            best: None,
            streams: STREAMS_VERSION,
            data: None,
            pending: LogInterval::default(),
            unlogged: None,
        }
    }
}

impl LogInterval {
    /// Adds an update's loss sum, target count and the sums the task logs (`names`).
    pub fn add_update(&mut self, loss_sum: f64, targets: f64, names: &[&str], logged: &[f64]) {
        self.loss += loss_sum;
        self.targets += targets;
        self.updates += 1;
        for (name, value) in names.iter().zip(logged) {
            *self.logged.entry(name.to_string()).or_default() += value;
        }
    }
}

impl TrainerState {
    /// Counts an update skipped for a non-finite loss or gradient norm (`loss`,
    /// `norm`), or for having nothing to learn from; `max_in_a_row` of them abort.
    pub fn skip_update(&mut self, loss: f64, norm: f64, max_in_a_row: u32) -> Result<()> {
        self.bad_steps += 1;
        self.bad_in_a_row += 1;
        tracing::warn!(
            "step {}: loss {loss}, gradient norm {norm}: update skipped ({} in a row)",
            self.step + 1,
            self.bad_in_a_row
        );
        if self.bad_in_a_row >= max_in_a_row {
            bail!(
                "{} updates in a row had a non-finite loss or gradient (NaN/inf); lower optim.lr (or, pretraining, raise schedule.warmup_steps)",
                self.bad_in_a_row
            );
        }
        Ok(())
    }
}

/// The best evaluation of a fine-tuning run, and how many since did not beat it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Best {
    pub step: u64,
    pub value: f64,
    pub stale: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    step: u64,
    files: BTreeMap<String, String>,
}

pub fn checkpoints_dir(run_dir: &Path) -> PathBuf {
    run_dir.join(CHECKPOINTS)
}

fn step_dir_name(step: u64) -> String {
    format!("step-{step:07}")
}

/// `step-NNNNNNN`, a checkpoint's directory name.
pub fn is_step_dir_name(name: &str) -> bool {
    name.strip_prefix("step-")
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Streams the file through the hash: checkpoints hold files of gigabytes.
pub fn sha256_file(path: &Path) -> Result<String> {
    let mut file = roberta_data::input::open(path)?;
    let mut hasher = Sha256::new();
    std::io::copy(&mut file, &mut hasher).with_context(|| format!("reading {}", path.display()))?;
    Ok(format!("{:x}", hasher.finalize()))
}

/// Which checkpoints a run keeps: the newest `keep` that verify, the one just written
/// always among them. A directory that does not verify (corrupt, or not a checkpoint at
/// all) neither counts nor is removed. Verifying reads every file, so each checkpoint is
/// verified once per process: those this process wrote are known good.
pub struct Retention {
    pub keep: usize,
    verified: BTreeSet<PathBuf>,
}

impl Retention {
    pub fn new(keep: usize) -> Self {
        Self {
            keep,
            verified: BTreeSet::new(),
        }
    }

    /// Removes verified checkpoints beyond the newest `keep`, never `written`.
    fn prune(&mut self, run_dir: &Path, written: &Path) -> Result<()> {
        self.verified.insert(written.to_path_buf());
        let mut kept = 1;
        for dir in list(run_dir)? {
            if dir == written {
                continue;
            }
            if !self.verified.contains(&dir) {
                if let Err(e) = verify(&dir) {
                    tracing::warn!("not counted as a checkpoint to keep: {e:#}");
                    continue;
                }
                self.verified.insert(dir.clone());
            }
            if kept < self.keep {
                kept += 1;
                continue;
            }
            std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
            self.verified.remove(&dir);
        }
        Ok(())
    }
}

/// Writes a checkpoint: `write_files(tmp_dir)` puts the tensor files in place; this adds
/// the trainer state, config and manifest, syncs everything, renames the directory into
/// place and prunes older ones as `retention` says.
pub fn save(
    run_dir: &Path,
    state: &TrainerState,
    config_toml: &str,
    retention: &mut Retention,
    write_files: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let dir = checkpoints_dir(run_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = step_dir_name(state.step);
    let target = dir.join(&name);
    roberta_fs::write_dir(&target, Publish::Replace, |tmp| -> Result<()> {
        write_files(tmp)?;
        std::fs::write(tmp.join(TRAINER_STATE), serde_json::to_vec_pretty(state)?)?;
        std::fs::write(tmp.join(CONFIG), config_toml)?;
        let mut files = BTreeMap::new();
        for entry in std::fs::read_dir(tmp)? {
            let path = entry?.path();
            let name = path.file_name().expect("file").to_string_lossy();
            files.insert(name.into_owned(), sha256_file(&path)?);
        }
        let manifest = Manifest {
            step: state.step,
            files,
        };
        std::fs::write(tmp.join(MANIFEST), serde_json::to_vec_pretty(&manifest)?)?;
        Ok(())
    })
    .with_context(|| format!("writing checkpoint {name} in {}", dir.display()))?;
    retention.prune(run_dir, &target)?;
    Ok(target)
}

/// Whether a checkpoint holds the record `name` (burn's recorder adds its extension).
pub fn has_file(dir: &Path, name: &str) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries
            .filter_map(|e| e.ok())
            .any(|e| Path::new(&e.file_name()).file_stem() == Some(std::ffi::OsStr::new(name)))
    })
}

/// Writes the model, its HF `config.json` and the tokenizer into a checkpoint being
/// written, so that `export` makes an HF directory of any checkpoint on its own.
pub fn write_model<B: Backend, M: Pretrained<B> + Module<B>>(
    dir: &Path,
    model: &M,
    config: &RobertaConfig,
    tokenizer: &RobertaTokenizer,
) -> Result<()> {
    model
        .clone()
        .save_file(dir.join(MODEL), &Recorder32::new())
        .map_err(write_error)
        .with_context(|| format!("writing {}", dir.join(MODEL).display()))?;
    let mut config = config.clone();
    config.architectures = vec![M::ARCHITECTURE.to_string()];
    replace_file(&dir.join(CONFIG_FILE), &serde_json::to_vec_pretty(&config)?)?;
    tokenizer
        .inner()
        .save(dir.join(TOKENIZER), false)
        .map_err(|e| anyhow::anyhow!("writing {}: {e}", dir.join(TOKENIZER).display()))
}

/// Writes an HF model directory (config.json, model.safetensors, tokenizer files and
/// optionally eval results) in a temporary sibling, then renames it into place.
pub fn save_hf_dir<B: Backend, M: Pretrained<B>>(
    dir: &Path,
    model: &M,
    config: &RobertaConfig,
    tokenizer: &RobertaTokenizer,
    scores: Option<&crate::tasks::metrics::Metrics>,
) -> Result<()> {
    save_hf_dir_with(dir, model, config, tokenizer, |tmp| {
        if let Some(scores) = scores {
            std::fs::write(tmp.join(EVAL_RESULTS), serde_json::to_vec_pretty(scores)?)?;
        }
        Ok(())
    })
}

/// [`save_hf_dir`] with more files: `extra` writes them into the directory before it
/// takes its name.
pub fn save_hf_dir_with<B: Backend, M: Pretrained<B>>(
    dir: &Path,
    model: &M,
    config: &RobertaConfig,
    tokenizer: &RobertaTokenizer,
    extra: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    roberta_fs::write_dir(dir, Publish::Replace, |tmp| -> Result<()> {
        save_pretrained(model, config, tmp)?;
        tokenizer.save_dir(tmp)?;
        extra(tmp)
    })
    .with_context(|| format!("writing {}", dir.display()))
}

/// The HF config a checkpoint's model was written with.
pub fn model_config(dir: &Path) -> Result<RobertaConfig> {
    let path = dir.join(CONFIG_FILE);
    if !path.exists() {
        bail!(
            "{}: a checkpoint without {CONFIG_FILE} (written by an older roberta-train?)",
            dir.display()
        );
    }
    Ok(RobertaConfig::load(&path)?)
}

/// Refuses a checkpoint whose model has another shape than `config` describes: its
/// tensors cannot be loaded into that model, and `--force` cannot change that.
pub fn check_model_shape(dir: &Path, config: &RobertaConfig) -> Result<()> {
    let saved = model_config(dir)?;
    let labels = |c: &RobertaConfig| c.num_labels().unwrap_or(0);
    let mut changes = Vec::new();
    for (name, was, now) in [
        ("vocab_size", saved.vocab_size, config.vocab_size),
        ("hidden_size", saved.hidden_size, config.hidden_size),
        (
            "num_hidden_layers",
            saved.num_hidden_layers,
            config.num_hidden_layers,
        ),
        (
            "num_attention_heads",
            saved.num_attention_heads,
            config.num_attention_heads,
        ),
        (
            "intermediate_size",
            saved.intermediate_size,
            config.intermediate_size,
        ),
        (
            "max_position_embeddings",
            saved.max_position_embeddings,
            config.max_position_embeddings,
        ),
        (
            "type_vocab_size",
            saved.type_vocab_size,
            config.type_vocab_size,
        ),
        ("labels", labels(&saved), labels(config)),
    ] {
        if was != now {
            changes.push(format!("{name} {was} → {now}"));
        }
    }
    if !changes.is_empty() {
        bail!(
            "{}: the checkpoint's model has another shape ({}); a resume cannot change it, --force or not: start a new run in another --run-dir",
            dir.display(),
            changes.join(", ")
        );
    }
    Ok(())
}

/// Loads the model of a verified checkpoint directory.
pub fn read_model<B: Backend, M: Pretrained<B> + Module<B>>(
    dir: &Path,
    device: &B::Device,
) -> Result<(M, RobertaConfig)> {
    let config = model_config(dir)?;
    let num_labels = config.num_labels().unwrap_or(2);
    // Every weight is read from the file: none is drawn first.
    let model = roberta_model::without_drawing(|| M::init(&config, num_labels, device))
        .load_file(dir.join(MODEL), &Recorder32::new(), device)
        .map_err(read_error)
        .with_context(|| format!("{}: model weights", dir.display()))?;
    Ok((model, config))
}

/// Checkpoint directories, newest first.
pub fn list(run_dir: &Path) -> Result<Vec<PathBuf>> {
    let dir = checkpoints_dir(run_dir);
    if !dir.exists() {
        return Ok(Vec::new());
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir(&dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_dir()
                && p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(is_step_dir_name)
        })
        .collect();
    found.sort();
    found.reverse();
    Ok(found)
}

/// Checks every file against the manifest; the error says which file is wrong.
pub fn verify(checkpoint: &Path) -> Result<TrainerState> {
    verify_files(checkpoint, |_| true)
}

/// [`verify`] without the optimizer's files, which an export does not read: a
/// checkpoint whose optimizer state was deleted to save space still exports.
pub fn verify_model(checkpoint: &Path) -> Result<TrainerState> {
    verify_files(checkpoint, |file| !file.starts_with(OPTIMIZER_FILES))
}

/// Names of the optimizer's files in a checkpoint start so.
pub const OPTIMIZER_FILES: &str = "optim-";

fn verify_files(checkpoint: &Path, needed: impl Fn(&str) -> bool) -> Result<TrainerState> {
    let text = roberta_data::input::read_to_string(&checkpoint.join(MANIFEST))
        .with_context(|| format!("{}: no readable manifest", checkpoint.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .with_context(|| format!("{}: corrupt manifest", checkpoint.display()))?;
    for (file, expected) in manifest.files.iter().filter(|(f, _)| needed(f)) {
        let path = checkpoint.join(file);
        let actual = sha256_file(&path)?;
        if &actual != expected {
            bail!(
                "{}: checksum mismatch (file corrupt or truncated)",
                path.display()
            );
        }
    }
    let state_path = checkpoint.join(TRAINER_STATE);
    let state: TrainerState = roberta_data::input::read_to_string(&state_path)
        .map_err(anyhow::Error::new)
        .and_then(|text| serde_json::from_str(&text).map_err(anyhow::Error::new))
        .with_context(|| format!("{}: unreadable trainer state", state_path.display()))?;
    if state.devices == 0 {
        bail!(
            "{}: \"devices\": 0 (a run trains on at least one replica)",
            state_path.display()
        );
    }
    if state.step != manifest.step {
        bail!(
            "{}: manifest step {} but trainer state step {}",
            checkpoint.display(),
            manifest.step,
            state.step
        );
    }
    Ok(state)
}

/// A verified checkpoint directory and its trainer state.
pub type Found = (PathBuf, TrainerState);

/// The newest checkpoint that verifies; each one that does not is reported in `skipped`.
pub fn latest_valid(run_dir: &Path) -> Result<(Option<Found>, Vec<String>)> {
    latest_verifying(run_dir, verify)
}

/// The newest checkpoint whose model verifies ([`verify_model`]), for an export.
pub fn latest_valid_model(run_dir: &Path) -> Result<(Option<Found>, Vec<String>)> {
    latest_verifying(run_dir, verify_model)
}

fn latest_verifying(
    run_dir: &Path,
    verify: fn(&Path) -> Result<TrainerState>,
) -> Result<(Option<Found>, Vec<String>)> {
    let mut skipped = Vec::new();
    for dir in list(run_dir)? {
        match verify(&dir) {
            Ok(state) => return Ok((Some((dir, state)), skipped)),
            Err(e) => skipped.push(format!("{e:#}")),
        }
    }
    Ok((None, skipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: u64) -> TrainerState {
        TrainerState {
            step,
            loader: LoaderState {
                epoch: 0,
                cursor: step,
            },
            ..TrainerState::default()
        }
    }

    fn write(dir: &Path, step: u64) -> PathBuf {
        write_keeping(dir, step, &mut Retention::new(2))
    }

    fn write_keeping(dir: &Path, step: u64, retention: &mut Retention) -> PathBuf {
        save(dir, &state(step), "x = 1", retention, |tmp| {
            Ok(std::fs::write(
                tmp.join("model.bin"),
                vec![step as u8; 100],
            )?)
        })
        .unwrap()
    }

    #[test]
    fn an_interval_of_the_previous_release_reads_its_right_predictions_as_masked_acc() {
        let old = r#"{"loss":3.5,"targets":10.0,"correct":4.0,"tokens":64.0,"updates":1,"allreduce_s":0.0,"seconds":0.5}"#;
        let interval: LogInterval = serde_json::from_str(old).unwrap();
        assert_eq!(
            interval.logged,
            BTreeMap::from([("masked_acc".into(), 4.0)])
        );
        let again: LogInterval =
            serde_json::from_str(&serde_json::to_string(&interval).unwrap()).unwrap();
        assert_eq!(again, interval);
        let finetuning = old.replace(r#""correct":4.0,"#, r#""correct":null,"#);
        let interval: LogInterval = serde_json::from_str(&finetuning).unwrap();
        assert!(interval.logged.is_empty());
    }

    #[test]
    fn keeps_the_newest_and_verifies() {
        let run = tempfile::tempdir().unwrap();
        for step in [10, 20, 30] {
            write(run.path(), step);
        }
        let names: Vec<String> = list(run.path())
            .unwrap()
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(names, vec!["step-0000030", "step-0000020"]);
        let (found, skipped) = latest_valid(run.path()).unwrap();
        assert_eq!(found.unwrap().1.step, 30);
        assert!(skipped.is_empty());
    }

    /// A directory that does not verify, newer than the checkpoint just written (a
    /// user's folder, or a corrupt checkpoint) once counted as the newest to keep, and
    /// the valid ones were deleted.
    #[test]
    fn only_checkpoints_that_verify_count_and_the_new_one_stays() {
        let run = tempfile::tempdir().unwrap();
        let mut retention = Retention::new(1);
        write_keeping(run.path(), 40, &mut retention);
        let foreign = checkpoints_dir(run.path()).join("step-0000099");
        std::fs::create_dir(&foreign).unwrap();
        std::fs::write(foreign.join("notes.txt"), "mine").unwrap();
        let written = write_keeping(run.path(), 50, &mut retention);
        assert!(written.exists());
        assert_eq!(
            std::fs::read_to_string(foreign.join("notes.txt")).unwrap(),
            "mine"
        );
        assert!(!checkpoints_dir(run.path()).join("step-0000040").exists());
        let (found, skipped) = latest_valid(run.path()).unwrap();
        assert_eq!(found.unwrap().1.step, 50);
        assert_eq!(skipped.len(), 1);

        // A newer checkpoint that verifies counts, but never at the cost of the new one
        // (a run resumed from an older checkpoint).
        let mut fresh = Retention::new(1);
        write_keeping(run.path(), 70, &mut fresh);
        let resumed = write_keeping(run.path(), 60, &mut fresh);
        assert!(resumed.exists());
        let names: Vec<PathBuf> = list(run.path()).unwrap();
        assert_eq!(names, [foreign, resumed]);
    }

    #[test]
    fn a_corrupt_newest_checkpoint_falls_back_and_is_named() {
        let run = tempfile::tempdir().unwrap();
        write(run.path(), 10);
        let newest = write(run.path(), 20);
        std::fs::write(newest.join("model.bin"), b"truncated").unwrap();
        let (found, skipped) = latest_valid(run.path()).unwrap();
        assert_eq!(found.unwrap().1.step, 10);
        assert!(
            skipped[0].contains("step-0000020") && skipped[0].contains("checksum"),
            "{skipped:?}"
        );
    }

    #[test]
    fn a_full_disk_reads_as_the_os_says_it() {
        let debug = RecorderError::Unknown(
            "Io { inner: Os { code: 28, kind: StorageFull, message: \"No space left on device\" }, index: 149 }"
                .into(),
        );
        assert_eq!(
            write_error(debug).to_string(),
            "No space left on device (os error 28)"
        );
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn an_unreadable_model_is_reported_without_burns_debug_text() {
        type B = burn::backend::Flex;
        let dir = tempfile::tempdir().unwrap();
        let config = RobertaConfig::tiny(100);
        replace_file(
            &dir.path().join(CONFIG_FILE),
            &serde_json::to_vec(&config).unwrap(),
        )
        .unwrap();
        std::fs::write(dir.path().join("model.bin"), b"not a model").unwrap();
        let err =
            read_model::<B, roberta_model::RobertaForMaskedLM<B>>(dir.path(), &Default::default())
                .err()
                .unwrap();
        let text = format!("{err:#}");
        assert!(text.contains("model weights: unreadable"), "{text}");
        assert!(!text.contains("Io {"), "{text}");
    }

    #[test]
    fn a_failed_write_leaves_nothing() {
        let run = tempfile::tempdir().unwrap();
        let err = save(run.path(), &state(5), "", &mut Retention::new(2), |_| {
            bail!("disk full")
        });
        assert!(err.is_err());
        assert!(list(run.path()).unwrap().is_empty());
        let leftovers = std::fs::read_dir(checkpoints_dir(run.path()))
            .unwrap()
            .count();
        assert_eq!(leftovers, 0);
    }
}
