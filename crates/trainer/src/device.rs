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

/// Runs `job` on the requested device, or explains which devices this build has.
pub fn dispatch<J: OnBackend>(kind: DeviceKind, job: J) -> Result<J::Output> {
    match kind {
        DeviceKind::Cpu => job.run::<ferrovene_models::Cpu>(Default::default()),
        #[cfg(feature = "wgpu")]
        DeviceKind::Wgpu => job.run::<burn::backend::Wgpu>(Default::default()),
        #[cfg(feature = "cuda")]
        DeviceKind::Cuda => job.run::<burn::backend::Cuda>(Default::default()),
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
