//! Where a run's metrics go. Every logged update is one [`MetricsLine`], handed to each
//! sink in turn: `metrics.jsonl` (which `plot` reads back), the console and progress
//! bar, and TensorBoard's event files when `log.tensorboard` asks. Another logger is
//! one more [`Sink`].

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::run::run_dir::METRICS;
use crate::run::tensorboard::{EventWriter, Owner};
use crate::tasks::metrics::format_metrics;

/// One logged update: a line of `metrics.jsonl`.
#[derive(Serialize, Default, Clone)]
pub struct MetricsLine {
    pub step: u64,
    pub epoch: u64,
    /// Mean loss per target since the last line, in nats (natural log, as PyTorch's
    /// cross-entropy: perplexity = exp(loss)); fairseq logs base 2, loss / ln 2.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_per_s: f64,
    /// What the task logs beside the loss, per target since the last line (masked LM:
    /// `masked_acc`, the accuracy on the masked tokens).
    #[serde(flatten)]
    pub logged: BTreeMap<String, f64>,
    /// Several replicas: seconds per update spent in the gradient all-reduce, waiting
    /// for the slowest replica included.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allreduce_s: Option<f64>,
    /// `log.profile_every`: the phases of the last profiled update, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub profile: Option<BTreeMap<String, f64>>,
    /// `valid_<metric>` of an evaluation at this step.
    #[serde(flatten)]
    pub valid: BTreeMap<String, f64>,
    pub bad_steps: u64,
    /// The evaluation at this step is the best so far (fine-tuning).
    #[serde(skip)]
    pub best: bool,
}

impl MetricsLine {
    /// Every number of the line but its step, as named in `metrics.jsonl` (`profile`'s
    /// phases as `profile/PHASE`).
    pub fn scalars(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        let value = serde_json::to_value(self).expect("metrics serialise");
        for (key, value) in value.as_object().into_iter().flatten() {
            match value {
                serde_json::Value::Object(inner) => {
                    for (name, v) in inner {
                        if let Some(v) = v.as_f64() {
                            out.push((format!("{key}/{name}"), v));
                        }
                    }
                }
                v if key != "step" => {
                    if let Some(v) = v.as_f64() {
                        out.push((key.clone(), v));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

pub trait Sink {
    fn write(&mut self, line: &MetricsLine) -> Result<()>;
    /// Makes what was written durable (before a checkpoint records the step).
    fn sync(&self) {}
}

/// The run's sinks, written in order.
#[derive(Default)]
pub struct Sinks(Vec<Box<dyn Sink>>);

impl Sinks {
    pub fn with(mut self, sink: impl Sink + 'static) -> Self {
        self.0.push(Box::new(sink));
        self
    }

    pub fn write(&mut self, line: &MetricsLine) -> Result<()> {
        self.0.iter_mut().try_for_each(|s| s.write(line))
    }

    pub fn sync(&self) {
        self.0.iter().for_each(|s| s.sync());
    }
}

/// `metrics.jsonl`: one JSON object per logged step, appended and flushed as it comes.
pub struct MetricsFile {
    file: std::fs::File,
}

impl MetricsFile {
    /// Opens the run's metrics for appending, first dropping lines past `step`: a run
    /// killed after its last checkpoint logged steps that the resumed run takes again.
    pub fn open(run_dir: &Path, step: u64) -> Result<Self> {
        let path = run_dir.join(METRICS);
        if std::fs::symlink_metadata(&path).is_ok() {
            let text = roberta_data::input::read_to_string(&path)?;
            let kept: String = text
                .lines()
                .filter(|l| {
                    serde_json::from_str::<serde_json::Value>(l)
                        .ok()
                        .and_then(|v| v.get("step").and_then(serde_json::Value::as_u64))
                        .is_some_and(|s| s <= step)
                })
                .map(|l| format!("{l}\n"))
                .collect();
            roberta_fs::replace_file(&path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { file })
    }
}

impl Sink for MetricsFile {
    fn write(&mut self, line: &MetricsLine) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(line)?)?;
        self.file.flush()?;
        Ok(())
    }

    fn sync(&self) {
        self.file.sync_data().ok();
    }
}

/// The log line of each update (and of its evaluation), and the progress bar's message.
pub struct Console {
    pub bar: indicatif::ProgressBar,
    pub total: u64,
}

impl Sink for Console {
    fn write(&mut self, line: &MetricsLine) -> Result<()> {
        let summary = format!(
            "loss {:.4} lr {:.2e} {:.0} tok/s",
            line.loss, line.lr, line.tokens_per_s
        );
        crate::run::progress::log_line(&format!("step {}/{} {summary}", line.step, self.total));
        self.bar.set_message(summary);
        if !line.valid.is_empty() {
            let scores = line
                .valid
                .iter()
                .map(|(k, v)| (k.strip_prefix("valid_").unwrap_or(k).to_string(), *v))
                .collect();
            crate::run::progress::report(
                &self.bar,
                &format!(
                    "step {} valid {}{}",
                    line.step,
                    format_metrics(&scores),
                    if line.best { "  (best)" } else { "" }
                ),
            );
        }
        Ok(())
    }
}

/// TensorBoard scalars: every number of the line, under its `metrics.jsonl` name.
pub struct TensorBoard(EventWriter);

impl TensorBoard {
    /// See [`EventWriter::open`]: the run resumes at `step`.
    pub fn open(dir: &Path, run_dir: &Path, step: u64) -> Result<Self> {
        let writer = EventWriter::open(dir, &Owner::of(run_dir, dir), step)?;
        tracing::info!(
            "TensorBoard event files in {}: tensorboard --logdir {}",
            dir.display(),
            dir.display()
        );
        Ok(Self(writer))
    }
}

impl Sink for TensorBoard {
    fn write(&mut self, line: &MetricsLine) -> Result<()> {
        self.0.scalars(line.step, &line.scalars())
    }

    fn sync(&self) {
        self.0.sync();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_past_the_checkpoint_are_dropped_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(METRICS);
        std::fs::write(&path, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n").unwrap();
        let mut m = MetricsFile::open(dir.path(), 2).unwrap();
        let line = MetricsLine {
            step: 3,
            loss: 1.0,
            ..MetricsLine::default()
        };
        m.write(&line).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let last = text.lines().last().unwrap();
        assert_eq!(text.lines().count(), 3);
        assert!(last.starts_with("{\"step\":3,") && last.contains("\"loss\":1.0"));
    }

    #[test]
    fn every_number_of_a_line_is_a_scalar() {
        let line = MetricsLine {
            step: 7,
            loss: 2.5,
            logged: BTreeMap::from([("masked_acc".into(), 0.25)]),
            profile: Some(BTreeMap::from([("forward".into(), 0.5)])),
            valid: BTreeMap::from([("valid_loss".into(), 3.0)]),
            ..MetricsLine::default()
        };
        let scalars: BTreeMap<String, f64> = line.scalars().into_iter().collect();
        let json = serde_json::to_value(&line).unwrap();
        let fields = json.as_object().unwrap();
        // Every field but the step, with the profile's phases one by one.
        assert_eq!(scalars.len(), fields.len() - 2 + 1);
        assert_eq!(scalars["loss"], 2.5);
        assert_eq!(scalars["masked_acc"], 0.25);
        assert_eq!(scalars["profile/forward"], 0.5);
        assert_eq!(scalars["valid_loss"], 3.0);
        assert!(!scalars.contains_key("step"));
    }
}
