//! One DAS training step on SmolLM2 — the side-by-side workload's settings (rank 16 at
//! 12.block_output, batch 16 capital pairs, the frozen run cached) — timed by phase: forward
//! (intervention, the rest of the model, head at the label position, loss), backward, AdamW.
//!
//! Run: `cargo bench -p trainer --bench train_step` (needs the fixture: scripts/fetch-fixtures);
//! `--features ndarray` measures burn's ndarray backend instead of flex (the default). Prints the
//! median of 10 timed steps after 2 warm-up steps, and of each phase.
//!
//! Options (after `--`): `--device cpu|wgpu|cuda[:N]` and `--dtype f32|f16|bf16` (builds with
//! those features), `--batch N` (the 16 pairs repeated to N rows), `--json` (one JSON line, for
//! `scripts/gpu-check`).

use std::time::Instant;

use anyhow::{Result, anyhow};
use burn::backend::Autodiff;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::tensor::backend::Backend;
use ferrovene_data::{OnError, load_jsonl, tokenize};
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::{Intervention, Orthogonal};
use ferrovene_models::rng::Rng;
use ferrovene_models::{Component, Site};
use ferrovene_trainer::device::{Compute, OnBackend, Precision, dispatch};

#[cfg(feature = "ndarray")]
const CPU_BACKEND: &str = "ndarray";
#[cfg(not(feature = "ndarray"))]
const CPU_BACKEND: &str = "flex";

/// The bench on one backend.
struct StepBench {
    batch: usize,
    json: bool,
}

impl OnBackend for StepBench {
    type Output = ();

    fn run<Inner: Backend>(self, device: Inner::Device) -> Result<()> {
        type B<I> = Autodiff<I>;
        let loaded = ferrovene_trainer::device::load_model::<B<Inner>>("smollm2-135m", &device)?;
        let tok = loaded.tokenizer.clone().ok_or_else(|| anyhow!("no tokenizer"))?;
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/capitals/capitals.jsonl");
        let file = load_jsonl(&path, OnError::Stop)?;
        let sixteen: Vec<_> =
            file.examples.iter().take(16).map(|(l, e)| tokenize(e, &tok, &file.path, *l)).collect::<Result<_, _>>()?;
        let examples: Vec<_> = sixteen.iter().cycle().take(self.batch).collect();
        let site = Site::new(12, Component::BlockOutput);
        let batches = ferrovene_trainer::objectives::das::prepare(
            &loaded.model,
            site,
            &examples,
            tok.pad_id,
            self.batch,
            &device,
        )?;
        let mut iv =
            Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(16, 576, &mut Rng::new(1), &device) });
        let mut opt = AdamWConfig::new().init::<B<Inner>, Intervention<B<Inner>>>();
        let mut phases: [Vec<f64>; 4] = Default::default();
        for i in 0..12 {
            let t = Instant::now();
            let loss = ferrovene_trainer::objectives::das::loss(&loaded.model, &batches[0], &iv)?;
            let _ = loss.clone().into_data(); // forces the forward
            let forward = t.elapsed().as_secs_f64();
            let grads = loss.backward();
            let backward = t.elapsed().as_secs_f64();
            let grads = GradientsParams::from_grads(grads, &iv);
            iv = opt.step(1e-2, iv, grads);
            // Reading a parameter forces the step to finish.
            let _ = iv.rotation().ok_or_else(|| anyhow!("a rotation"))?.matrix().into_data();
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
        let backend = if Inner::name(&device).contains("flex") || Inner::name(&device).contains("ndarray") {
            CPU_BACKEND.to_string()
        } else {
            Inner::name(&device)
        };
        if self.json {
            println!(
                "{}",
                serde_json::json!({"backend": backend, "compute": ferrovene_trainer::device::chosen(), "batch": self.batch, "median_ms": median(total), "forward_ms": median(forward), "backward_ms": median(backward), "optimizer_ms": median(step), "steps": total.len()})
            );
        } else {
            println!(
                "{backend}: DAS step (rank 16, 12.block_output, batch {}): median {:.0} ms (min {:.0}, max {:.0}) over {} steps: forward {:.0} ms, backward {:.0} ms, AdamW and reading R {:.0} ms",
                self.batch,
                median(total),
                total[0] * 1e3,
                total[total.len() - 1] * 1e3,
                total.len(),
                median(forward),
                median(backward),
                median(step)
            );
        }
        Ok(())
    }
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| args.iter().position(|a| a == flag).and_then(|i| args.get(i + 1)).cloned();
    let device = value("--device").unwrap_or_else(|| "cpu".into()).parse().map_err(|e: String| anyhow!(e))?;
    let dtype = match value("--dtype").as_deref() {
        None => None,
        Some("f32") => Some(Precision::F32),
        Some("f16") => Some(Precision::F16),
        Some("bf16") => Some(Precision::Bf16),
        Some(other) => return Err(anyhow!("--dtype {other}: give f32, f16 or bf16")),
    };
    let batch = value("--batch").map(|b| b.parse::<usize>()).transpose()?.unwrap_or(16).max(1);
    let json = args.iter().any(|a| a == "--json");
    // On a rayon worker, as the trainer runs its command.
    ferrovene_trainer::threads::on_worker(move || dispatch(Compute { device, dtype }, StepBench { batch, json }))
}
