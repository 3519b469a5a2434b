//! The generalisation experiments at the sweep's best site: DAS trained on one construction and
//! evaluated on each (a matrix), and trained on all but one and evaluated on that one
//! (leave-one-out).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Result;
use burn::tensor::backend::AutodiffBackend;
use ferrovene_data::filler_gap::CONSTRUCTIONS;
use ferrovene_models::rng::Rng;
use ferrovene_models::{TextTokenizer, Transformer};
use serde_json::{Value, json};

use super::cache::{Cached, Split, cache, draw, site_batches};
use super::recipe::FillerGapRecipe;
use super::site::{Best, p_beats, train_das, train_site};
use crate::events::progress_if;
use crate::experiments::experiment::RunContext;
use crate::objectives::das::evaluate;
use crate::plot::Heatmap;
use crate::run_dir::RunDir;

/// IIA of each construction's DAS on each construction, and leave-one-out.
struct Generalization {
    matrix: Vec<Vec<Option<f32>>>,
    leave_one_out: Vec<Value>,
}

/// Runs both experiments at `best`; writes their heatmap and CSV; returns their report section.
#[allow(clippy::too_many_arguments)]
pub fn run<B: AutodiffBackend, M: Transformer<B>>(
    ctx: &RunContext<'_>,
    r: &FillerGapRecipe,
    model: &M,
    tok: &TextTokenizer,
    splits: &BTreeMap<&'static str, Split>,
    best: &Best,
    rng: &mut Rng,
    dir: &RunDir,
    device: &B::Device,
) -> Result<Value> {
    let layer = [best.layer];
    let per_test: Vec<Vec<Cached<B>>> = CONSTRUCTIONS
        .iter()
        .map(|c| cache(model, tok, &draw(&[&splits[c].test], r.test_pairs, rng), &layer, 32, device))
        .collect::<Result<_>>()?;
    // Each construction's training pairs are cached once; leave-one-out trains on an even share
    // of the other six constructions' cached batches.
    let per_train: Vec<Vec<Cached<B>>> = CONSTRUCTIONS
        .iter()
        .map(|c| cache(model, tok, &draw(&[&splits[c].train], r.train_pairs, rng), &layer, r.batch_size, device))
        .collect::<Result<_>>()?;
    let g = train_and_evaluate(ctx, r, model, best, &per_train, &per_test, device)?;
    write(dir, ctx.name, best, &g)?;
    Ok(
        json!({"layer": best.layer, "position": best.position, "constructions": CONSTRUCTIONS, "matrix": g.matrix, "leave_one_out": g.leave_one_out}),
    )
}

/// Per construction: DAS on it, evaluated on every construction; DAS on the others, evaluated on
/// it.
fn train_and_evaluate<B: AutodiffBackend, M: Transformer<B>>(
    ctx: &RunContext<'_>,
    r: &FillerGapRecipe,
    model: &M,
    best: &Best,
    per_train: &[Vec<Cached<B>>],
    per_test: &[Vec<Cached<B>>],
    device: &B::Device,
) -> Result<Generalization> {
    let bar = progress_if(ctx.progress, 2 * CONSTRUCTIONS.len(), "generalization");
    let mut matrix = vec![vec![None; CONSTRUCTIONS.len()]; CONSTRUCTIONS.len()];
    let mut leave_one_out = Vec::new();
    for (i, c) in CONSTRUCTIONS.iter().enumerate() {
        // Only the matrix row is needed here: no controls.
        let (iv, _) = train_das(model, r, &per_train[i], best.layer, &best.position, device)?;
        for (j, t) in per_test.iter().enumerate() {
            let b = site_batches(t, best.layer, &best.position, device)?;
            matrix[i][j] = Some(p_beats(&evaluate(model, &b, Some(&iv))?));
        }
        bar.inc(1);
        let share = per_train[i].len().div_ceil(CONSTRUCTIONS.len() - 1);
        let on_six: Vec<Cached<B>> = per_train
            .iter()
            .enumerate()
            .filter(|(k, _)| *k != i)
            .flat_map(|(_, t)| t.iter().take(share).cloned())
            .collect();
        let (_, res) = train_site(model, r, &on_six, &per_test[i], best.layer, &best.position, device)?;
        leave_one_out.push(json!({"held_out": c, "iia": res.iia, "iia_no_intervention": res.iia_none, "iia_mean_difference": res.iia_mean_difference}));
        bar.inc(1);
    }
    bar.finish_and_clear();
    Ok(Generalization { matrix, leave_one_out })
}

/// The matrix as a heatmap, and both experiments as CSV.
fn write(dir: &RunDir, name: &str, best: &Best, g: &Generalization) -> Result<()> {
    let names: Vec<String> = CONSTRUCTIONS.iter().map(|c| c.to_string()).collect();
    Heatmap {
        title: &format!(
            "{name}: IIA at {}.block_output, {}: trained on (rows) × evaluated on (columns)",
            best.layer, best.position
        ),
        rows: names.clone(),
        columns: names
            .iter()
            .map(|n| n.replace("embedded_wh_", "emb_").replace("relative_clause", "relative"))
            .collect(),
        values: g.matrix.clone(),
        scale: 1.0,
        axes: ("trained on", "evaluated on"),
    }
    .write(&dir.join("generalization"))?;
    let mut csv = String::from("trained_on,evaluated_on,iia\n");
    for (i, row) in g.matrix.iter().enumerate() {
        for (j, v) in row.iter().enumerate() {
            let _ = writeln!(csv, "{},{},{}", CONSTRUCTIONS[i], CONSTRUCTIONS[j], v.unwrap_or(f32::NAN));
        }
    }
    for l in &g.leave_one_out {
        let _ = writeln!(
            csv,
            "all but {},{},{}",
            l["held_out"].as_str().unwrap_or(""),
            l["held_out"].as_str().unwrap_or(""),
            l["iia"]
        );
    }
    dir.write("generalization.csv", csv)?;
    Ok(())
}
