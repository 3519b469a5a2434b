//! Choosing the compute device at run time: `cpu` always, `wgpu` and `cuda` when built with
//! those features. Each command is written once, generic over the backend, and dispatched here.

use anyhow::{bail, Result};
use clap::ValueEnum;

/// A compute device the user can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    /// burn's flex CPU backend (always available).
    Cpu,
    /// WebGPU through wgpu (Vulkan, Metal, DX12); needs a build with `--features wgpu`.
    Wgpu,
    /// NVIDIA CUDA; needs a build with `--features cuda`.
    Cuda,
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
    /// Runs on backend `B` and its default device.
    fn run<B: burn::tensor::backend::Backend>(self, device: B::Device) -> Result<Self::Output>;
}

/// Runs a job on a GPU backend, turning the panic burn raises when no adapter or driver is
/// found into an error that names the devices this build has.
#[allow(dead_code)]
fn guarded<T>(name: &str, run: impl FnOnce() -> Result<T>) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)).unwrap_or_else(|panic| {
        let why = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "unknown failure".into());
        bail!("the {name} backend failed (no usable adapter or driver?): {why}; devices in this build: {}", available().join(", "))
    })
}

/// Runs `job` on the requested device, or explains which devices this build has.
pub fn dispatch<J: OnBackend>(kind: DeviceKind, job: J) -> Result<J::Output> {
    match kind {
        DeviceKind::Cpu => job.run::<ferrovene_models::Cpu>(Default::default()),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => guarded("wgpu", || job.run::<burn::backend::Wgpu>(Default::default())),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => guarded("cuda", || job.run::<burn::backend::Cuda>(Default::default())),
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
