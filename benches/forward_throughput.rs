//! SmolLM2-135M forward throughput on the CPU backend: batch 16 × 16 tokens, with full logits
//! and without the head.
//!
//! Run: `cargo bench --bench forward_throughput` (needs the fixture: scripts/fetch-fixtures);
//! `--features ndarray` measures burn's ndarray backend instead of flex (the default).
//! Prints the median over timed runs, after one warm-up run.

use std::time::Instant;

use ferrovene_models::{Input, NoHooks, Transformer, forward, load};

#[cfg(feature = "ndarray")]
type B = burn::backend::NdArray<f32>;
#[cfg(feature = "ndarray")]
const BACKEND: &str = "ndarray";
#[cfg(not(feature = "ndarray"))]
type B = ferrovene_models::Cpu;
#[cfg(not(feature = "ndarray"))]
const BACKEND: &str = "flex";

const BATCH: usize = 16;
const SEQ: usize = 16;
const RUNS: usize = 7;

fn main() {
    let device = Default::default();
    let t = Instant::now();
    let loaded = load::<B>("smollm2-135m", &device).unwrap_or_else(|e| panic!("{e}"));
    println!("load smollm2-135m (GGUF, dequantised): {:.2} s", t.elapsed().as_secs_f64());
    // Deterministic token ids spread over the vocabulary.
    let rows: Vec<Vec<u32>> =
        (0..BATCH).map(|b| (0..SEQ).map(|s| ((b * 7919 + s * 104_729) % 49_000) as u32 + 100).collect()).collect();
    let input = Input::<B>::from_ids(&rows, &device);
    // With the head over the whole vocabulary at every position (what a plain forward for
    // next-token logits costs), and without it (the frozen blocks alone: what caching runs).
    let run = |head: bool| {
        let hidden = forward(&loaded.model, &input, &mut NoHooks);
        let out = if head { loaded.model.head(hidden).expect("a language model") } else { hidden };
        // Reading the data forces the computation to finish.
        out.into_data().to_vec::<f32>().expect("f32").len()
    };
    for head in [true, false] {
        run(head);
        let mut times: Vec<f64> = (0..RUNS)
            .map(|_| {
                let t = Instant::now();
                run(head);
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[RUNS / 2];
        let tokens = (BATCH * SEQ) as f64;
        let what = if head { "with logits over 49152" } else { "blocks and final norm, no head" };
        println!(
            "{BACKEND}: forward batch {BATCH} x {SEQ} tokens ({what}): median {:.1} ms over {RUNS} runs = {:.0} tokens/s (min {:.1} ms, max {:.1} ms)",
            median * 1e3,
            tokens / median,
            times[0] * 1e3,
            times[RUNS - 1] * 1e3
        );
    }
}
