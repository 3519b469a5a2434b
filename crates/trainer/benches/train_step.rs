//! One DAS training step on SmolLM2 — the side-by-side workload's settings (rank 16 at
//! 12.block_output, batch 16 capital pairs, the frozen run cached) — timed by phase: forward
//! (intervention, the rest of the model, head at the label position, loss), backward, AdamW.
//!
//! Run: `cargo bench -p trainer --bench train_step` (needs the fixture: scripts/fetch-fixtures);
//! `--features ndarray` measures burn's ndarray backend instead of flex (the default). Prints the
//! median of 10 timed steps after 2 warm-up steps, and of each phase.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use ferrovene_data::{load_jsonl, tokenize, OnError};
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::{Intervention, Orthogonal};
use ferrovene_models::rng::Rng;
use ferrovene_models::{load, Component, Site};

#[cfg(feature = "ndarray")]
type Inner = burn::backend::NdArray<f32>;
#[cfg(feature = "ndarray")]
const BACKEND: &str = "ndarray";
#[cfg(not(feature = "ndarray"))]
type Inner = ferrovene_models::Cpu;
#[cfg(not(feature = "ndarray"))]
const BACKEND: &str = "flex";
type B = Autodiff<Inner>;

fn main() {
    let device = Default::default();
    let loaded = load::<B>("smollm2-135m", &device).unwrap_or_else(|e| panic!("{e}"));
    let tok = loaded.tokenizer.clone().expect("a tokenizer");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/capitals/capitals.jsonl");
    let file = load_jsonl(&path, OnError::Stop).unwrap_or_else(|e| panic!("{e}"));
    let examples: Vec<_> = file.examples.iter().take(16).map(|(l, e)| tokenize(e, &tok, &file.path, *l).unwrap_or_else(|e| panic!("{e}"))).collect();
    let refs: Vec<_> = examples.iter().collect();
    let site = Site::new(12, Component::BlockOutput);
    let batches = trainer::objectives::das::prepare(&loaded.model, site, &refs, tok.pad_id, 16, &device).unwrap_or_else(|e| panic!("{e}"));
    let mut iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(16, 576, &mut Rng::new(1), &device) });
    let mut opt = AdamWConfig::new().init::<B, Intervention<B>>();
    let mut phases: [Vec<f64>; 4] = Default::default();
    for i in 0..12 {
        let t = Instant::now();
        let loss = trainer::objectives::das::loss(&loaded.model, &batches[0], &iv).unwrap_or_else(|e| panic!("{e}"));
        let _ = loss.clone().into_data(); // forces the forward
        let forward = t.elapsed().as_secs_f64();
        let grads = loss.backward();
        let backward = t.elapsed().as_secs_f64();
        let grads = GradientsParams::from_grads(grads, &iv);
        iv = opt.step(1e-2, iv, grads);
        // Reading a parameter forces the step to finish.
        let _ = iv.rotation().expect("a rotation").matrix().into_data();
        let total = t.elapsed().as_secs_f64();
        if i >= 2 {
            for (v, x) in phases.iter_mut().zip([total, forward, backward - forward, total - backward]) {
                v.push(x);
            }
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2] * 1e3
    };
    let [total, forward, backward, step] = &mut phases;
    println!(
        "{BACKEND}: DAS step (rank 16, 12.block_output, batch 16): median {:.0} ms (min {:.0}, max {:.0}) over {} steps: forward {:.0} ms, backward {:.0} ms, AdamW and reading R {:.0} ms",
        median(total), total[0] * 1e3, total[total.len() - 1] * 1e3, total.len(), median(forward), median(backward), median(step)
    );
}
