//! Several processes, one device each, started by an MPI launcher (`mpirun`, Slurm's
//! `srun --mpi=pmix`): the way a run spans machines. MPI (feature `mpi`) is the engine:
//! burn has no collective across processes (burn-collective's global level is broken in
//! 0.21 and gone after it), and MPI is what every cluster already runs. Each process is
//! one rank; rank 0 logs, evaluates and writes the run directory, and the others read
//! it (a shared filesystem). The trainer sums its few numbers and its gradients across
//! ranks with [`sum_f64`] and [`sum_f32`], once per update, through host memory.
//!
//! Without a launcher (or without the feature) the process is rank 0 of 1, and every
//! function here is a no-op.

use std::sync::OnceLock;

use anyhow::Result;

/// Variables that MPI launchers set in the processes they start, with the world size
/// where the launcher gives it: Open MPI's mpirun, MPICH's Hydra and Slurm's PMI-2,
/// Slurm's and Open MPI's PMIx.
const LAUNCHER_VARS: [&str; 3] = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"];

/// This process's place in the run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processes {
    pub rank: usize,
    pub count: usize,
    /// The rank among the processes on this machine: which GPU `--device cuda` means.
    pub local_rank: usize,
}

static CURRENT: OnceLock<Processes> = OnceLock::new();

impl Processes {
    /// The number of replicas in a run of `local` devices in this process: threads of
    /// one process, or one device in each of several processes, not both.
    pub fn replicas(&self, local: usize) -> Result<usize> {
        if self.count > 1 && local > 1 {
            anyhow::bail!(
                "under an MPI launcher each process drives one device: drop --devices and start one process per device"
            );
        }
        Ok(world(local))
    }

    const ALONE: Self = Self {
        rank: 0,
        count: 1,
        local_rank: 0,
    };

    pub fn current() -> Self {
        CURRENT.get().copied().unwrap_or(Self::ALONE)
    }

    /// Rank 0: the process that owns the run directory.
    pub fn is_leader(&self) -> bool {
        self.rank == 0
    }

    /// Waits for every rank (rank 0 writing what the others then read).
    pub fn barrier(&self) {
        #[cfg(feature = "mpi")]
        if self.count > 1 {
            use mpi::collective::CommunicatorCollectives;
            mpi::topology::SimpleCommunicator::world().barrier();
        }
    }
}

/// The MPI job this process belongs to, if any; held by `main` until the end, when it
/// finalises MPI.
pub struct Launch {
    #[cfg(feature = "mpi")]
    _universe: Option<mpi::environment::Universe>,
}

/// Joins the MPI job when a launcher started this process. A binary built without the
/// `mpi` feature refuses to run as one of several ranks: each would train alone, on the
/// same run directory.
pub fn launch() -> Result<Launch> {
    let launcher = LAUNCHER_VARS
        .iter()
        .find_map(|var| Some((*var, std::env::var(var).ok()?)));
    #[cfg(not(feature = "mpi"))]
    {
        if let Some((var, value)) = launcher
            && var != "PMIX_RANK"
            && value.parse::<usize>().is_ok_and(|size| size > 1)
        {
            anyhow::bail!(
                "started by an MPI launcher as one of {value} processes ({var}={value}), but this binary was built without the `mpi` feature: rebuild with `cargo build --release --features mpi` (README, \"Several machines\")"
            );
        }
        Ok(Launch {})
    }
    #[cfg(feature = "mpi")]
    {
        use mpi::traits::Communicator;
        if launcher.is_none() {
            return Ok(Launch { _universe: None });
        }
        // Only the main thread calls MPI; the loader's threads never do.
        let (universe, _) = mpi::initialize_with_threading(mpi::Threading::Funneled)
            .ok_or_else(|| anyhow::anyhow!("MPI was already initialised"))?;
        let world = universe.world();
        let local = world.split_shared(world.rank());
        let processes = Processes {
            rank: world.rank() as usize,
            count: world.size() as usize,
            local_rank: local.rank() as usize,
        };
        CURRENT
            .set(processes)
            .map_err(|_| anyhow::anyhow!("MPI was already initialised"))?;
        Ok(Launch {
            _universe: Some(universe),
        })
    }
}

/// Ends the whole job after an error on this rank: the other ranks would otherwise wait
/// for it in their next collective forever. Returns on a process alone.
pub fn abort_job(code: i32) {
    #[cfg(feature = "mpi")]
    if Processes::current().count > 1 {
        use mpi::traits::Communicator;
        mpi::topology::SimpleCommunicator::world().abort(code);
    }
    let _ = code;
}

/// MPI counts are C ints: longer buffers go in slices of this many elements.
#[cfg(feature = "mpi")]
const SLICE: usize = 1 << 28;

/// Element-wise sums over the ranks, in place.
#[cfg(feature = "mpi")]
pub fn sum_f64(values: &mut [f64]) {
    use mpi::collective::{CommunicatorCollectives, SystemOperation};
    let input = values.to_vec();
    mpi::topology::SimpleCommunicator::world().all_reduce_into(
        &input[..],
        values,
        SystemOperation::sum(),
    );
}

/// Element-wise sums over the ranks, in place.
#[cfg(feature = "mpi")]
pub fn sum_f32(values: &mut [f32]) {
    use mpi::collective::{CommunicatorCollectives, SystemOperation};
    let world = mpi::topology::SimpleCommunicator::world();
    for slice in values.chunks_mut(SLICE) {
        let input = slice.to_vec();
        world.all_reduce_into(&input[..], slice, SystemOperation::sum());
    }
}

/// Rank 0's values, on every rank.
#[cfg(feature = "mpi")]
pub fn broadcast_f32(values: &mut [f32]) {
    use mpi::traits::{Communicator, Root};
    let world = mpi::topology::SimpleCommunicator::world();
    let root = world.process_at_rank(0);
    for slice in values.chunks_mut(SLICE) {
        root.broadcast_into(slice);
    }
}

/// The number of replicas in a run of `local` devices in each process.
pub fn world(local: usize) -> usize {
    local * Processes::current().count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_alone_is_rank_zero_of_one() {
        let p = Processes::current();
        assert_eq!(p, Processes::ALONE);
        assert!(p.is_leader());
        assert_eq!(world(3), 3);
        p.barrier();
    }
}
