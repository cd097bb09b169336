//! Data parallelism on burn's own collective engine (`burn-collective`, burn's
//! `collective` feature, as burn-train's DDP strategy uses it): one model replica per
//! device in one process, each registered as a peer; gradients are summed with
//! `GradientsParams::all_reduce`, and the few numbers the loop needs from every replica
//! (the window's masked-token count, logged sums, the stop signal) with `all_reduce` on
//! a small tensor. With one replica nothing is registered and every sum is the value.

use anyhow::{Result, bail};
use burn::collective::{
    CollectiveConfig, PeerId, ReduceOperation, all_reduce, finish_collective, register,
};
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;

pub fn collective_config(world: usize) -> CollectiveConfig {
    CollectiveConfig::default().with_num_devices(world)
}

fn collective_error(what: &str, e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("data-parallel {what} failed: {e:?}")
}

/// This replica's membership of the group of replicas.
pub struct Group<B: Backend> {
    peer: PeerId,
    world: usize,
    device: B::Device,
}

impl<B: Backend> Group<B> {
    /// Registers replica `rank` of `world` on `device` (with autodiff, the inner
    /// backend).
    pub fn join(
        rank: usize,
        world: usize,
        device: &B::Device,
        config: &CollectiveConfig,
    ) -> Result<Self> {
        let peer = PeerId::from(rank);
        if world > 1 {
            register::<B>(peer, device.clone(), config.clone())
                .map_err(|e| collective_error("registration", e))?;
        }
        Ok(Self {
            peer,
            world,
            device: device.clone(),
        })
    }

    /// Element-wise sums over the replicas.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        if self.world == 1 {
            return Ok(values.to_vec());
        }
        let local = Tensor::<B, 1>::from_floats(values, &self.device);
        let summed = all_reduce::<B>(
            self.peer,
            local.into_primitive().tensor(),
            ReduceOperation::Sum,
        )
        .map_err(|e| collective_error("all-reduce", e))?;
        let summed = Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(summed));
        summed
            .into_data()
            .convert::<f64>()
            .into_vec::<f64>()
            .map_err(|e| anyhow::anyhow!("{e:?}"))
    }

    /// The sum of every replica's gradients (each already divided by the window's
    /// target count over all replicas): the gradient of the whole update. A replica
    /// whose share of the window was empty (the end of a fine-tuning epoch) contributes
    /// zeros: every peer must reduce the same parameters in the same order.
    pub fn sum_gradients<AB, M>(
        &self,
        mut grads: GradientsParams,
        model: &M,
    ) -> Result<GradientsParams>
    where
        AB: AutodiffBackend<InnerBackend = B>,
        M: AutodiffModule<AB>,
    {
        if self.world == 1 {
            return Ok(grads);
        }
        struct Zeros<'a, B: Backend> {
            grads: &'a mut GradientsParams,
            device: &'a B::Device,
        }
        impl<B: Backend, AB: AutodiffBackend<InnerBackend = B>> ModuleVisitor<AB> for Zeros<'_, B> {
            fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
                if self.grads.get::<B, D>(param.id).is_none() {
                    let zeros = Tensor::<B, D>::zeros(param.val().shape(), self.device);
                    self.grads.register(param.id, zeros);
                }
            }
        }
        model.visit(&mut Zeros::<B> {
            grads: &mut grads,
            device: &self.device,
        });
        grads
            .all_reduce::<B>(self.peer, ReduceOperation::Sum)
            .map_err(|e| collective_error("gradient all-reduce", e))
    }

    pub fn leave(self) -> Result<()> {
        if self.world > 1 {
            finish_collective::<B>(self.peer).map_err(|e| collective_error("finish", e))?;
        }
        Ok(())
    }
}

/// The model ready to be replicated. Every parameter gets an id from its position in the
/// module tree: `GradientsParams::all_reduce` reduces parameters in id order, and ids
/// drawn at random differ between processes, so nodes would reduce different tensors
/// at the same time. Taking each value also initialises the parameters burn creates
/// lazily, which a clone would otherwise initialise with its own random draw.
pub fn number_params<B: Backend, M: Module<B>>(model: M) -> M {
    struct Numbering(u64);
    impl<B: Backend> ModuleMapper<B> for Numbering {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (_, tensor, mapper) = param.consume();
            self.0 += 1;
            Param::from_mapped_value(ParamId::from(self.0), tensor, mapper)
        }
    }
    model.map(&mut Numbering(0))
}

/// The accumulation that keeps a checkpoint's sequences per update (micro-batch ×
/// accumulation × devices) on another number of devices.
pub fn rescale_accumulation(
    accumulation: usize,
    saved_devices: usize,
    devices: usize,
) -> Result<usize> {
    let replicas = accumulation * saved_devices;
    if !replicas.is_multiple_of(devices) {
        bail!(
            "the checkpoint's update is {accumulation} micro-batch(es) on each of {saved_devices} device(s); {devices} devices cannot split {replicas} micro-batches evenly (resume on a divisor of {replicas})"
        );
    }
    Ok(replicas / devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accumulation_keeps_the_effective_batch() {
        assert_eq!(rescale_accumulation(2, 2, 1).unwrap(), 4);
        assert_eq!(rescale_accumulation(4, 1, 2).unwrap(), 2);
        assert_eq!(rescale_accumulation(1, 2, 2).unwrap(), 1);
        let err = rescale_accumulation(1, 3, 2).unwrap_err().to_string();
        assert!(err.contains("evenly"), "{err}");
    }

    #[cfg(feature = "cpu")]
    #[test]
    fn two_replicas_sum_numbers_through_burn_collective() {
        type B = burn::backend::Flex;
        let config = collective_config(2);
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let config = config.clone();
                std::thread::spawn(move || {
                    let group = Group::<B>::join(rank, 2, &Default::default(), &config).unwrap();
                    let sum = group.sum(&[rank as f64 + 1.0, 10.0]).unwrap();
                    group.leave().unwrap();
                    sum
                })
            })
            .collect();
        for h in handles {
            assert_eq!(h.join().unwrap(), vec![3.0, 20.0]);
        }
    }
}
