//! The GPU tier: the same computations on a GPU backend as on the CPU backend, and against the
//! goldens — forward logits, a DAS step, the 30-step training goldens, KV-cache generation, an
//! export trained on the GPU evaluated on the CPU, and half-precision frozen models.
//!
//! `cargo test -p trainer --features wgpu --test gpu` runs it on wgpu: in CI on Mesa's software
//! Vulkan driver (llvmpipe, `mesa-vulkan-drivers`), where it is slow, so the models are the tiny
//! ones. With `--features cuda` the same tests run on CUDA too (`scripts/gpu-check`); the
//! tests of each backend are in the module of its name (`-- wgpu::`, `-- cuda::`).
#![cfg(any(feature = "wgpu", feature = "cuda"))]

#[path = "../../../tests/common/mod.rs"]
mod models_common;

#[path = "common/golden_runs.rs"]
mod golden_runs;

#[cfg(feature = "wgpu")]
mod wgpu {
    type Gpu = burn::backend::Wgpu;
    const DEVICE: &str = "wgpu";
    include!("gpu/tier.rs");
}

#[cfg(feature = "cuda")]
mod cuda {
    type Gpu = burn::backend::Cuda;
    const DEVICE: &str = "cuda";
    include!("gpu/tier.rs");
}
