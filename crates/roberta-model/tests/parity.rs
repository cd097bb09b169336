//! Parity with HuggingFace `transformers`: every layer, every head's logits and loss, and
//! MLM gradients, against fixtures written by `scripts/make_golden.py`.

use std::path::{Path, PathBuf};

use burn::backend::Autodiff;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use roberta_model::hf::HfWeights;
use roberta_model::loss::{count_targets, cross_entropy_sum, squared_error_sum};
use roberta_model::{
    LoadOptions, Pretrained, RobertaForMaskedLM, RobertaForQuestionAnswering,
    RobertaForSequenceClassification, RobertaForTokenClassification, RobertaInput, RobertaModel,
    load_pretrained, save_pretrained,
};

const TOLERANCE: f32 = 1e-4;

/// The fixtures beside this file, or under `ROBERTA_FIXTURES` for a test binary run away
/// from its source tree (on a GPU machine).
fn fixture(name: &str) -> PathBuf {
    std::env::var_os("ROBERTA_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures"))
        .join(name)
}

struct Expected(HfWeights);

impl Expected {
    fn load(name: &str) -> Self {
        Self(HfWeights::read(&fixture(name).join("expected.safetensors")).unwrap())
    }

    fn values(&self, key: &str) -> (&[usize], &[f32]) {
        self.0
            .get(key)
            .unwrap_or_else(|| panic!("fixture lacks {key}"))
    }

    fn ints<B: Backend, const D: usize>(&self, key: &str, device: &B::Device) -> Tensor<B, D, Int> {
        let (shape, data) = self.values(key);
        let data: Vec<i64> = data.iter().map(|&v| v as i64).collect();
        Tensor::from_data(TensorData::new(data, shape.to_vec()), device)
    }

    fn input<B: Backend>(&self, device: &B::Device) -> RobertaInput<B> {
        RobertaInput::new(
            self.ints("input_ids", device),
            self.ints("attention_mask", device),
        )
    }

    fn assert_close<B: Backend, const D: usize>(&self, key: &str, actual: Tensor<B, D>) {
        let (shape, expected) = self.values(key);
        assert_eq!(actual.dims().as_slice(), shape, "{key}: shape");
        let actual = actual
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap();
        let diff = max_abs_diff(&actual, expected);
        eprintln!("{key}: max abs diff {diff:e}");
        assert!(
            diff <= TOLERANCE,
            "{key}: max abs diff {diff:e} > {TOLERANCE:e}"
        );
    }
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

fn load<B: Backend, M: Pretrained<B>>(name: &str, device: &B::Device) -> M {
    load_pretrained::<B, M>(&fixture(name), LoadOptions::default(), device)
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .model
}

fn scalar<B: Backend>(t: Tensor<B, 1>) -> f32 {
    t.into_data().convert::<f32>().into_vec::<f32>().unwrap()[0]
}

pub fn base_every_layer<B: Backend>(device: &B::Device) {
    let expected = Expected::load("base");
    let model: RobertaModel<B> = load("base", device);
    let out = model.forward(expected.input(device), true);
    assert_eq!(out.hidden_states.len(), 3);
    for (i, h) in out.hidden_states.into_iter().enumerate() {
        expected.assert_close(&format!("hidden_states.{i}"), h);
    }
    expected.assert_close("last_hidden_state", out.last_hidden_state);
    expected.assert_close(
        "pooler_output",
        out.pooler_output.expect("base has a pooler"),
    );
}

/// Flattened indices and targets of the labelled positions.
fn masked_positions<B: Backend>(
    expected: &Expected,
    device: &B::Device,
) -> (Tensor<B, 1, Int>, Tensor<B, 1, Int>) {
    let (_, labels) = expected.values("labels");
    let (positions, targets): (Vec<i64>, Vec<i64>) = labels
        .iter()
        .enumerate()
        .filter(|(_, l)| **l >= 0.0)
        .map(|(i, l)| (i as i64, *l as i64))
        .unzip();
    (
        Tensor::from_data(
            TensorData::new(positions.clone(), [positions.len()]),
            device,
        ),
        Tensor::from_data(TensorData::new(targets.clone(), [targets.len()]), device),
    )
}

pub fn masked_lm<B: Backend>(device: &B::Device) {
    let expected = Expected::load("mlm");
    let model: RobertaForMaskedLM<B> = load("mlm", device);
    let input = expected.input(device);
    let hidden = model.roberta.forward(input.clone(), true).hidden_states;
    for (i, h) in hidden.into_iter().enumerate() {
        expected.assert_close(&format!("hidden_states.{i}"), h);
    }
    let logits = model.forward(input.clone());
    expected.assert_close("logits", logits.clone());

    // The masked-positions-only path gives the same rows as the full head.
    let (positions, targets) = masked_positions::<B>(&expected, device);
    let selected = model.forward_positions(input, positions.clone());
    let [b, s, v] = logits.dims();
    let full = logits.reshape([b * s, v]).select(0, positions);
    let diff = max_abs_diff(
        &selected
            .clone()
            .into_data()
            .convert::<f32>()
            .into_vec()
            .unwrap(),
        &full.into_data().convert::<f32>().into_vec().unwrap(),
    );
    assert!(diff <= 1e-5, "masked-only head differs by {diff:e}");
    let n = count_targets(targets.clone()).into_scalar().elem::<i64>() as f32;
    let loss = scalar(cross_entropy_sum(selected, targets)) / n;
    assert!(
        (loss - expected.values("loss").1[0]).abs() <= TOLERANCE,
        "loss {loss}"
    );
}

/// Gradients through the whole model, against PyTorch's autograd: catches backward
/// passes that differ from the forward's definition (GELU's, in burn 0.21).
pub fn masked_lm_gradients<B: AutodiffBackend>(device: &B::Device) {
    let expected = Expected::load("mlm");
    let model: RobertaForMaskedLM<B> = load("mlm", device);
    let (positions, targets) = masked_positions::<B>(&expected, device);
    let n = count_targets(targets.clone()).into_scalar().elem::<i64>() as f64;
    let logits = model.forward_positions(expected.input(device), positions);
    let loss = cross_entropy_sum(logits, targets) / n;
    let grads = loss.backward();
    let check = |key: &str, g: Option<Tensor<B::InnerBackend, 2>>| {
        expected.assert_close(&format!("grad.{key}"), g.expect("gradient"));
    };
    let emb = &model.roberta.embeddings;
    check(
        "roberta.embeddings.word_embeddings.weight",
        emb.word_embeddings.weight.grad(&grads),
    );
    check(
        "roberta.embeddings.position_embeddings.weight",
        emb.position_embeddings.weight.grad(&grads),
    );
    let layers = &model.roberta.encoder.layer;
    let q = layers[0]
        .attention
        .self_attn
        .query
        .weight
        .grad(&grads)
        .map(|g| g.transpose());
    check("roberta.encoder.layer.0.attention.self.query.weight", q);
    let ffn = layers[1]
        .intermediate
        .dense
        .weight
        .grad(&grads)
        .map(|g| g.transpose());
    check("roberta.encoder.layer.1.intermediate.dense.weight", ffn);
    let dense = model
        .lm_head
        .dense
        .weight
        .grad(&grads)
        .map(|g| g.transpose());
    check("lm_head.dense.weight", dense);
    let ln = layers[1]
        .output
        .layer_norm
        .gamma
        .grad(&grads)
        .expect("gradient");
    expected.assert_close("grad.roberta.encoder.layer.1.output.LayerNorm.weight", ln);
    let bias = model.lm_head.bias.grad(&grads).expect("gradient");
    expected.assert_close("grad.lm_head.bias", bias);
}

pub fn sequence_classification<B: Backend>(device: &B::Device) {
    let expected = Expected::load("seqcls");
    let model: RobertaForSequenceClassification<B> = load("seqcls", device);
    assert_eq!(model.num_labels(), 3);
    let logits = model.forward(expected.input(device));
    expected.assert_close("logits", logits.clone());
    let labels = expected.ints::<B, 1>("labels", device);
    let loss = scalar(cross_entropy_sum(logits, labels)) / 3.0;
    assert!(
        (loss - expected.values("loss").1[0]).abs() <= TOLERANCE,
        "loss {loss}"
    );
}

pub fn regression<B: Backend>(device: &B::Device) {
    let expected = Expected::load("seqreg");
    let model: RobertaForSequenceClassification<B> = load("seqreg", device);
    let logits = model.forward(expected.input(device));
    expected.assert_close("logits", logits.clone());
    let (_, y) = expected.values("labels");
    let y = Tensor::<B, 1>::from_floats(y, device);
    let loss = scalar(squared_error_sum(logits.reshape([3]), y)) / 3.0;
    assert!(
        (loss - expected.values("loss").1[0]).abs() <= TOLERANCE,
        "loss {loss}"
    );
}

pub fn token_classification<B: Backend>(device: &B::Device) {
    let expected = Expected::load("tokcls");
    let model: RobertaForTokenClassification<B> = load("tokcls", device);
    let logits = model.forward(expected.input(device));
    expected.assert_close("logits", logits.clone());
    let [b, s, c] = logits.dims();
    let labels = expected.ints::<B, 2>("labels", device).reshape([b * s]);
    let n = count_targets(labels.clone()).into_scalar().elem::<i64>() as f32;
    let loss = scalar(cross_entropy_sum(logits.reshape([b * s, c]), labels)) / n;
    assert!(
        (loss - expected.values("loss").1[0]).abs() <= TOLERANCE,
        "loss {loss}"
    );
}

pub fn question_answering<B: Backend>(device: &B::Device) {
    let expected = Expected::load("qa");
    let model: RobertaForQuestionAnswering<B> = load("qa", device);
    let (start, end) = model.forward(expected.input(device));
    expected.assert_close("start_logits", start.clone());
    expected.assert_close("end_logits", end.clone());
    let loss = (scalar(cross_entropy_sum(
        start,
        expected.ints("start_positions", device),
    )) + scalar(cross_entropy_sum(
        end,
        expected.ints("end_positions", device),
    ))) / 6.0;
    assert!(
        (loss - expected.values("loss").1[0]).abs() <= TOLERANCE,
        "loss {loss}"
    );
}

/// Our save, read back by our load, gives the same logits; the file holds exactly the
/// keys HF wrote (what `scripts/check_hf_roundtrip.py` then feeds to `transformers`).
pub fn save_round_trip<B: Backend>(device: &B::Device) {
    let expected = Expected::load("seqcls");
    let loaded = load_pretrained::<B, RobertaForSequenceClassification<B>>(
        &fixture("seqcls"),
        LoadOptions::default(),
        device,
    )
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    save_pretrained(&loaded.model, &loaded.config, dir.path()).unwrap();
    let ours = HfWeights::read(&dir.path().join("model.safetensors")).unwrap();
    let theirs = HfWeights::read(&fixture("seqcls").join("model.safetensors")).unwrap();
    assert_eq!(
        ours.keys().collect::<Vec<_>>(),
        theirs.keys().collect::<Vec<_>>()
    );
    let again: RobertaForSequenceClassification<B> =
        load_pretrained::<B, _>(dir.path(), LoadOptions::default(), device)
            .unwrap()
            .model;
    expected.assert_close("logits", again.forward(expected.input(device)));
}

macro_rules! parity_tests {
    ($module:ident, $backend:ty) => {
        mod $module {
            type B = $backend;
            fn device() -> <B as burn::tensor::backend::BackendTypes>::Device {
                Default::default()
            }
            #[test]
            fn base_every_layer() {
                super::base_every_layer::<B>(&device());
            }
            #[test]
            fn masked_lm() {
                super::masked_lm::<B>(&device());
            }
            #[test]
            fn masked_lm_gradients() {
                super::masked_lm_gradients::<super::Autodiff<B>>(&device());
            }
            #[test]
            fn sequence_classification() {
                super::sequence_classification::<B>(&device());
            }
            #[test]
            fn regression() {
                super::regression::<B>(&device());
            }
            #[test]
            fn token_classification() {
                super::token_classification::<B>(&device());
            }
            #[test]
            fn question_answering() {
                super::question_answering::<B>(&device());
            }
            #[test]
            fn save_round_trip() {
                super::save_round_trip::<B>(&device());
            }
        }
    };
}

parity_tests!(flex, burn::backend::Flex);
#[cfg(feature = "wgpu")]
parity_tests!(wgpu, burn::backend::Wgpu);
#[cfg(feature = "cuda")]
parity_tests!(cuda, burn::backend::Cuda);
#[cfg(feature = "tch")]
parity_tests!(tch, burn::backend::LibTorch);

/// The MLM fixture saved by `torch.save` (pytorch_model.bin, with the tied decoder as a
/// key of its own) loads into the same model as its safetensors, and a file that is
/// not a PyTorch checkpoint is refused by name.
#[test]
fn a_pytorch_checkpoint_loads_as_its_safetensors() {
    type B = burn::backend::Flex;
    let device = Default::default();
    let expected = Expected::load("mlm");
    let pickled: RobertaForMaskedLM<B> = load("mlm-pytorch", &device);
    let safe: RobertaForMaskedLM<B> = load("mlm", &device);
    let logits = |m: &RobertaForMaskedLM<B>| {
        m.forward(expected.input(&device))
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .unwrap()
    };
    assert_eq!(logits(&pickled), logits(&safe));
    expected.assert_close("logits", pickled.forward(expected.input(&device)));

    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixture("mlm").join("config.json"),
        dir.path().join("config.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("pytorch_model.bin"), b"not a pickle").unwrap();
    let err =
        load_pretrained::<B, RobertaForMaskedLM<B>>(dir.path(), LoadOptions::default(), &device)
            .err()
            .unwrap()
            .to_string();
    assert!(
        err.contains("pytorch_model.bin: not a readable PyTorch checkpoint"),
        "{err}"
    );
}
