//! One process that computes on a GPU device several times, as the Python package's does (load
//! a model, then train, apply and evaluate with it): every call is a `dispatch` to the device,
//! and the runs find the model the first call kept. In a binary of its own: the device must not
//! have been set up by anything but `dispatch` (the GPU tier's tests use burn's default setup).
//!
//! `cargo test -p trainer --features wgpu --test gpu_process` (CI: on llvmpipe).
#![cfg(feature = "wgpu")]

use burn::backend::Autodiff;
use burn::tensor::backend::Backend;
use ferrovene_trainer::device::{Compute, OnBackend, Precision, dispatch, load_model};
use ferrovene_trainer::resident::{Kept, find_for_training, keep};

/// The tiny Llama checkpoint in tests/golden/tiny.
fn tiny_llama() -> String {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/tiny/llama");
    assert!(dir.join("config.json").exists(), "golden tiny llama missing at {}", dir.display());
    dir.display().to_string()
}

/// Loads the model on the dispatched device and keeps it (Python's `load_model`).
struct LoadAndKeep(String);

impl OnBackend for LoadAndKeep {
    type Output = (Kept, String);

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Self::Output> {
        let loaded = load_model::<B>(&self.0, &device)?;
        Ok((keep(&loaded, &device), B::name(&device)))
    }
}

/// Whether a training run on the dispatched device would find the kept model.
struct FoundForTraining(String);

impl OnBackend for FoundForTraining {
    type Output = bool;

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<bool> {
        Ok(find_for_training::<Autodiff<B>>(&self.0, &device).is_some())
    }
}

#[test]
fn a_process_dispatches_to_wgpu_again_and_its_runs_find_the_model_it_kept() {
    let compute = Compute { device: "wgpu".parse().unwrap(), dtype: Some(Precision::F32) };
    let spec = tiny_llama();
    let (kept, backend) = dispatch(compute, LoadAndKeep(spec.clone())).expect("the first dispatch");
    assert!(backend.contains("cubecl"), "{backend}");
    // The device was set up by the first dispatch; a second one reuses it.
    assert!(dispatch(compute, FoundForTraining(spec.clone())).expect("the second dispatch"), "the kept model");
    let chosen = ferrovene_trainer::device::chosen().expect("recorded");
    assert_eq!(chosen["device"], "wgpu", "{chosen}");
    drop(kept);
    assert!(!dispatch(compute, FoundForTraining(spec)).expect("the third dispatch"), "forgotten once dropped");
}
