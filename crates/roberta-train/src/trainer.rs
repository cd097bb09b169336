//! The one training loop, for pretraining and every fine-tuning task alike. It reads top
//! to bottom like nanoGPT's `train.py`: next window of micro-batches, forward, backward,
//! accumulate, all-reduce, clip, step, schedule, log, evaluate, checkpoint. What differs
//! between tasks comes from a [`Task`]: its batches, its loss and target count, its
//! evaluation.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use burn::tensor::DType;
use roberta_data::RobertaTokenizer;
use roberta_data::rng::{self, Purpose};
use roberta_model::{Precision, RobertaConfig, TrainingBackend};

use crate::checkpoint::{
    self, Best, DataFingerprint, LogInterval, Recorder32, Retention, TrainerState, UpdateSummary,
};
use crate::config::{OptimSection, RunConfig};
use crate::ema::Ema;
use crate::metrics::Metrics;
use crate::optim::{AdamWGroups, learning_rate};
use crate::parallel::{self, Group};
use crate::processes::{self, Processes};
use crate::run_dir;
use crate::sinks::{Console, MetricsFile, MetricsLine, Sinks, TensorBoard};
use crate::tasks::{BatchPlan, Batches, Task, Window};

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
}

impl Settings {
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
fn read_scalars<B: Backend, const N: usize>(values: [Tensor<B, 1>; N]) -> [f64; N] {
    DEVICE_READS.fetch_add(1, Ordering::Relaxed);
    let read = Tensor::cat(values.into_iter().map(|v| v.cast(DType::F32)).collect(), 0)
        .into_data()
        .iter::<f32>()
        .map(f64::from)
        .collect::<Vec<_>>();
    <[f64; N]>::try_from(read).expect("one value per tensor")
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

/// The phases of a profiled update (`log.profile_every`): each phase ends with the
/// device synchronised, so its time is the device's work queued in it (plus the host's,
/// where the host was slower).
struct Phases<'a, B: Backend> {
    device: &'a B::Device,
    since: Option<Instant>,
    seconds: BTreeMap<String, f64>,
}

impl<'a, B: Backend> Phases<'a, B> {
    fn new(device: &'a B::Device, on: bool) -> Self {
        if on {
            // Work queued before the update is not its own.
            let _ = B::sync(device);
        }
        Self {
            device,
            since: on.then(Instant::now),
            seconds: BTreeMap::new(),
        }
    }

    /// Ends `phase` (adding to it, for a phase of every micro-batch).
    fn end(&mut self, phase: &str) {
        if let Some(since) = self.since {
            let _ = B::sync(self.device);
            *self.seconds.entry(format!("{phase}_s")).or_default() += since.elapsed().as_secs_f64();
            self.since = Some(Instant::now());
        }
    }

    /// The phases with their total, when the update was profiled.
    fn finish(mut self) -> Option<BTreeMap<String, f64>> {
        self.since?;
        let total = self.seconds.values().sum();
        self.seconds.insert("total_s".into(), total);
        Some(self.seconds)
    }
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
        Some((path, _)) if checkpoint::has_file(path, crate::ema::EMA) => {
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
    mut model: T::Model,
    resume: Option<&checkpoint::Found>,
    settings: &Settings,
    files: &RunFiles,
    stop: Arc<AtomicBool>,
) -> Result<Outcome> {
    let processes = Processes::current();
    if processes.count > 1 && devices.len() > 1 {
        bail!(
            "under an MPI launcher each process drives one device: drop --devices and start one process per device"
        );
    }
    // One of the two is 1: replicas are threads of this process, or processes.
    let world = processes::world(devices.len());
    let mut state = TrainerState {
        devices: world,
        data: Some(files.data.clone()),
        ..TrainerState::default()
    };
    if let Some((path, saved)) = resume {
        checkpoint::check_model_shape(path, &files.model_config)?;
        model = model
            .load_file(
                path.join(checkpoint::MODEL),
                &Recorder32::new(),
                &devices[0],
            )
            .map_err(checkpoint::read_error)
            .with_context(|| format!("{}: model", path.display()))?;
        state = TrainerState {
            devices: world,
            streams: roberta_data::rng::STREAMS_VERSION,
            data: Some(files.data.clone()),
            ..saved.clone()
        };
        tracing::info!("resumed from {} at step {}", path.display(), state.step);
    }
    if processes.is_leader() {
        roberta_model::hf::write_atomic(
            &files.run_dir.join(checkpoint::CONFIG),
            files.config_toml.as_bytes(),
        )?;
    }
    let model = parallel::number_params(model);
    if world > 1 {
        let n = model.num_params();
        tracing::info!(
            "{world} replicas: every update all-reduces the gradients of {n} parameters ({:.1} MB in fp32)",
            n as f64 * 4e-6
        );
    }
    let optimizer = |device: &B::Device| {
        let optim = AdamWGroups::<B, T::Model>::new(&settings.optim);
        match resume {
            Some((path, _)) => optim.load(path, device),
            None => Ok(optim),
        }
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
    let (attempts_before, reads_before) = (
        state.step + state.bad_steps,
        DEVICE_READS.load(Ordering::Relaxed),
    );
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
        let bar = crate::progress::steps_bar(settings.total, state.step);
        let leader = match processes.is_leader() {
            true => Some(Leader {
                ema: ema(settings, &model, resume, &devices[0])?,
                files,
                sinks: sinks(settings, files, &bar, state.step)?,
                bar,
                saved_step: state.step,
                retention: Retention::new(settings.keep),
                early_stop: false,
                stop: stop.clone(),
            }),
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
    tracing::debug!(
        "{} device-to-host reads in the training loop over {} updates on {} replica(s)",
        DEVICE_READS.load(Ordering::Relaxed) - reads_before,
        state.step + state.bad_steps - attempts_before,
        devices.len()
    );
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
    let curves = files.run_dir.join(crate::plot::PLOT_FILE);
    match crate::plot::plot_run(&files.run_dir, &curves) {
        Ok(()) => tracing::info!("curves in {}", curves.display()),
        Err(e) => tracing::warn!("no plot: {e:#}"),
    }
    checkpoint::save_hf_dir(
        &files.run_dir.join(checkpoint::FINAL),
        &ema.unwrap_or_else(|| model.valid()),
        &files.model_config,
        &files.tokenizer,
        None,
    )?;
    Ok(Outcome { state, stopped })
}

/// One replica's part of the run.
struct Replica<'a, B: TrainingBackend, T: Task<B>> {
    task: &'a T,
    settings: &'a Settings,
    rank: usize,
    world: usize,
    device: B::Device,
    group: Group<B::InnerBackend>,
}

/// What only replica 0 does: metrics, evaluation, `best/`, checkpoints.
struct Leader<'a, I> {
    files: &'a RunFiles,
    /// The weights' moving average, which evaluation, `best/` and `final/` use.
    ema: Option<Ema<I>>,
    sinks: Sinks,
    bar: indicatif::ProgressBar,
    /// The step of the newest checkpoint.
    saved_step: u64,
    retention: Retention,
    early_stop: bool,
    /// The process's stop flag, which an evaluation looks at between batches.
    stop: Arc<AtomicBool>,
}

/// How a replica's loop ended: the model, the state, whether a signal stopped it, and
/// (the leader's) the weights' average.
struct Finished<M, I> {
    model: M,
    state: TrainerState,
    stopped: bool,
    ema: Option<I>,
}

/// What [`Replica::next_window`] found.
enum Next<T> {
    Window(Window<T>, f64),
    Stop { signal: bool },
}

/// A sum kept on the device over a window's micro-batches (none yet: `None`).
type DeviceSum<B> = Option<Tensor<<B as burn::tensor::backend::AutodiffBackend>::InnerBackend, 1>>;

/// The model of a task without autodiff, as evaluated and saved.
type Inner<B, T> = <<T as Task<B>>::Model as AutodiffModule<B>>::InnerModule;

impl<B: TrainingBackend, T: Task<B>> Replica<'_, B, T> {
    /// The loop. Every replica takes its share of each micro-batch; the window's target
    /// count, the gradients, the logged sums and the decision to stop are all-reduced,
    /// so every replica takes the same updates. The first replica of each process
    /// watches the process's `stop` flag. Returns the model, the state, and whether a
    /// signal stopped the run.
    fn run(
        self,
        mut model: T::Model,
        mut optim: AdamWGroups<B, T::Model>,
        mut state: TrainerState,
        stop: Option<Arc<AtomicBool>>,
        mut leader: Option<Leader<'_, Inner<B, T>>>,
    ) -> Result<Finished<T::Model, Inner<B, T>>> {
        let s = self.settings;
        self.start(&state)?;
        // The loader of the current phase, made when first needed.
        let mut batches = None;
        let first_step = state.step;
        // An update whose line a signal kept from being written (its evaluation was
        // interrupted) is logged first, evaluated again.
        if let (Some(leader), Some(update)) = (leader.as_mut(), state.unlogged.take()) {
            let mut since = Instant::now();
            self.after_update(leader, &model, &optim, &mut state, update, &mut since)?;
        }
        // The updates since the last metrics line are in `state.pending` (a resumed run
        // continues the interval its checkpoint was taken in); their time since here.
        let mut interval_start = Instant::now();
        let mut stopped = false;
        while state.step < s.total {
            let mut phases = Phases::<B>::new(
                &self.device,
                s.profile_every > 0 && (state.step + 1).is_multiple_of(s.profile_every),
            );
            // 0. A new phase starts its own data at the next epoch's order.
            let phase = s.phase_at(state.step + 1);
            if self.enter_phase(phase, &mut state) {
                batches = None;
            }
            let batches = batches.get_or_insert_with(|| self.loader(phase, &state, &stop));
            // 1. The window: this update's micro-batches and their target count over all
            //    replicas; or the decision, taken by all, to stop.
            let accumulation = s.accumulation_at(state.step + 1, phase, self.world);
            let early = leader.as_ref().is_some_and(|l| l.early_stop);
            let (window, window_targets) =
                match self.next_window(batches.as_mut(), accumulation, &state, &stop, early)? {
                    Next::Window(window, targets) => (window, targets),
                    Next::Stop { signal } => {
                        stopped = signal;
                        break;
                    }
                };
            state.loader = window.next;
            let epoch_done = window.next.epoch > window.epoch;
            phases.end("data");

            // 2. Forward and backward each micro-batch (the loss sums and right
            //    predictions stay on the device), then the gradients summed over replicas.
            let (accumulated, window_loss, window_correct) =
                self.forward_backward(&model, &window, window_targets, state.step, &mut phases);
            let reduce = Instant::now();
            let grads = self.group.sum_gradients(accumulated, &model)?;
            let allreduce_s = reduce.elapsed().as_secs_f64();
            phases.end("allreduce");

            // 3. The update's one read from the device: the loss sum, the squared
            //    gradient norm and the right predictions together. A non-finite loss or
            //    norm skips the update; too many in a row abort.
            let counts_correct = window_correct.is_some();
            let squared_norm = optim.squared_norm(&model, &grads, &self.device);
            let [loss_sum, norm, correct, tokens] =
                self.read_update(&window, window_loss, squared_norm, window_correct)?;
            phases.end("norm_and_read");
            let loss = loss_sum / window_targets.max(1.0);
            state.tokens += tokens as u64;
            state.pending.tokens += tokens;
            state.pending.allreduce_s += allreduce_s;
            if !loss.is_finite() || !norm.is_finite() || window_targets == 0.0 {
                state.skip_update(loss, norm, s.max_bad_steps).map_err(|e| {
                    // No update taken yet in this run: the weights it started from are
                    // as likely a cause as the learning rate.
                    if state.step == first_step {
                        e.context("the model this run started from may hold NaN or infinite weights; check model.init or the checkpoint")
                    } else {
                        e
                    }
                })?;
                continue;
            }
            state.bad_in_a_row = 0;

            // 4. Clip the global norm, then step both AdamW groups at the scheduled rate.
            let lr = learning_rate(state.step + 1, s.optim.lr, s.warmup, s.total);
            model = optim.step(lr, model, grads, norm);
            phases.end("optimizer");
            state.step += 1;
            if let Some(ema) = leader.as_mut().and_then(|l| l.ema.as_mut()) {
                ema.update(state.step, &model.valid());
                phases.end("ema");
            }
            if let Some(profile) = phases.finish() {
                state.pending.profile = Some(profile);
            }
            let pending = &mut state.pending;
            pending.loss += loss_sum;
            pending.targets += window_targets;
            pending.updates += 1;
            if counts_correct {
                *pending.correct.get_or_insert(0.0) += correct;
            }

            // 5. Log, evaluate, checkpoint (replica 0).
            if let Some(leader) = leader.as_mut() {
                self.after_update(
                    leader,
                    &model,
                    &optim,
                    &mut state,
                    UpdateSummary {
                        lr,
                        norm,
                        epoch: window.epoch,
                        epoch_done,
                    },
                    &mut interval_start,
                )?;
            } else if self.logs_at(state.step, epoch_done) {
                state.pending = LogInterval::default();
            }
        }
        drop(batches);
        self.finish(model, &optim, state, stopped, leader, interval_start)
    }

    /// Checks that every replica starts from the same step: replicas that resumed from
    /// different checkpoints (processes that do not see the same run directory) would
    /// train apart.
    fn start(&self, state: &TrainerState) -> Result<()> {
        let s = self.settings;
        let step = state.step as f64;
        let [steps, squares] = self.sum([step, step * step])?;
        if squares * self.world as f64 != steps * steps {
            bail!(
                "the replicas start from different steps (this one from {}): every process must see the same run directory (a shared filesystem)",
                state.step
            );
        }
        if let Some((updates, start)) = s.batch_warmup
            && state.step < updates
            && self.rank == 0
        {
            tracing::info!(
                "batch-size warmup: {start} sequences per update at update 1, growing to the phase's over {updates} updates (whole micro-batches of {} × {} devices)",
                s.phases[0].batch_size,
                self.world
            );
        }
        Ok(())
    }

    /// The update's one read from the device (the window's loss sum, the squared
    /// gradient norm and the right predictions together), then the loss sum, right
    /// predictions and tokens summed over replicas: `[loss sum, norm, right, tokens]`.
    fn read_update(
        &self,
        window: &Window<T::Batch>,
        loss: DeviceSum<B>,
        squared_norm: Tensor<B::InnerBackend, 1>,
        correct: DeviceSum<B>,
    ) -> Result<[f64; 4]> {
        let zero = || Tensor::zeros([1], &self.device);
        let [loss_sum, squared_norm, correct] = read_scalars([
            loss.unwrap_or_else(zero),
            squared_norm,
            correct.unwrap_or_else(zero),
        ]);
        let local_tokens: usize = window.batches.iter().map(|b| self.task.tokens(b)).sum();
        let [loss_sum, correct, tokens] = self.sum([loss_sum, correct, local_tokens as f64])?;
        Ok([loss_sum, squared_norm.sqrt(), correct, tokens])
    }

    /// After the loop: the leader's last checkpoint (unless the last update has one),
    /// and the replica leaves its group.
    fn finish(
        self,
        model: T::Model,
        optim: &AdamWGroups<B, T::Model>,
        state: TrainerState,
        stopped: bool,
        mut leader: Option<Leader<'_, Inner<B, T>>>,
        interval_start: Instant,
    ) -> Result<Finished<T::Model, Inner<B, T>>> {
        if let Some(leader) = leader.as_mut() {
            leader.bar.finish_and_clear();
            if leader.saved_step != state.step {
                leader.sinks.sync();
                self.save(leader, &model, optim, &state, interval_start)?;
            }
        }
        self.group.leave()?;
        Ok(Finished {
            model,
            state,
            stopped,
            ema: leader.and_then(|l| l.ema).map(|e| e.model),
        })
    }

    /// Moves the state into `phase` when the next update starts it: its data begins at
    /// the next epoch's order. Whether it did.
    fn enter_phase(&self, phase: usize, state: &mut TrainerState) -> bool {
        if phase == state.phase {
            return false;
        }
        state.phase = phase;
        state.loader = roberta_data::LoaderState {
            epoch: state.loader.epoch + 1,
            cursor: 0,
        };
        state.phase_start = state.loader;
        true
    }

    /// The task's batches for `phase` from where the state stands.
    fn loader(
        &self,
        phase: usize,
        state: &TrainerState,
        stop: &Option<Arc<AtomicBool>>,
    ) -> Box<dyn Batches<T::Batch> + '_> {
        let s = self.settings;
        let settings = s.phases[phase];
        if self.rank == 0 {
            self.task.log_phase(phase, settings, self.world, state.step);
        }
        self.task.batches(BatchPlan {
            rank: self.rank,
            world: self.world,
            batch_size: settings.batch_size,
            seed: s.data_seed,
            start: state.loader,
            phase,
            phase_start: state.phase_start,
            phase_sequences: s.phase_sequences(phase, self.world),
            stop: stop.clone(),
        })
    }

    /// The next update's window and its target count over all replicas, or a stop that
    /// every replica takes together: a signal (it may have interrupted the read) or an
    /// early stop. A batch that could not be read (a corrupt shard) or that the model
    /// cannot take stops every replica with its reason.
    fn next_window(
        &self,
        batches: &mut dyn Batches<T::Batch>,
        accumulation: usize,
        state: &TrainerState,
        stop: &Option<Arc<AtomicBool>>,
        early: bool,
    ) -> Result<Next<T::Batch>> {
        let (window, unreadable) = match batches.next_window(accumulation) {
            Ok(window) => (window, None),
            Err(e) => (Window::empty(state.loader), Some(format!("{e:#}"))),
        };
        let local_targets: usize = window.batches.iter().map(|b| self.task.targets(b)).sum();
        let signal = stop.as_ref().is_some_and(|f| f.load(Ordering::Relaxed));
        let refused =
            unreadable.or_else(|| window.batches.iter().find_map(|b| self.task.check(b).err()));
        let [targets, signal, early, refusals] = self.sum([
            local_targets as f64,
            f64::from(u8::from(signal)),
            f64::from(u8::from(early)),
            f64::from(u8::from(refused.is_some())),
        ])?;
        if signal > 0.0 || early > 0.0 {
            return Ok(Next::Stop {
                signal: signal > 0.0,
            });
        }
        if refusals > 0.0 {
            bail!(refused.unwrap_or_else(|| "another replica's batch was refused".into()));
        }
        Ok(Next::Window(window, targets))
    }

    /// Forward and backward each micro-batch of the window: its summed loss over the
    /// window's target count, so the accumulated gradient is that of one big batch.
    /// Returns the gradients and, on the device, the loss sum and right predictions.
    fn forward_backward(
        &self,
        model: &T::Model,
        window: &Window<T::Batch>,
        window_targets: f64,
        step: u64,
        phases: &mut Phases<'_, B>,
    ) -> (GradientsParams, DeviceSum<B>, DeviceSum<B>) {
        let s = self.settings;
        let forward = s.precision.forward_model(model);
        let mut accumulator = GradientsAccumulator::<T::Model>::new();
        let (mut window_loss, mut window_correct): (DeviceSum<B>, DeviceSum<B>) = (None, None);
        let add = |sum: DeviceSum<B>, x| match sum {
            Some(sum) => sum + x,
            None => x,
        };
        for (i, batch) in window.batches.iter().enumerate() {
            // Dropout masks become a function of (seed, step, micro-batch): exact resume.
            seed_dropout::<B>(&self.device, s.seed, step, i * self.world + self.rank);
            let Some(loss) = self.task.loss(&forward, batch, &self.device) else {
                continue;
            };
            phases.end("forward");
            window_loss = Some(add(window_loss, loss.sum.clone().inner()));
            if let Some(correct) = loss.correct {
                window_correct = Some(add(window_correct, correct.inner()));
            }
            let grads = (loss.sum / window_targets.max(1.0)).backward();
            accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
            phases.end("backward");
        }
        // In fp32 `forward` is a clone sharing the model's buffers; once it is dropped,
        // the optimizer updates them in place instead of copying each one.
        drop(forward);
        (accumulator.grads(), window_loss, window_correct)
    }

    fn sum<const N: usize>(&self, values: [f64; N]) -> Result<[f64; N]> {
        let summed = self.group.sum(&values)?;
        Ok(<[f64; N]>::try_from(summed).expect("one sum per value"))
    }

    /// Whether the metrics line (and an evaluation, if due) is written after `step`.
    fn evaluates_at(&self, step: u64, epoch_done: bool) -> bool {
        let s = self.settings;
        self.task.has_valid()
            && (step == s.total
                || if s.eval_every > 0 {
                    step.is_multiple_of(s.eval_every)
                } else {
                    epoch_done
                })
    }

    fn logs_at(&self, step: u64, epoch_done: bool) -> bool {
        step.is_multiple_of(self.settings.log_every)
            || step == self.settings.total
            || self.evaluates_at(step, epoch_done)
    }

    /// Replica 0 after an update: the metrics line, the evaluation (and `best/`), the
    /// checkpoint.
    fn after_update(
        &self,
        leader: &mut Leader<'_, Inner<B, T>>,
        model: &T::Model,
        optim: &AdamWGroups<B, T::Model>,
        state: &mut TrainerState,
        update: UpdateSummary,
        interval_start: &mut Instant,
    ) -> Result<()> {
        let s = self.settings;
        let step = state.step;
        let evaluate_now = self.evaluates_at(step, update.epoch_done);
        leader.bar.set_position(step);
        let log_now = self.logs_at(step, update.epoch_done);
        if log_now {
            // Taken once the line is written: a signal during the evaluation leaves the
            // update unlogged, in the checkpoint, for the resumed run to log.
            let i = state.pending.clone();
            let seconds = i.seconds + interval_start.elapsed().as_secs_f64();
            let mut line = MetricsLine {
                step,
                epoch: update.epoch,
                loss: i.loss / i.targets.max(1.0),
                lr: update.lr,
                grad_norm: update.norm,
                tokens_per_s: i.tokens / seconds.max(1e-9),
                masked_acc: i.correct.map(|c| c / i.targets.max(1.0)),
                allreduce_s: (self.world > 1).then(|| i.allreduce_s / i.updates.max(1) as f64),
                profile: i.profile.clone(),
                valid: BTreeMap::new(),
                bad_steps: state.bad_steps,
                best: false,
            };
            if evaluate_now {
                let inner = match &leader.ema {
                    Some(ema) => ema.model.clone(),
                    None => model.valid(),
                };
                let Some(scores) = self.task.evaluate(&inner, &self.device, &leader.stop)? else {
                    state.unlogged = Some(update);
                    return Ok(());
                };
                line.best = match &s.best {
                    Some(policy) => self.keep_best(leader, &inner, state, policy, &scores)?,
                    None => false,
                };
                line.valid = scores
                    .into_iter()
                    .map(|(k, v)| (format!("valid_{k}"), v))
                    .collect();
            }
            state.pending = LogInterval::default();
            leader.sinks.write(&line)?;
        }
        let periodic = s.checkpoint_every > 0 && step.is_multiple_of(s.checkpoint_every);
        // With a best model, the state records the best and the evaluations since: a
        // checkpoint keeps them in step with `best/`.
        if periodic || step == s.total || (evaluate_now && s.best.is_some()) {
            leader.sinks.sync();
            self.save(leader, model, optim, state, *interval_start)?;
        }
        if log_now {
            // Evaluation and checkpoint time is not training time.
            *interval_start = Instant::now();
        }
        Ok(())
    }

    /// Compares an evaluation with the best so far; an improvement is written to
    /// `best/`, and `patience` evaluations without one ask for an early stop.
    fn keep_best(
        &self,
        leader: &mut Leader<'_, Inner<B, T>>,
        inner: &<T::Model as AutodiffModule<B>>::InnerModule,
        state: &mut TrainerState,
        policy: &BestPolicy,
        scores: &Metrics,
    ) -> Result<bool> {
        let Some(&value) = scores.get(&policy.metric) else {
            bail!(
                "the evaluation reports no `{}` (it reports {})",
                policy.metric,
                scores.keys().cloned().collect::<Vec<_>>().join(", ")
            );
        };
        let improved = policy.improves(value, state.best.as_ref().map(|b| b.value));
        if improved {
            state.best = Some(Best {
                step: state.step,
                value,
                stale: 0,
            });
            let files = leader.files;
            checkpoint::save_hf_dir(
                &files.run_dir.join(checkpoint::BEST),
                inner,
                &files.model_config,
                &files.tokenizer,
                Some(scores),
            )?;
        } else if let Some(best) = &mut state.best {
            best.stale += 1;
            if policy.patience > 0 && best.stale >= policy.patience {
                leader.early_stop = true;
                tracing::info!(
                    "early stop: {} evaluations without a better {}",
                    policy.patience,
                    policy.metric
                );
            }
        }
        Ok(improved)
    }

    /// Writes a checkpoint; the time of the pending updates goes into it, so a resumed
    /// run's tokens/s covers them too.
    fn save(
        &self,
        leader: &mut Leader<'_, Inner<B, T>>,
        model: &T::Model,
        optim: &AdamWGroups<B, T::Model>,
        state: &TrainerState,
        interval_start: Instant,
    ) -> Result<()> {
        let mut state = state.clone();
        state.pending.seconds += interval_start.elapsed().as_secs_f64();
        let files = leader.files;
        let path = checkpoint::save(
            &files.run_dir,
            &state,
            &files.config_toml,
            &mut leader.retention,
            |tmp| {
                checkpoint::write_model(tmp, model, &files.model_config, &files.tokenizer)?;
                if let Some(ema) = &leader.ema {
                    ema.save(tmp)?;
                }
                optim.save(tmp)
            },
        )?;
        leader.saved_step = state.step;
        tracing::info!("saved {}", path.display());
        Ok(())
    }
}

/// The checkpoint a run starts from, after checking the run directory (see
/// [`run_dir::check_contents`]) and the config against the checkpoint's. A resume on
/// another number of devices keeps the sequences per update by rescaling the
/// accumulation. The run directory must be locked ([`run_dir::RunLock`]) by rank 0.
pub fn start_run<C: RunConfig>(
    run_dir: &Path,
    resume: Option<&str>,
    config: &mut C,
    world: usize,
    force: bool,
) -> Result<Option<checkpoint::Found>> {
    // Rank 0 owns the run directory; the other ranks look once it has checked it.
    let processes = Processes::current();
    let found = if processes.is_leader() {
        let found = resume_point(run_dir, resume)?;
        run_dir::check_contents(run_dir, resume.is_some(), found.is_some())?;
        run_dir::remove_stale_temporaries(run_dir)?;
        if let Some(dir) = config.log().tensorboard_dir(run_dir) {
            crate::tensorboard::check_place(&dir, run_dir)?;
        }
        processes.barrier();
        found
    } else {
        processes.barrier();
        resume_point(run_dir, resume)?
    };
    if let Some((path, saved_state)) = &found {
        checkpoint::check_streams(path, saved_state, force)?;
        // Checkpoints that verify past the one named by `--resume PATH` would be replaced
        // as the run passes their steps, on another trajectory: an explicit choice only
        // (`--resume auto` takes the newest that verifies).
        let explicit = resume.is_some_and(|r| r != "auto");
        let newer: Vec<String> = checkpoint::list(run_dir)?
            .into_iter()
            .filter(|p| explicit && checkpoint::verify(p).is_ok())
            .filter_map(|p| {
                let name = p.file_name()?.to_string_lossy().into_owned();
                let step: u64 = name.strip_prefix("step-")?.parse().ok()?;
                (step > saved_state.step).then_some(name)
            })
            .collect();
        if !newer.is_empty() && !force {
            bail!(
                "--resume {}: {} holds newer checkpoints ({}), which --force removes (the run goes on from the older one); resume the newest with --resume auto",
                path.display(),
                run_dir.display(),
                newer.join(", ")
            );
        }
        // The newer checkpoints belong to the line of updates this resume abandons: left
        // in place, a later `--resume auto` would go back to them.
        if processes.is_leader() {
            for name in &newer {
                let dir = checkpoint::checkpoints_dir(run_dir).join(name);
                tracing::warn!(
                    "--force: removing {} (newer than the checkpoint resumed)",
                    dir.display()
                );
                std::fs::remove_dir_all(&dir)
                    .with_context(|| format!("removing {}", dir.display()))?;
            }
        }
        let mut saved = C::from_saved(&path.join(checkpoint::CONFIG))?;
        if saved_state.devices != world {
            let (batch_size, saved_accumulation) = saved.accumulation_mut();
            let accumulation =
                parallel::rescale_accumulation(*saved_accumulation, saved_state.devices, world)?;
            tracing::info!(
                "resuming on {world} device(s), the checkpoint ran on {}: train.accumulation {} → {accumulation} keeps {} sequences per update",
                saved_state.devices,
                saved_accumulation,
                batch_size * *saved_accumulation * saved_state.devices
            );
            *saved_accumulation = accumulation;
            *config.accumulation_mut().1 = accumulation;
            let mut rescaled = Vec::new();
            for a in saved.phase_accumulations_mut() {
                *a = parallel::rescale_accumulation(*a, saved_state.devices, world)?;
                rescaled.push(*a);
            }
            let mine = config.phase_accumulations_mut();
            if mine.len() == rescaled.len() {
                for (a, r) in mine.into_iter().zip(rescaled) {
                    *a = r;
                }
            }
        }
        check_resume_changes(&config.exactness_changes(&saved), force)?;
    }
    Ok(found)
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
            if !path.exists() {
                bail!("--resume {}: no such directory", path.display());
            }
            if !path.join(checkpoint::MANIFEST).is_file() {
                bail!(
                    "--resume {}: not a checkpoint (no {}); pass a checkpoints/step-N directory, or --resume auto",
                    path.display(),
                    checkpoint::MANIFEST
                );
            }
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
/// A second signal ends the process at once (exit status 128 + the signal), for an
/// update that takes longer than the user will wait; nothing half-written is left in
/// place (every output is renamed into place complete), only temporaries that the next
/// run removes.
pub fn stop_flag() -> Result<Arc<AtomicBool>> {
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register_conditional_shutdown(signal, 128 + signal, stop.clone())
            .context("installing the signal handler")?;
        signal_hook::flag::register(signal, stop.clone())
            .context("installing the signal handler")?;
    }
    Ok(stop)
}

/// Refuses a micro-batch that no memory of this machine can hold, before any update:
/// its token ids, attention mask and labels on the host (the loader's queue of
/// `queue` batches included) and, where the model runs in host memory, a lower bound
/// of what the backward pass keeps per token (the inputs of the query, key and value,
/// attention-output, and both feed-forward matmuls, in fp32). `key` names the setting.
pub fn check_batch_memory<B: Backend>(
    device: &B::Device,
    key: &str,
    rows: usize,
    seq_len: usize,
    queue: usize,
    model: &RobertaConfig,
) -> Result<()> {
    let Some(memory) = machine_memory() else {
        return Ok(());
    };
    let tokens = rows as f64 * seq_len as f64;
    let batch = tokens * 16.0 * (queue as f64 + 2.0);
    let name = B::name(device);
    let on_host = name.contains("flex") || name.contains("libtorch<cpu>");
    let per_token = 4.0
        * model.num_hidden_layers as f64
        * (3.0 * model.hidden_size as f64 + model.intermediate_size as f64);
    let activations = if on_host { tokens * per_token } else { 0.0 };
    let gib = |bytes: f64| bytes / f64::from(1u32 << 30);
    if batch + activations > memory as f64 {
        bail!(
            "{key} = {rows}: a micro-batch of {rows} × {seq_len} tokens needs at least {:.1} GiB ({:.1} GiB of token ids, masks and labels{}), more than this machine's {:.1} GiB: lower {key} and raise train.accumulation to keep the update's size",
            gib(batch + activations),
            gib(batch),
            if on_host {
                format!(
                    ", {:.1} GiB of activations kept for the backward pass",
                    gib(activations)
                )
            } else {
                String::new()
            },
            gib(memory as f64)
        );
    }
    Ok(())
}

/// Refuses a model whose parameters alone (and, for training, their gradients and both
/// AdamW moments) exceed this machine's memory, before it is built: a size typed wrong
/// (`hidden_size = 65536`, a `config.json` with a vocabulary of 10⁹) would otherwise
/// abort in an allocation deep inside the backend.
pub fn check_model_memory(config: &RobertaConfig, training: bool, source: &str) -> Result<()> {
    let Some(memory) = machine_memory() else {
        return Ok(());
    };
    let parameters = config.num_parameters();
    let copies = if training { 4 } else { 1 };
    let bytes = parameters as f64 * 4.0 * f64::from(copies);
    if bytes > memory as f64 {
        let gib = |b: f64| b / f64::from(1u32 << 30);
        bail!(
            "{source}: a model of {parameters} parameters (hidden_size {}, {} layers, intermediate_size {}, vocabulary {}, {} positions) needs {:.1} GiB{}, more than this machine's {:.1} GiB",
            config.hidden_size,
            config.num_hidden_layers,
            config.intermediate_size,
            config.vocab_size,
            config.max_position_embeddings,
            gib(bytes),
            if training {
                " to train (weights, gradients and both AdamW moments in fp32)"
            } else {
                " in fp32"
            },
            gib(memory as f64)
        );
    }
    Ok(())
}

/// Physical memory in bytes (`MemTotal`), where the system says.
pub fn machine_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_and_the_batch_warmup_are_functions_of_the_step() {
        let phase = |until_step, batch_size, accumulation| TrainPhase {
            until_step,
            batch_size,
            accumulation,
        };
        let settings = Settings {
            phases: vec![phase(10, 4, 8), phase(20, 2, 16)],
            batch_warmup: Some((8, 4)),
            seed: 0,
            data_seed: 0,
            precision: Precision::F32,
            max_bad_steps: 1,
            optim: OptimSection::default(),
            warmup: 0,
            total: 20,
            log_every: 1,
            profile_every: 0,
            tensorboard: None,
            ema_decay: None,
            eval_every: 0,
            best: None,
            checkpoint_every: 0,
            keep: 1,
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
