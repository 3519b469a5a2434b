//! The crate's two probe trainers on one steer-iti-sized probe (≈670 texts × 64 features, two
//! classes): `objectives::probe::logistic_regression_accuracy` (the logistic regression of
//! `ferrovene_interventions::logistic`, Newton's method in f64 to convergence, C = 1) against
//! `fit::fit` with a `ProbeObjective` (burn autodiff, AdamW, 200 full-batch steps).
//! steer-iti fits one probe per head (270 on SmolLM2-135M), so the per-probe time decides which
//! it uses.
//!
//! Run: `cargo bench -p trainer --bench probe_trainers`. Prints the median of 5 runs of each.

use std::time::Instant;

use burn::backend::Autodiff;
use burn::tensor::{Tensor, TensorData};
use ferrovene_interventions::Intervention;
use ferrovene_interventions::probe::LinearProbe;
use ferrovene_models::rng::Rng;
use ferrovene_trainer::fit::{FitConfig, FitIo, fit};
use ferrovene_trainer::objectives::probe::{FeatureBatch, ProbeObjective, logistic_regression_accuracy};
use ferrovene_trainer::schedule::Decay;

type B = Autodiff<ferrovene_models::Cpu>;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let (n, d, steps) = (672, 64, 200);
    let mut rng = Rng::new(1);
    let xs: Vec<Vec<f32>> = (0..n)
        .map(|i| (0..d).map(|j| rng.normal() as f32 + if j == 3 && i % 2 == 0 { 1.0 } else { 0.0 }).collect())
        .collect();
    let ys: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
    let refs: Vec<&[f32]> = xs.iter().map(Vec::as_slice).collect();

    let f64_times: Vec<f64> = (0..5)
        .map(|_| {
            let t = Instant::now();
            std::hint::black_box(logistic_regression_accuracy(&refs, &ys, &refs, &ys, 1.0).expect("a fit"));
            t.elapsed().as_secs_f64()
        })
        .collect();

    let device = Default::default();
    let features = Tensor::<B, 3>::from_data(TensorData::new(xs.concat(), [n, 1, d]), &device);
    let batches = vec![FeatureBatch { features, classes: ys.iter().map(|&y| y as usize).collect() }];
    let cfg = FitConfig {
        epochs: steps,
        lr: 0.05,
        warmup: 0.0,
        decay: Decay::Constant,
        weight_decay: 0.01,
        grad_clip: None,
        accumulate: 1,
        temperature: None,
        eval_every: 0,
        early_stopping: None,
        checkpoint_every: 0,
        checkpoint_minutes: 0.0,
        seed: 1,
        shuffle: true,
    };
    let fit_times: Vec<f64> = (0..5)
        .map(|_| {
            let probe = Intervention::Probe(LinearProbe::init(d, 2, &mut Rng::new(2), &device));
            let t = Instant::now();
            let fitted =
                fit(&ProbeObjective { train: &batches, validation: &[] }, probe, &cfg, FitIo::default()).expect("fits");
            std::hint::black_box(fitted.module);
            t.elapsed().as_secs_f64()
        })
        .collect();
    let (a, b) = (median(f64_times), median(fit_times));
    println!(
        "one probe, {n} × {d}: logistic regression to convergence (Newton, f64) {:.1} ms, fit + ProbeObjective ({steps} AdamW steps) {:.1} ms ({:.1}× slower); for 270 heads: {:.1} s vs {:.1} s",
        a * 1e3,
        b * 1e3,
        b / a,
        a * 270.0,
        b * 270.0
    );
}
