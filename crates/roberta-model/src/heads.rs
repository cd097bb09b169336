//! Task heads on top of [`RobertaModel`], each shaped like its HF class so that the
//! checkpoint keys (`lm_head.dense`, `classifier.out_proj`, `qa_outputs`, …) map 1:1,
//! each with its key table ([`Pretrained`]) beside it, and [`with_architecture`], the one
//! list of them by their `config.json` name: a new head is a struct, its `Pretrained`
//! and a line there.

use burn::module::Param;
use burn::nn::{Dropout, DropoutConfig, LayerNorm, Linear};
use burn::prelude::*;

use crate::config::RobertaConfig;
use crate::hf::{HfIo, Pretrained};
use crate::init;
use crate::kernels::{self, Kernels};
use crate::model::{RobertaInput, RobertaModel, RobertaPooler, first_token};
use crate::precision::in_f32;

/// `RobertaLMHead`: dense → GELU → LayerNorm → decoder. The decoder's weight is the word
/// embedding matrix (tied, so not a parameter here); its bias is `lm_head.bias`.
#[derive(Module, Debug)]
pub struct RobertaLMHead<B: Backend> {
    pub dense: Linear<B>,
    pub layer_norm: LayerNorm<B>,
    /// `layer_norm`'s epsilon, which burn keeps private and the fused kernel needs.
    pub layer_norm_eps: f64,
    pub bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> RobertaLMHead<B> {
    pub fn new(config: &RobertaConfig, device: &B::Device) -> Self {
        Self {
            dense: init::linear(config, config.hidden_size, config.hidden_size, device),
            layer_norm: init::layer_norm(config, device),
            layer_norm_eps: config.layer_norm_eps,
            bias: Param::from_tensor(Tensor::zeros([config.vocab_size], device)),
        }
    }
}

impl<B: Kernels> RobertaLMHead<B> {
    /// `features`: `[n, hidden]`; `word_embeddings`: `[vocab, hidden]` → logits `[n, vocab]`.
    pub fn forward(&self, features: Tensor<B, 2>, word_embeddings: Tensor<B, 2>) -> Tensor<B, 2> {
        let x = in_f32(kernels::gelu(kernels::linear(&self.dense, features)), |x| {
            kernels::layer_norm(&self.layer_norm, self.layer_norm_eps, x)
        });
        kernels::tied_decoder(x, word_embeddings, self.bias.val())
    }
}

/// `RobertaForMaskedLM`.
#[derive(Module, Debug)]
pub struct RobertaForMaskedLM<B: Backend> {
    pub roberta: RobertaModel<B>,
    pub lm_head: RobertaLMHead<B>,
}

impl<B: Backend> RobertaForMaskedLM<B> {
    pub fn new(config: &RobertaConfig, device: &B::Device) -> Self {
        Self {
            roberta: RobertaModel::new(config, false, device),
            lm_head: RobertaLMHead::new(config, device),
        }
    }

    /// [`RobertaEmbeddings::copy_positions`] on the encoder's embeddings.
    pub fn copy_positions(mut self, trained: usize) -> Self {
        self.roberta.embeddings = self.roberta.embeddings.copy_positions(trained);
        self
    }
}

impl<B: Kernels> RobertaForMaskedLM<B> {
    /// Logits at every position: `[batch, seq, vocab]`.
    pub fn forward(&self, input: RobertaInput<B>) -> Tensor<B, 3> {
        let hidden = self.roberta.forward(input, false).last_hidden_state;
        let [batch, seq, width] = hidden.dims();
        let logits = self.lm_head.forward(
            hidden.reshape([batch * seq, width]),
            self.roberta.embeddings.word_embeddings.weight.val(),
        );
        let [_, vocab] = logits.dims();
        logits.reshape([batch, seq, vocab])
    }

    /// Logits at the given positions only: `positions` indexes the flattened
    /// `[batch * seq]` tokens; returns `[positions, vocab]`. The vocabulary projection is
    /// pretraining's largest matmul, and ~85% of its rows would be thrown away.
    pub fn forward_positions(
        &self,
        input: RobertaInput<B>,
        positions: Tensor<B, 1, Int>,
    ) -> Tensor<B, 2> {
        let hidden = self.roberta.forward(input, false).last_hidden_state;
        let [batch, seq, width] = hidden.dims();
        let selected = hidden.reshape([batch * seq, width]).select(0, positions);
        self.lm_head.forward(
            selected,
            self.roberta.embeddings.word_embeddings.weight.val(),
        )
    }
}

impl<B: Backend> Pretrained<B> for RobertaForMaskedLM<B> {
    const ARCHITECTURE: &'static str = "RobertaForMaskedLM";
    fn init(config: &RobertaConfig, _: usize, device: &B::Device) -> Self {
        RobertaForMaskedLM::new(config, device)
    }
    fn backbone(&self) -> &RobertaModel<B> {
        &self.roberta
    }
    fn backbone_mut(&mut self) -> &mut RobertaModel<B> {
        &mut self.roberta
    }
    fn head_prefix() -> Option<&'static str> {
        Some("lm_head.")
    }
    fn head_keys(&mut self, io: &mut impl HfIo<B>) {
        io.linear("lm_head.dense", &mut self.lm_head.dense);
        io.layer_norm("lm_head.layer_norm", &mut self.lm_head.layer_norm);
        // The decoder's weight is the word embeddings (tied), so it has no key of its own.
        io.param(
            &["lm_head.bias", "lm_head.decoder.bias"],
            &mut self.lm_head.bias,
        );
    }
}

/// `RobertaClassificationHead`: on `<s>`, dropout → dense → tanh → dropout → out_proj.
#[derive(Module, Debug)]
pub struct RobertaClassificationHead<B: Backend> {
    pub dense: Linear<B>,
    pub dropout: Dropout,
    pub out_proj: Linear<B>,
}

/// `RobertaForSequenceClassification`: single sentences or pairs; regression when
/// `num_labels == 1`.
#[derive(Module, Debug)]
pub struct RobertaForSequenceClassification<B: Backend> {
    pub roberta: RobertaModel<B>,
    pub classifier: RobertaClassificationHead<B>,
}

impl<B: Backend> RobertaForSequenceClassification<B> {
    pub fn new(config: &RobertaConfig, num_labels: usize, device: &B::Device) -> Self {
        Self {
            roberta: RobertaModel::new(config, false, device),
            classifier: RobertaClassificationHead {
                dense: init::linear(config, config.hidden_size, config.hidden_size, device),
                dropout: DropoutConfig::new(config.classifier_dropout_prob()).init(),
                out_proj: init::linear(config, config.hidden_size, num_labels, device),
            },
        }
    }

    pub fn num_labels(&self) -> usize {
        self.classifier.out_proj.weight.dims()[1]
    }
}

impl<B: Kernels> RobertaForSequenceClassification<B> {
    /// `[batch, num_labels]`.
    pub fn forward(&self, input: RobertaInput<B>) -> Tensor<B, 2> {
        let hidden = self.roberta.forward(input, false).last_hidden_state;
        let head = &self.classifier;
        let x = kernels::dropout(&head.dropout, first_token(hidden));
        let x = kernels::dropout(&head.dropout, head.dense.forward(x).tanh());
        head.out_proj.forward(x)
    }
}

impl<B: Backend> Pretrained<B> for RobertaForSequenceClassification<B> {
    const ARCHITECTURE: &'static str = "RobertaForSequenceClassification";
    fn init(config: &RobertaConfig, num_labels: usize, device: &B::Device) -> Self {
        RobertaForSequenceClassification::new(config, num_labels, device)
    }
    fn backbone(&self) -> &RobertaModel<B> {
        &self.roberta
    }
    fn backbone_mut(&mut self) -> &mut RobertaModel<B> {
        &mut self.roberta
    }
    fn head_prefix() -> Option<&'static str> {
        Some("classifier.")
    }
    fn head_keys(&mut self, io: &mut impl HfIo<B>) {
        io.linear("classifier.dense", &mut self.classifier.dense);
        io.linear("classifier.out_proj", &mut self.classifier.out_proj);
    }
    fn num_labels(&self) -> usize {
        RobertaForSequenceClassification::num_labels(self)
    }
}

/// `RobertaForTokenClassification`: dropout → classifier at every token.
#[derive(Module, Debug)]
pub struct RobertaForTokenClassification<B: Backend> {
    pub roberta: RobertaModel<B>,
    pub dropout: Dropout,
    pub classifier: Linear<B>,
}

impl<B: Backend> RobertaForTokenClassification<B> {
    pub fn new(config: &RobertaConfig, num_labels: usize, device: &B::Device) -> Self {
        Self {
            roberta: RobertaModel::new(config, false, device),
            dropout: DropoutConfig::new(config.classifier_dropout_prob()).init(),
            classifier: init::linear(config, config.hidden_size, num_labels, device),
        }
    }

    pub fn num_labels(&self) -> usize {
        self.classifier.weight.dims()[1]
    }
}

impl<B: Kernels> RobertaForTokenClassification<B> {
    /// `[batch, seq, num_labels]`.
    pub fn forward(&self, input: RobertaInput<B>) -> Tensor<B, 3> {
        let hidden = self.roberta.forward(input, false).last_hidden_state;
        kernels::linear(&self.classifier, kernels::dropout(&self.dropout, hidden))
    }
}

impl<B: Backend> Pretrained<B> for RobertaForTokenClassification<B> {
    const ARCHITECTURE: &'static str = "RobertaForTokenClassification";
    fn init(config: &RobertaConfig, num_labels: usize, device: &B::Device) -> Self {
        RobertaForTokenClassification::new(config, num_labels, device)
    }
    fn backbone(&self) -> &RobertaModel<B> {
        &self.roberta
    }
    fn backbone_mut(&mut self) -> &mut RobertaModel<B> {
        &mut self.roberta
    }
    fn head_prefix() -> Option<&'static str> {
        Some("classifier.")
    }
    fn head_keys(&mut self, io: &mut impl HfIo<B>) {
        io.linear("classifier", &mut self.classifier);
    }
    fn num_labels(&self) -> usize {
        RobertaForTokenClassification::num_labels(self)
    }
}

/// `RobertaForQuestionAnswering`: start and end logits for extractive spans.
#[derive(Module, Debug)]
pub struct RobertaForQuestionAnswering<B: Backend> {
    pub roberta: RobertaModel<B>,
    pub qa_outputs: Linear<B>,
}

impl<B: Backend> RobertaForQuestionAnswering<B> {
    pub fn new(config: &RobertaConfig, device: &B::Device) -> Self {
        Self {
            roberta: RobertaModel::new(config, false, device),
            qa_outputs: init::linear(config, config.hidden_size, 2, device),
        }
    }
}

impl<B: Kernels> RobertaForQuestionAnswering<B> {
    /// `(start_logits, end_logits)`, each `[batch, seq]`.
    pub fn forward(&self, input: RobertaInput<B>) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let hidden = self.roberta.forward(input, false).last_hidden_state;
        let [batch, seq, _] = hidden.dims();
        let logits = kernels::linear(&self.qa_outputs, hidden);
        let start = logits
            .clone()
            .slice([0..batch, 0..seq, 0..1])
            .reshape([batch, seq]);
        let end = logits.slice([0..batch, 0..seq, 1..2]).reshape([batch, seq]);
        (start, end)
    }
}

impl<B: Backend> Pretrained<B> for RobertaForQuestionAnswering<B> {
    const ARCHITECTURE: &'static str = "RobertaForQuestionAnswering";
    fn init(config: &RobertaConfig, _: usize, device: &B::Device) -> Self {
        RobertaForQuestionAnswering::new(config, device)
    }
    fn backbone(&self) -> &RobertaModel<B> {
        &self.roberta
    }
    fn backbone_mut(&mut self) -> &mut RobertaModel<B> {
        &mut self.roberta
    }
    fn head_prefix() -> Option<&'static str> {
        Some("qa_outputs.")
    }
    fn head_keys(&mut self, io: &mut impl HfIo<B>) {
        io.linear("qa_outputs", &mut self.qa_outputs);
    }
}

/// `RobertaForMultipleChoice`: each choice, paired with its context, is a row of its
/// own; the pooler (dense + tanh on `<s>`) → dropout → one score per row, read as a
/// distribution over each example's choices. HF keeps the pooler under the backbone
/// (`roberta.pooler`, the key it is saved under); here it is the head's, since a
/// masked-LM checkpoint has none and it then starts fresh with the classifier.
#[derive(Module, Debug)]
pub struct RobertaForMultipleChoice<B: Backend> {
    pub roberta: RobertaModel<B>,
    pub pooler: RobertaPooler<B>,
    pub dropout: Dropout,
    pub classifier: Linear<B>,
}

impl<B: Backend> RobertaForMultipleChoice<B> {
    pub fn new(config: &RobertaConfig, device: &B::Device) -> Self {
        Self {
            roberta: RobertaModel::new(config, false, device),
            pooler: RobertaPooler {
                dense: init::linear(config, config.hidden_size, config.hidden_size, device),
            },
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            classifier: init::linear(config, config.hidden_size, 1, device),
        }
    }
}

impl<B: Kernels> RobertaForMultipleChoice<B> {
    /// `input`: `num_choices` rows per example, one after the other →
    /// `[examples, num_choices]`.
    pub fn forward(&self, input: RobertaInput<B>, num_choices: usize) -> Tensor<B, 2> {
        let hidden = self.roberta.forward(input, false).last_hidden_state;
        let pooled = kernels::dropout(&self.dropout, self.pooler.forward(hidden));
        let scores = kernels::linear(&self.classifier, pooled);
        let [rows, _] = scores.dims();
        scores.reshape([rows / num_choices, num_choices])
    }
}

impl<B: Backend> Pretrained<B> for RobertaForMultipleChoice<B> {
    const ARCHITECTURE: &'static str = "RobertaForMultipleChoice";
    fn init(config: &RobertaConfig, _: usize, device: &B::Device) -> Self {
        RobertaForMultipleChoice::new(config, device)
    }
    fn backbone(&self) -> &RobertaModel<B> {
        &self.roberta
    }
    fn backbone_mut(&mut self) -> &mut RobertaModel<B> {
        &mut self.roberta
    }
    fn head_prefix() -> Option<&'static str> {
        Some("classifier.")
    }
    fn head_keys(&mut self, io: &mut impl HfIo<B>) {
        io.linear("roberta.pooler.dense", &mut self.pooler.dense);
        io.linear("classifier", &mut self.classifier);
    }
}

/// Calls back with the model type of an architecture.
pub trait WithArchitecture<B: Backend> {
    type Output;
    fn run<M: Pretrained<B> + Module<B>>(self) -> Self::Output;
}

/// Runs `w` with the model type that `name` (a `config.json` `architectures` entry)
/// names; `None` for a name this crate does not implement.
pub fn with_architecture<B: Backend, W: WithArchitecture<B>>(
    name: &str,
    w: W,
) -> Option<W::Output> {
    fn is<B: Backend, M: Pretrained<B>>(name: &str) -> bool {
        name == M::ARCHITECTURE
    }
    Some(if is::<B, RobertaModel<B>>(name) {
        w.run::<RobertaModel<B>>()
    } else if is::<B, RobertaForMaskedLM<B>>(name) {
        w.run::<RobertaForMaskedLM<B>>()
    } else if is::<B, RobertaForSequenceClassification<B>>(name) {
        w.run::<RobertaForSequenceClassification<B>>()
    } else if is::<B, RobertaForTokenClassification<B>>(name) {
        w.run::<RobertaForTokenClassification<B>>()
    } else if is::<B, RobertaForQuestionAnswering<B>>(name) {
        w.run::<RobertaForQuestionAnswering<B>>()
    } else if is::<B, RobertaForMultipleChoice<B>>(name) {
        w.run::<RobertaForMultipleChoice<B>>()
    } else {
        return None;
    })
}
