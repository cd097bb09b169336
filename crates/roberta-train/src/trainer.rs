//! What every training loop of this binary shares: the learning-rate schedule, AdamW
//! with and without weight decay, global-norm clipping, where a run resumes from, the
//! metrics file and the stop signal. `pretrain` and `finetune` differ only in data,
//! model and loss.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use burn::module::{AutodiffModule, Module, ModuleVisitor, Param, ParamId};
use burn::optim::adaptor::OptimizerAdaptor;
use burn::optim::{AdamW, AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::record::{BinFileRecorder, FullPrecisionSettings, Recorder};
use burn::tensor::DType;
use burn::tensor::backend::AutodiffBackend;
use roberta_model::Precision;

use crate::checkpoint;
use crate::config::OptimSection;

/// Linear warmup from 0 to `peak` over `warmup` updates, then linear decay to 0 at
/// `total`. `step` counts from 1 (the update about to be taken).
pub fn learning_rate(step: u64, peak: f64, warmup: u64, total: u64) -> f64 {
    if step <= warmup {
        peak * step as f64 / warmup.max(1) as f64
    } else {
        peak * (total.saturating_sub(step)) as f64 / (total - warmup).max(1) as f64
    }
}

pub type Recorder32 = BinFileRecorder<FullPrecisionSettings>;

/// Makes dropout a function of (seed, update, micro-batch), so that a resumed run draws
/// the same dropout masks as an uninterrupted one.
pub fn seed_dropout<B: Backend>(device: &B::Device, seed: u64, step: u64, micro: usize) {
    B::seed(device, seed ^ (step << 16) ^ micro as u64 ^ 0xD0_0000_0000);
}

/// Parameter ids split the way weight decay is: matrices (weights, embeddings) decay,
/// vectors (biases, LayerNorm) do not.
#[derive(Default)]
struct ParamGroups {
    matrices: Vec<ParamId>,
    vectors: Vec<ParamId>,
}

impl<B: Backend> ModuleVisitor<B> for ParamGroups {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        assert!(D <= 2, "RoBERTa has only vector and matrix parameters");
        if D == 1 {
            self.vectors.push(param.id);
        } else {
            self.matrices.push(param.id);
        }
    }
}

impl ParamGroups {
    fn of<B: Backend, M: Module<B>>(module: &M) -> Self {
        let mut groups = Self::default();
        module.visit(&mut groups);
        groups
    }

    /// PyTorch's `clip_grad_norm_` norm: over all gradients at once, not per tensor.
    /// Matrices are summed row by row first: burn's CPU backend sums a tensor of 4M
    /// elements or more on rayon's threads in an order that varies from run to run (the
    /// word embeddings' gradient is 38M), which would make clipping, and so a resume,
    /// inexact.
    fn global_norm<B: Backend>(&self, grads: &GradientsParams, device: &B::Device) -> f64 {
        let mut total = Tensor::<B, 1>::zeros([1], device);
        for &id in &self.matrices {
            if let Some(g) = grads.get::<B, 2>(id) {
                total = total + g.powi_scalar(2).sum_dim(1).sum();
            }
        }
        for &id in &self.vectors {
            if let Some(g) = grads.get::<B, 1>(id) {
                total = total + g.powi_scalar(2).sum();
            }
        }
        (total.into_scalar().elem::<f64>()).sqrt()
    }

    fn scale<B: Backend>(&self, grads: &mut GradientsParams, factor: f64) {
        for &id in &self.matrices {
            if let Some(g) = grads.remove::<B, 2>(id) {
                grads.register(id, g * factor);
            }
        }
        for &id in &self.vectors {
            if let Some(g) = grads.remove::<B, 1>(id) {
                grads.register(id, g * factor);
            }
        }
    }

    /// Moves the vector parameters' gradients into their own set, for the optimizer
    /// without weight decay.
    fn take_vectors<B: Backend>(&self, grads: &mut GradientsParams) -> GradientsParams {
        let mut vectors = GradientsParams::new();
        for &id in &self.vectors {
            if let Some(g) = grads.remove::<B, 1>(id) {
                vectors.register(id, g);
            }
        }
        vectors
    }
}

const OPTIM_DECAY: &str = "optim-decay";
const OPTIM_PLAIN: &str = "optim-no-decay";

/// AdamW as the paper uses it: decoupled weight decay on matrices only (a second AdamW
/// without decay takes the biases and LayerNorm parameters), after clipping the global
/// gradient norm.
pub struct AdamWGroups<B: AutodiffBackend, M: AutodiffModule<B>> {
    decay: OptimizerAdaptor<AdamW, M, B>,
    plain: OptimizerAdaptor<AdamW, M, B>,
    groups: ParamGroups,
    clip_norm: f64,
}

impl<B: AutodiffBackend, M: AutodiffModule<B>> AdamWGroups<B, M> {
    pub fn new(optim: &OptimSection, model: &M) -> Self {
        let adamw = |decay: f64| {
            AdamWConfig::new()
                .with_beta_1(optim.beta1 as f32)
                .with_beta_2(optim.beta2 as f32)
                .with_epsilon(optim.eps as f32)
                .with_weight_decay(decay as f32)
                .init::<B, M>()
        };
        Self {
            decay: adamw(optim.weight_decay),
            plain: adamw(0.0),
            groups: ParamGroups::of(model),
            clip_norm: optim.clip_norm,
        }
    }

    /// Clips, then steps both groups at `lr`; returns the model and the gradient norm
    /// before clipping.
    pub fn step(
        &mut self,
        lr: f64,
        model: M,
        mut grads: GradientsParams,
        device: &B::Device,
    ) -> (M, f64) {
        let norm = self.groups.global_norm::<B::InnerBackend>(&grads, device);
        if self.clip_norm > 0.0 && norm > self.clip_norm {
            self.groups
                .scale::<B::InnerBackend>(&mut grads, self.clip_norm / (norm + 1e-6));
        }
        let vectors = self.groups.take_vectors::<B::InnerBackend>(&mut grads);
        let model = self.decay.step(lr, model, grads);
        (self.plain.step(lr, model, vectors), norm)
    }

    /// Writes both optimizers' moments into a checkpoint directory.
    pub fn save(&self, dir: &Path) -> Result<()> {
        for (name, optim) in [(OPTIM_DECAY, &self.decay), (OPTIM_PLAIN, &self.plain)] {
            let path = dir.join(name);
            Recorder32::new()
                .record(optim.to_record(), path.clone())
                .with_context(|| format!("writing {}", path.display()))?;
        }
        Ok(())
    }

    /// Restores both optimizers' moments. `model` is the model as loaded from the same
    /// checkpoint: loading a record restores its parameter ids, so the groups are
    /// taken again from it.
    pub fn load(mut self, dir: &Path, model: &M, device: &B::Device) -> Result<Self> {
        self.groups = ParamGroups::of(model);
        let recorder = Recorder32::new();
        let load = |name: &str| {
            recorder
                .load(dir.join(name), device)
                .with_context(|| format!("{}: optimizer state {name}", dir.display()))
        };
        self.decay = self.decay.load_record(load(OPTIM_DECAY)?);
        self.plain = self.plain.load_record(load(OPTIM_PLAIN)?);
        Ok(self)
    }
}

/// Where a run starts: `None` is a fresh run (refused if the run directory already holds
/// checkpoints), `auto` the newest checkpoint that verifies, or a checkpoint directory.
pub fn resume_point(run_dir: &Path, resume: Option<&str>) -> Result<Option<checkpoint::Found>> {
    match resume {
        None => {
            if !checkpoint::list(run_dir)?.is_empty() {
                bail!(
                    "{} already holds checkpoints: pass --resume auto to continue it, or another --run-dir",
                    run_dir.display()
                );
            }
            Ok(None)
        }
        Some("auto") => {
            let (found, skipped) = checkpoint::latest_valid(run_dir)?;
            for s in &skipped {
                tracing::warn!("skipping a checkpoint that does not verify: {s}");
            }
            if found.is_none() {
                tracing::info!(
                    "no checkpoint in {}: starting from step 0",
                    run_dir.display()
                );
            }
            Ok(found)
        }
        Some(path) => {
            let path = PathBuf::from(path);
            let state = checkpoint::verify(&path)?;
            Ok(Some((path, state)))
        }
    }
}

/// Refuses to resume with a config that changed in ways that break exactness, unless
/// forced, in which case each change is logged.
pub fn check_resume_changes(changes: &[String], force: bool) -> Result<()> {
    if !changes.is_empty() && !force {
        bail!(
            "the config differs from the checkpoint's in ways that break an exact resume:\n  {}\npass --force to resume anyway",
            changes.join("\n  ")
        );
    }
    for c in changes {
        tracing::warn!("resuming with a changed config (--force): {c}");
    }
    Ok(())
}

/// `train.precision = "bf16"` needs bf16 arithmetic on every device, checked before any
/// work rather than failing in the first forward pass.
pub fn check_precision<B: Backend>(precision: Precision, devices: &[B::Device]) -> Result<()> {
    if precision == Precision::Bf16
        && let Some(device) = devices.iter().find(|d| !B::supports_dtype(d, DType::BF16))
    {
        bail!(
            "train.precision = \"bf16\": this backend has no bf16 arithmetic on {device:?}; use \"fp32\""
        );
    }
    Ok(())
}

/// SIGINT and SIGTERM set the returned flag; the loop finishes its update, saves, exits.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the signal handler")?;
    }
    Ok(stop)
}

/// `metrics.jsonl`: one JSON object per logged step, appended and flushed as it comes.
pub struct MetricsFile {
    file: std::fs::File,
}

impl MetricsFile {
    pub const NAME: &str = "metrics.jsonl";

    /// Opens the run's metrics for appending, first dropping lines past `step`: a run
    /// killed after its last checkpoint logged steps that the resumed run takes again.
    pub fn open(run_dir: &Path, step: u64) -> Result<Self> {
        let path = run_dir.join(Self::NAME);
        if let Ok(text) = std::fs::read_to_string(&path) {
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
            roberta_model::hf::write_atomic(&path, kept.as_bytes())?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        Ok(Self { file })
    }

    pub fn write(&mut self, line: &impl serde::Serialize) -> Result<()> {
        writeln!(self.file, "{}", serde_json::to_string(line)?)?;
        self.file.flush()?;
        Ok(())
    }

    pub fn sync(&self) {
        self.file.sync_data().ok();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_warms_up_then_decays_to_zero() {
        assert_eq!(learning_rate(5, 1.0, 10, 110), 0.5);
        assert_eq!(learning_rate(10, 1.0, 10, 110), 1.0);
        assert!((learning_rate(60, 1.0, 10, 110) - 0.5).abs() < 1e-12);
        assert_eq!(learning_rate(110, 1.0, 10, 110), 0.0);
        assert_eq!(learning_rate(1, 2.0, 0, 100), 2.0 * 99.0 / 100.0);
    }

    #[test]
    fn metrics_past_the_checkpoint_are_dropped_on_resume() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(MetricsFile::NAME);
        std::fs::write(&path, "{\"step\":1}\n{\"step\":2}\n{\"step\":3}\n").unwrap();
        let mut m = MetricsFile::open(dir.path(), 2).unwrap();
        m.write(&serde_json::json!({"step": 3, "loss": 1.0}))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text,
            "{\"step\":1}\n{\"step\":2}\n{\"loss\":1.0,\"step\":3}\n"
        );
    }
}
