//! Distributed alignment search as a library: loads the embedded model, builds "The capital of
//! {country} is" pairs in the pair format, places a rank-32 low-rank DAS rotation at
//! `6.block_output` over the country's tokens, trains only the rotation with `fit`, and reports
//! interchange intervention accuracy (IIA) on pairs whose base country was held out, against no
//! intervention. Then it exports the rotation, loads it back and checks the IIA is the same.
//!
//! `cargo run --release --example das`

use std::path::Path;

use anyhow::{Context, Result, anyhow};
use burn::backend::Autodiff;
use ferrovene_data::batch::split_by_group;
use ferrovene_data::format::parse_jsonl;
use ferrovene_data::{OnError, tokenize};
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::export::{self, ExportConfig, PlacementConfig};
use ferrovene_interventions::{Intervention, Orthogonal, Rng};
use ferrovene_models::registry::DEFAULT_MODEL;
use ferrovene_models::{Component, Cpu, Site, Transformer, load};
use ferrovene_trainer::fit::{FitConfig, FitIo, fit};
use ferrovene_trainer::objectives::das::{DasObjective, evaluate, prepare};

/// Training runs under burn's autodiff; the model's weights stay frozen (only the rotation is a
/// trainable parameter).
type Backend = Autodiff<Cpu>;

const CAPITALS: [(&str, &str); 10] = [
    ("France", " Paris"),
    ("Italy", " Rome"),
    ("Germany", " Berlin"),
    ("Spain", " Madrid"),
    ("Japan", " Tokyo"),
    ("Russia", " Moscow"),
    ("China", " Beijing"),
    ("Greece", " Athens"),
    ("Canada", " Ottawa"),
    ("Portugal", " Lisbon"),
];

/// Every ordered pair of countries as a JSONL line: the base prompt, the source prompt, the
/// country's character span in each, and the label (the source's capital).
fn pairs_jsonl() -> String {
    let span = |country: &str| serde_json::json!({ "country": [15, 15 + country.len()] });
    let mut lines = Vec::new();
    for (base, base_capital) in CAPITALS {
        for (source, capital) in CAPITALS.iter().filter(|(s, _)| *s != base) {
            let line = serde_json::json!({
                "base": format!("The capital of {base} is"), "spans": span(base),
                "sources": [format!("The capital of {source} is")], "source_spans": [span(source)],
                "positions": [{ "span": "country" }],
                "base_label": base_capital, "label": capital, "meta": { "base": base },
            });
            lines.push(line.to_string());
        }
    }
    lines.join("\n")
}

fn main() -> Result<()> {
    let device = Default::default();
    let loaded = load::<Backend>(DEFAULT_MODEL, &device).context("the embedded model: run scripts/fetch-fixtures")?;
    let (model, tokenizer) = (&loaded.model, loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("no tokenizer"))?);

    // Pairs, tokenised, split so that no base country is in both halves.
    let file = parse_jsonl(Path::new("capitals (in memory)"), &pairs_jsonl(), OnError::Stop)?;
    let examples = file
        .examples
        .iter()
        .map(|(line, e)| tokenize(e, tokenizer, &file.path, *line))
        .collect::<Result<Vec<_>, _>>()?;
    let groups: Vec<String> = file.examples.iter().map(|(_, e)| e.meta()["base"].to_string()).collect();
    let (train, held_out) = split_by_group(&groups, 0.3, 0);
    let pick = |idx: &[usize]| idx.iter().map(|&i| &examples[i]).collect::<Vec<_>>();

    // Batches with the frozen model's work done once (the run up to the site is cached).
    let site = Site::new(6, Component::BlockOutput);
    let train_batches = prepare(model, site, &pick(&train), tokenizer.pad_id, 8, &device)?;
    let held_out_batches = prepare(model, site, &pick(&held_out), tokenizer.pad_id, 8, &device)?;

    // A random rank-32 rotation of the 576-wide residual stream, trained with Adam (6 epochs, lr 0.02).
    let rotation = Orthogonal::random(32, model.width(), &mut Rng::new(0), &device);
    let das = Intervention::DasLowRank(DasLowRank { rotation });
    let no_validation = Vec::new();
    let objective = DasObjective::new(model, &train_batches, &no_validation, 0.0);
    let config = FitConfig::constant(6, 0.02, 0, true);
    let fitted = fit(&objective, das, &config, FitIo::default())?;
    let losses = &fitted.state.losses;

    let without = evaluate(model, &held_out_batches, None)?;
    let with = evaluate(model, &held_out_batches, Some(&fitted.module))?;
    println!(
        "{} training steps, loss {:.3} → {:.3}",
        losses.len(),
        losses.first().unwrap_or(&f32::NAN),
        losses.last().unwrap_or(&f32::NAN)
    );
    println!("held-out IIA at {site}: {:.3} with DAS, {:.3} without ({} pairs)", with.iia, without.iia, with.n);

    // Export (safetensors + JSON metadata), load back, same numbers.
    let out = std::env::temp_dir().join(format!("ferrovene-example-das-{}.safetensors", std::process::id()));
    let placement = PlacementConfig {
        sites: vec![site.to_string()],
        positions: "span:country".into(),
        site_width: model.width(),
        ..Default::default()
    };
    let training = serde_json::json!({ "epochs": config.epochs, "held_out_iia": with.iia });
    export::save(&fitted.module, ExportConfig::new(placement, export::ModelConfig::of(&loaded), training), &out)?;
    let sites = model.sites();
    let target = export::Target { arch: model.arch(), hidden_size: model.width(), sites: &sites };
    let (back, _) = export::load_for::<Backend>(&out, &target, &device)?;
    let reloaded = evaluate(model, &held_out_batches, Some(&back))?;
    println!("exported to {}; reloaded, held-out IIA {:.3}", out.display(), reloaded.iia);
    std::fs::remove_file(&out)?;
    anyhow::ensure!(reloaded == with, "the reloaded export gives other numbers: {reloaded:?} against {with:?}");
    Ok(())
}
