//! The pretraining and fine-tuning configs: TOML with one section per concern, unknown keys rejected,
//! `--set section.key=value` overrides, and every value checked before any work starts.
//! A setting both commands have carries one name in both (`train.seed`, `log.every`,
//! `eval.every`); the names of earlier releases are still read, with a deprecation
//! warning, so that users' configs and old checkpoints keep working.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use roberta_model::RobertaConfig;
use serde::{Deserialize, Serialize};

mod finetune;
mod pretrain;

pub use finetune::*;
pub use pretrain::*;

/// AdamW, with the RoBERTa paper's β₂ and ε.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OptimSection {
    /// Peak learning rate, reached at the end of warmup.
    pub lr: f64,
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    /// Decoupled weight decay; biases and LayerNorm parameters are never decayed.
    pub weight_decay: f64,
    /// Clip the global gradient norm to this value; 0 turns clipping off.
    pub clip_norm: f64,
}

impl Default for OptimSection {
    fn default() -> Self {
        Self {
            lr: 6e-4,
            beta1: 0.9,
            beta2: 0.98,
            eps: 1e-6,
            weight_decay: 0.01,
            clip_norm: 0.0,
        }
    }
}

impl OptimSection {
    /// The paper's fine-tuning recipe (Table 10): lr 1e-5, weight decay 0.1, no clipping.
    pub fn finetune() -> Self {
        Self {
            lr: 1e-5,
            weight_decay: 0.1,
            ..Self::default()
        }
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.lr > 0.0 && self.lr < 1.0) {
            bail!("optim.lr = {} must be in (0, 1)", self.lr);
        }
        for (key, v) in [("optim.beta1", self.beta1), ("optim.beta2", self.beta2)] {
            if !(0.0..1.0).contains(&v) {
                bail!("{key} = {v} must be in [0, 1)");
            }
        }
        if self.eps.is_nan() || self.eps <= 0.0 {
            bail!("optim.eps = {} must be positive", self.eps);
        }
        if !(0.0..1.0).contains(&self.weight_decay) {
            bail!(
                "optim.weight_decay = {} must be in [0, 1)",
                self.weight_decay
            );
        }
        if self.clip_norm.is_nan() || self.clip_norm < 0.0 {
            bail!(
                "optim.clip_norm = {} must be 0 (off) or positive",
                self.clip_norm
            );
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CheckpointSection {
    /// Save every this many updates (and always at the end); 0 saves only at the end.
    pub every: u64,
    /// Checkpoints kept; older ones are deleted.
    pub keep: usize,
}

impl Default for CheckpointSection {
    fn default() -> Self {
        Self {
            every: 1000,
            keep: 3,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSection {
    /// Write a metrics.jsonl line every this many updates.
    pub every: u64,
    /// Every this many updates (0: never), time the update's phases (data, forward,
    /// backward, all-reduce, norm and read, optimizer) with the device synchronised
    /// between them, and write them into the next metrics line as `profile`. The
    /// synchronisation slows that update: on a GPU it shows where an update's time
    /// goes, at the cost of the overlap it removes.
    pub profile_every: u64,
    /// TensorBoard event files with every `metrics.jsonl` number: `true` writes them
    /// into the run directory's `tb/`, a path into that directory (`tensorboard
    /// --logdir PATH`); `false` (default) writes none.
    pub tensorboard: TensorBoardSetting,
}

impl Default for LogSection {
    fn default() -> Self {
        Self {
            every: 10,
            profile_every: 0,
            tensorboard: TensorBoardSetting::On(false),
        }
    }
}

impl LogSection {
    /// Where the run's TensorBoard files go, if anywhere.
    pub fn tensorboard_dir(&self, run_dir: &Path) -> Option<PathBuf> {
        match &self.tensorboard {
            TensorBoardSetting::On(true) => Some(run_dir.join(crate::run::run_dir::TENSORBOARD)),
            TensorBoardSetting::On(false) => None,
            TensorBoardSetting::Dir(dir) => Some(dir.clone()),
        }
    }

    fn validate(&self) -> Result<()> {
        if let TensorBoardSetting::Dir(dir) = &self.tensorboard {
            let text = dir.to_string_lossy();
            if text.is_empty() || text == "true" || text == "false" {
                bail!(
                    "log.tensorboard = \"{text}\" must be true or false without quotes, or a directory"
                );
            }
            if text == "~" || text.starts_with("~/") {
                bail!(
                    "log.tensorboard = \"{text}\": a config's paths are not expanded as a shell's: give the full path"
                );
            }
        }
        Ok(())
    }
}

/// `log.tensorboard`: on or off, or the directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TensorBoardSetting {
    On(bool),
    Dir(PathBuf),
}

/// `train.ema_decay`, in both commands.
fn check_ema_decay(decay: Option<f64>) -> Result<()> {
    if let Some(d) = decay
        && !(d > 0.0 && d < 1.0)
    {
        bail!("train.ema_decay = {d} must be in (0, 1)");
    }
    Ok(())
}

/// What the trainer needs of either config: its saved form, and what may not change
/// between a checkpoint and the run that resumes it.
pub trait RunConfig: Serialize + serde::de::DeserializeOwned {
    /// Keys of earlier releases and where they live now.
    const RENAMED: &[(&str, &str)];

    /// Differences that would make a resumed run differ from an uninterrupted one, as
    /// `section.key: saved → now`.
    fn exactness_changes(&self, saved: &Self) -> Vec<String>;

    /// The micro-batch size and the accumulation, which a resume on another number of
    /// devices rescales.
    fn accumulation_mut(&mut self) -> (usize, &mut usize);

    /// The accumulations phases set, which such a resume rescales too.
    fn phase_accumulations_mut(&mut self) -> Vec<&mut usize> {
        Vec::new()
    }

    /// Writes `train.seed` into the seeds left unset (`data.seed`, `train.init_seed`),
    /// so that the saved config records every seed the run used and a resume compares
    /// them whichever way they were given.
    fn resolve_seeds(&mut self);

    fn log(&self) -> &LogSection;

    fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serialises")
    }

    /// A config saved in a run directory or checkpoint (possibly by an earlier release).
    fn from_saved(path: &Path) -> Result<Self> {
        let text = roberta_data::input::read_to_string(path)?;
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| syntax_error(path, &text, &e))?;
        rename_deprecated(&mut table, Self::RENAMED)
            .with_context(|| format!("{}: saved config", path.display()))?;
        let mut config: Self = deserialize(path, table, &[])
            .with_context(|| format!("{} is not a config of this command", path.display()))?;
        config.resolve_seeds();
        Ok(config)
    }
}

/// Sets the dropout rates a `[model]` section gives (hidden, attention, classifier head)
/// over a preset's or a loaded model's config: the one place either command changes a
/// model's config.
fn override_dropout(c: &mut RobertaConfig, [hidden, attention, classifier]: [Option<f64>; 3]) {
    if let Some(p) = hidden {
        c.hidden_dropout_prob = p;
    }
    if let Some(p) = attention {
        c.attention_probs_dropout_prob = p;
    }
    if classifier.is_some() {
        c.classifier_dropout = classifier;
    }
}

/// How a config section meets a resume: the keys a resumed run must keep (a change
/// would make it differ from the run it continues) and the keys it may change (how often
/// to log, evaluate or checkpoint; how long to train; how the loader queues). Every key
/// is in one list or the other, as serde names it: a test checks both lists against the
/// section's fields, so a new or renamed field cannot slip past the resume check.
pub trait ResumeRule: Serialize + Sized {
    const KEPT: &'static [&'static str];
    const FREE: &'static [&'static str];

    /// `section.key: saved → now` for each kept key whose value differs.
    fn kept_changes(section: &str, now: &Self, saved: &Self) -> Vec<String> {
        section_changes(section, now, saved, Self::KEPT)
    }
}

macro_rules! resume_rule {
    ($section:ty, kept: [$($kept:literal),* $(,)?], free: [$($free:literal),* $(,)?]) => {
        impl $crate::config::ResumeRule for $section {
            const KEPT: &'static [&'static str] = &[$($kept),*];
            const FREE: &'static [&'static str] = &[$($free),*];
        }
    };
}
pub(crate) use resume_rule;

resume_rule!(OptimSection, kept: ["lr", "beta1", "beta2", "eps", "weight_decay", "clip_norm"], free: []);
resume_rule!(CheckpointSection, kept: [], free: ["every", "keep"]);
resume_rule!(LogSection, kept: [], free: ["every", "profile_every", "tensorboard"]);

/// The keys of one section whose values differ among `keys`, compared as typed TOML
/// values.
fn section_changes<T: Serialize>(section: &str, now: &T, saved: &T, keys: &[&str]) -> Vec<String> {
    let table = |v: &T| match toml::Value::try_from(v) {
        Ok(toml::Value::Table(t)) => t,
        _ => toml::Table::new(),
    };
    let (now, saved) = (table(now), table(saved));
    let mut all: Vec<&String> = now.keys().chain(saved.keys()).collect();
    all.sort();
    all.dedup();
    let show = |v: Option<&toml::Value>| match v {
        None => "(unset)".to_string(),
        Some(toml::Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    };
    all.into_iter()
        .filter(|k| keys.contains(&k.as_str()))
        .filter(|k| now.get(*k) != saved.get(*k))
        .map(|k| {
            format!(
                "{section}.{k}: {} → {}",
                show(saved.get(k)),
                show(now.get(k))
            )
        })
        .collect()
}

/// Moves each deprecated `old` key to `new`, returning a warning per key moved.
fn rename_deprecated(table: &mut toml::Table, renamed: &[(&str, &str)]) -> Result<Vec<String>> {
    let mut warnings = Vec::new();
    for (old, new) in renamed {
        let (old_section, old_key) = old.split_once('.').expect("section.key");
        let Some(value) = table
            .get_mut(old_section)
            .and_then(toml::Value::as_table_mut)
            .and_then(|t| t.remove(old_key))
        else {
            continue;
        };
        let (new_section, new_key) = new.split_once('.').expect("section.key");
        let section = table
            .entry(new_section)
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(section) = section.as_table_mut() else {
            bail!("`{new_section}` is not a section");
        };
        if section.contains_key(new_key) {
            bail!("{old} (deprecated) and {new} are both set: keep {new}");
        }
        section.insert(new_key.to_string(), value);
        warnings.push(format!("config key {old} is deprecated: it is now {new}"));
    }
    Ok(warnings)
}

/// A refused value, blamed on the `--set` that gave its key (the last one, as it wins)
/// or else on the file.
fn blame(path: &Path, sets: &[String], e: anyhow::Error) -> anyhow::Error {
    let message = format!("{e:#}");
    let set = sets.iter().rev().find(|set| {
        set.split_once('=')
            .is_some_and(|(key, _)| mentions(&message, key.trim()))
    });
    match set {
        Some(set) => anyhow::anyhow!("--set {set}: {message}"),
        None => e.context(format!("{}: invalid config", path.display())),
    }
}

/// Whether `message` names `key` (`task.n_best`) as a whole, not inside a longer key.
fn mentions(message: &str, key: &str) -> bool {
    let part_of_key = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '.';
    message.match_indices(key).any(|(at, _)| {
        !message[..at].ends_with(part_of_key) && !message[at + key.len()..].starts_with(part_of_key)
    })
}

/// The `--set` (the last, as it wins) that gave the value at `key`, or a value inside
/// it (a section or key the config does not have).
fn set_for<'a>(sets: &'a [String], key: &str) -> Option<&'a String> {
    sets.iter().rev().find(|set| {
        set.split_once('=').is_some_and(|(k, _)| {
            let k = k.trim();
            k == key || k.starts_with(&format!("{key}."))
        })
    })
}

/// A TOML syntax error in one line: where, and what (toml's own message draws the
/// line with a caret over several).
fn syntax_error(path: &Path, text: &str, e: &toml::de::Error) -> anyhow::Error {
    let line = e
        .span()
        .map(|span| text[..span.start.min(text.len())].lines().count().max(1));
    let message = e.message().trim();
    match line {
        Some(line) => anyhow::anyhow!("{}:{line}: invalid TOML: {message}", path.display()),
        None => anyhow::anyhow!("{}: invalid TOML: {message}", path.display()),
    }
}

/// A config file as a TOML table, with deprecated keys renamed and then the `--set`
/// overrides applied (which may use either name).
fn read_table(
    path: &Path,
    sets: &[String],
    renamed: &[(&str, &str)],
) -> Result<(toml::Table, Vec<String>)> {
    let text = roberta_data::input::read_to_string(path)?;
    parse_table(path, &text, sets, renamed)
}

/// [`read_table`] of a config's text; `path` names it in errors.
fn parse_table(
    path: &Path,
    text: &str,
    sets: &[String],
    renamed: &[(&str, &str)],
) -> Result<(toml::Table, Vec<String>)> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| syntax_error(path, text, &e))?;
    let mut warnings = rename_deprecated(&mut table, renamed)
        .with_context(|| format!("{}: invalid config", path.display()))?;
    for set in sets {
        let key = set.split_once('=').map_or("", |(k, _)| k.trim());
        let set = match renamed.iter().find(|(old, _)| *old == key) {
            Some((old, new)) => {
                warnings.push(format!("--set {old} is deprecated: it is now {new}"));
                set.replacen(old, new, 1)
            }
            None => set.clone(),
        };
        apply_set(&mut table, &set)?;
    }
    Ok((table, warnings))
}

/// The typed config. An error names the key (`train.batch_size`) and where its value
/// came from: the `--set` that gave it, or the file and line.
fn deserialize<T: serde::de::DeserializeOwned>(
    path: &Path,
    table: toml::Table,
    sets: &[String],
) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
        let key = e.path().to_string();
        let message = e.inner().message().to_string();
        match set_for(sets, &key) {
            Some(set) => anyhow::anyhow!("--set {set}: {message}"),
            None => {
                let line = std::fs::read_to_string(path)
                    .ok()
                    .and_then(|text| line_of(&text, &key));
                match line {
                    Some(line) => anyhow::anyhow!("{}:{line}: {key}: {message}", path.display()),
                    None => anyhow::anyhow!("{}: {key}: {message}", path.display()),
                }
            }
        }
    })
}

/// The 1-based line of `section.key` in a TOML file.
fn line_of(text: &str, path: &str) -> Option<usize> {
    let (section, key) = path.split_once('.')?;
    let header = format!("[{section}]");
    let start = text.lines().position(|l| l.trim() == header)?;
    text.lines()
        .enumerate()
        .skip(start + 1)
        .take_while(|(_, l)| !l.trim_start().starts_with('['))
        .find(|(_, l)| {
            l.trim_start()
                .strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|(i, _)| i + 1)
}

/// Applies `section.key=value`: the value is read as TOML (numbers, booleans, arrays),
/// and as a string when it is not valid TOML.
fn apply_set(table: &mut toml::Table, set: &str) -> Result<()> {
    let (key, raw) = set
        .split_once('=')
        .with_context(|| format!("--set {set}: expected section.key=value"))?;
    let path: Vec<&str> = key.trim().split('.').collect();
    let Some((name, sections)) = path.split_last().filter(|(_, s)| !s.is_empty()) else {
        bail!("--set {set}: the key must be section.key, such as train.batch_size");
    };
    if path.iter().any(|p| p.is_empty()) {
        bail!("--set {set}: the key must be section.key, such as train.batch_size");
    }
    let raw = raw.trim();
    let value = match toml::from_str::<toml::Table>(&format!("v = {raw}")) {
        Ok(mut t) => t.remove("v").expect("parsed as v"),
        // TOML's integers are 64-bit signed; anything longer is not a string either.
        Err(_)
            if raw
                .trim_start_matches(['-', '+'])
                .bytes()
                .all(|b| b.is_ascii_digit())
                && !raw.trim_start_matches(['-', '+']).is_empty() =>
        {
            bail!(
                "--set {set}: the number is too large (at most {})",
                i64::MAX
            )
        }
        Err(e) if raw.starts_with(['[', '{', '"']) => {
            bail!(
                "--set {set}: not a TOML value ({}); quote strings, as in data.train=[\"a.txt\", \"b.txt\"]",
                e.message().trim()
            )
        }
        Err(_) => toml::Value::String(raw.to_string()),
    };
    // `eval.probe.train`: sections within sections, created as needed.
    let mut section_table = table;
    for (depth, section) in sections.iter().enumerate() {
        let entry = section_table
            .entry(section.to_string())
            .or_insert_with(|| toml::Value::Table(toml::Table::new()));
        let Some(inner) = entry.as_table_mut() else {
            bail!(
                "--set {set}: `{}` is not a section",
                sections[..=depth].join(".")
            );
        };
        section_table = inner;
    }
    // A list-valued key given one string (a single file) becomes a one-element list.
    let value = match (section_table.get(*name), value) {
        (Some(toml::Value::Array(_)), toml::Value::String(s)) => {
            toml::Value::Array(vec![toml::Value::String(s)])
        }
        (_, v) => v,
    };
    section_table.insert(name.to_string(), value);
    Ok(())
}

#[cfg(test)]
mod tests;
