//! One replica's training loop: the numbered steps of an update, and replica 0's
//! logging, evaluation and checkpoints after it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use burn::module::AutodiffModule;
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::prelude::*;
use roberta_model::TrainingBackend;

use crate::parallel::Group;
use crate::run::checkpoint::{self, Best, LogInterval, Retention, TrainerState, UpdateSummary};
use crate::run::sinks::{MetricsLine, Sinks};
use crate::tasks::metrics::Metrics;
use crate::tasks::{BatchPlan, Batches, Task, Window};
use crate::trainer::ema::Ema;
use crate::trainer::optim::AdamWGroups;

use super::*;

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

/// One replica's part of the run.
pub(super) struct Replica<'a, B: TrainingBackend, T: Task<B>> {
    pub(super) task: &'a T,
    pub(super) settings: &'a Settings,
    pub(super) rank: usize,
    pub(super) world: usize,
    pub(super) device: B::Device,
    pub(super) group: Group<B::InnerBackend>,
}

/// What only replica 0 does: metrics, evaluation, `best/`, checkpoints.
pub(super) struct Leader<'a, I> {
    pub(super) files: &'a RunFiles,
    /// The weights' moving average, which evaluation, `best/` and `final/` use.
    pub(super) ema: Option<Ema<I>>,
    pub(super) sinks: Sinks,
    pub(super) bar: indicatif::ProgressBar,
    /// The step of the newest checkpoint.
    pub(super) saved_step: u64,
    pub(super) retention: Retention,
    pub(super) early_stop: bool,
    /// The process's stop flag, which an evaluation looks at between batches.
    pub(super) stop: Arc<AtomicBool>,
}

/// How a replica's loop ended: the model, the state, whether a signal stopped it, and
/// (the leader's) the weights' average.
pub(super) struct Finished<M, I> {
    pub(super) model: M,
    pub(super) state: TrainerState,
    pub(super) stopped: bool,
    pub(super) ema: Option<I>,
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
    pub(super) fn run(
        self,
        mut model: T::Model,
        mut optim: AdamWGroups<B, T::Model>,
        mut state: TrainerState,
        stop: Option<Arc<AtomicBool>>,
        mut leader: Option<Leader<'_, Inner<B, T>>>,
    ) -> Result<Finished<T::Model, Inner<B, T>>> {
        let s = self.settings;
        self.start(&mut state, leader.as_mut(), &model, &optim)?;
        let mut batches = None;
        let first_step = state.step;
        // The updates since the last metrics line are in `state.pending` (a resumed run
        // continues the interval its checkpoint was taken in); their time since here.
        let mut interval_start = Instant::now();
        let mut stopped = false;
        while state.step < s.total {
            let mut phases = Phases::<B>::new(
                &self.device,
                s.profile_every > 0 && (state.step + 1).is_multiple_of(s.profile_every),
            );
            // 1. The window: this update's micro-batches and their target count over all
            //    replicas; or the decision, taken by all, to stop.
            let early = leader.as_ref().is_some_and(|l| l.early_stop);
            let phase = state.phase;
            let (window, window_targets) =
                match self.next_update(&mut batches, &mut state, &stop, early)? {
                    Next::Window(window, targets) => (window, targets),
                    Next::Stop { signal } => {
                        stopped = signal;
                        break;
                    }
                };
            state.loader = window.next;
            let epoch_done = window.next.epoch > window.epoch;
            model = self.enter_phase_model(phase, state.phase, model, leader.as_mut());
            phases.end("data");

            // 2. Forward and backward each micro-batch (the loss sums and what the task
            //    logs stay on the device), then the gradients summed over replicas.
            let (accumulated, window_loss, window_logged) =
                self.forward_backward(&model, &window, window_targets, state.step, &mut phases);
            let reduce = Instant::now();
            let grads = self.group.sum_gradients(accumulated, &model)?;
            let allreduce_s = reduce.elapsed().as_secs_f64();
            phases.end("allreduce");

            // 3. The update's one read from the device: the loss sum, the squared
            //    gradient norm and what the task logs, together. A non-finite loss or
            //    norm skips the update; too many in a row abort.
            let squared_norm = optim.squared_norm(&model, &grads, &self.device);
            let (loss_sum, norm, logged, tokens) =
                self.read_update(&window, window_loss, squared_norm, window_logged)?;
            phases.end("norm_and_read");
            let loss = loss_sum / window_targets.max(1.0);
            state.tokens += tokens as u64;
            state.pending.tokens += tokens;
            state.pending.allreduce_s += allreduce_s;
            if !loss.is_finite() || !norm.is_finite() || window_targets == 0.0 {
                self.skip(&mut state, loss, norm, first_step)?;
                continue;
            }
            state.bad_in_a_row = 0;

            // 4. Clip the global norm, then step both AdamW groups at the scheduled rate.
            let lr = s.learning_rate(state.step + 1);
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
            state
                .pending
                .add_update(loss_sum, window_targets, self.task.logged(), &logged);

            // 5. Log, evaluate, checkpoint (replica 0).
            let update = UpdateSummary {
                lr,
                norm,
                epoch: window.epoch,
                epoch_done,
            };
            self.log_update(
                leader.as_mut(),
                &model,
                &optim,
                &mut state,
                update,
                &mut interval_start,
            )?;
        }
        drop(batches);
        self.finish(model, &optim, state, stopped, leader, interval_start)
    }

    /// Checks that every replica starts from the same step: replicas that resumed from
    /// different checkpoints (processes that do not see the same run directory) would
    /// train apart. An update whose line a signal kept from being written (its
    /// evaluation was interrupted) is logged first, evaluated again.
    fn start(
        &self,
        state: &mut TrainerState,
        leader: Option<&mut Leader<'_, Inner<B, T>>>,
        model: &T::Model,
        optim: &AdamWGroups<B, T::Model>,
    ) -> Result<()> {
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
        if let (Some(leader), Some(update)) = (leader, state.unlogged.take()) {
            let mut since = Instant::now();
            self.after_update(leader, model, optim, state, update, &mut since)?;
        }
        Ok(())
    }

    /// Skips an update with a non-finite loss or norm, or nothing to learn from; too
    /// many in a row abort.
    fn skip(&self, state: &mut TrainerState, loss: f64, norm: f64, first_step: u64) -> Result<()> {
        state
            .skip_update(loss, norm, self.settings.max_bad_steps)
            .map_err(|e| {
                // No update taken yet in this run: the weights it started from are as
                // likely a cause as the learning rate.
                if state.step == first_step {
                    e.context("the model this run started from may hold NaN or infinite weights; check model.init or the checkpoint")
                } else {
                    e
                }
            })
    }

    /// The update's one read from the device (the window's loss sum, the squared
    /// gradient norm and the sums the task logs, together), then the loss sum, logged
    /// sums and tokens summed over replicas: `(loss sum, norm, logged, tokens)`.
    fn read_update(
        &self,
        window: &Window<T::Batch>,
        loss: DeviceSum<B>,
        squared_norm: Tensor<B::InnerBackend, 1>,
        logged: Vec<DeviceSum<B>>,
    ) -> Result<(f64, f64, Vec<f64>, f64)> {
        let zero = || Tensor::zeros([1], &self.device);
        let mut read = read_scalars(
            [loss, Some(squared_norm)]
                .into_iter()
                .chain(logged)
                .map(|sum| sum.unwrap_or_else(zero))
                .collect(),
        );
        let squared_norm = read.remove(1);
        let local_tokens: usize = window.batches.iter().map(|b| self.task.tokens(b)).sum();
        read.push(local_tokens as f64);
        let mut summed = self.group.sum(&read)?;
        let tokens = summed.pop().expect("tokens");
        let loss_sum = summed.remove(0);
        Ok((loss_sum, squared_norm.sqrt(), summed, tokens))
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

    /// The next update's window, from the loader of its phase (made when first needed):
    /// a new phase starts its own data at the next epoch's order.
    fn next_update<'s>(
        &'s self,
        batches: &mut Option<Box<dyn Batches<T::Batch> + 's>>,
        state: &mut TrainerState,
        stop: &Option<Arc<AtomicBool>>,
        early: bool,
    ) -> Result<Next<T::Batch>> {
        let phase = self.settings.phase_at(state.step + 1);
        if self.enter_phase(phase, state) {
            *batches = None;
        }
        let batches = batches.get_or_insert_with(|| self.loader(phase, state, stop));
        let accumulation = self
            .settings
            .accumulation_at(state.step + 1, phase, self.world);
        self.next_window(batches.as_mut(), accumulation, state, stop, early)
    }

    /// The model (and the average, which the leader keeps) as the task prepares it for
    /// phase `now`, when the window moved the run there from phase `was`.
    fn enter_phase_model(
        &self,
        was: usize,
        now: usize,
        model: T::Model,
        leader: Option<&mut Leader<'_, Inner<B, T>>>,
    ) -> T::Model {
        if now == was {
            return model;
        }
        let average = leader.and_then(|l| l.ema.as_mut()).map(|e| &mut e.model);
        self.task.enter_phase(now, model, average)
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
    /// Returns the gradients and, on the device, the loss sum and the sums the task
    /// logs.
    fn forward_backward(
        &self,
        model: &T::Model,
        window: &Window<T::Batch>,
        window_targets: f64,
        step: u64,
        phases: &mut Phases<'_, B>,
    ) -> (GradientsParams, DeviceSum<B>, Vec<DeviceSum<B>>) {
        let s = self.settings;
        let forward = s.precision.forward_model(model);
        let mut accumulator = GradientsAccumulator::<T::Model>::new();
        let mut window_loss: DeviceSum<B> = None;
        let mut window_logged: Vec<DeviceSum<B>> = vec![None; self.task.logged().len()];
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
            for (sum, value) in window_logged.iter_mut().zip(loss.logged) {
                *sum = Some(add(sum.take(), value.inner()));
            }
            let grads = (loss.sum / window_targets.max(1.0)).backward();
            accumulator.accumulate(model, GradientsParams::from_grads(grads, model));
            phases.end("backward");
        }
        // In fp32 `forward` is a clone sharing the model's buffers; once it is dropped,
        // the optimizer updates them in place instead of copying each one.
        drop(forward);
        (accumulator.grads(), window_loss, window_logged)
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

    /// After an update: replica 0 logs, evaluates and checkpoints; the others only
    /// start a new metrics interval where replica 0 does.
    fn log_update(
        &self,
        leader: Option<&mut Leader<'_, Inner<B, T>>>,
        model: &T::Model,
        optim: &AdamWGroups<B, T::Model>,
        state: &mut TrainerState,
        update: UpdateSummary,
        interval_start: &mut Instant,
    ) -> Result<()> {
        match leader {
            Some(leader) => self.after_update(leader, model, optim, state, update, interval_start),
            None => {
                if self.logs_at(state.step, update.epoch_done) {
                    state.pending = LogInterval::default();
                }
                Ok(())
            }
        }
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
                logged: i
                    .logged
                    .iter()
                    .map(|(name, sum)| (name.clone(), sum / i.targets.max(1.0)))
                    .collect(),
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
