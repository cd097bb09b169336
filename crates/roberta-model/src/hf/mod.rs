//! HuggingFace model directories: `config.json` + `model.safetensors`, read and written
//! with HF's key names. Each module lists its own keys once, in `HfModule::hf_keys`, and
//! that one list serves loading ([`Loader`]) and saving ([`Saver`]) alike, so the whole
//! mapping reads as a table next to the module it describes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::nn::{Embedding, LayerNorm, Linear};
use burn::prelude::*;
use roberta_fs::replace_file;
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

use crate::attention::RobertaAttention;
use crate::config::RobertaConfig;
use crate::embeddings::RobertaEmbeddings;
use crate::encoder::RobertaLayer;
use crate::error::{ModelError, Result};
use crate::model::{RobertaModel, RobertaPooler};

pub const CONFIG_FILE: &str = "config.json";
pub const WEIGHTS_FILE: &str = "model.safetensors";
/// A PyTorch `state_dict`, as many hub models still ship (read when there is no
/// `model.safetensors`).
pub const PYTORCH_WEIGHTS_FILE: &str = "pytorch_model.bin";

/// Whether `dir` holds weights this crate reads.
pub fn has_weights(dir: &Path) -> bool {
    dir.join(WEIGHTS_FILE).is_file() || dir.join(PYTORCH_WEIGHTS_FILE).is_file()
}

/// Prefix under which HF's task classes keep the backbone.
const BACKBONE_PREFIX: &str = "roberta.";
/// Keys of every head HF defines for RoBERTa: a checkpoint of another task carries them.
const HEAD_PREFIXES: [&str; 3] = ["lm_head.", "classifier.", "qa_outputs."];
/// Keys that may be present or absent without meaning anything: buffers, and the MLM
/// decoder, tied to the word embeddings and `lm_head.bias`.
const OPTIONAL_KEYS: [&str; 4] = [
    "embeddings.position_ids",
    "embeddings.token_type_ids",
    "lm_head.decoder.weight",
    "lm_head.decoder.bias",
];

/// The tensors of a safetensors file, converted to f32 with their shapes.
pub struct HfWeights {
    pub path: PathBuf,
    tensors: BTreeMap<String, (Vec<usize>, Vec<f32>)>,
    integers: BTreeSet<String>,
}

/// A model directory's file must be a regular file: a FIFO or a device in its place
/// (a link to `/dev/zero`) would be read forever.
pub(crate) fn require_regular_file(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).map_err(|source| ModelError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    if meta.is_file() {
        Ok(())
    } else {
        Err(ModelError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a regular file"),
        })
    }
}

impl HfWeights {
    pub fn read(path: &Path) -> Result<Self> {
        require_regular_file(path)?;
        let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let file = SafeTensors::deserialize(&bytes).map_err(|e| ModelError::Safetensors {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let mut tensors = BTreeMap::new();
        let mut integers = BTreeSet::new();
        for (key, view) in file.tensors() {
            let data = to_f32(&view).ok_or_else(|| ModelError::UnsupportedDtype {
                path: path.to_path_buf(),
                key: key.clone(),
                dtype: format!("{:?}", view.dtype()),
            })?;
            if matches!(view.dtype(), Dtype::I64 | Dtype::I32) {
                integers.insert(key.clone());
            }
            tensors.insert(key, (view.shape().to_vec(), data));
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            integers,
        })
    }

    /// A PyTorch `state_dict` (`torch.save`, zip or legacy format), read by burn-store's
    /// pickle reader, which rebuilds tensors without running the pickle's code.
    pub fn read_pytorch(path: &Path) -> Result<Self> {
        require_regular_file(path)?;
        let unreadable = |message: String| ModelError::Pytorch {
            path: path.to_path_buf(),
            message,
        };
        let reader =
            burn_store::pytorch::PytorchReader::new(path).map_err(|e| unreadable(e.to_string()))?;
        let mut tensors = BTreeMap::new();
        let mut integers = BTreeSet::new();
        for (key, snapshot) in reader.into_tensors() {
            let data = snapshot
                .to_data()
                .map_err(|e| unreadable(format!("tensor `{key}`: {e:?}")))?;
            let dtype = data.dtype;
            if !(dtype.is_float() || dtype.is_int() || dtype.is_uint()) {
                return Err(ModelError::UnsupportedDtype {
                    path: path.to_path_buf(),
                    key,
                    dtype: format!("{dtype:?}"),
                });
            }
            if !dtype.is_float() {
                integers.insert(key.clone());
            }
            let values = data
                .convert::<f32>()
                .into_vec::<f32>()
                .map_err(|e| unreadable(format!("tensor `{key}`: {e:?}")))?;
            tensors.insert(key, (snapshot.shape.to_vec(), values));
        }
        Ok(Self {
            path: path.to_path_buf(),
            tensors,
            integers,
        })
    }

    /// Whether `key` was stored as integers (an index buffer such as `position_ids`; a
    /// model parameter never is).
    pub fn is_integer(&self, key: &str) -> bool {
        self.integers.contains(key)
    }

    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.tensors.keys().map(String::as_str)
    }

    pub fn get(&self, key: &str) -> Option<(&[usize], &[f32])> {
        self.tensors
            .get(key)
            .map(|(shape, data)| (shape.as_slice(), data.as_slice()))
    }

    /// `"roberta."` for task checkpoints, `""` for a bare `RobertaModel`.
    fn backbone_prefix(&self) -> &'static str {
        if self.keys().any(|k| k.starts_with(BACKBONE_PREFIX)) {
            BACKBONE_PREFIX
        } else {
            ""
        }
    }
}

fn to_f32(view: &TensorView<'_>) -> Option<Vec<f32>> {
    let bytes = view.data();
    Some(match view.dtype() {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F64 => bytes
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| half::f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::BF16 => bytes
            .chunks_exact(2)
            .map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        // Integer tensors are buffers (`embeddings.position_ids`), never parameters.
        Dtype::I64 => bytes
            .chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes")) as f32)
            .collect(),
        Dtype::I32 => bytes
            .chunks_exact(4)
            .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32)
            .collect(),
        _ => return None,
    })
}

/// One direction of HF weight I/O: [`Loader`] fills the parameters it is shown from a
/// checkpoint, [`Saver`] records them for writing. A module declares its keys once
/// ([`HfModule::hf_keys`]) and that declaration serves both.
pub trait HfIo<B: Backend> {
    /// The parameter stored under `keys[0]`, HF's name; further keys are aliases older
    /// checkpoints use, accepted when loading.
    fn param<const D: usize>(&mut self, keys: &[&str], param: &mut Param<Tensor<B, D>>);

    /// A weight stored transposed: burn's `Linear` keeps `[in, out]`, PyTorch's
    /// `nn.Linear` keeps `[out, in]`.
    fn transposed(&mut self, key: &str, weight: &mut Param<Tensor<B, 2>>);

    fn linear(&mut self, prefix: &str, linear: &mut Linear<B>) {
        self.transposed(&format!("{prefix}.weight"), &mut linear.weight);
        if let Some(bias) = linear.bias.as_mut() {
            self.param(&[&format!("{prefix}.bias")], bias);
        }
    }

    fn layer_norm(&mut self, prefix: &str, norm: &mut LayerNorm<B>) {
        // Old BERT-era checkpoints call the parameters gamma/beta.
        self.param(
            &[&format!("{prefix}.weight"), &format!("{prefix}.gamma")],
            &mut norm.gamma,
        );
        if let Some(beta) = norm.beta.as_mut() {
            self.param(
                &[&format!("{prefix}.bias"), &format!("{prefix}.beta")],
                beta,
            );
        }
    }

    fn embedding(&mut self, prefix: &str, embedding: &mut Embedding<B>) {
        self.param(&[&format!("{prefix}.weight")], &mut embedding.weight);
    }
}

/// Moves tensors from [`HfWeights`] into modules, recording what was missing or misshapen
/// instead of stopping at the first problem, so that one error lists them all.
pub struct Loader<'a, B: Backend> {
    weights: &'a HfWeights,
    device: B::Device,
    used: BTreeSet<String>,
    missing: Vec<String>,
    mismatched: Vec<String>,
}

impl<'a, B: Backend> Loader<'a, B> {
    fn new(weights: &'a HfWeights, device: &B::Device) -> Self {
        Self {
            weights,
            device: device.clone(),
            used: BTreeSet::new(),
            missing: Vec::new(),
            mismatched: Vec::new(),
        }
    }

    fn has_prefix(&self, prefix: &str) -> bool {
        self.weights.keys().any(|k| k.starts_with(prefix))
    }

    fn tensor<const D: usize>(&mut self, keys: &[&str], shape: [usize; D]) -> Option<Tensor<B, D>> {
        let data = self.values(keys, shape)?;
        Some(Tensor::from_data(
            TensorData::new(data, shape),
            &self.device,
        ))
    }

    /// The values stored under the first of `keys` present, if they have `shape`.
    fn values<const D: usize>(&mut self, keys: &[&str], shape: [usize; D]) -> Option<Vec<f32>> {
        let Some((key, (found, data))) = keys
            .iter()
            .find_map(|k| self.weights.get(k).map(|t| (*k, t)))
        else {
            self.missing.push(keys[0].to_string());
            return None;
        };
        self.used.insert(key.to_string());
        if self.weights.is_integer(key) {
            self.mismatched
                .push(format!("{key}: stored as integers, expected a float type"));
            return None;
        }
        if found != shape {
            self.mismatched
                .push(format!("{key}: shape {found:?}, expected {shape:?}"));
            return None;
        }
        Some(data.to_vec())
    }
}

impl<B: Backend> HfIo<B> for Loader<'_, B> {
    fn param<const D: usize>(&mut self, keys: &[&str], param: &mut Param<Tensor<B, D>>) {
        if let Some(t) = self.tensor(keys, param.dims()) {
            *param = Param::from_tensor(t);
        }
    }

    /// Transposed on the host, once: a transposed view would be copied by every forward
    /// pass (a tenth of a CPU inference pass at roberta-base), and column-major weights
    /// are what upstream reports CUDA getting wrong (tracel-ai/burn#5264).
    fn transposed(&mut self, key: &str, weight: &mut Param<Tensor<B, 2>>) {
        let [d_in, d_out] = weight.dims();
        if let Some(w) = self.values(&[key], [d_out, d_in]) {
            let mut t = vec![0f32; w.len()];
            for (o, row) in w.chunks_exact(d_in).enumerate() {
                for (i, &v) in row.iter().enumerate() {
                    t[i * d_out + o] = v;
                }
            }
            let w = Tensor::from_data(TensorData::new(t, [d_in, d_out]), &self.device);
            *weight = Param::from_tensor(w);
        }
    }
}

/// Collects tensors under HF names for writing.
#[derive(Default)]
pub struct Saver {
    tensors: Vec<(String, Vec<usize>, Vec<f32>)>,
}

impl Saver {
    fn tensor<B: Backend, const D: usize>(&mut self, key: &str, tensor: Tensor<B, D>) {
        let shape = tensor.dims().to_vec();
        let data = tensor
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .expect("converted to f32");
        self.tensors.push((key.to_string(), shape, data));
    }

    /// Serialises in safetensors with the `{"format": "pt"}` metadata `transformers`
    /// requires.
    fn to_bytes(&self) -> Vec<u8> {
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors
            .iter()
            .map(|(k, shape, data)| {
                (
                    k.clone(),
                    shape.clone(),
                    data.iter().flat_map(|v| v.to_le_bytes()).collect(),
                )
            })
            .collect();
        let views = bytes.iter().map(|(k, shape, data)| {
            (
                k.clone(),
                TensorView::new(Dtype::F32, shape.clone(), data).expect("shape matches data"),
            )
        });
        let metadata = Some([("format".to_string(), "pt".to_string())].into());
        safetensors::serialize(views, metadata).expect("f32 tensors serialise")
    }
}

impl<B: Backend> HfIo<B> for Saver {
    fn param<const D: usize>(&mut self, keys: &[&str], param: &mut Param<Tensor<B, D>>) {
        self.tensor(keys[0], param.val());
    }

    fn transposed(&mut self, key: &str, weight: &mut Param<Tensor<B, 2>>) {
        self.tensor(key, weight.val().transpose());
    }
}

/// A module whose parameters have HF checkpoint names.
pub trait HfModule<B: Backend> {
    /// Shows each parameter to `io` under its HF key, below `prefix` (`""` at the root).
    fn hf_keys(&mut self, prefix: &str, io: &mut impl HfIo<B>);
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_string()
    } else {
        format!("{prefix}.{name}")
    }
}

impl<B: Backend> HfModule<B> for RobertaEmbeddings<B> {
    fn hf_keys(&mut self, p: &str, io: &mut impl HfIo<B>) {
        io.embedding(&join(p, "word_embeddings"), &mut self.word_embeddings);
        io.embedding(
            &join(p, "position_embeddings"),
            &mut self.position_embeddings,
        );
        io.embedding(
            &join(p, "token_type_embeddings"),
            &mut self.token_type_embeddings,
        );
        io.layer_norm(&join(p, "LayerNorm"), &mut self.layer_norm);
    }
}

impl<B: Backend> HfModule<B> for RobertaAttention<B> {
    fn hf_keys(&mut self, p: &str, io: &mut impl HfIo<B>) {
        io.linear(&join(p, "self.query"), &mut self.self_attn.query);
        io.linear(&join(p, "self.key"), &mut self.self_attn.key);
        io.linear(&join(p, "self.value"), &mut self.self_attn.value);
        io.linear(&join(p, "output.dense"), &mut self.output.dense);
        io.layer_norm(&join(p, "output.LayerNorm"), &mut self.output.layer_norm);
    }
}

impl<B: Backend> HfModule<B> for RobertaLayer<B> {
    fn hf_keys(&mut self, p: &str, io: &mut impl HfIo<B>) {
        self.attention.hf_keys(&join(p, "attention"), io);
        io.linear(&join(p, "intermediate.dense"), &mut self.intermediate.dense);
        io.linear(&join(p, "output.dense"), &mut self.output.dense);
        io.layer_norm(&join(p, "output.LayerNorm"), &mut self.output.layer_norm);
    }
}

impl<B: Backend> HfModule<B> for RobertaModel<B> {
    fn hf_keys(&mut self, p: &str, io: &mut impl HfIo<B>) {
        self.embeddings.hf_keys(&join(p, "embeddings"), io);
        for (i, layer) in self.encoder.layer.iter_mut().enumerate() {
            layer.hf_keys(&join(p, &format!("encoder.layer.{i}")), io);
        }
        if let Some(pooler) = self.pooler.as_mut() {
            io.linear(&join(p, "pooler.dense"), &mut pooler.dense);
        }
    }
}

/// A model that can be read from and written to an HF model directory. `Clone` because
/// saving runs the same `&mut` key declaration as loading, on a copy (a clone shares its
/// tensors: no weights are copied).
pub trait Pretrained<B: Backend>: Clone {
    /// The `architectures` entry of `config.json`.
    const ARCHITECTURE: &'static str;
    /// Fresh weights (HF's initialisation) for this config; `num_labels` for heads with labels.
    fn init(config: &RobertaConfig, num_labels: usize, device: &B::Device) -> Self;
    fn backbone(&self) -> &RobertaModel<B>;
    fn backbone_mut(&mut self) -> &mut RobertaModel<B>;
    /// Prefix of the head's keys, `None` for the bare `RobertaModel`.
    fn head_prefix() -> Option<&'static str>;
    /// Shows the head's parameters to `io` under their HF keys, as [`HfModule::hf_keys`].
    fn head_keys(&mut self, io: &mut impl HfIo<B>);
    /// Number of labels the head predicts (0 when it has none).
    fn num_labels(&self) -> usize {
        0
    }
}

impl<B: Backend> Pretrained<B> for RobertaModel<B> {
    const ARCHITECTURE: &'static str = "RobertaModel";
    fn init(config: &RobertaConfig, _: usize, device: &B::Device) -> Self {
        RobertaModel::new(config, true, device)
    }
    fn backbone(&self) -> &RobertaModel<B> {
        self
    }
    fn backbone_mut(&mut self) -> &mut RobertaModel<B> {
        self
    }
    fn head_prefix() -> Option<&'static str> {
        None
    }
    fn head_keys(&mut self, _: &mut impl HfIo<B>) {}
}

/// How strictly a directory must match the requested architecture.
#[derive(Debug, Clone, Copy, Default)]
pub struct LoadOptions {
    /// Start the head from fresh weights when the directory has none for it, as when
    /// fine-tuning from a pretrained masked-LM checkpoint.
    pub allow_new_head: bool,
    /// Label count for a new classification head; otherwise taken from the checkpoint's
    /// `id2label` (and from the weights' shape when that is absent).
    pub num_labels: Option<usize>,
}

/// What loading did beyond the exact match: worth a log line each.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LoadReport {
    /// Head keys absent from the file and freshly initialised.
    pub initialized: Vec<String>,
    /// Keys of other heads present in the file and not used.
    pub unused: Vec<String>,
}

/// A model loaded from a directory, with its config.
pub struct Loaded<M> {
    pub model: M,
    pub config: RobertaConfig,
    pub report: LoadReport,
}

/// Reads `config.json` + `model.safetensors` from an HF model directory into `M`.
///
/// Backbone keys must all be present and of the right shape; unexpected keys are an
/// error, except the known optional ones (buffers, tied decoder, pooler for heads
/// that have none) and keys of other task heads, which are reported as unused.
pub fn load_pretrained<B: Backend, M: Pretrained<B>>(
    dir: &Path,
    options: LoadOptions,
    device: &B::Device,
) -> Result<Loaded<M>> {
    let config = RobertaConfig::load(&dir.join(CONFIG_FILE))?;
    let weights = if dir.join(WEIGHTS_FILE).exists() {
        HfWeights::read(&dir.join(WEIGHTS_FILE))?
    } else if dir.join(PYTORCH_WEIGHTS_FILE).exists() {
        HfWeights::read_pytorch(&dir.join(PYTORCH_WEIGHTS_FILE))?
    } else {
        return Err(ModelError::NoWeights {
            path: dir.to_path_buf(),
        });
    };
    let prefix = weights.backbone_prefix();
    let num_labels = options
        .num_labels
        .or_else(|| config.num_labels())
        .or_else(|| head_labels_from_weights(&weights))
        .unwrap_or(2);

    let mut loader = Loader::<B>::new(&weights, device);
    let with_pooler = M::head_prefix().is_none() && loader.has_prefix(&format!("{prefix}pooler."));
    let build = || {
        let mut model = M::init(&config, num_labels, device);
        if M::head_prefix().is_none() && !with_pooler {
            model.backbone_mut().pooler = None;
        }
        if M::head_prefix().is_none() && with_pooler && model.backbone().pooler.is_none() {
            model.backbone_mut().pooler = Some(RobertaPooler {
                dense: crate::init::linear(&config, config.hidden_size, config.hidden_size, device),
            });
        }
        model
    };
    // Every weight is loaded unless the head is new (fine-tuning's start): only then
    // are the weights drawn first.
    let new_head = M::head_prefix().is_some_and(|p| !loader.has_prefix(p));
    let mut model = match new_head {
        true => build(),
        false => crate::init::without_drawing(build),
    };
    model
        .backbone_mut()
        .hf_keys(prefix.trim_end_matches('.'), &mut loader);

    let mut report = LoadReport::default();
    let head_missing_before = loader.missing.len();
    model.head_keys(&mut loader);
    let head_missing: Vec<String> = loader.missing.split_off(head_missing_before);
    let head_absent = M::head_prefix().is_some_and(|p| !loader.has_prefix(p));
    if !head_missing.is_empty() {
        if options.allow_new_head && head_absent {
            report.initialized = head_missing;
        } else {
            loader.missing.extend(head_missing);
        }
    }

    let mut unexpected = Vec::new();
    for key in weights.keys() {
        if loader.used.contains(key) {
            continue;
        }
        let bare = key.strip_prefix(prefix).unwrap_or(key);
        let optional = OPTIONAL_KEYS.contains(&bare) || OPTIONAL_KEYS.contains(&key);
        let pooler = bare.starts_with("pooler.");
        let other_head = HEAD_PREFIXES.iter().any(|h| key.starts_with(h));
        if optional || (pooler && M::head_prefix().is_some()) {
            continue;
        }
        if other_head && (head_absent || M::head_prefix().is_none() || options.allow_new_head) {
            report.unused.push(key.to_string());
        } else {
            unexpected.push(key.to_string());
        }
    }

    if let Some(e) = mismatch(
        &weights.path,
        &loader.mismatched,
        &loader.missing,
        &unexpected,
    ) {
        return Err(e);
    }
    Ok(Loaded {
        model,
        config,
        report,
    })
}

/// The error for weights that do not fit the model, if any: one line that says how
/// much is wrong and the first of each kind; every key in `details`, for a log.
fn mismatch(
    path: &Path,
    mismatched: &[String],
    missing: &[String],
    unexpected: &[String],
) -> Option<ModelError> {
    let mut summary = Vec::new();
    let mut details = Vec::new();
    for (what, keys) in [
        ("tensors have other shapes", mismatched),
        ("keys are missing", missing),
        ("keys are unexpected", unexpected),
    ] {
        if let Some(first) = keys.first() {
            summary.push(format!("{} {what} (first: {first})", keys.len()));
            details.push(format!("{what}: {}", keys.join("; ")));
        }
    }
    (!summary.is_empty()).then(|| ModelError::WeightMismatch {
        path: path.to_path_buf(),
        summary: summary.join(", "),
        details: details.join("\n"),
    })
}

/// The label count of a classification head's weights, for checkpoints without `id2label`.
fn head_labels_from_weights(weights: &HfWeights) -> Option<usize> {
    ["classifier.out_proj.bias", "classifier.bias"]
        .iter()
        .find_map(|k| weights.get(k).map(|(shape, _)| shape[0]))
}

fn collect<B: Backend, M: Pretrained<B>>(model: &M) -> Saver {
    let mut model = model.clone();
    let mut saver = Saver::default();
    let prefix = if M::head_prefix().is_some() {
        "roberta"
    } else {
        ""
    };
    model.backbone_mut().hf_keys(prefix, &mut saver);
    model.head_keys(&mut saver);
    saver
}

/// Writes `config.json` and `model.safetensors` so that `transformers`'
/// `from_pretrained` loads the directory. Each file is written to a temporary name,
/// fsynced and renamed, so an interrupted save never leaves a file that looks complete.
pub fn save_pretrained<B: Backend, M: Pretrained<B>>(
    model: &M,
    config: &RobertaConfig,
    dir: &Path,
) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| ModelError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut config = config.clone();
    config.architectures = vec![M::ARCHITECTURE.to_string()];
    let labels = model.num_labels();
    if labels > 0 && config.num_labels() != Some(labels) {
        let names = config.labels(labels);
        config.set_labels(&names);
    }
    if labels == 1 && config.problem_type.is_none() {
        config.problem_type = Some("regression".into());
    }
    let json = serde_json::to_vec_pretty(&config).expect("config serialises");
    replace_file(&dir.join(WEIGHTS_FILE), &collect(model).to_bytes())?;
    Ok(replace_file(&dir.join(CONFIG_FILE), &json)?)
}

#[cfg(test)]
mod tests;
