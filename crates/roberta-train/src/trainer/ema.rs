//! An exponential moving average of the weights (`train.ema_decay`): after every
//! optimizer update, `ema = d·ema + (1 − d)·weights`, on the device, with the decay
//! warmed up as TensorFlow's `ExponentialMovingAverage(num_updates=…)` does,
//! `d_t = min(d, (1 + t) / (10 + t))`, so that the average does not remember the random
//! initialisation for thousands of updates. Evaluation, `best/` and `final/` use the
//! average; checkpoints keep it beside the raw weights, which training continues from.

use std::path::Path;

use anyhow::{Context, Result};
use burn::module::{Module, ModuleMapper, ModuleVisitor, Param};
use burn::prelude::*;
use burn::tensor::TensorPrimitive;

use crate::run::checkpoint::{Recorder32, read_error, write_error};

/// The average's file in a checkpoint (burn's record, as the model's).
pub const EMA: &str = "ema";

/// The averaged weights, a copy of the model without autodiff.
pub struct Ema<M> {
    decay: f64,
    pub model: M,
}

impl<M> Ema<M> {
    pub fn new(decay: f64, model: M) -> Self {
        Self { decay, model }
    }

    /// The decay of update `step` (counting from 1).
    pub fn decay_at(&self, step: u64) -> f64 {
        self.decay.min((1.0 + step as f64) / (10.0 + step as f64))
    }

    /// Folds the weights after update `step` into the average.
    pub fn update<B: Backend>(&mut self, step: u64, weights: &M)
    where
        M: Module<B>,
    {
        struct Collect<B: Backend>(Vec<TensorPrimitive<B>>);
        impl<B: Backend> ModuleVisitor<B> for Collect<B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
                self.0.push(param.val().into_primitive());
            }
        }
        struct Fold<B: Backend> {
            weights: std::vec::IntoIter<TensorPrimitive<B>>,
            decay: f64,
        }
        impl<B: Backend> ModuleMapper<B> for Fold<B> {
            fn map_float<const D: usize>(
                &mut self,
                param: Param<Tensor<B, D>>,
            ) -> Param<Tensor<B, D>> {
                let (id, average, mapper) = param.consume();
                let w = Tensor::<B, D>::from_primitive(
                    self.weights
                        .next()
                        .expect("the average has the model's parameters"),
                );
                let folded = average.mul_scalar(self.decay) + w.mul_scalar(1.0 - self.decay);
                Param::from_mapped_value(id, folded, mapper)
            }
        }
        let mut collect = Collect(Vec::new());
        weights.visit(&mut collect);
        let decay = self.decay_at(step);
        let model = std::mem::replace(&mut self.model, weights.clone());
        self.model = model.map(&mut Fold {
            weights: collect.0.into_iter(),
            decay,
        });
    }

    /// Writes the average into a checkpoint being written.
    pub fn save<B: Backend>(&self, dir: &Path) -> Result<()>
    where
        M: Module<B>,
    {
        self.model
            .clone()
            .save_file(dir.join(EMA), &Recorder32::new())
            .map_err(write_error)
            .with_context(|| format!("writing {}", dir.join(EMA).display()))
    }

    /// The average a checkpoint holds, read into `self`'s structure.
    pub fn load<B: Backend>(self, dir: &Path, device: &B::Device) -> Result<Self>
    where
        M: Module<B>,
    {
        let model = self
            .model
            .load_file(dir.join(EMA), &Recorder32::new(), device)
            .map_err(read_error)
            .with_context(|| format!("{}: the weights' average", dir.display()))?;
        Ok(Self {
            decay: self.decay,
            model,
        })
    }
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use burn::nn::{Linear, LinearConfig};

    #[test]
    fn the_average_follows_the_formula_with_its_warmup() {
        let device = Default::default();
        let start: Linear<Flex> = LinearConfig::new(3, 2).init(&device);
        let values = |l: &Linear<Flex>| l.weight.val().into_data().to_vec::<f32>().unwrap();
        // Read first: a clone of a lazily initialised parameter would draw its own values.
        let mut expected: Vec<f64> = values(&start).iter().map(|&v| f64::from(v)).collect();
        let mut ema = Ema::new(0.999, start.clone());
        assert!((ema.decay_at(1) - 2.0 / 11.0).abs() < 1e-12);
        assert_eq!(ema.decay_at(100_000), 0.999);
        let mut weights = start;
        for step in 1..=3 {
            weights.weight = weights.weight.map(|w| w.add_scalar(1.0));
            ema.update(step, &weights);
            let d = ema.decay_at(step);
            for (e, w) in expected.iter_mut().zip(values(&weights)) {
                *e = d * *e + (1.0 - d) * f64::from(w);
            }
        }
        for (got, want) in values(&ema.model).iter().zip(&expected) {
            assert!((f64::from(*got) - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
