use burn::nn::{Dropout, DropoutConfig, Embedding, LayerNorm};
use burn::prelude::*;

use crate::config::RobertaConfig;
use crate::init;
use crate::kernels::{self, Kernels};
use crate::precision::in_f32;

/// `RobertaEmbeddings`: word + position + token type, then LayerNorm and dropout.
#[derive(Module, Debug)]
pub struct RobertaEmbeddings<B: Backend> {
    pub word_embeddings: Embedding<B>,
    pub position_embeddings: Embedding<B>,
    pub token_type_embeddings: Embedding<B>,
    /// HF key `embeddings.LayerNorm`.
    pub layer_norm: LayerNorm<B>,
    /// `layer_norm`'s epsilon, which burn keeps private and the fused kernel needs.
    pub layer_norm_eps: f64,
    pub dropout: Dropout,
    pub padding_idx: usize,
}

impl<B: Backend> RobertaEmbeddings<B> {
    pub fn new(config: &RobertaConfig, device: &B::Device) -> Self {
        Self {
            word_embeddings: init::embedding(
                config,
                config.vocab_size,
                Some(config.pad_token_id),
                device,
            ),
            position_embeddings: init::embedding(
                config,
                config.max_position_embeddings,
                Some(config.pad_token_id),
                device,
            ),
            token_type_embeddings: init::embedding(config, config.type_vocab_size, None, device),
            layer_norm: init::layer_norm(config, device),
            layer_norm_eps: config.layer_norm_eps,
            dropout: DropoutConfig::new(config.hidden_dropout_prob).init(),
            padding_idx: config.pad_token_id,
        }
    }

    /// Longformer's initialisation of positions no training has reached (Beltagy et al.
    /// 2020, §5: the new position embeddings start as copies of the trained ones,
    /// repeated), for a run that trained on blocks of `trained` tokens and goes on to
    /// longer ones: every position past the first `trained` real ones takes the
    /// embedding of the position `trained` earlier, repeatedly, so the attention's
    /// learned bias towards nearby tokens holds on the new positions from the start.
    /// The rows before the first real position (`padding_idx` and below) are kept.
    pub fn copy_positions(self, trained: usize) -> Self {
        let first = self.padding_idx + 1;
        let rows = self.position_embeddings.weight.dims()[0];
        if trained == 0 || first + trained >= rows {
            return self;
        }
        let source: Vec<i64> = (0..rows)
            .map(|r| {
                let r = if r < first + trained {
                    r
                } else {
                    first + (r - first) % trained
                };
                r as i64
            })
            .collect();
        let mut position_embeddings = self.position_embeddings;
        position_embeddings.weight = position_embeddings.weight.map(|w| {
            let grad = w.is_require_grad();
            let index = Tensor::from_data(TensorData::new(source, [rows]), &w.device());
            let copied = w.select(0, index).detach();
            if grad { copied.require_grad() } else { copied }
        });
        Self {
            position_embeddings,
            ..self
        }
    }
}

impl<B: Kernels> RobertaEmbeddings<B> {
    /// `input_ids`, `token_type_ids`: `[batch, seq]` → `[batch, seq, hidden]`.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> Tensor<B, 3> {
        let position_ids = position_ids(input_ids.clone(), self.padding_idx);
        let token_type_ids =
            token_type_ids.unwrap_or_else(|| Tensor::zeros(input_ids.dims(), &input_ids.device()));
        let embeddings = self.word_embeddings.forward(input_ids)
            + self.position_embeddings.forward(position_ids)
            + self.token_type_embeddings.forward(token_type_ids);
        let embeddings = in_f32(embeddings, |x| {
            kernels::layer_norm(&self.layer_norm, self.layer_norm_eps, x)
        });
        kernels::dropout(&self.dropout, embeddings)
    }
}

/// HF's `create_position_ids_from_input_ids`: real tokens count from `padding_idx + 1`,
/// padding keeps `padding_idx`, so left- and right-padded inputs embed alike.
pub fn position_ids<B: Backend>(
    input_ids: Tensor<B, 2, Int>,
    padding_idx: usize,
) -> Tensor<B, 2, Int> {
    let not_pad = input_ids.not_equal_elem(padding_idx as i64).int();
    not_pad.clone().cumsum(1) * not_pad + padding_idx as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;

    #[test]
    fn positions_start_after_padding_idx_and_skip_pads() {
        let device = Default::default();
        let ids =
            Tensor::<Flex, 2, Int>::from_data([[0, 5, 6, 2, 1, 1], [1, 1, 0, 7, 2, 1]], &device);
        let pos = position_ids(ids, 1).into_data().to_vec::<i32>().unwrap();
        assert_eq!(pos, vec![2, 3, 4, 5, 1, 1, 1, 1, 2, 3, 4, 1]);
    }

    #[test]
    fn copied_positions_repeat_the_trained_ones_and_keep_the_rest() {
        let _generator = crate::generator_lock();
        let device = Default::default();
        let mut config = RobertaConfig::tiny(50);
        config.max_position_embeddings = 2 + 7;
        let e = RobertaEmbeddings::<burn::backend::Autodiff<Flex>>::new(&config, &device);
        let before = e.position_embeddings.weight.val();
        let id = e.position_embeddings.weight.id;
        let e = e.copy_positions(3);
        let after = e.position_embeddings.weight.val();
        assert!(after.is_require_grad(), "the copy stays a trainable leaf");
        assert_eq!(
            e.position_embeddings.weight.id, id,
            "the optimizer's state follows it"
        );
        let row = |t: &Tensor<_, 2>, r: usize| {
            t.clone()
                .slice([r..r + 1, 0..config.hidden_size])
                .into_data()
                .to_vec::<f32>()
                .unwrap()
        };
        // Rows 0–1 (padding and below) and the trained 2–4 stay; 5–8 repeat 2–4.
        for (r, from) in [
            (0, 0),
            (1, 1),
            (2, 2),
            (3, 3),
            (4, 4),
            (5, 2),
            (6, 3),
            (7, 4),
            (8, 2),
        ] {
            assert_eq!(row(&after, r), row(&before, from), "row {r}");
        }
        assert_ne!(
            row(&before, 5),
            row(&before, 2),
            "the test would see no copy"
        );
    }

    #[test]
    fn padding_rows_start_at_zero() {
        let _generator = crate::generator_lock();
        let device = Default::default();
        let config = RobertaConfig::tiny(50);
        let e = RobertaEmbeddings::<Flex>::new(&config, &device);
        let row = e
            .word_embeddings
            .weight
            .val()
            .slice([1..2, 0..config.hidden_size]);
        assert_eq!(row.abs().sum().into_scalar(), 0.0);
        let std = e
            .word_embeddings
            .weight
            .val()
            .var(0)
            .mean()
            .sqrt()
            .into_scalar();
        assert!((std - 0.02).abs() < 0.005, "init std {std}");
    }
}
