use burn::nn::Linear;
use burn::prelude::*;

use crate::kernels::Kernels;

use crate::attention::attention_bias;
use crate::config::RobertaConfig;
use crate::embeddings::RobertaEmbeddings;
use crate::encoder::RobertaEncoder;
use crate::init;

/// One batch of token ids, as every model and head consumes it.
#[derive(Debug, Clone)]
pub struct RobertaInput<B: Backend> {
    /// `[batch, seq]`.
    pub input_ids: Tensor<B, 2, Int>,
    /// `[batch, seq]`, 1 for tokens, 0 for padding.
    pub attention_mask: Tensor<B, 2, Int>,
    /// `[batch, seq]`; all zeros (RoBERTa's only type) when absent.
    pub token_type_ids: Option<Tensor<B, 2, Int>>,
}

impl<B: Backend> RobertaInput<B> {
    pub fn new(input_ids: Tensor<B, 2, Int>, attention_mask: Tensor<B, 2, Int>) -> Self {
        Self {
            input_ids,
            attention_mask,
            token_type_ids: None,
        }
    }

    /// Builds a batch from padded rows of ids and their lengths.
    pub fn from_rows<R: AsRef<[u32]>>(rows: &[R], pad_token_id: u32, device: &B::Device) -> Self {
        let seq = rows
            .iter()
            .map(|r| r.as_ref().len())
            .max()
            .unwrap_or(0)
            .max(1);
        let mut ids = Vec::with_capacity(rows.len() * seq);
        let mut mask = Vec::with_capacity(rows.len() * seq);
        for row in rows {
            let row = row.as_ref();
            for i in 0..seq {
                ids.push(row.get(i).copied().unwrap_or(pad_token_id) as i64);
                mask.push(i64::from(i < row.len()));
            }
        }
        let shape = [rows.len(), seq];
        Self::new(
            Tensor::from_data(TensorData::new(ids, shape), device),
            Tensor::from_data(TensorData::new(mask, shape), device),
        )
    }
}

/// What [`RobertaModel::forward`] returns, named as HF names it.
#[derive(Debug, Clone)]
pub struct RobertaModelOutput<B: Backend> {
    /// `[batch, seq, hidden]`.
    pub last_hidden_state: Tensor<B, 3>,
    /// The embedding output followed by every layer's output (HF `hidden_states`);
    /// empty unless requested.
    pub hidden_states: Vec<Tensor<B, 3>>,
    /// `[batch, hidden]`, when the model has a pooler.
    pub pooler_output: Option<Tensor<B, 2>>,
}

/// `RobertaPooler`: dense + tanh on the `<s>` token.
#[derive(Module, Debug)]
pub struct RobertaPooler<B: Backend> {
    pub dense: Linear<B>,
}

impl<B: Backend> RobertaPooler<B> {
    /// `hidden`: `[batch, seq, hidden]` → `[batch, hidden]`.
    pub fn forward(&self, hidden: Tensor<B, 3>) -> Tensor<B, 2> {
        self.dense.forward(first_token(hidden)).tanh()
    }
}

/// `RobertaModel`: embeddings, encoder, and the optional pooler.
#[derive(Module, Debug)]
pub struct RobertaModel<B: Backend> {
    pub embeddings: RobertaEmbeddings<B>,
    pub encoder: RobertaEncoder<B>,
    pub pooler: Option<RobertaPooler<B>>,
}

impl<B: Backend> RobertaModel<B> {
    pub fn new(config: &RobertaConfig, add_pooling_layer: bool, device: &B::Device) -> Self {
        Self {
            embeddings: RobertaEmbeddings::new(config, device),
            encoder: RobertaEncoder::new(config, device),
            pooler: add_pooling_layer.then(|| RobertaPooler {
                dense: init::linear(config, config.hidden_size, config.hidden_size, device),
            }),
        }
    }

    /// Changes the dropout rates of a loaded model, which take their values from the
    /// config they were built with.
    pub fn set_dropout(&mut self, hidden: f64, attention: f64) {
        self.embeddings.dropout.prob = hidden;
        for layer in &mut self.encoder.layer {
            layer.attention.self_attn.dropout.prob = attention;
            layer.attention.output.dropout.prob = hidden;
            layer.output.dropout.prob = hidden;
        }
    }

    pub fn num_layers(&self) -> usize {
        self.encoder.layer.len()
    }
}

impl<B: Kernels> RobertaModel<B> {
    pub fn forward(
        &self,
        input: RobertaInput<B>,
        output_hidden_states: bool,
    ) -> RobertaModelOutput<B> {
        let bias = attention_bias(input.attention_mask);
        let embedded = self
            .embeddings
            .forward(input.input_ids, input.token_type_ids);
        let mut hidden_states = Vec::new();
        if output_hidden_states {
            hidden_states.push(embedded.clone());
        }
        let (last_hidden_state, layers) =
            self.encoder.forward(embedded, bias, output_hidden_states);
        hidden_states.extend(layers);
        let pooler_output = self
            .pooler
            .as_ref()
            .map(|pooler| pooler.forward(last_hidden_state.clone()));
        RobertaModelOutput {
            last_hidden_state,
            hidden_states,
            pooler_output,
        }
    }
}

/// The `<s>` token's state: `[batch, seq, hidden]` → `[batch, hidden]`.
pub fn first_token<B: Backend>(hidden: Tensor<B, 3>) -> Tensor<B, 2> {
    let [batch, _, width] = hidden.dims();
    hidden
        .slice([0..batch, 0..1, 0..width])
        .reshape([batch, width])
}
