//! Backends are cargo features; `--device` picks among the compiled-in ones at run time.
//! Every command is one generic function over `B: Backend`, instantiated here per backend.

use std::fmt;
use std::str::FromStr;

/// A device as the user names it on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// burn's `flex` CPU backend (feature `cpu`).
    Cpu,
    /// burn-wgpu: `wgpu` is the best adapter found, `wgpu:N` the N-th discrete GPU,
    /// `wgpu-cpu` a software adapter such as lavapipe (feature `wgpu`).
    Wgpu(Option<usize>),
    WgpuCpu,
    /// burn-cuda, device N (feature `cuda`); `cuda` alone is [`local_gpu`].
    Cuda(usize),
    /// burn-tch on libtorch's CPU (feature `tch`).
    TchCpu,
    /// burn-tch on CUDA device N (feature `tch`).
    TchCuda(usize),
}

impl DeviceSpec {
    /// The default device: the first compiled-in backend, CPU first.
    pub fn default_compiled() -> Self {
        if cfg!(feature = "cpu") {
            Self::Cpu
        } else if cfg!(feature = "cuda") {
            Self::Cuda(0)
        } else if cfg!(feature = "wgpu") {
            Self::Wgpu(None)
        } else {
            Self::TchCpu
        }
    }

    /// The cargo feature that compiles this device's backend in.
    pub fn feature(&self) -> &'static str {
        match self {
            Self::Cpu => "cpu",
            Self::Wgpu(_) | Self::WgpuCpu => "wgpu",
            Self::Cuda(_) => "cuda",
            Self::TchCpu | Self::TchCuda(_) => "tch",
        }
    }

    /// The devices this binary can run on.
    pub fn compiled_in() -> Vec<&'static str> {
        let mut v = Vec::new();
        if cfg!(feature = "cpu") {
            v.push("cpu");
        }
        if cfg!(feature = "wgpu") {
            v.extend(["wgpu", "wgpu:N", "wgpu-cpu"]);
        }
        if cfg!(feature = "cuda") {
            v.push("cuda:N");
        }
        if cfg!(feature = "tch") {
            v.extend(["tch-cpu", "tch-cuda:N"]);
        }
        v
    }
}

/// The GPU that `cuda` without an index means: the node-local rank of this process
/// under an MPI launcher (one GPU per rank), else the first.
fn local_gpu() -> usize {
    crate::parallel::processes::Processes::current().local_rank
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let index = |rest: &str| {
            rest.parse::<usize>()
                .map_err(|_| format!("device `{s}`: `{rest}` is not a device index"))
        };
        let spec = match s {
            "cpu" => Self::Cpu,
            "wgpu" => Self::Wgpu(None),
            "wgpu-cpu" => Self::WgpuCpu,
            "cuda" => Self::Cuda(local_gpu()),
            "tch-cpu" => Self::TchCpu,
            "tch-cuda" => Self::TchCuda(local_gpu()),
            _ => {
                if let Some(rest) = s.strip_prefix("wgpu:") {
                    Self::Wgpu(Some(index(rest)?))
                } else if let Some(rest) = s.strip_prefix("cuda:") {
                    Self::Cuda(index(rest)?)
                } else if let Some(rest) = s.strip_prefix("tch-cuda:") {
                    Self::TchCuda(index(rest)?)
                } else {
                    return Err(format!(
                        "unknown device `{s}`; expected cpu, wgpu, wgpu:N, wgpu-cpu, cuda:N, tch-cpu or tch-cuda:N"
                    ));
                }
            }
        };
        Ok(spec)
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => write!(f, "cpu"),
            Self::Wgpu(None) => write!(f, "wgpu"),
            Self::Wgpu(Some(i)) => write!(f, "wgpu:{i}"),
            Self::WgpuCpu => write!(f, "wgpu-cpu"),
            Self::Cuda(i) => write!(f, "cuda:{i}"),
            Self::TchCpu => write!(f, "tch-cpu"),
            Self::TchCuda(i) => write!(f, "tch-cuda:{i}"),
        }
    }
}

/// Calls `$run::<B>(device, args…)` with the backend and device `$spec` names, or returns
/// an error saying which feature the binary lacks. `$run` is generic over
/// `B: AutodiffBackend`; inference-only commands use `B::InnerBackend` inside.
#[macro_export]
macro_rules! dispatch {
    ($spec:expr, $run:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_imports)]
        use burn::backend::Autodiff;
        let spec: $crate::backend::DeviceSpec = $spec;
        match spec {
            #[cfg(feature = "cpu")]
            $crate::backend::DeviceSpec::Cpu => {
                $run::<Autodiff<burn::backend::Flex>>(Default::default(), $($arg),*)
            }
            #[cfg(feature = "wgpu")]
            $crate::backend::DeviceSpec::Wgpu(index) => {
                use burn::backend::wgpu::WgpuDevice;
                let device = index.map_or(WgpuDevice::DefaultDevice, WgpuDevice::DiscreteGpu);
                $crate::backend::probe::<burn::backend::Wgpu>(&[(spec, device.clone())])?;
                $crate::backend::record_buffer_limit::<burn::backend::wgpu::WgpuRuntime>(&[(spec, device.clone())]);
                $run::<Autodiff<burn::backend::Wgpu>>(device, $($arg),*)
            }
            #[cfg(feature = "wgpu")]
            $crate::backend::DeviceSpec::WgpuCpu => {
                let device = burn::backend::wgpu::WgpuDevice::Cpu;
                $crate::backend::probe::<burn::backend::Wgpu>(&[(spec, device.clone())])?;
                $crate::backend::record_buffer_limit::<burn::backend::wgpu::WgpuRuntime>(&[(spec, device.clone())]);
                $run::<Autodiff<burn::backend::Wgpu>>(device, $($arg),*)
            }
            #[cfg(feature = "cuda")]
            $crate::backend::DeviceSpec::Cuda(index) => {
                let device = burn::backend::cuda::CudaDevice::new(index);
                $crate::backend::probe::<burn::backend::Cuda>(&[(spec, device.clone())])?;
                $crate::backend::record_buffer_limit::<$crate::backend::CudaRuntime>(&[(spec, device.clone())]);
                $run::<Autodiff<burn::backend::Cuda>>(device, $($arg),*)
            }
            #[cfg(feature = "tch")]
            $crate::backend::DeviceSpec::TchCpu => {
                $run::<Autodiff<burn::backend::LibTorch>>(burn::backend::libtorch::LibTorchDevice::Cpu, $($arg),*)
            }
            #[cfg(feature = "tch")]
            $crate::backend::DeviceSpec::TchCuda(index) => {
                let device = burn::backend::libtorch::LibTorchDevice::Cuda(index);
                $crate::backend::probe::<burn::backend::LibTorch>(&[(spec, device.clone())])?;
                $run::<Autodiff<burn::backend::LibTorch>>(device, $($arg),*)
            }
            #[allow(unreachable_patterns)]
            other => Err(anyhow::anyhow!(
                "device `{other}` is not compiled into this binary (rebuild with `--features {}`); available: {}",
                other.feature(),
                $crate::backend::DeviceSpec::compiled_in().join(", ")
            )),
        }
    }};
}

/// Runs one small operation on each device, on a thread of its own, before any work.
/// A backend that cannot reach its device (no NVIDIA driver, no Vulkan adapter) panics
/// deep inside (cudarc's loader, then cubecl's channel); here that becomes one line
/// naming the device, the cause and what to do.
pub fn probe<B: burn::prelude::Backend>(devices: &[(DeviceSpec, B::Device)]) -> anyhow::Result<()> {
    use burn::prelude::Tensor;
    use std::sync::{Arc, Mutex};
    let causes = Arc::new(Mutex::new(Vec::<String>::new()));
    let sink = causes.clone();
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let payload = info.payload();
        let text = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| info.to_string());
        if let Ok(mut causes) = sink.lock() {
            causes.push(text);
        }
    }));
    let failed = devices.iter().find_map(|(spec, device)| {
        let device = device.clone();
        let run = std::thread::spawn(move || {
            Tensor::<B, 1>::ones([2], &device).sum().into_data();
        });
        run.join().is_err().then_some(*spec)
    });
    std::panic::set_hook(previous);
    let Some(spec) = failed else {
        return Ok(());
    };
    let cause = causes
        .lock()
        .ok()
        .and_then(|c| c.first().cloned())
        .unwrap_or_default();
    // cudarc's message goes on to list every library name it tried.
    let cause = cause.split(" - ").next().unwrap_or_default().trim();
    let advice = match spec {
        DeviceSpec::Cuda(_) | DeviceSpec::TchCuda(_) => {
            "install the NVIDIA driver (libcuda.so), or pick another --device"
        }
        DeviceSpec::Wgpu(_) | DeviceSpec::WgpuCpu => {
            "install a Vulkan driver (mesa-vulkan-drivers gives lavapipe on the CPU), or pick another --device"
        }
        _ => "pick another --device",
    };
    anyhow::bail!("device {spec} cannot be used ({cause}): {advice}")
}

/// The runtime under burn's CUDA backend, which burn does not re-export.
#[cfg(feature = "cuda")]
pub use cubecl::cuda::CudaRuntime;

/// The largest single buffer the run's devices allow, the smallest over its replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BufferLimit {
    pub device: DeviceSpec,
    pub bytes: u64,
}

/// Set once per process, by the dispatch macros, before any command runs.
static BUFFER_LIMIT: std::sync::OnceLock<BufferLimit> = std::sync::OnceLock::new();

/// Records the largest buffer each of `devices` allows, for [`buffer_limit`]. cubecl binds
/// every tensor as one buffer, and a tensor past the limit fails inside the runtime's own
/// thread (wgpu's validation panics at bind time: lavapipe allows 128 MiB, less than
/// roberta-base's 147 MiB word embeddings; CUDA pools a quarter of the GPU's memory at
/// most), so the checks before a run compare its largest tensors with this.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
pub fn record_buffer_limit<R: cubecl::Runtime>(devices: &[(DeviceSpec, R::Device)]) {
    let smallest = devices
        .iter()
        .map(|(spec, device)| BufferLimit {
            device: *spec,
            bytes: R::client(device).properties().memory.max_page_size,
        })
        .min_by_key(|limit| limit.bytes);
    if let Some(limit) = smallest {
        let _ = BUFFER_LIMIT.set(limit);
    }
}

/// The limit [`record_buffer_limit`] found; `None` on backends that allocate without
/// one (the CPU, libtorch).
pub fn buffer_limit() -> Option<BufferLimit> {
    BUFFER_LIMIT.get().copied()
}

/// Replicas must sit on distinct devices, except on the CPU backend. Two peers of burn's
/// collective on one `wgpu` device (lavapipe, measured) take the right first step, then
/// diverge from the single-device run (gradient norm 158 against 2 at update 3), so a
/// repeated GPU device is refused rather than silently training wrong.
pub fn check_replicas(specs: &[DeviceSpec]) -> Result<(), String> {
    for (i, spec) in specs.iter().enumerate() {
        if *spec != DeviceSpec::Cpu && specs[..i].contains(spec) {
            return Err(format!(
                "--devices names `{spec}` twice: replicas need distinct devices (only `cpu` may repeat)"
            ));
        }
    }
    Ok(())
}

/// Like [`dispatch!`], for a list of devices of one backend (data-parallel replicas):
/// calls `$run::<B>(devices, args…)` with `devices: Vec<B::Device>`.
#[macro_export]
macro_rules! dispatch_devices {
    ($specs:expr, $run:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_imports)]
        use burn::backend::Autodiff;
        use $crate::backend::DeviceSpec;
        let specs: Vec<DeviceSpec> = $specs;
        $crate::backend::check_replicas(&specs).map_err(|e| anyhow::anyhow!(e))?;
        let first = specs[0];
        let same = |ok: fn(&DeviceSpec) -> bool| -> anyhow::Result<()> {
            match specs.iter().find(|s| !ok(s)) {
                Some(other) => Err(anyhow::anyhow!(
                    "--devices mixes backends: `{first}` and `{other}`; replicas must share one backend"
                )),
                None => Ok(()),
            }
        };
        match first {
            #[cfg(feature = "cpu")]
            DeviceSpec::Cpu => {
                same(|s| matches!(s, DeviceSpec::Cpu))?;
                $run::<Autodiff<burn::backend::Flex>>(vec![Default::default(); specs.len()], $($arg),*)
            }
            #[cfg(feature = "wgpu")]
            DeviceSpec::Wgpu(_) | DeviceSpec::WgpuCpu => {
                use burn::backend::wgpu::WgpuDevice;
                same(|s| matches!(s, DeviceSpec::Wgpu(_) | DeviceSpec::WgpuCpu))?;
                let devices = specs
                    .iter()
                    .map(|s| match s {
                        DeviceSpec::Wgpu(index) => {
                            index.map_or(WgpuDevice::DefaultDevice, WgpuDevice::DiscreteGpu)
                        }
                        _ => WgpuDevice::Cpu,
                    })
                    .collect::<Vec<_>>();
                let paired = specs.iter().copied().zip(devices.iter().cloned()).collect::<Vec<_>>();
                $crate::backend::probe::<burn::backend::Wgpu>(&paired)?;
                $crate::backend::record_buffer_limit::<burn::backend::wgpu::WgpuRuntime>(&paired);
                $run::<Autodiff<burn::backend::Wgpu>>(devices, $($arg),*)
            }
            #[cfg(feature = "cuda")]
            DeviceSpec::Cuda(_) => {
                same(|s| matches!(s, DeviceSpec::Cuda(_)))?;
                let devices = specs
                    .iter()
                    .map(|s| match s {
                        DeviceSpec::Cuda(i) => burn::backend::cuda::CudaDevice::new(*i),
                        _ => unreachable!("checked"),
                    })
                    .collect::<Vec<_>>();
                let paired = specs.iter().copied().zip(devices.iter().cloned()).collect::<Vec<_>>();
                $crate::backend::probe::<burn::backend::Cuda>(&paired)?;
                $crate::backend::record_buffer_limit::<$crate::backend::CudaRuntime>(&paired);
                $run::<Autodiff<burn::backend::Cuda>>(devices, $($arg),*)
            }
            #[cfg(feature = "tch")]
            DeviceSpec::TchCpu | DeviceSpec::TchCuda(_) => {
                use burn::backend::libtorch::LibTorchDevice;
                same(|s| matches!(s, DeviceSpec::TchCpu | DeviceSpec::TchCuda(_)))?;
                let devices = specs
                    .iter()
                    .map(|s| match s {
                        DeviceSpec::TchCuda(i) => LibTorchDevice::Cuda(*i),
                        _ => LibTorchDevice::Cpu,
                    })
                    .collect::<Vec<_>>();
                $crate::backend::probe::<burn::backend::LibTorch>(
                    &specs.iter().copied().zip(devices.iter().cloned()).collect::<Vec<_>>(),
                )?;
                $run::<Autodiff<burn::backend::LibTorch>>(devices, $($arg),*)
            }
            #[allow(unreachable_patterns)]
            other => Err(anyhow::anyhow!(
                "device `{other}` is not compiled into this binary (rebuild with `--features {}`); available: {}",
                other.feature(),
                DeviceSpec::compiled_in().join(", ")
            )),
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_device_form() {
        for (s, d) in [
            ("cpu", DeviceSpec::Cpu),
            ("wgpu", DeviceSpec::Wgpu(None)),
            ("wgpu:1", DeviceSpec::Wgpu(Some(1))),
            ("wgpu-cpu", DeviceSpec::WgpuCpu),
            ("cuda:3", DeviceSpec::Cuda(3)),
            ("tch-cpu", DeviceSpec::TchCpu),
            ("tch-cuda:0", DeviceSpec::TchCuda(0)),
        ] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap(), d);
            assert_eq!(d.to_string(), s);
        }
        assert!(
            "cuda:x"
                .parse::<DeviceSpec>()
                .unwrap_err()
                .contains("index")
        );
        assert!(check_replicas(&[DeviceSpec::Cpu, DeviceSpec::Cpu]).is_ok());
        assert!(check_replicas(&[DeviceSpec::Cuda(0), DeviceSpec::Cuda(1)]).is_ok());
        let err = check_replicas(&[DeviceSpec::WgpuCpu, DeviceSpec::WgpuCpu]).unwrap_err();
        assert!(err.contains("twice"), "{err}");
        assert!(
            "tpu"
                .parse::<DeviceSpec>()
                .unwrap_err()
                .contains("unknown device")
        );
    }
}
