//! What a run checks and sets up before its first update: the run directory and the
//! checkpoint to resume from, the changes a resume may make, precision, memory, and
//! the stop flag.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, bail};
use burn::prelude::*;
use burn::tensor::DType;
use roberta_model::{Precision, RobertaConfig};

use crate::config::RunConfig;
use crate::parallel::processes::Processes;
use crate::parallel::{self};
use crate::run::checkpoint::{self};
use crate::run::run_dir;

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
            crate::run::tensorboard::check_place(&dir, run_dir)?;
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
/// attention-output, and both feed-forward matmuls, in fp32). On a device with a largest
/// buffer, also the micro-batch's largest activations ([`check_buffers`]). `key` names
/// the setting.
pub fn check_batch_memory<B: Backend>(
    device: &B::Device,
    key: &str,
    rows: usize,
    seq_len: usize,
    queue: usize,
    model: &RobertaConfig,
    precision: Precision,
) -> Result<()> {
    check_buffers(
        &activation_buffers(rows, seq_len, model, precision),
        &format!("{key} = {rows}"),
        &format!(
            "lower {key} and raise train.accumulation to keep the update's size, or shorten the sequences"
        ),
    )?;
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

/// One tensor a run holds as a single device buffer.
pub struct Buffer {
    pub what: &'static str,
    pub shape: Vec<usize>,
    /// Bytes per element.
    pub bytes: usize,
}

impl Buffer {
    pub fn new(what: &'static str, shape: &[usize], bytes: usize) -> Self {
        let shape = shape.to_vec();
        Self { what, shape, bytes }
    }

    fn size(&self) -> u64 {
        self.shape
            .iter()
            .fold(self.bytes as u64, |n, &d| n.saturating_mul(d as u64))
    }
}

/// A model's largest parameters, in fp32 (bf16 runs keep fp32 master weights).
fn parameter_buffers(config: &RobertaConfig) -> [Buffer; 3] {
    let hidden = config.hidden_size;
    [
        Buffer::new("the word embeddings", &[config.vocab_size, hidden], 4),
        Buffer::new(
            "the position embeddings",
            &[config.max_position_embeddings, hidden],
            4,
        ),
        Buffer::new(
            "a feed-forward weight",
            &[config.intermediate_size, hidden],
            4,
        ),
    ]
}

/// A micro-batch's largest activations in the encoder.
fn activation_buffers(
    rows: usize,
    seq_len: usize,
    model: &RobertaConfig,
    precision: Precision,
) -> [Buffer; 2] {
    let bytes = precision.bytes();
    [
        Buffer::new(
            "the attention scores",
            &[rows, model.num_attention_heads, seq_len, seq_len],
            bytes,
        ),
        Buffer::new(
            "the feed-forward activations",
            &[rows, seq_len, model.intermediate_size],
            bytes,
        ),
    ]
}

/// Refuses the first of `buffers` larger than the largest buffer the run's device
/// allows ([`crate::backend::buffer_limit`]), before any work: past it, cubecl fails
/// inside its own thread with a panic and a backtrace instead of a message. `context`
/// names what made the tensor, `remedy` what to change.
pub fn check_buffers(buffers: &[Buffer], context: &str, remedy: &str) -> Result<()> {
    check_buffers_within(crate::backend::buffer_limit(), buffers, context, remedy)
}

fn check_buffers_within(
    limit: Option<crate::backend::BufferLimit>,
    buffers: &[Buffer],
    context: &str,
    remedy: &str,
) -> Result<()> {
    let Some(limit) = limit else {
        return Ok(());
    };
    let Some(buffer) = buffers.iter().find(|b| b.size() > limit.bytes) else {
        return Ok(());
    };
    let mib = |bytes: u64| bytes as f64 / f64::from(1u32 << 20);
    let shape = buffer
        .shape
        .iter()
        .map(|d| d.to_string())
        .collect::<Vec<_>>()
        .join(" × ");
    let dtype = match buffer.bytes {
        2 => "bf16",
        _ => "fp32",
    };
    bail!(
        "{context}: {} ({shape} in {dtype}, {:.1} MiB) would not fit in one buffer of device {}, whose largest is {:.1} MiB: {remedy}",
        buffer.what,
        mib(buffer.size()),
        limit.device,
        mib(limit.bytes)
    )
}

/// Refuses a model whose parameters alone (and, for training, their gradients and both
/// AdamW moments) exceed this machine's memory, before it is built: a size typed wrong
/// (`hidden_size = 65536`, a `config.json` with a vocabulary of 10⁹) would otherwise
/// abort in an allocation deep inside the backend. Also refuses a parameter larger than
/// the device's largest buffer ([`check_buffers`]).
pub fn check_model_memory(config: &RobertaConfig, training: bool, source: &str) -> Result<()> {
    check_buffers(
        &parameter_buffers(config),
        source,
        "pick another --device (cpu, or cuda where there is one), or a smaller vocabulary, hidden_size or intermediate_size",
    )?;
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
    use crate::backend::{BufferLimit, DeviceSpec};

    /// Mesa's lavapipe, as cubecl reports it (wgpu's `max_storage_buffer_binding_size`).
    const LAVAPIPE: BufferLimit = BufferLimit {
        device: DeviceSpec::WgpuCpu,
        bytes: 128 << 20,
    };

    #[test]
    fn roberta_base_embeddings_exceed_lavapipes_largest_buffer() {
        let base = RobertaConfig::roberta_base();
        let refused = check_buffers_within(
            Some(LAVAPIPE),
            &parameter_buffers(&base),
            "model",
            "pick another --device",
        )
        .unwrap_err()
        .to_string();
        assert_eq!(
            refused,
            "model: the word embeddings (50265 × 768 in fp32, 147.3 MiB) would not fit in one buffer of device wgpu-cpu, whose largest is 128.0 MiB: pick another --device"
        );
        let fits = |config: &RobertaConfig, limit| {
            check_buffers_within(limit, &parameter_buffers(config), "model", "").is_ok()
        };
        assert!(fits(&base, None), "no limit on the CPU");
        let small_vocabulary = RobertaConfig {
            vocab_size: 30_000,
            ..base.clone()
        };
        assert!(fits(&small_vocabulary, Some(LAVAPIPE)));
        let wide = RobertaConfig {
            intermediate_size: 50_000,
            ..small_vocabulary
        };
        assert!(!fits(&wide, Some(LAVAPIPE)), "the feed-forward weight");
    }

    #[test]
    fn attention_scores_bound_the_micro_batch_and_bf16_halves_them() {
        let base = RobertaConfig::roberta_base();
        let check = |rows, seq_len, precision| {
            check_buffers_within(
                Some(LAVAPIPE),
                &activation_buffers(rows, seq_len, &base, precision),
                "train.batch_size",
                "lower it",
            )
        };
        // 12 heads × 512²: 12 MiB a row in fp32, 6 MiB in bf16.
        assert!(check(10, 512, Precision::F32).is_ok());
        let refused = check(11, 512, Precision::F32).unwrap_err().to_string();
        assert!(
            refused.starts_with(
                "train.batch_size: the attention scores (11 × 12 × 512 × 512 in fp32, 132.0 MiB)"
            ),
            "{refused}"
        );
        assert!(check(21, 512, Precision::Bf16).is_ok());
        assert!(check(22, 512, Precision::Bf16).is_err());
    }
}
