//! Data parallelism on burn's own collective engine (`burn-collective`, burn's
//! `collective` feature, as burn-train's DDP strategy uses it): one model replica per
//! device in one process, each registered as a peer; gradients are summed with
//! `GradientsParams::all_reduce`, and the few numbers the loop needs from every replica
//! (the window's masked-token count, logged sums, the stop signal) with `all_reduce` on
//! a small tensor. With one replica nothing is registered and every sum is the value.
//! Replicas in separate processes (an MPI launch, see [`crate::parallel::processes`]) sum the same
//! numbers and gradients through MPI instead, as one flat host buffer per update.

use anyhow::{Result, bail};
use burn::collective::{
    CollectiveConfig, PeerId, ReduceOperation, all_reduce, finish_collective, register,
};
use burn::module::{AutodiffModule, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::TensorPrimitive;
use burn::tensor::backend::AutodiffBackend;

pub mod processes;

/// Says what data parallelism costs, when there is any.
pub fn announce(world: usize, params: usize) {
    if world > 1 {
        tracing::info!(
            "{world} replicas: every update all-reduces the gradients of {params} parameters ({:.1} MB in fp32)",
            params as f64 * 4e-6
        );
    }
}

pub fn collective_config(world: usize) -> CollectiveConfig {
    CollectiveConfig::default().with_num_devices(world)
}

fn collective_error(what: &str, e: impl std::fmt::Debug) -> anyhow::Error {
    anyhow::anyhow!("data-parallel {what} failed: {e:?}")
}

/// This replica's membership of the group of replicas.
pub struct Group<B: Backend> {
    link: Link,
    device: B::Device,
}

/// How a replica reaches the others.
enum Link {
    Alone,
    /// Another thread of this process holds each other replica (burn-collective).
    Threads(PeerId),
    /// Each other replica is another process (MPI).
    #[cfg(feature = "mpi")]
    Processes,
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
        let link = if world == 1 {
            Link::Alone
        } else if crate::parallel::processes::Processes::current().count > 1 {
            #[cfg(feature = "mpi")]
            {
                Link::Processes
            }
            #[cfg(not(feature = "mpi"))]
            unreachable!("several processes need the mpi feature")
        } else {
            let peer = PeerId::from(rank);
            register::<B>(peer, device.clone(), config.clone())
                .map_err(|e| collective_error("registration", e))?;
            Link::Threads(peer)
        };
        Ok(Self {
            link,
            device: device.clone(),
        })
    }

    /// Element-wise sums over the replicas.
    pub fn sum(&self, values: &[f64]) -> Result<Vec<f64>> {
        let peer = match self.link {
            Link::Alone => return Ok(values.to_vec()),
            #[cfg(feature = "mpi")]
            Link::Processes => {
                let mut values = values.to_vec();
                crate::parallel::processes::sum_f64(&mut values);
                return Ok(values);
            }
            Link::Threads(peer) => peer,
        };
        let local = Tensor::<B, 1>::from_floats(values, &self.device);
        let summed = all_reduce::<B>(peer, local.into_primitive().tensor(), ReduceOperation::Sum)
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
        if matches!(self.link, Link::Alone) {
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
        match self.link {
            Link::Threads(peer) => grads
                .all_reduce::<B>(peer, ReduceOperation::Sum)
                .map_err(|e| collective_error("gradient all-reduce", e)),
            #[cfg(feature = "mpi")]
            Link::Processes => Ok(sum_over_processes::<B, AB, M>(grads, model, &self.device)),
            Link::Alone => Ok(grads),
        }
    }

    /// Rank 0's parameters on every replica, as DDP starts: a model built from the same
    /// seed everywhere would already agree, but one that was not (another backend's
    /// random numbers, a head initialised differently) must not train apart.
    pub fn broadcast_model<M: Module<B2>, B2: Backend>(&self, model: M) -> M {
        #[cfg(feature = "mpi")]
        if matches!(self.link, Link::Processes) {
            let mut host = to_host(model_values(&model));
            crate::parallel::processes::broadcast_f32(&mut host);
            return load_flat(model, &host);
        }
        model
    }

    pub fn leave(self) -> Result<()> {
        if let Link::Threads(peer) = self.link {
            finish_collective::<B>(peer).map_err(|e| collective_error("finish", e))?;
        }
        Ok(())
    }
}

/// Every float parameter's value, flat, in the module tree's order (the same in every
/// process).
#[cfg(feature = "mpi")]
fn model_values<B: Backend, M: Module<B>>(model: &M) -> Vec<Tensor<B, 1>> {
    struct Values<B: Backend>(Vec<Tensor<B, 1>>);
    impl<B: Backend> ModuleVisitor<B> for Values<B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
            let value = param.val();
            let n = value.shape().num_elements();
            self.0.push(value.reshape([n]));
        }
    }
    let mut values = Values(Vec::new());
    model.visit(&mut values);
    values.0
}

/// The pieces, end to end, on the host: one copy from the device, not one per tensor.
#[cfg(feature = "mpi")]
fn to_host<B: Backend>(pieces: Vec<Tensor<B, 1>>) -> Vec<f32> {
    Tensor::cat(pieces, 0)
        .into_data()
        .convert::<f32>()
        .into_vec::<f32>()
        .expect("converted to f32")
}

/// The model with its float parameters replaced, in tree order, by slices of `host`.
#[cfg(feature = "mpi")]
fn load_flat<B: Backend, M: Module<B>>(model: M, host: &[f32]) -> M {
    struct Load<'a> {
        host: &'a [f32],
        offset: usize,
    }
    impl<B: Backend> ModuleMapper<B> for Load<'_> {
        fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
            let (id, value, mapper) = param.consume();
            let shape = value.shape();
            let n = shape.num_elements();
            let slice = &self.host[self.offset..self.offset + n];
            self.offset += n;
            let loaded =
                Tensor::<B, D>::from_data(TensorData::new(slice.to_vec(), shape), &value.device())
                    .set_require_grad(value.is_require_grad());
            Param::from_mapped_value(id, loaded, mapper)
        }
    }
    model.map(&mut Load { host, offset: 0 })
}

/// The gradients summed over the processes: every parameter's (zeros where this replica
/// has none) in tree order, as one flat buffer on the host, summed by MPI, and back.
#[cfg(feature = "mpi")]
fn sum_over_processes<B, AB, M>(
    mut grads: GradientsParams,
    model: &M,
    device: &B::Device,
) -> GradientsParams
where
    B: Backend,
    AB: AutodiffBackend<InnerBackend = B>,
    M: AutodiffModule<AB>,
{
    struct Take<'a, B: Backend> {
        grads: &'a mut GradientsParams,
        pieces: Vec<Tensor<B, 1>>,
    }
    impl<B: Backend, AB: AutodiffBackend<InnerBackend = B>> ModuleVisitor<AB> for Take<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            let grad = self
                .grads
                .remove::<B, D>(param.id)
                .expect("zero-filled before");
            let n = grad.shape().num_elements();
            self.pieces.push(grad.reshape([n]));
        }
    }
    let mut take = Take::<B> {
        grads: &mut grads,
        pieces: Vec::new(),
    };
    model.visit(&mut take);
    let mut host = to_host(take.pieces);
    crate::parallel::processes::sum_f32(&mut host);
    let n = host.len();
    let summed = Tensor::<B, 1>::from_data(TensorData::new(host, [n]), device);
    struct Give<'a, B: Backend> {
        grads: &'a mut GradientsParams,
        summed: Tensor<B, 1>,
        offset: usize,
    }
    impl<B: Backend, AB: AutodiffBackend<InnerBackend = B>> ModuleVisitor<AB> for Give<'_, B> {
        fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AB, D>>) {
            let shape = param.val().shape();
            let n = shape.num_elements();
            let grad = self
                .summed
                .clone()
                .slice(self.offset..self.offset + n)
                .reshape(shape);
            self.offset += n;
            self.grads.register::<B, D>(param.id, grad);
        }
    }
    model.visit(&mut Give::<B> {
        grads: &mut grads,
        summed,
        offset: 0,
    });
    grads
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
