//! `evaluate`: the dev-set table of the paper (RoBERTa, Table 5) for one model. Each task
//! is fine-tuned with its recipe from `configs/finetune/` (built into the binary, so the
//! command works without the repository) and scored on its dev set; the tasks run one
//! after another, each in a run directory of its own under `--out`, and the table is
//! rewritten after each.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use crate::commands::finetune::{FinetuneArgs, finetune};
use crate::config::{FinetuneConfig, RunConfig};
use crate::run::checkpoint;
use crate::run::run_dir::RunLock;
use roberta_model::TrainingBackend;

/// A task of the table, with its recipe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Recipe {
    Sst2,
    Mrpc,
    Rte,
    Cola,
    Stsb,
    Squad,
}

impl Recipe {
    pub fn name(self) -> &'static str {
        match self {
            Self::Sst2 => "sst2",
            Self::Mrpc => "mrpc",
            Self::Rte => "rte",
            Self::Cola => "cola",
            Self::Stsb => "stsb",
            Self::Squad => "squad",
        }
    }

    /// The shipped config, as built into the binary.
    fn text(self) -> &'static str {
        match self {
            Self::Sst2 => include_str!("../../../../configs/finetune/sst2.toml"),
            Self::Mrpc => include_str!("../../../../configs/finetune/mrpc.toml"),
            Self::Rte => include_str!("../../../../configs/finetune/rte.toml"),
            Self::Cola => include_str!("../../../../configs/finetune/cola.toml"),
            Self::Stsb => include_str!("../../../../configs/finetune/stsb.toml"),
            Self::Squad => include_str!("../../../../configs/finetune/squad.toml"),
        }
    }

    /// The recipe with `sets` applied and its relative data paths under `data_dir`.
    pub fn config(self, data_dir: &Path, sets: &[String]) -> Result<FinetuneConfig> {
        let origin = PathBuf::from(format!("configs/finetune/{}.toml", self.name()));
        let (mut config, warnings) = FinetuneConfig::parse(&origin, self.text(), sets)?;
        for warning in warnings {
            tracing::warn!("{warning}");
        }
        // (An absolute path stays as it is: `join` replaces the base with it.)
        config.data.train = data_dir.join(&config.data.train);
        config.data.valid = config.data.valid.map(|valid| data_dir.join(valid));
        Ok(config)
    }
}

pub struct EvaluateArgs {
    pub init: PathBuf,
    pub tasks: Vec<Recipe>,
    pub data_dir: PathBuf,
    pub out: PathBuf,
    pub sets: Vec<String>,
}

pub const RESULTS_JSON: &str = "results.json";
pub const RESULTS_MD: &str = "results.md";

/// `results.json`.
#[derive(Serialize, Deserialize)]
struct Results {
    init: String,
    tasks: Vec<Row>,
}

/// One task's line of the table.
#[derive(Serialize, Deserialize, Clone)]
struct Row {
    task: String,
    /// `done`, `skipped` (its data is absent) or `failed`.
    status: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    metric: Option<String>,
    /// The best dev value of `metric` (the model kept in the task's `best/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    dev: Option<f64>,
    /// Every dev metric of that evaluation.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    scores: BTreeMap<String, f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    updates: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    seconds: Option<f64>,
    /// Why a task was skipped or failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
    /// What the result came from ([`fingerprint`]): a later call keeps it only if the
    /// recipe, the data and the model are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    fingerprint: Option<String>,
}

impl Row {
    fn not_done(task: Recipe, status: &str, reason: String) -> Self {
        Self {
            task: task.name().into(),
            status: status.into(),
            metric: None,
            dev: None,
            scores: BTreeMap::new(),
            updates: None,
            seconds: None,
            reason: Some(reason),
            fingerprint: None,
        }
    }
}

pub fn evaluate<B: TrainingBackend>(devices: Vec<B::Device>, args: EvaluateArgs) -> Result<()> {
    // Checked once, before any task: the model exists (or is a hub name that resolves)
    // and every recipe takes the --set values.
    let init_dir = crate::sources::hub::resolve(&args.init)?;
    if !init_dir.exists() {
        bail!("--init {}: no such directory", args.init.display());
    }
    let init = std::fs::canonicalize(&init_dir)
        .unwrap_or(init_dir)
        .display()
        .to_string();
    for &task in &args.tasks {
        task.config(&args.data_dir, &args.sets)
            .with_context(|| format!("the {} recipe", task.name()))?;
    }
    let mut tasks = args.tasks.clone();
    let mut seen = std::collections::BTreeSet::new();
    tasks.retain(|t| seen.insert(*t));

    let results_path = args.out.join(RESULTS_JSON);
    let previous = previous_rows(&args.out, &init)?;
    // Tasks of earlier calls that this one does not run stay in the table.
    let mut rows: Vec<Row> = previous
        .iter()
        .filter(|r| r.status == "done" && !tasks.iter().any(|t| t.name() == r.task))
        .cloned()
        .collect();
    let total = tasks.len();
    for (i, &task) in tasks.iter().enumerate() {
        let run_dir = args.out.join(task.name());
        let current = task
            .config(&args.data_dir, &args.sets)
            .map(|config| fingerprint(&config, &args.init))
            .ok();
        let earlier = previous.iter().find(|r| r.task == task.name());
        // A task run (finished or interrupted) of another recipe, data or model: its
        // directory is this command's own, and is trained again from the start.
        if let Some(row) = earlier
            && row.fingerprint.is_some()
            && row.fingerprint != current
            && crate::run::run_dir::is_run_dir(&run_dir)
        {
            tracing::warn!(
                "{}: its recipe, data or model changed since {}: training it again",
                task.name(),
                if row.status == "done" {
                    "it was scored"
                } else {
                    "it started"
                }
            );
            std::fs::remove_dir_all(&run_dir)
                .with_context(|| format!("removing {}", run_dir.display()))?;
        }
        let kept = earlier
            .filter(|r| r.status == "done" && r.fingerprint == current)
            .filter(|_| run_dir.join(checkpoint::FINAL).exists());
        let row = match kept {
            Some(row) => {
                crate::run::progress::log_line(&format!(
                    "[{}/{total}] {}: done earlier, kept",
                    i + 1,
                    task.name()
                ));
                row.clone()
            }
            None => {
                crate::run::progress::log_line(&format!("[{}/{total}] {}", i + 1, task.name()));
                run_task::<B>(&devices, task, &args, &run_dir)?
            }
        };
        if let Some(reason) = &row.reason {
            tracing::warn!("{}: {} ({reason})", task.name(), row.status);
        }
        rows.push(row);
        write_results(&args.out, &init, &rows)?;
    }
    println!("{}", table(&rows));
    println!("results in {}", results_path.display());
    check_outcome(&rows, &args)
}

/// The rows of an earlier call's results in `out`: refused when they are another
/// model's (an output where nothing finished holds nothing to protect).
fn previous_rows(out: &Path, init: &str) -> Result<Vec<Row>> {
    let results_path = out.join(RESULTS_JSON);
    let Ok(bytes) = std::fs::read(&results_path) else {
        return Ok(Vec::new());
    };
    let results: Results = serde_json::from_slice(&bytes)
        .with_context(|| format!("reading {}", results_path.display()))?;
    if results.init != init && results.tasks.iter().any(|r| r.status == "done") {
        bail!(
            "{} holds the results of another model ({}): choose another --out",
            out.display(),
            results.init
        );
    }
    Ok(results.tasks)
}

/// The command fails when no task had data, or any task failed.
fn check_outcome(rows: &[Row], args: &EvaluateArgs) -> Result<()> {
    let results_path = args.out.join(RESULTS_JSON);
    let failed: Vec<&str> = rows
        .iter()
        .filter(|r| r.status == "failed")
        .map(|r| r.task.as_str())
        .collect();
    if rows.iter().all(|r| r.status == "skipped") {
        bail!(
            "no task had its data under --data-dir {} (expected glue_data/TASK/ and squad/ there)",
            args.data_dir.display()
        );
    }
    if !failed.is_empty() {
        bail!(
            "{} failed (see {}); the other tasks' results are in {}",
            failed.join(", "),
            args.out.join("train.log").display(),
            results_path.display()
        );
    }
    Ok(())
}

/// Fine-tunes one task (continuing its run directory when an earlier call was cut
/// short) and reads its best dev scores. A task that fails is a row saying why; a
/// signal ends the whole command (the next call continues).
fn run_task<B: TrainingBackend>(
    devices: &[B::Device],
    task: Recipe,
    args: &EvaluateArgs,
    run_dir: &Path,
) -> Result<Row> {
    let config = match task.config(&args.data_dir, &args.sets) {
        Ok(config) => config,
        Err(e) => return Ok(Row::not_done(task, "failed", format!("{e:#}"))),
    };
    let data = [Some(&config.data.train), config.data.valid.as_ref()];
    if let Some(missing) = data.into_iter().flatten().find(|p| !p.exists()) {
        return Ok(Row::not_done(
            task,
            "skipped",
            format!("no {}", missing.display()),
        ));
    }
    let metric = config.metric().to_string();
    let fingerprint = fingerprint(&config, &args.init);
    let start = Instant::now();
    let trained = RunLock::acquire(run_dir, "--out").and_then(|_lock| {
        finetune::<B>(
            devices.to_vec(),
            FinetuneArgs {
                config,
                init: Some(args.init.clone()),
                resume: Some("auto".into()),
                run_dir: run_dir.to_path_buf(),
                force: false,
            },
        )
    });
    if trained.is_ok() && !run_dir.join(checkpoint::FINAL).exists() {
        bail!(
            "stopped by a signal during {}: run the same command again to continue",
            task.name()
        );
    }
    let scored = trained.and_then(|()| best_scores(run_dir));
    Ok(match scored {
        Ok((updates, scores)) => Row {
            task: task.name().into(),
            status: "done".into(),
            dev: scores.get(&metric).copied(),
            metric: Some(metric),
            scores,
            updates: Some(updates),
            seconds: Some(start.elapsed().as_secs_f64()),
            reason: None,
            fingerprint: Some(fingerprint),
        },
        Err(e) => Row::not_done(task, "failed", format!("{e:#}")),
    })
}

/// The sha256 of what a task's result depends on: its recipe (after `--set`), and the
/// size and modification time of its data files and of the model's files.
fn fingerprint(config: &FinetuneConfig, init: &Path) -> String {
    use sha2::{Digest, Sha256};
    let mut hash = Sha256::new();
    hash.update(config.to_toml());
    let model = crate::sources::models::model_dir(init).unwrap_or_else(|_| init.to_path_buf());
    let files = [
        Some(config.data.train.clone()),
        config.data.valid.clone(),
        Some(model.join(roberta_model::hf::CONFIG_FILE)),
        Some(model.join(roberta_model::hf::WEIGHTS_FILE)),
        Some(model.join(roberta_model::hf::PYTORCH_WEIGHTS_FILE)),
    ];
    for path in files.into_iter().flatten() {
        hash.update(path.to_string_lossy().as_bytes());
        if let Ok(meta) = std::fs::metadata(&path) {
            let modified = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos());
            hash.update(meta.len().to_le_bytes());
            hash.update(modified.to_le_bytes());
        }
    }
    format!("{:x}", hash.finalize())
}

/// The run's updates and the dev scores of its best model.
fn best_scores(run_dir: &Path) -> Result<(u64, BTreeMap<String, f64>)> {
    let (found, _) = checkpoint::latest_valid(run_dir)?;
    let updates = found.map_or(0, |(_, state)| state.step);
    let path = run_dir
        .join(checkpoint::BEST)
        .join(checkpoint::EVAL_RESULTS);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let scores =
        serde_json::from_slice(&bytes).with_context(|| format!("reading {}", path.display()))?;
    Ok((updates, scores))
}

fn write_results(out: &Path, init: &str, rows: &[Row]) -> Result<()> {
    let results = Results {
        init: init.to_string(),
        tasks: rows.to_vec(),
    };
    roberta_fs::replace_file(
        &out.join(RESULTS_JSON),
        &serde_json::to_vec_pretty(&results)?,
    )?;
    let markdown = format!("# Dev results of {init}\n\n{}\n", table(rows));
    roberta_fs::replace_file(&out.join(RESULTS_MD), markdown.as_bytes())?;
    Ok(())
}

/// The Markdown table: task, metric, dev score, updates, time.
fn table(rows: &[Row]) -> String {
    let mut lines = vec![
        "| task | metric | dev | updates | time | other dev metrics |".to_string(),
        "|---|---|---|---|---|---|".to_string(),
    ];
    for r in rows {
        let line = match (&r.metric, r.dev) {
            (Some(metric), Some(dev)) => {
                let others: Vec<String> = r
                    .scores
                    .iter()
                    .filter(|(k, _)| *k != metric)
                    .map(|(k, v)| format!("{k} {:.2}", v * scale(k)))
                    .collect();
                format!(
                    "| {} | {metric} | {:.2} | {} | {} | {} |",
                    r.task,
                    dev * scale(metric),
                    r.updates.unwrap_or_default(),
                    r.seconds.map_or(String::new(), duration),
                    others.join(", ")
                )
            }
            _ => format!(
                "| {} | | {} | | | {} |",
                r.task,
                r.status,
                r.reason
                    .as_deref()
                    .unwrap_or_default()
                    .replace('|', "/")
                    .replace('\n', " ")
            ),
        };
        lines.push(line);
    }
    lines.join("\n")
}

/// Scores as the paper prints them: fractions as percentages, MSE and losses as they are.
fn scale(metric: &str) -> f64 {
    if matches!(metric, "mse" | "loss") {
        1.0
    } else {
        100.0
    }
}

fn duration(seconds: f64) -> String {
    let s = seconds.round() as u64;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_recipe_parses_and_its_data_is_under_the_data_dir() {
        for task in [
            Recipe::Sst2,
            Recipe::Mrpc,
            Recipe::Rte,
            Recipe::Cola,
            Recipe::Stsb,
            Recipe::Squad,
        ] {
            let config = task
                .config(Path::new("/data"), &["train.epochs=3".into()])
                .unwrap();
            assert!(config.data.train.starts_with("/data"), "{task:?}");
            assert_eq!(config.train.epochs, 3);
        }
        let err = Recipe::Sst2
            .config(Path::new("."), &["train.batch_size=0".into()])
            .unwrap_err()
            .to_string();
        assert!(err.contains("train.batch_size"), "{err}");
    }

    #[test]
    fn the_table_shows_percentages_and_why_a_task_is_missing() {
        let done = Row {
            task: "mrpc".into(),
            status: "done".into(),
            metric: Some("accuracy".into()),
            dev: Some(0.875),
            scores: [("accuracy".to_string(), 0.875), ("f1".to_string(), 0.9)].into(),
            updates: Some(10),
            seconds: Some(75.0),
            reason: None,
            fingerprint: None,
        };
        let skipped = Row::not_done(Recipe::Squad, "skipped", "no data".into());
        let t = table(&[done, skipped]);
        assert!(
            t.contains("| mrpc | accuracy | 87.50 | 10 | 1m15s | f1 90.00 |"),
            "{t}"
        );
        assert!(t.contains("| squad | | skipped | | | no data |"), "{t}");
    }
}
