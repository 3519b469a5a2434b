//! Start-up of a DAS run on SmolLM2, from the model loaded to the end of the first training step,
//! for 1,000 pairs given as token ids and the same 1,000 pairs given as text: what a pair-file
//! run does before it trains (read and parse the JSONL file, tokenise or check every input
//! against the vocabulary, compute the frozen cache) and then one step.
//!
//! Guards the regression of #25 (a vocabulary check that rebuilt the tokenizer's vocabulary map
//! for every token-id input, 11 s for 2,048 inputs).
//!
//! Run: `cargo bench -p trainer --bench startup` (needs the fixture: scripts/fetch-fixtures).
//! Prints the model's load time, then per file the median of 5 runs of each phase.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Result, anyhow};
use burn::backend::Autodiff;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use ferrovene_data::format::parse_jsonl;
use ferrovene_data::{Example, Label, OnError, TokenizedExample, tokenize};
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::{Intervention, Orthogonal};
use ferrovene_models::Cpu;
use ferrovene_models::rng::Rng;
use ferrovene_models::{Component, LoadedModel, Site, TextTokenizer};

type B = Autodiff<Cpu>;

/// Pairs in each file.
const PAIRS: usize = 1000;
/// Runs of each phase (the median is printed).
const RUNS: usize = 5;

/// The 1,000 pairs, as text (the capitals file's lines, cycled) and as token ids (the same pairs
/// tokenised, with their positions resolved), written to two files in `dir`.
fn write_pair_files(tok: &TextTokenizer, dir: &Path) -> Result<(PathBuf, PathBuf)> {
    let capitals = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../datasets/capitals/capitals.jsonl");
    let text = std::fs::read_to_string(&capitals)?;
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let parsed = parse_jsonl(&capitals, &text, OnError::Stop)?;
    let (text_path, ids_path) = (dir.join("pairs-text.jsonl"), dir.join("pairs-ids.jsonl"));
    let (mut text_file, mut ids_file) = (std::fs::File::create(&text_path)?, std::fs::File::create(&ids_path)?);
    for i in 0..PAIRS {
        let k = i % lines.len();
        writeln!(text_file, "{}", lines[k])?;
        let (line, example) = &parsed.examples[k];
        let (TokenizedExample::Pair { base, sources, .. }, Example::Pair { label: Label::Text(label), .. }) =
            (tokenize(example, tok, &capitals, *line)?, example)
        else {
            return Err(anyhow!("capitals.jsonl holds pairs with text labels"));
        };
        let record = serde_json::json!({
            "base_ids": base.ids, "source_ids": [sources[0].ids], "positions": base.positions,
            "source_positions": [sources[0].positions], "label": label,
        });
        writeln!(ids_file, "{record}")?;
    }
    Ok((text_path, ids_path))
}

/// Median of `v` in milliseconds.
fn median_ms(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2] * 1e3
}

/// One start-up on `path`: parse and tokenise, frozen cache, first step; seconds of each.
fn start(loaded: &LoadedModel<B>, tok: &TextTokenizer, path: &Path) -> Result<[f64; 3]> {
    let device = Default::default();
    let t = Instant::now();
    let text = std::fs::read_to_string(path)?;
    let file = parse_jsonl(path, &text, OnError::Stop)?;
    let examples: Vec<TokenizedExample> =
        file.examples.iter().map(|(l, e)| tokenize(e, tok, path, *l)).collect::<Result<_, _>>()?;
    let read = t.elapsed().as_secs_f64();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    let t = Instant::now();
    let batches = ferrovene_trainer::objectives::das::prepare(
        &loaded.model,
        Site::new(12, Component::BlockOutput),
        &refs,
        tok.pad_id,
        16,
        &device,
    )?;
    let cache = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(16, 576, &mut Rng::new(1), &device) });
    let mut opt = AdamWConfig::new().init::<B, Intervention<B>>();
    let loss = ferrovene_trainer::objectives::das::loss(&loaded.model, &batches[0], &iv)?;
    let grads = GradientsParams::from_grads(loss.backward(), &iv);
    let iv = opt.step(1e-2, iv, grads);
    let _ = iv.rotation().ok_or_else(|| anyhow!("a rotation"))?.matrix().into_data();
    Ok([read, cache, t.elapsed().as_secs_f64()])
}

fn main() -> Result<()> {
    // On a rayon worker, as the trainer runs its command.
    ferrovene_trainer::threads::on_worker(startup)
}

/// The bench itself.
fn startup() -> Result<()> {
    let device = Default::default();
    let t = Instant::now();
    let loaded = ferrovene_trainer::device::load_model::<B>("smollm2-135m", &device)?;
    println!("model loaded in {:.2} s", t.elapsed().as_secs_f64());
    let tok = loaded.tokenizer.clone().ok_or_else(|| anyhow!("no tokenizer"))?;
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-bench-startup-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (text, ids) = write_pair_files(&tok, &dir)?;
    for (name, path) in [("token ids", &ids), ("text", &text)] {
        let mut phases: [Vec<f64>; 4] = Default::default();
        for _ in 0..RUNS {
            let [read, cache, step] = start(&loaded, &tok, path)?;
            for (v, x) in phases.iter_mut().zip([read + cache + step, read, cache, step]) {
                v.push(x);
            }
        }
        let [total, read, cache, step] = &mut phases;
        println!(
            "{PAIRS} pairs as {name}: model loaded → first step done in {:.0} ms (median of {RUNS}): read + tokenise {:.0} ms, frozen cache {:.0} ms, first step {:.0} ms",
            median_ms(total),
            median_ms(read),
            median_ms(cache),
            median_ms(step)
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}
