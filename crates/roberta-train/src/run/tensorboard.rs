//! TensorBoard event files, written by hand: there is no maintained Rust crate for them,
//! and the format is small. A file is a sequence of records (TFRecord framing: the
//! payload's length as a little-endian u64, its masked CRC-32C, the payload, the
//! payload's masked CRC-32C), each payload one `Event` protobuf. We write three kinds:
//! the `file_version` event every file starts with, a `SessionLog START` when a run
//! resumes (TensorBoard's loader then drops what it read of the steps after the
//! checkpoint), and `Summary` events of `simple_value` scalars. fairseq, HF's
//! `report_to="tensorboard"` and W&B's `sync_tensorboard` all read this format.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail};

/// What every event file we write starts its name with (TensorBoard looks for
/// `tfevents` in a name), and ends it with.
const PREFIX: &str = "events.out.tfevents.";
const SUFFIX: &str = ".roberta-train";

const CRC32C: crc::Crc<u32> = crc::Crc::<u32>::new(&crc::CRC_32_ISCSI);

/// TFRecord's CRC: CRC-32C, rotated and offset so that a CRC of data holding CRCs is
/// not degenerate.
fn masked_crc(bytes: &[u8]) -> u32 {
    let crc = CRC32C.checksum(bytes);
    crc.rotate_right(15).wrapping_add(0xa282_ead8)
}

fn record(payload: &[u8]) -> Vec<u8> {
    let length = (payload.len() as u64).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + 16);
    out.extend_from_slice(&length);
    out.extend_from_slice(&masked_crc(&length).to_le_bytes());
    out.extend_from_slice(payload);
    out.extend_from_slice(&masked_crc(payload).to_le_bytes());
    out
}

/// Protobuf's wire format, the parts the Event messages use.
mod wire {
    pub fn varint(out: &mut Vec<u8>, mut v: u64) {
        while v >= 0x80 {
            out.push((v as u8) | 0x80);
            v >>= 7;
        }
        out.push(v as u8);
    }

    pub fn key(out: &mut Vec<u8>, field: u32, wire_type: u8) {
        varint(out, (u64::from(field) << 3) | u64::from(wire_type));
    }

    pub fn bytes(out: &mut Vec<u8>, field: u32, value: &[u8]) {
        key(out, field, 2);
        varint(out, value.len() as u64);
        out.extend_from_slice(value);
    }

    /// Reads a varint at `*at`, moving past it.
    pub fn read_varint(data: &[u8], at: &mut usize) -> Option<u64> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let byte = *data.get(*at)?;
            *at += 1;
            v |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(v);
            }
        }
        None
    }
}

/// `Event { wall_time = 1 (double), step = 2 (int64), <what> }`.
fn event(wall_time: f64, step: u64, what: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
    let mut out = Vec::new();
    wire::key(&mut out, 1, 1);
    out.extend_from_slice(&wall_time.to_le_bytes());
    wire::key(&mut out, 2, 0);
    wire::varint(&mut out, step);
    what(&mut out);
    out
}

/// `Event.file_version = 3`: "brain.Event:2" tells the loader that restarts are marked
/// by `SessionLog` events.
fn file_version_event(wall_time: f64) -> Vec<u8> {
    event(wall_time, 0, |out| wire::bytes(out, 3, b"brain.Event:2"))
}

/// `Event.session_log = 7 { status = 1: START }`.
fn start_event(wall_time: f64, step: u64) -> Vec<u8> {
    event(wall_time, step, |out| {
        let mut log = Vec::new();
        wire::key(&mut log, 1, 0);
        wire::varint(&mut log, 1);
        wire::bytes(out, 7, &log);
    })
}

/// `Event.summary = 5 { value = 1 { tag = 1, simple_value = 2 (float) } … }`.
fn scalars_event(wall_time: f64, step: u64, scalars: &[(String, f64)]) -> Vec<u8> {
    event(wall_time, step, |out| {
        let mut summary = Vec::new();
        for (tag, value) in scalars {
            let mut v = Vec::new();
            wire::bytes(&mut v, 1, tag.as_bytes());
            wire::key(&mut v, 2, 5);
            v.extend_from_slice(&(*value as f32).to_le_bytes());
            wire::bytes(&mut summary, 1, &v);
        }
        wire::bytes(out, 5, &summary);
    })
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// One record's payload and where the record ends; `None` at the end of the data or at
/// a record that does not check (a file cut while it was written).
fn next_record(data: &[u8], at: usize) -> Option<(&[u8], usize)> {
    let header = data.get(at..at + 12)?;
    let (length, crc) = header.split_at(8);
    if masked_crc(length).to_le_bytes() != crc {
        return None;
    }
    let length = usize::try_from(u64::from_le_bytes(length.try_into().ok()?)).ok()?;
    let start = at + 12;
    let end = start.checked_add(length)?;
    let payload = data.get(start..end)?;
    let crc = data.get(end..end + 4)?;
    (masked_crc(payload).to_le_bytes() == crc).then_some((payload, end + 4))
}

/// The `step` field of an Event payload (0 when absent, as protobuf reads it).
fn step_of(payload: &[u8]) -> Option<u64> {
    match fields(payload)?.into_iter().find(|(field, _)| *field == 2) {
        Some((_, raw)) => wire::read_varint(raw, &mut 0),
        None => Some(0),
    }
}

/// The fields of a protobuf message, `(field number, raw value)`.
fn fields(data: &[u8]) -> Option<Vec<(u64, &[u8])>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let key = wire::read_varint(data, &mut at)?;
        let len = match key & 7 {
            0 => {
                let start = at;
                wire::read_varint(data, &mut at)?;
                out.push((key >> 3, &data[start..at]));
                continue;
            }
            1 => 8,
            2 => usize::try_from(wire::read_varint(data, &mut at)?).ok()?,
            5 => 4,
            _ => return None,
        };
        out.push((key >> 3, data.get(at..at + len)?));
        at += len;
    }
    Some(out)
}

/// The scalars of an Event payload, `(tag, value)`; empty for other events.
fn scalars_of(payload: &[u8]) -> Option<Vec<(String, f32)>> {
    let mut scalars = Vec::new();
    for (field, summary) in fields(payload)? {
        if field != 5 {
            continue;
        }
        for (field, value) in fields(summary)? {
            if field != 1 {
                continue;
            }
            let (mut tag, mut v) = (None, None);
            for (field, bytes) in fields(value)? {
                match field {
                    1 => tag = Some(String::from_utf8(bytes.to_vec()).ok()?),
                    2 => v = Some(f32::from_le_bytes(bytes.try_into().ok()?)),
                    _ => {}
                }
            }
            scalars.push((tag?, v?));
        }
    }
    Some(scalars)
}

/// Every scalar in the event files of `dir`, in file and record order, as
/// `(step, tag, value)`: what TensorBoard's loader reads, for the tests and `plot`.
pub fn read_scalars(dir: &Path) -> Result<Vec<(u64, String, f32)>> {
    let mut out = Vec::new();
    for path in event_files(dir)? {
        let data = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let mut at = 0;
        while let Some((payload, next)) = next_record(&data, at) {
            let step = step_of(payload).context("an event without a readable step")?;
            for (tag, value) in scalars_of(payload).context("an unreadable event")? {
                out.push((step, tag, value));
            }
            at = next;
        }
    }
    Ok(out)
}

/// The event files of runs of ours in `dir`, sorted by name (which is by time).
fn event_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("listing {}", dir.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| name_parts(n).is_some())
        })
        .collect();
    files.sort();
    Ok(files)
}

/// `events.out.tfevents.SECONDS.RUN.roberta-train`: the seconds and the run's id.
fn name_parts(name: &str) -> Option<(u64, &str)> {
    let (seconds, run) = name
        .strip_prefix(PREFIX)?
        .strip_suffix(SUFFIX)?
        .split_once('.')?;
    Some((seconds.parse().ok()?, run))
}

/// Whose event files a directory may hold.
#[derive(Debug, Clone)]
pub struct Owner {
    /// Names the run in its files' names: a hash of its run directory's path.
    pub run: String,
    /// The directory is inside the run directory, so every event file of ours there is
    /// the run's, even after the run directory was moved.
    pub any_run: bool,
}

/// `path` made absolute and free of links as far as it exists (a directory not made yet
/// is its parent's canonical form joined with its name).
fn canonical(path: &Path) -> PathBuf {
    if let Ok(p) = std::fs::canonicalize(path) {
        return p;
    }
    match (path.parent(), path.file_name()) {
        (Some(parent), Some(name)) if !parent.as_os_str().is_empty() => {
            canonical(parent).join(name)
        }
        _ => std::env::current_dir()
            .map(|d| d.join(path))
            .unwrap_or_else(|_| path.to_path_buf()),
    }
}

/// Refuses, before a run does any work, a TensorBoard directory it could not keep: a
/// path that is not a directory, a place inside the run directory other than its
/// `tb/` (the run manages what is there), or a directory holding other files.
pub fn check_place(dir: &Path, run_dir: &Path) -> Result<()> {
    let (place, run) = (canonical(dir), canonical(run_dir));
    if place.starts_with(&run) && place != run.join(crate::run::run_dir::TENSORBOARD) {
        bail!(
            "log.tensorboard = \"{}\" is inside the run directory {}: use `true` (its tb/) or a directory outside it",
            dir.display(),
            run_dir.display()
        );
    }
    match std::fs::metadata(dir) {
        Ok(meta) if !meta.is_dir() => {
            bail!("log.tensorboard = \"{}\" is not a directory", dir.display())
        }
        Ok(_) => check_dir(dir, &Owner::of(run_dir, dir)),
        Err(_) => Ok(()),
    }
}

impl Owner {
    pub fn of(run_dir: &Path, tb_dir: &Path) -> Self {
        use sha2::Digest;
        let run_dir = canonical(run_dir);
        let hash = sha2::Sha256::digest(run_dir.to_string_lossy().as_bytes());
        Self {
            run: hash[..6].iter().map(|b| format!("{b:02x}")).collect(),
            any_run: canonical(tb_dir).starts_with(&run_dir),
        }
    }

    fn owns(&self, name: &str) -> bool {
        name_parts(name).is_some_and(|(_, run)| self.any_run || run == self.run)
    }
}

/// The scalars sink: one event file per process start, in `dir`.
pub struct EventWriter {
    file: File,
    path: PathBuf,
}

impl EventWriter {
    /// Opens `dir` for a run at `step`: files a run did not write there are refused;
    /// what earlier files of this run logged after `step` (the checkpoint being resumed)
    /// is dropped, so that a reader sees each step once; a new file starts, marked as a
    /// restart at `step + 1` for a loader that already read the dropped steps.
    pub fn open(dir: &Path, owner: &Owner, step: u64) -> Result<Self> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        check_dir(dir, owner)?;
        let files = event_files(dir)?;
        for path in &files {
            drop_steps_after(path, step)?;
        }
        let newest = files
            .iter()
            .filter_map(|p| Some(name_parts(&p.file_name()?.to_string_lossy())?.0))
            .max();
        let seconds = (now() as u64).max(newest.map_or(0, |s| s + 1));
        let path = dir.join(format!("{PREFIX}{seconds:010}.{}{SUFFIX}", owner.run));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        let mut writer = Self { file, path };
        writer.append(&file_version_event(now()))?;
        if step > 0 {
            writer.append(&start_event(now(), step + 1))?;
        }
        Ok(writer)
    }

    fn append(&mut self, payload: &[u8]) -> Result<()> {
        self.file
            .write_all(&record(payload))
            .and_then(|()| self.file.flush())
            .with_context(|| format!("writing {}", self.path.display()))
    }

    /// One event with `scalars` at `step`, written through so that a live dashboard sees
    /// it.
    pub fn scalars(&mut self, step: u64, scalars: &[(String, f64)]) -> Result<()> {
        self.append(&scalars_event(now(), step, scalars))
    }

    pub fn sync(&self) {
        self.file.sync_data().ok();
    }
}

/// A TensorBoard directory holds only the run's event files (and their temporaries,
/// from a rewrite a kill interrupted, which are removed).
pub fn check_dir(dir: &Path, owner: &Owner) -> Result<()> {
    let mut foreign = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = owner.owns(&name);
        let temporary = roberta_fs::temporary_of(&name).is_some_and(|(stem, _)| owner.owns(stem));
        if temporary {
            std::fs::remove_file(entry.path()).ok();
        } else if !ours || !entry.file_type()?.is_file() {
            foreign.push(name);
        }
    }
    if !foreign.is_empty() {
        foreign.sort();
        bail!(
            "log.tensorboard: {} holds files this run did not write ({}): choose another directory",
            dir.display(),
            foreign.join(", ")
        );
    }
    Ok(())
}

/// Rewrites `path` without the events past `step` (and without a torn last record).
fn drop_steps_after(path: &Path, step: u64) -> Result<()> {
    let data = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut kept = Vec::with_capacity(data.len());
    let mut at = 0;
    while let Some((payload, next)) = next_record(&data, at) {
        if step_of(payload).is_some_and(|s| s <= step) {
            kept.extend_from_slice(&data[at..next]);
        }
        at = next;
    }
    if kept.len() != data.len() {
        roberta_fs::replace_file(path, &kept)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc32c_is_the_castagnoli_polynomial() {
        // RFC 3720's check value for "123456789".
        assert_eq!(CRC32C.checksum(b"123456789"), 0xe306_9283);
    }

    #[test]
    fn a_record_of_tensorflows_own_writer_is_byte_for_byte_ours() {
        // tf.summary's first record of every file: file_version "brain.Event:2" at
        // wall_time 0, step 0, as TensorFlow frames it.
        let payload = event(0.0, 0, |out| wire::bytes(out, 3, b"brain.Event:2"));
        let framed = record(&payload);
        assert_eq!(&framed[..8], &(payload.len() as u64).to_le_bytes());
        let (read, end) = next_record(&framed, 0).unwrap();
        assert_eq!((read, end), (&payload[..], framed.len()));
        let mut torn = framed.clone();
        torn.pop();
        assert!(next_record(&torn, 0).is_none());
        let mut flipped = framed;
        flipped[20] ^= 1;
        assert!(next_record(&flipped, 0).is_none());
    }

    #[test]
    fn scalars_read_back_and_a_resume_drops_the_steps_after_its_checkpoint() {
        let dir = tempfile::tempdir().unwrap();
        let tb = dir.path().join("tb");
        let owner = Owner::of(dir.path(), &tb);
        assert!(owner.any_run);
        let mut w = EventWriter::open(&tb, &owner, 0).unwrap();
        for step in 1..=5 {
            w.scalars(step, &[("loss".into(), 10.0 / step as f64)])
                .unwrap();
        }
        drop(w);
        // Killed after step 5, resumed from the checkpoint at step 3.
        let mut w = EventWriter::open(&tb, &owner, 3).unwrap();
        for step in 4..=6 {
            w.scalars(step, &[("loss".into(), 1.0 + step as f64)])
                .unwrap();
        }
        let read = read_scalars(&tb).unwrap();
        let steps: Vec<u64> = read.iter().map(|(s, _, _)| *s).collect();
        assert_eq!(steps, [1, 2, 3, 4, 5, 6]);
        assert_eq!(read[1], (2, "loss".into(), 5.0));
        assert_eq!(read[4], (5, "loss".into(), 6.0));
        assert_eq!(event_files(&tb).unwrap().len(), 2);
    }

    #[test]
    fn a_directory_with_other_files_or_another_runs_is_refused() {
        let runs = tempfile::tempdir().unwrap();
        let shared = tempfile::tempdir().unwrap();
        let (a, b) = (runs.path().join("a"), runs.path().join("b"));
        let owner_a = Owner::of(&a, shared.path());
        assert!(!owner_a.any_run);
        let mut w = EventWriter::open(shared.path(), &owner_a, 0).unwrap();
        w.scalars(1, &[("loss".into(), 1.0)]).unwrap();
        drop(w);
        let err = EventWriter::open(shared.path(), &Owner::of(&b, shared.path()), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("log.tensorboard"), "{err}");
        assert_eq!(read_scalars(shared.path()).unwrap().len(), 1);

        let theirs = tempfile::tempdir().unwrap();
        std::fs::write(theirs.path().join("events.out.tfevents.1.host"), "x").unwrap();
        let err = EventWriter::open(theirs.path(), &Owner::of(&a, theirs.path()), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("events.out.tfevents.1.host"), "{err}");
        assert_eq!(std::fs::read_dir(theirs.path()).unwrap().count(), 1);
    }
}
