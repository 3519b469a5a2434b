//! Whole short training runs against pyvene and pyreft (`tests/golden/training/`): 30 Adam
//! steps of low-rank DAS (rank 4), full DAS (interchange dim 8) and LoReFT (rank 4) on the tiny
//! GPT-2, layer 1 `block_output`, from the golden's `base` and `X` with torch's orthogonal
//! parametrisation (`Orthogonal::Torch`): the loss at every step within 1e-5, the first gradient
//! of `X` within 1e-6, `W` after steps 1, 10 and 30 within 1e-4 for LoReFT and within the noise
//! of torch's own run for DAS ([`golden_runs::DAS_W_TOLERANCE`] says why).
//!
//! The optimizer is the one every recipe trains with (`FitConfig::optimizer`): burn's AdamW with
//! torch's ε = 1e-8 (burn's default ε is 1e-5; with it the trajectories part), here with weight
//! decay 0 and no clipping, where its update `m̂ / (√v̂ + ε)` is torch Adam's. The same runs go on
//! wgpu in the GPU tier (gpu.rs).

#[path = "common/golden_runs.rs"]
mod golden_runs;

use burn::backend::Autodiff;
use ferrovene_interventions::Intervention;
use golden_runs::{check, full_das, loreft, low_rank_das, save_export, torch, values};

type B = Autodiff<ferrovene_models::Cpu>;

/// The run, then a round trip of the trained intervention through an export.
fn run_and_export((name, iv, w_tolerance): (&str, Intervention<B>, f32)) {
    let dev = Default::default();
    let iv = check::<B>(name, iv, w_tolerance, &dev);
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-golden-{name}-{}.safetensors", std::process::id()));
    save_export(&iv, &path, &dev);
    let (back, _) = ferrovene_interventions::export::load::<B>(&path, &dev).unwrap();
    assert_eq!(values(torch(&back).w()), values(torch(&iv).w()), "{name}: base and X come back from the export");
}

#[test]
fn low_rank_das_trains_like_pyvene() {
    run_and_export(low_rank_das(&Default::default()));
}

#[test]
fn full_das_trains_like_pyvene() {
    run_and_export(full_das(&Default::default()));
}

#[test]
fn loreft_trains_like_pyreft() {
    run_and_export(loreft(&Default::default()));
}
