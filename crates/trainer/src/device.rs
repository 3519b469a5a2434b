//! Choosing the compute device at run time: `cpu` always, `wgpu[:N]` and `cuda[:N]` when built
//! with those features, and the precision of the frozen model's weights. Each command is written
//! once, generic over the backend, and dispatched here; what was chosen goes into report.json.

use std::str::FromStr;
use std::sync::Mutex;

use anyhow::{Result, bail};
use clap::{Args, ValueEnum};
use serde_json::{Value, json};

/// A kind of compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    /// burn's flex CPU backend (always available).
    Cpu,
    /// WebGPU through wgpu (Vulkan, Metal, DX12); needs a build with `--features wgpu`.
    Wgpu,
    /// NVIDIA CUDA; needs a build with `--features cuda`.
    Cuda,
}

/// A device the user asked for: `cpu`, `wgpu`, `wgpu:1`, `cuda`, `cuda:1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    /// The backend.
    pub kind: DeviceKind,
    /// Which device of that backend: CUDA's device index, or wgpu's N-th discrete GPU; `None`
    /// is the backend's default (for wgpu the best adapter, or `CUBECL_WGPU_DEFAULT_DEVICE`).
    pub index: Option<usize>,
}

impl DeviceSpec {
    /// The CPU.
    pub const CPU: DeviceSpec = DeviceSpec { kind: DeviceKind::Cpu, index: None };
}

impl std::fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.kind {
            DeviceKind::Cpu => "cpu",
            DeviceKind::Wgpu => "wgpu",
            DeviceKind::Cuda => "cuda",
        };
        match self.index {
            Some(i) => write!(f, "{name}:{i}"),
            None => f.write_str(name),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (name, index) = match s.split_once(':') {
            Some((n, i)) => {
                let i = i.parse::<usize>().map_err(|_| format!("`{s}`: the device index after `:` must be a number, as in cuda:1 (devices: cpu, wgpu, wgpu:N, cuda, cuda:N)"))?;
                (n, Some(i))
            }
            None => (s, None),
        };
        let kind = match name.to_ascii_lowercase().as_str() {
            "cpu" => DeviceKind::Cpu,
            "wgpu" => DeviceKind::Wgpu,
            "cuda" => DeviceKind::Cuda,
            _ => return Err(format!("`{s}` is not a device: give cpu, wgpu, wgpu:N, cuda or cuda:N")),
        };
        if kind == DeviceKind::Cpu && index.is_some_and(|i| i > 0) {
            return Err(format!("`{s}`: the CPU backend has one device (it uses every core); give cpu"));
        }
        Ok(DeviceSpec { kind, index })
    }
}

/// The precision of the frozen model's weights and compute. The intervention's parameters, their
/// gradients and the optimizer's state stay f32 whatever this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Precision {
    /// 32-bit floats: the reference numbers.
    F32,
    /// IEEE half precision: half the memory; where the GPU has it, faster.
    F16,
    /// bfloat16: f32's range with 8 bits of mantissa. On a CPU with AVX512-BF16, only the frozen
    /// blocks' products take bf16 operands (on its bf16 unit, about 1.2× faster training than f32,
    /// more memory); elsewhere, or with FERROVENE_BF16_KERNEL=off, the whole model computes in
    /// bf16 (half the memory).
    Bf16,
}

impl Precision {
    /// burn's name for it.
    pub fn dtype(self) -> burn::tensor::FloatDType {
        match self {
            Precision::F32 => burn::tensor::FloatDType::F32,
            Precision::F16 => burn::tensor::FloatDType::F16,
            Precision::Bf16 => burn::tensor::FloatDType::BF16,
        }
    }

    /// Its lowercase name, as `--dtype` takes it.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        }
    }
}

/// `--device` and `--dtype`, shared by every command that runs a model.
#[derive(Debug, Clone, Copy, Args)]
pub struct Compute {
    /// Where to compute: cpu, wgpu, wgpu:N (the N-th discrete GPU), cuda, cuda:N. wgpu and cuda
    /// need a build with `--features wgpu` / `--features cuda`.
    #[arg(long, default_value = "cpu")]
    pub device: DeviceSpec,
    /// Precision of the frozen model (default: f32 on the CPU, f16 on a GPU that has it). The
    /// intervention always trains in f32.
    #[arg(long, value_enum)]
    pub dtype: Option<Precision>,
}

impl Default for Compute {
    fn default() -> Self {
        Compute { device: DeviceSpec::CPU, dtype: None }
    }
}

/// The devices this build supports.
pub fn available() -> Vec<&'static str> {
    let mut v = vec!["cpu"];
    if cfg!(feature = "wgpu") {
        v.push("wgpu");
    }
    if cfg!(feature = "cuda") {
        v.push("cuda");
    }
    v
}

/// A computation that can run on any backend.
pub trait OnBackend {
    /// What it returns.
    type Output;
    /// Runs on backend `B` and its device.
    fn run<B: burn::tensor::backend::Backend>(self, device: B::Device) -> Result<Self::Output>;
    /// Runs on backend `B` and several of its devices (`--devices`); by default on the first.
    fn run_on_devices<B: burn::tensor::backend::Backend>(self, devices: Vec<B::Device>) -> Result<Self::Output>
    where
        Self: Sized,
    {
        let first = devices.into_iter().next().unwrap_or_default();
        self.run::<B>(first)
    }
}

/// `--devices`: several devices of one backend that share a run's training.
#[derive(Debug, Clone, Default, Args)]
pub struct Devices {
    /// Share the training between several devices of one kind, data-parallel: cuda:0,cuda:1
    /// (or wgpu:0,wgpu:1; cpu,cpu runs two replicas on the one CPU, for tests). Every batch is
    /// cut into one part per device, each device holds a copy of the frozen model, and the
    /// result is the one-device run's within float rounding. The pair-file kinds (das,
    /// boundless, reft, probe) and reft-memorise take it; sweeps (filler-gap, suite) run one shard of their units
    /// per device at once and merge them.
    #[arg(long, value_delimiter = ',', num_args = 1.., conflicts_with = "device", value_name = "DEVICE,DEVICE,...")]
    pub devices: Vec<DeviceSpec>,
}

impl Devices {
    /// The devices asked for, checked: none (one `--device`), or at least two of one kind.
    pub fn checked(&self) -> Result<&[DeviceSpec]> {
        match self.devices.as_slice() {
            [] => Ok(&[]),
            [one] => bail!("--devices {one}: give two or more devices (one device is --device {one})"),
            [first, rest @ ..] => {
                if let Some(other) = rest.iter().find(|d| d.kind != first.kind) {
                    bail!(
                        "--devices: {first} and {other} are devices of two backends; every device of a run must be of one kind"
                    );
                }
                Ok(&self.devices)
            }
        }
    }
}

/// What this process computes on, as report.json records it (set by each [`dispatch`]: a
/// process that runs several jobs, as Python's does, records each one's).
static CHOSEN: Mutex<Option<Value>> = Mutex::new(None);

/// The device, backend, adapter and precision chosen for the last run, if [`dispatch`] ran.
pub fn chosen() -> Option<Value> {
    CHOSEN.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Runs a job on a GPU backend, turning the panic burn raises when no adapter or driver is
/// found into an error that names the devices this build has.
#[allow(dead_code)]
fn guarded<T>(spec: DeviceSpec, run: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown failure".into());
        bail!(
            "the {spec} device failed (no such adapter, or no usable driver?): {why}; devices in this build: {}",
            available().join(", ")
        )
    })
}

/// Runs `job` on backend `B` and `device` (with `others`, when `--devices` gave several), with the
/// frozen models loaded at `precision`, after recording what was chosen.
fn run_on<B: burn::tensor::backend::Backend, J: OnBackend>(
    spec: DeviceSpec,
    precision: Option<Precision>,
    device: B::Device,
    adapter: Value,
    job: J,
    others: Shared<B>,
) -> Result<J::Output> {
    let precision = resolve_precision::<B>(spec, precision, &device)?;
    ferrovene_models::precision::set_frozen_dtype(precision.dtype());
    // FERROVENE_BF16_KERNEL=off: bf16 on the CPU as a model all in bf16 (half the memory, slower).
    let kernel_off = std::env::var("FERROVENE_BF16_KERNEL").is_ok_and(|v| matches!(v.as_str(), "off" | "0" | "false"));
    ferrovene_models::precision::set_bf16_kernel(!kernel_off);
    let cpu = ferrovene_models::cpu_features::CpuFeatures::detect();
    let mut chosen = json!({
        "device": spec.to_string(),
        "backend": B::name(&device),
        "adapter": adapter,
        "dtype": precision.name(),
        "frozen_storage": ferrovene_models::precision::FrozenStorage::for_backend::<B>().describe(),
        "cpu": cpu,
        "cpu_f32_kernels": cpu.f32_kernels(),
    });
    if others.specs.len() > 1 {
        // Data-parallel: every device the training was shared between.
        chosen["devices"] = json!(others.specs.iter().map(|d| d.to_string()).collect::<Vec<_>>());
    }
    *CHOSEN.lock().unwrap_or_else(|e| e.into_inner()) = Some(chosen);
    if others.specs.len() < 2 {
        return job.run::<B>(device);
    }
    job.run_on_devices::<B>(others.devices)
}

/// The devices of `--devices` on one backend: as asked for and as burn's devices.
struct Shared<B: burn::tensor::backend::Backend> {
    specs: Vec<DeviceSpec>,
    devices: Vec<B::Device>,
}

impl<B: burn::tensor::backend::Backend> Shared<B> {
    /// Each of `specs` as a device of `B`: the first is `first` (already set up), the others
    /// made by `make`, once per distinct spec (setting a wgpu device up twice is not allowed).
    fn new(specs: &[DeviceSpec], first: &B::Device, make: impl Fn(DeviceSpec) -> B::Device) -> Self {
        let mut made: Vec<(DeviceSpec, B::Device)> = Vec::new();
        for (i, &spec) in specs.iter().enumerate() {
            if !made.iter().any(|(s, _)| *s == spec) {
                made.push((spec, if i == 0 { first.clone() } else { make(spec) }));
            }
        }
        let devices = specs
            .iter()
            .map(|s| made.iter().find(|(m, _)| m == s).map(|(_, d)| d.clone()).unwrap_or_else(|| first.clone()))
            .collect();
        Shared { specs: specs.to_vec(), devices }
    }
}

/// The precision asked for, or the device's default; an error where the device lacks it.
fn resolve_precision<B: burn::tensor::backend::Backend>(
    spec: DeviceSpec,
    asked: Option<Precision>,
    device: &B::Device,
) -> Result<Precision> {
    let has = |p: Precision| B::supports_dtype(device, p.dtype().into());
    match asked {
        Some(p) if !has(p) => bail!(
            "--dtype {}: the {spec} device ({}) does not compute in it; give --dtype f32{}",
            p.name(),
            B::name(device),
            [Precision::F16, Precision::Bf16]
                .into_iter()
                .filter(|&q| q != p && has(q))
                .map(|q| format!(" or --dtype {}", q.name()))
                .collect::<String>()
        ),
        Some(p) => Ok(p),
        None if spec.kind == DeviceKind::Cpu => Ok(Precision::F32),
        None => Ok([Precision::F16, Precision::Bf16].into_iter().find(|&p| has(p)).unwrap_or(Precision::F32)),
    }
}

/// The wgpu devices set up so far in this process, with their adapters: a device is set up
/// once (a second setup panics in cubecl), and later dispatches (Python's) reuse it.
#[cfg(feature = "wgpu")]
static WGPU_DEVICES: Mutex<Vec<(burn::backend::wgpu::WgpuDevice, Value)>> = Mutex::new(Vec::new());

/// The wgpu device for `index`, set up now (or earlier in this process) so that its adapter can
/// be named.
#[cfg(feature = "wgpu")]
fn wgpu_device(index: Option<usize>) -> (burn::backend::wgpu::WgpuDevice, Value) {
    use burn::backend::wgpu::{WgpuDevice, graphics::AutoGraphicsApi, init_setup};
    let device = index.map_or(WgpuDevice::DefaultDevice, WgpuDevice::DiscreteGpu);
    let mut set_up = WGPU_DEVICES.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(done) = set_up.iter().find(|(d, _)| *d == device) {
        return done.clone();
    }
    let setup = init_setup::<AutoGraphicsApi>(&device, Default::default());
    let info = setup.adapter.get_info();
    let adapter = json!({"name": info.name, "api": format!("{:?}", info.backend), "type": format!("{:?}", info.device_type), "driver": format!("{} {}", info.driver, info.driver_info).trim().to_string()});
    set_up.push((device.clone(), adapter.clone()));
    (device, adapter)
}

/// Runs `job` on the requested device, or explains which devices this build has.
pub fn dispatch<J: OnBackend>(compute: Compute, job: J) -> Result<J::Output> {
    dispatch_on(compute, &[], job)
}

/// Runs `job` on the devices of `--devices` when it gave several ([`Devices::checked`]), else
/// on `--device`; or explains which devices this build has.
pub fn dispatch_on<J: OnBackend>(compute: Compute, devices: &[DeviceSpec], job: J) -> Result<J::Output> {
    let spec = devices.first().copied().unwrap_or(compute.device);
    match spec.kind {
        DeviceKind::Cpu => {
            let device = Default::default();
            let shared = Shared::new(devices, &device, |_| Default::default());
            run_on::<ferrovene_models::Cpu, J>(spec, compute.dtype, device, Value::Null, job, shared)
        }
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => guarded(spec, || {
            let (device, adapter) = wgpu_device(spec.index);
            let shared = Shared::new(devices, &device, |s| wgpu_device(s.index).0);
            run_on::<burn::backend::Wgpu, J>(spec, compute.dtype, device, adapter, job, shared)
        }),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => guarded(spec, || {
            let device = burn::backend::cuda::CudaDevice::new(spec.index.unwrap_or(0));
            let shared = Shared::new(devices, &device, |s| burn::backend::cuda::CudaDevice::new(s.index.unwrap_or(0)));
            run_on::<burn::backend::Cuda, J>(spec, compute.dtype, device, Value::Null, job, shared)
        }),
        #[allow(unreachable_patterns)]
        other => bail!(
            "this build of trainer has no {:?} support; rebuild with `cargo run -p trainer --release --features {}` \
             or choose one of: {}",
            other,
            format!("{other:?}").to_lowercase(),
            available().join(", ")
        ),
    }
}

/// Bytes of the frozen model's weights, by the last [`load_model`] (for report.json).
static MODEL_BYTES: std::sync::Mutex<Option<u64>> = std::sync::Mutex::new(None);

/// Bytes the frozen model's weights take on the device, if a model was loaded.
pub fn model_bytes() -> Option<u64> {
    *MODEL_BYTES.lock().unwrap_or_else(|e| e.into_inner())
}

/// Loads a model (registry name, folder, GGUF file or hub id) on `device`, in the precision
/// chosen for frozen models, and says how much memory its weights take (on stderr, and in
/// report.json as `compute.model_bytes`). A model kept in memory ([`crate::resident`]) is
/// taken from there instead.
pub fn load_model<B: burn::tensor::backend::Backend>(
    spec: &str,
    device: &B::Device,
) -> Result<ferrovene_models::LoadedModel<B>> {
    announce_load(spec, device, crate::resident::find::<B>(spec, device))
}

/// [`load_model`] for training on an autodiff backend: a model kept on the inner backend (a
/// notebook's, loaded for inference) is taken too ([`crate::resident::find_for_training`]).
pub fn load_frozen<B: burn::tensor::backend::AutodiffBackend>(
    spec: &str,
    device: &B::Device,
) -> Result<ferrovene_models::LoadedModel<B>> {
    announce_load(spec, device, crate::resident::find_for_training::<B>(spec, device))
}

/// `kept`, or the model loaded from `spec`; its size recorded and said on stderr.
fn announce_load<B: burn::tensor::backend::Backend>(
    spec: &str,
    device: &B::Device,
    kept: Option<ferrovene_models::LoadedModel<B>>,
) -> Result<ferrovene_models::LoadedModel<B>> {
    let (loaded, kept) = match kept {
        Some(kept) => (kept, " (kept in memory)"),
        None => (ferrovene_models::load::<B>(spec, device)?, ""),
    };
    // The packings for the bf16 kernel are not parameters: counted beside them.
    let packed = ferrovene_models::bf16_linear::packed_bytes() as u64;
    let bytes = ferrovene_models::precision::parameter_bytes(&loaded.model) + packed;
    *MODEL_BYTES.lock().unwrap_or_else(|e| e.into_inner()) = Some(bytes);
    let storage = ferrovene_models::precision::FrozenStorage::for_backend::<B>();
    let packed = if packed > 0 {
        format!(" ({:.1} MiB packed for the bf16 products)", packed as f64 / (1 << 20) as f64)
    } else {
        String::new()
    };
    eprintln!(
        "model `{spec}`{kept}: {} parameters, {:.1} MiB of weights{packed} in {} on {}",
        loaded.model.parameter_count(),
        bytes as f64 / (1 << 20) as f64,
        storage.describe(),
        B::name(device)
    );
    Ok(loaded)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_specs_parse_and_print_back() {
        for s in ["cpu", "wgpu", "wgpu:1", "cuda", "cuda:3"] {
            assert_eq!(s.parse::<DeviceSpec>().unwrap().to_string(), s);
        }
        assert_eq!("CUDA:2".parse::<DeviceSpec>().unwrap(), DeviceSpec { kind: DeviceKind::Cuda, index: Some(2) });
        assert_eq!("cpu:0".parse::<DeviceSpec>().unwrap().kind, DeviceKind::Cpu);
        for (bad, says) in [
            ("gpu", "not a device"),
            ("cuda:", "must be a number"),
            ("cuda:-1", "must be a number"),
            ("cpu:2", "one device"),
            ("", "not a device"),
        ] {
            let e = bad.parse::<DeviceSpec>().unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn the_cpu_defaults_to_f32_and_takes_half_precision_when_asked() {
        let dev = Default::default();
        type Cpu = ferrovene_models::Cpu;
        assert_eq!(resolve_precision::<Cpu>(DeviceSpec::CPU, None, &dev).unwrap(), Precision::F32);
        assert_eq!(resolve_precision::<Cpu>(DeviceSpec::CPU, Some(Precision::Bf16), &dev).unwrap(), Precision::Bf16);
    }
}
