//! `average`: the element-wise mean of several checkpoints' weights as one HF model
//! directory, as fairseq's `scripts/average_checkpoints.py` does (its `--inputs` or
//! `--num-update-checkpoints N`). The mean of the last few checkpoints of a run is often
//! better than any one of them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail, ensure};
use roberta_model::TrainingBackend;
use roberta_model::hf::{CONFIG_FILE, HfWeights, PYTORCH_WEIGHTS_FILE, WEIGHTS_FILE};
use safetensors::{Dtype, tensor::TensorView};

use crate::run::checkpoint;
use crate::sources::models::{ScratchDir, export_checkpoint, load_tokenizer_for};

/// What to average.
pub enum Inputs {
    /// Checkpoint or HF model directories.
    Dirs(Vec<PathBuf>),
    /// A run's newest `last` checkpoints that verify.
    Last { run: PathBuf, last: usize },
}

/// Each input as an HF model directory: checkpoints are exported into `scratch`.
fn hf_dirs<B: TrainingBackend>(
    inputs: Inputs,
    scratch: &ScratchDir,
    device: &B::Device,
) -> Result<Vec<(PathBuf, PathBuf)>> {
    let dirs = match inputs {
        Inputs::Dirs(dirs) => dirs,
        Inputs::Last { run, last } => {
            ensure!(
                last >= 2,
                "--last {last}: an average needs at least two checkpoints"
            );
            let mut verified = Vec::new();
            for dir in checkpoint::list(&run)? {
                match checkpoint::verify_model(&dir) {
                    Ok(_) => verified.push(dir),
                    Err(e) => tracing::warn!("skipping {}: {e:#}", dir.display()),
                }
                if verified.len() == last {
                    break;
                }
            }
            if verified.len() < last {
                bail!(
                    "--last {last}: {} holds {} checkpoint(s) that verify",
                    run.display(),
                    verified.len()
                );
            }
            verified.reverse();
            verified
        }
    };
    if dirs.len() < 2 {
        bail!(
            "average needs at least two checkpoints (got {})",
            dirs.len()
        );
    }
    let mut seen = std::collections::BTreeMap::new();
    for dir in &dirs {
        let real = std::fs::canonicalize(dir)
            .with_context(|| format!("{}: no such directory", dir.display()))?;
        if let Some(first) = seen.insert(real, dir) {
            bail!(
                "{} and {} are the same checkpoint: each is averaged once",
                first.display(),
                dir.display()
            );
        }
    }
    let mut out = Vec::new();
    for (i, dir) in dirs.into_iter().enumerate() {
        if dir.join(checkpoint::MANIFEST).is_file() {
            checkpoint::verify_model(&dir)?;
            let exported = scratch.path().join(format!("{i}"));
            export_checkpoint::<B::InnerBackend>(&dir, &exported, device)?;
            out.push((dir, exported));
        } else if roberta_model::hf::has_weights(&dir) {
            out.push((dir.clone(), dir));
        } else {
            bail!(
                "{}: neither a checkpoint (no {}) nor an HF model directory (no {WEIGHTS_FILE})",
                dir.display(),
                checkpoint::MANIFEST
            );
        }
    }
    Ok(out)
}

fn read_weights(dir: &Path) -> Result<HfWeights> {
    let weights = if dir.join(WEIGHTS_FILE).is_file() {
        HfWeights::read(&dir.join(WEIGHTS_FILE))?
    } else {
        HfWeights::read_pytorch(&dir.join(PYTORCH_WEIGHTS_FILE))?
    };
    Ok(weights)
}

/// What makes two checkpoints the same model to average: the head and every size and
/// setting the weights mean something under (not dropout, names or versions, nor the
/// defaults one writer spells out and another leaves out).
fn architecture(dir: &Path) -> Result<serde_json::Value> {
    let c = checkpoint::model_config(dir)?;
    Ok(serde_json::json!({
        "architectures": c.architectures,
        "vocab_size": c.vocab_size,
        "hidden_size": c.hidden_size,
        "num_hidden_layers": c.num_hidden_layers,
        "num_attention_heads": c.num_attention_heads,
        "intermediate_size": c.intermediate_size,
        "max_position_embeddings": c.max_position_embeddings,
        "type_vocab_size": c.type_vocab_size,
        "hidden_act": c.hidden_act,
        "layer_norm_eps": c.layer_norm_eps,
        "pad_token_id": c.pad_token_id,
        "labels": c.num_labels(),
    }))
}

/// What makes two tokenizers the same, whatever files hold them: the vocabulary, and
/// the ids of a few texts that exercise the merges and the byte fallback.
#[derive(PartialEq)]
struct TokenizerIdentity {
    vocab: Vec<(String, u32)>,
    ids: Vec<Vec<u32>>,
}

fn tokenizer_identity(dir: &Path) -> Result<TokenizerIdentity> {
    let config = checkpoint::model_config(dir)?;
    let tokenizer = load_tokenizer_for(dir, &config)?;
    let mut vocab: Vec<(String, u32)> = tokenizer.inner().get_vocab(true).into_iter().collect();
    vocab.sort();
    let probes = [
        "The quick brown fox jumps over the lazy dog, doesn't it?",
        "  RoBERTa's 512-token blocks: naïve café, 東京, emoji 🙂\n\ttabs",
    ];
    let ids = probes
        .iter()
        .map(|t| tokenizer.encode(t, true).map(|e| e.ids))
        .collect::<roberta_data::Result<Vec<_>>>()?;
    Ok(TokenizerIdentity { vocab, ids })
}

/// The key of an architecture that differs between two configs, with both values.
fn first_difference(a: &serde_json::Value, b: &serde_json::Value) -> Option<String> {
    let (a, b) = (a.as_object()?, b.as_object()?);
    a.keys()
        .chain(b.keys())
        .find(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show =
                |v: Option<&serde_json::Value>| v.map_or("(unset)".into(), |v| v.to_string());
            format!("{k}: {} vs {}", show(a.get(k)), show(b.get(k)))
        })
}

pub fn average<B: TrainingBackend>(device: B::Device, inputs: Inputs, out: PathBuf) -> Result<()> {
    crate::run::outputs::refuse_existing(&out, "--out")?;
    crate::run::outputs::refuse_inside_run(&out, "--out")?;
    let scratch = ScratchDir::for_this_process();
    let dirs = hf_dirs::<B>(inputs, &scratch, &device)?;
    check_one_model(&dirs)?;
    let safetensors = mean_weights(&dirs)?;
    write_hf_dir(&dirs[0].1, &safetensors, &out)?;
    println!(
        "averaged {} checkpoints ({}) into {}",
        dirs.len(),
        dirs.iter()
            .map(|(s, _)| s.display().to_string())
            .collect::<Vec<_>>()
            .join(", "),
        out.display()
    );
    Ok(())
}

/// Refuses checkpoints of different architectures or tokenizers, naming the first two
/// that differ. `dirs` pairs each input with its HF directory.
fn check_one_model(dirs: &[(PathBuf, PathBuf)]) -> Result<()> {
    let (first_source, first) = &dirs[0];
    let first_architecture = architecture(first)?;
    let first_tokenizer = tokenizer_identity(first)
        .with_context(|| format!("{}: its tokenizer", first_source.display()))?;
    for (source, dir) in &dirs[1..] {
        if let Some(d) = first_difference(&first_architecture, &architecture(dir)?) {
            bail!(
                "{} and {} are different architectures ({d}): only checkpoints of one model average",
                first_source.display(),
                source.display()
            );
        }
        let tokenizer = tokenizer_identity(dir)
            .with_context(|| format!("{}: its tokenizer", source.display()))?;
        if tokenizer != first_tokenizer {
            let what = match tokenizer.vocab == first_tokenizer.vocab {
                true => "the same vocabulary, other merges".to_string(),
                false => format!(
                    "different vocabularies, of {} and {} tokens",
                    first_tokenizer.vocab.len(),
                    tokenizer.vocab.len()
                ),
            };
            bail!(
                "{} and {} have different tokenizers ({what}): only checkpoints of one model average",
                first_source.display(),
                source.display()
            );
        }
    }
    Ok(())
}

/// The element-wise mean of every float tensor as a safetensors file (integer buffers,
/// equal in every checkpoint, kept). The running sum is in f64, so that the mean is the
/// correctly rounded f32 of the exact mean whatever the number of checkpoints.
fn mean_weights(dirs: &[(PathBuf, PathBuf)]) -> Result<Vec<u8>> {
    let first_source = &dirs[0].0;
    let mut sums: BTreeMap<String, (Vec<usize>, Vec<f64>)> = BTreeMap::new();
    let mut integers: BTreeMap<String, (Vec<usize>, Vec<f32>)> = BTreeMap::new();
    for (i, (source, dir)) in dirs.iter().enumerate() {
        let weights = read_weights(dir)?;
        let keys: Vec<String> = weights.keys().map(String::from).collect();
        if i > 0 && keys.len() != sums.len() + integers.len() {
            bail!(
                "{}: {} tensors, {} has {}",
                source.display(),
                keys.len(),
                first_source.display(),
                sums.len() + integers.len()
            );
        }
        for key in keys {
            let (shape, values) = weights.get(&key).expect("listed key");
            if weights.is_integer(&key) {
                let entry = integers
                    .entry(key.clone())
                    .or_insert_with(|| (shape.to_vec(), values.to_vec()));
                if i > 0 && (entry.0 != shape || entry.1 != values) {
                    bail!(
                        "{}: buffer `{key}` differs from the first checkpoint's",
                        source.display()
                    );
                }
                continue;
            }
            if i == 0 {
                let sum = values.iter().map(|&v| f64::from(v)).collect();
                sums.insert(key, (shape.to_vec(), sum));
                continue;
            }
            let Some((expected, sum)) = sums.get_mut(&key) else {
                bail!(
                    "{}: tensor `{key}` is not in {}",
                    source.display(),
                    first_source.display()
                );
            };
            if expected.as_slice() != shape {
                bail!(
                    "{}: tensor `{key}` has shape {shape:?}, {} has {expected:?}",
                    source.display(),
                    first_source.display()
                );
            }
            for (s, &v) in sum.iter_mut().zip(values) {
                *s += f64::from(v);
            }
        }
    }
    let n = dirs.len() as f64;
    let tensors: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = sums
        .into_iter()
        .map(|(key, (shape, sum))| {
            let bytes = sum
                .iter()
                .flat_map(|s| ((s / n) as f32).to_le_bytes())
                .collect();
            (key, shape, Dtype::F32, bytes)
        })
        .chain(integers.into_iter().map(|(key, (shape, values))| {
            let bytes = values
                .iter()
                .flat_map(|&v| (v as i64).to_le_bytes())
                .collect();
            (key, shape, Dtype::I64, bytes)
        }))
        .collect();
    let views = tensors.iter().map(|(key, shape, dtype, bytes)| {
        (
            key.clone(),
            TensorView::new(*dtype, shape.clone(), bytes).expect("shape matches data"),
        )
    });
    let metadata = Some([("format".to_string(), "pt".to_string())].into());
    safetensors::serialize(views, metadata).context("serialising the mean")
}

/// `out` as a new HF directory: the mean's weights, the first checkpoint's config and
/// tokenizer; written under a temporary name and renamed, or not at all.
fn write_hf_dir(first: &Path, safetensors: &[u8], out: &Path) -> Result<()> {
    let config = checkpoint::model_config(first)?;
    let tokenizer = load_tokenizer_for(first, &config)?;
    roberta_fs::write_dir(out, roberta_fs::Publish::New, |tmp| -> Result<()> {
        std::fs::write(tmp.join(WEIGHTS_FILE), safetensors)?;
        std::fs::write(
            tmp.join(CONFIG_FILE),
            std::fs::read(first.join(CONFIG_FILE))?,
        )?;
        Ok(tokenizer.save_dir(tmp)?)
    })
    .with_context(|| format!("writing {}", out.display()))
}
