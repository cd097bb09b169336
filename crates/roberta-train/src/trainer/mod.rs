//! The one training loop, for pretraining and every fine-tuning task alike. It reads top
//! to bottom like nanoGPT's `train.py`: next window of micro-batches, forward, backward,
//! accumulate, all-reduce, clip, step, schedule, log, evaluate, checkpoint. What differs
//! between tasks comes from a [`Task`]: its batches, its loss and target count, its
//! evaluation.
//!
//! `replica.rs` holds the loop itself; `start.rs` what a run checks and sets up before
//! its first update.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result};
use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::DType;
use roberta_data::RobertaTokenizer;
use roberta_data::rng::{self, Purpose};
use roberta_model::{Precision, RobertaConfig, TrainingBackend};

use crate::config::OptimSection;
use crate::parallel::processes::Processes;
use crate::parallel::{self, Group};
use crate::run::checkpoint::{self, DataFingerprint, Recorder32, Retention, TrainerState};
use crate::run::sinks::{Console, MetricsFile, Sinks, TensorBoard};
use crate::tasks::Task;
use crate::trainer::ema::Ema;
use crate::trainer::optim::AdamWGroups;

pub mod ema;
pub mod optim;
mod replica;
mod start;

use replica::{Finished, Leader, Replica};
pub use start::{
    Buffer, check_batch_memory, check_buffers, check_model_memory, check_precision,
    check_resume_changes, machine_memory, resume_point, start_run, stop_flag,
};

/// How a run trains, whatever the task.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The run's phases in order, the last ending at `total`: one, or pretraining's
    /// `[[schedule.phases]]`.
    pub phases: Vec<TrainPhase>,
    /// Batch-size warmup: `(updates, sequences per update at the first)`.
    pub batch_warmup: Option<(u64, u64)>,
    /// Dropout's seed.
    pub seed: u64,
    /// The data order's (and the masks') seed.
    pub data_seed: u64,
    pub precision: Precision,
    pub max_bad_steps: u32,
    pub optim: OptimSection,
    pub warmup: u64,
    /// Updates in the whole run.
    pub total: u64,
    /// A metrics line every this many updates.
    pub log_every: u64,
    /// Time an update's phases every this many updates (0: never).
    pub profile_every: u64,
    /// Where TensorBoard's event files go, if anywhere.
    pub tensorboard: Option<PathBuf>,
    /// Keep an exponential moving average of the weights with this decay.
    pub ema_decay: Option<f64>,
    /// Evaluate every this many updates; 0: at the end of every epoch.
    pub eval_every: u64,
    /// Keep the best evaluated model in `best/` (fine-tuning).
    pub best: Option<BestPolicy>,
    /// A checkpoint every this many updates (0: only at the end).
    pub checkpoint_every: u64,
    pub keep: usize,
}

/// Updates with one micro-batch shape: the task's data for this phase (pretraining: its
/// block size and masking rate), this many rows per micro-batch on each device, this
/// many micro-batches per update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TrainPhase {
    /// The phase's last update.
    pub until_step: u64,
    pub batch_size: usize,
    pub accumulation: usize,
    /// The warmup of a new learning-rate cycle starting with this phase (never the
    /// first phase's: that is [`Settings::warmup`]).
    pub warmup: Option<u64>,
}

impl Settings {
    /// The learning rate of update `step` (counting from 1): warmup then linear decay
    /// to zero within the cycle the update falls in. A run's first cycle starts with it
    /// and warms up over `warmup` updates; each phase with a warmup of its own starts
    /// the next; each ends where the next starts, the last at `total`.
    pub fn learning_rate(&self, step: u64) -> f64 {
        let phase = self.phase_at(step);
        let starts = |p: usize| p > 0 && self.phases[p].warmup.is_some();
        let (begin, warmup) =
            (1..=phase)
                .rev()
                .find(|&p| starts(p))
                .map_or((0, self.warmup), |p| {
                    (
                        self.phases[p - 1].until_step,
                        self.phases[p].warmup.unwrap_or(0),
                    )
                });
        let end = (phase + 1..self.phases.len())
            .find(|&p| starts(p))
            .map_or(self.total, |p| self.phases[p - 1].until_step);
        optim::learning_rate(step - begin, self.optim.lr, warmup, end - begin)
    }

    /// The phase update `step` (counting from 1) belongs to.
    pub fn phase_at(&self, step: u64) -> usize {
        self.phases
            .iter()
            .position(|p| step <= p.until_step)
            .unwrap_or(self.phases.len() - 1)
    }

    /// Where the loader of a run on `world` replicas stands before update `step`, when
    /// no update was skipped, given each phase's number of blocks: the phase, the
    /// position, and where the phase's data began. The loop's own transitions, replayed.
    pub fn loader_position(
        &self,
        step: u64,
        world: usize,
        blocks: &[u64],
    ) -> (usize, roberta_data::LoaderState, roberta_data::LoaderState) {
        let mut state = roberta_data::LoaderState::default();
        let (mut phase, mut start) = (0, state);
        for t in 1..=step {
            let now = self.phase_at(t);
            if now != phase {
                phase = now;
                state = roberta_data::LoaderState {
                    epoch: state.epoch + 1,
                    cursor: 0,
                };
                start = state;
            }
            if t == step {
                break;
            }
            let rows = self.phases[now].batch_size * world * self.accumulation_at(t, now, world);
            let after = state.cursor + rows as u64;
            state = roberta_data::LoaderState {
                epoch: state.epoch + after / blocks[now],
                cursor: after % blocks[now],
            };
        }
        (phase, state, start)
    }

    /// The sequences `phase` serves over `world` replicas, batch-size warmup included.
    pub fn phase_sequences(&self, phase: usize, world: usize) -> u64 {
        let first = match phase {
            0 => 1,
            p => self.phases[p - 1].until_step + 1,
        };
        let rows = (self.phases[phase].batch_size * world) as u64;
        (first..=self.phases[phase].until_step)
            .map(|t| self.accumulation_at(t, phase, world) as u64 * rows)
            .sum()
    }

    /// Micro-batches per device in update `step` of `phase` on `world` replicas: the
    /// phase's, or during the batch-size warmup the whole micro-batches that the
    /// linearly growing sequences per update fill (at least one).
    pub fn accumulation_at(&self, step: u64, phase: usize, world: usize) -> usize {
        let p = self.phases[phase];
        match self.batch_warmup {
            Some((updates, start)) if step <= updates => {
                let (micro, start) = ((p.batch_size * world) as f64, start as f64);
                let full = micro * p.accumulation as f64;
                let sequences = start + (full - start) * (step - 1) as f64 / updates as f64;
                ((sequences / micro).floor() as usize).clamp(1, p.accumulation)
            }
            _ => p.accumulation,
        }
    }
}

/// Which evaluation is the best, and when to stop looking for a better one.
#[derive(Debug, Clone)]
pub struct BestPolicy {
    pub metric: String,
    pub higher_is_better: bool,
    /// Stop after this many evaluations without a better value (0: never).
    pub patience: u64,
}

impl BestPolicy {
    /// Whether `value` beats the best so far. A NaN metric (a diverged model) is never
    /// the best.
    fn improves(&self, value: f64, best: Option<f64>) -> bool {
        !value.is_nan()
            && best.is_none_or(|b| {
                if self.higher_is_better {
                    value > b
                } else {
                    value < b
                }
            })
    }
}

/// What a run writes beside the tensors: its config, and the model's HF config and
/// tokenizer (into checkpoints, `best/` and `final/`).
pub struct RunFiles {
    pub run_dir: PathBuf,
    pub config_toml: String,
    pub model_config: RobertaConfig,
    pub tokenizer: RobertaTokenizer,
    /// What the run trains on, recorded in every checkpoint.
    pub data: DataFingerprint,
}

/// How a run ended.
pub struct Outcome {
    pub state: TrainerState,
    /// A signal stopped it before the last update: no `final/`.
    pub stopped: bool,
}

/// Device-to-host reads the training loop has made, for the tests and the debug log:
/// one per update.
pub static DEVICE_READS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Reads `[1]` tensors from the device in one transfer: on a GPU every read waits for
/// all queued work, so the loop makes one per update.
fn read_scalars<B: Backend>(values: Vec<Tensor<B, 1>>) -> Vec<f64> {
    DEVICE_READS.fetch_add(1, Ordering::Relaxed);
    Tensor::cat(values.into_iter().map(|v| v.cast(DType::F32)).collect(), 0)
        .into_data()
        .iter::<f32>()
        .map(f64::from)
        .collect()
}

/// Makes dropout a function of (seed, update, micro-batch), so that a resumed run draws
/// the same dropout masks as an uninterrupted one.
pub fn seed_dropout<B: Backend>(device: &B::Device, seed: u64, step: u64, micro: usize) {
    B::seed(
        device,
        rng::seed(Purpose::Dropout, &[seed, step, micro as u64]),
    );
}

/// Seeds the backend's generator for initialising fresh weights.
pub fn seed_init<B: Backend>(device: &B::Device, seed: u64) {
    B::seed(device, rng::seed(Purpose::Init, &[seed]));
}

/// The leader's metrics sinks: `metrics.jsonl` (lines past `step` dropped), the
/// console, and TensorBoard when asked.
fn sinks(
    settings: &Settings,
    files: &RunFiles,
    bar: &indicatif::ProgressBar,
    step: u64,
) -> Result<Sinks> {
    let mut sinks = Sinks::default()
        .with(MetricsFile::open(&files.run_dir, step)?)
        .with(Console {
            bar: bar.clone(),
            total: settings.total,
        });
    if let Some(dir) = &settings.tensorboard {
        sinks = sinks.with(TensorBoard::open(dir, &files.run_dir, step)?);
    }
    Ok(sinks)
}

/// Replica 0's part, from `step` on.
fn leader<'a, B: TrainingBackend, M: AutodiffModule<B>>(
    settings: &Settings,
    files: &'a RunFiles,
    model: &M,
    resume: Option<&checkpoint::Found>,
    step: u64,
    device: &B::Device,
    stop: Arc<AtomicBool>,
) -> Result<Leader<'a, M::InnerModule>> {
    let bar = crate::run::progress::steps_bar(settings.total, step);
    Ok(Leader {
        ema: ema(settings, model, resume, device)?,
        files,
        sinks: sinks(settings, files, &bar, step)?,
        bar,
        saved_step: step,
        retention: Retention::new(settings.keep),
        early_stop: false,
        stop,
    })
}

/// The weights' moving average when `train.ema_decay` asks for one: the checkpoint's
/// when resuming, else a copy of the starting weights.
fn ema<B: TrainingBackend, M: AutodiffModule<B>>(
    settings: &Settings,
    model: &M,
    resume: Option<&checkpoint::Found>,
    device: &B::Device,
) -> Result<Option<Ema<M::InnerModule>>> {
    let Some(decay) = settings.ema_decay else {
        return Ok(None);
    };
    let ema = Ema::new(decay, model.valid());
    match resume {
        Some((path, _)) if checkpoint::has_file(path, crate::trainer::ema::EMA) => {
            Ok(Some(ema.load::<B::InnerBackend>(path, device)?))
        }
        Some((path, _)) => {
            tracing::warn!(
                "{} holds no average of the weights: train.ema_decay starts one from its weights",
                path.display()
            );
            Ok(Some(ema))
        }
        None => Ok(Some(ema)),
    }
}

/// Trains `model` on `task` over `devices` (one replica each), from a checkpoint when
/// `resume` names one; writes checkpoints, `best/` and, unless `stop` is raised (a
/// signal: see [`stop_flag`]), `final/`.
pub fn train<B: TrainingBackend, T: Task<B>>(
    task: &T,
    devices: &[B::Device],
    model: T::Model,
    resume: Option<&checkpoint::Found>,
    settings: &Settings,
    files: &RunFiles,
    stop: Arc<AtomicBool>,
) -> Result<Outcome> {
    let processes = Processes::current();
    let world = processes.replicas(devices.len())?;
    let (model, state) = starting_point(model, resume, world, files, &devices[0])?;
    if processes.is_leader() {
        roberta_fs::replace_file(
            &files.run_dir.join(checkpoint::CONFIG),
            files.config_toml.as_bytes(),
        )?;
    }
    let model = parallel::number_params(model);
    parallel::announce(world, model.num_params());
    let optimizer = |device: &B::Device| {
        AdamWGroups::<B, T::Model>::resumed(
            &settings.optim,
            resume.map(|(p, _)| p.as_path()),
            device,
        )
    };
    let collective = parallel::collective_config(world);
    let replica = |local: usize| -> Result<Replica<'_, B, T>> {
        let rank = processes.rank + local;
        Ok(Replica {
            task,
            settings,
            rank,
            world,
            device: devices[local].clone(),
            group: Group::join(rank, world, &devices[local], &collective)?,
        })
    };
    let reads = ReadCount::start(&state);
    let outcome_parts = std::thread::scope(|scope| -> Result<_> {
        // Replicas 1…N-1 run on their own threads; replica 0, on this one, also logs,
        // evaluates and checkpoints (in rank 0's process).
        let mut others = Vec::new();
        for (local, device) in devices.iter().enumerate().skip(1) {
            let copy = model.clone().fork(device);
            let optim = optimizer(device)?;
            let state = state.clone();
            let replica = &replica;
            others.push(scope.spawn(move || replica(local)?.run(copy, optim, state, None, None)));
        }
        let first = replica(0)?;
        let model = first.group.broadcast_model(model);
        let optim = optimizer(&devices[0])?;
        let leader = match processes.is_leader() {
            true => Some(leader::<B, T::Model>(
                settings,
                files,
                &model,
                resume,
                state.step,
                &devices[0],
                stop.clone(),
            )?),
            false => None,
        };
        let outcome = first.run(model, optim, state, Some(stop), leader);
        for other in others {
            other
                .join()
                .map_err(|_| anyhow::anyhow!("a replica thread panicked"))??;
        }
        outcome
    })?;
    let Finished {
        model,
        state,
        stopped,
        ema,
    } = outcome_parts;
    reads.report(&state, devices.len());
    if !processes.is_leader() {
        return Ok(Outcome { state, stopped });
    }
    if stopped {
        tracing::info!(
            "stopped by signal at step {}; continue with --resume auto --run-dir {}",
            state.step,
            files.run_dir.display()
        );
        return Ok(Outcome { state, stopped });
    }
    write_final(files, &ema.unwrap_or_else(|| model.valid()))?;
    Ok(Outcome { state, stopped })
}

/// The device-to-host reads of a run's training loop, and its updates (taken or
/// skipped), for the debug log's count of reads per update.
struct ReadCount {
    attempts: u64,
    reads: u64,
}

impl ReadCount {
    fn start(state: &TrainerState) -> Self {
        Self {
            attempts: state.step + state.bad_steps,
            reads: DEVICE_READS.load(Ordering::Relaxed),
        }
    }

    fn report(&self, state: &TrainerState, replicas: usize) {
        tracing::debug!(
            "{} device-to-host reads in the training loop over {} updates on {replicas} replica(s)",
            DEVICE_READS.load(Ordering::Relaxed) - self.reads,
            state.step + state.bad_steps - self.attempts,
        );
    }
}

/// The model and state a run starts from: as given at step 0, or the checkpoint's.
fn starting_point<B: Backend, M: Module<B>>(
    model: M,
    resume: Option<&checkpoint::Found>,
    world: usize,
    files: &RunFiles,
    device: &B::Device,
) -> Result<(M, TrainerState)> {
    let Some((path, saved)) = resume else {
        let state = TrainerState {
            devices: world,
            data: Some(files.data.clone()),
            ..TrainerState::default()
        };
        return Ok((model, state));
    };
    checkpoint::check_model_shape(path, &files.model_config)?;
    let model = model
        .load_file(path.join(checkpoint::MODEL), &Recorder32::new(), device)
        .map_err(checkpoint::read_error)
        .with_context(|| format!("{}: model", path.display()))?;
    let state = TrainerState {
        devices: world,
        streams: roberta_data::rng::STREAMS_VERSION,
        data: Some(files.data.clone()),
        ..saved.clone()
    };
    tracing::info!("resumed from {} at step {}", path.display(), state.step);
    Ok((model, state))
}

/// A finished run's curves and its `final/` model (the weights' average, when kept).
fn write_final<B: Backend, M: roberta_model::hf::Pretrained<B>>(
    files: &RunFiles,
    model: &M,
) -> Result<()> {
    let curves = files.run_dir.join(crate::run::plot::PLOT_FILE);
    match crate::run::plot::plot_run(&files.run_dir, &curves) {
        Ok(()) => tracing::info!("curves in {}", curves.display()),
        Err(e) => tracing::warn!("no plot: {e:#}"),
    }
    checkpoint::save_hf_dir(
        &files.run_dir.join(checkpoint::FINAL),
        model,
        &files.model_config,
        &files.tokenizer,
        None,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run of `phases` ending with the last, its first learning-rate cycle warming up
    /// over `warmup` updates.
    fn settings(phases: Vec<TrainPhase>, warmup: u64) -> Settings {
        Settings {
            total: phases.last().unwrap().until_step,
            phases,
            batch_warmup: None,
            seed: 0,
            data_seed: 0,
            precision: Precision::F32,
            max_bad_steps: 1,
            optim: OptimSection::default(),
            warmup,
            log_every: 1,
            profile_every: 0,
            tensorboard: None,
            ema_decay: None,
            eval_every: 0,
            best: None,
            checkpoint_every: 0,
            keep: 1,
        }
    }

    #[test]
    fn phases_and_the_batch_warmup_are_functions_of_the_step() {
        let phase = |until_step, batch_size, accumulation| TrainPhase {
            until_step,
            batch_size,
            accumulation,
            warmup: None,
        };
        let settings = Settings {
            batch_warmup: Some((8, 4)),
            ..settings(vec![phase(10, 4, 8), phase(20, 2, 16)], 0)
        };
        let phases: Vec<usize> = (1..=20).map(|t| settings.phase_at(t)).collect();
        assert_eq!(phases, [[0; 10], [1; 10]].concat());
        // 4 sequences at update 1 growing to 32 at update 9: whole micro-batches of 4.
        let one: Vec<usize> = (1..=10)
            .map(|t| settings.accumulation_at(t, 0, 1))
            .collect();
        assert_eq!(one, [1, 1, 2, 3, 4, 5, 6, 7, 8, 8]);
        // Two replicas: micro-batches of 8, from 4 sequences (one each) to 64.
        let two: Vec<usize> = (1..=9).map(|t| settings.accumulation_at(t, 0, 2)).collect();
        assert_eq!(two, [1, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(settings.accumulation_at(12, 1, 1), 16);
    }

    #[test]
    fn a_phase_with_a_warmup_starts_a_new_learning_rate_cycle() {
        let phase = |until_step, warmup| TrainPhase {
            until_step,
            batch_size: 1,
            accumulation: 1,
            warmup,
        };
        let mut settings = Settings {
            optim: OptimSection {
                lr: 1.0,
                ..OptimSection::default()
            },
            ..settings(
                vec![phase(10, None), phase(12, None), phase(20, Some(2))],
                2,
            )
        };
        let rates = |s: &Settings| (1..=20).map(|t| s.learning_rate(t)).collect::<Vec<_>>();
        // Updates 1–12 (the first two phases) are one cycle: 2 of warmup, zero at 12;
        // 13–20 another: 2 of warmup from update 12's end, zero at 20.
        let cycles = rates(&settings);
        let expected = [
            0.5,
            1.0,
            0.9,
            0.8,
            0.7,
            0.6,
            0.5,
            0.4,
            0.3,
            0.2,
            0.1,
            0.0,
            0.5,
            1.0,
            5.0 / 6.0,
            4.0 / 6.0,
            3.0 / 6.0,
            2.0 / 6.0,
            1.0 / 6.0,
            0.0,
        ];
        for (t, (got, want)) in cycles.iter().zip(expected).enumerate() {
            assert!(
                (got - want).abs() < 1e-12,
                "update {}: {got} vs {want}",
                t + 1
            );
        }
        // Without a phase's warmup: the one schedule over the run.
        settings.phases[2].warmup = None;
        let one: Vec<f64> = (1..=20)
            .map(|t| optim::learning_rate(t, 1.0, 2, 20))
            .collect();
        assert_eq!(rates(&settings), one);
    }

    #[test]
    fn a_nan_metric_is_never_the_best() {
        for higher_is_better in [true, false] {
            let policy = BestPolicy {
                metric: "mse".into(),
                higher_is_better,
                patience: 0,
            };
            assert!(!policy.improves(f64::NAN, None));
            assert!(!policy.improves(f64::NAN, Some(0.5)));
            assert!(policy.improves(0.5, None));
            assert_eq!(policy.improves(0.6, Some(0.5)), higher_is_better);
        }
    }
}
