//! The architectures beyond Llama, GPT-2 and Pythia — Gemma 2 and 3, Qwen 3, Phi-3, OLMo 2 and
//! Mistral with its sliding window — through the whole command line: a DAS recipe trains on each
//! tiny checkpoint of tests/golden/tiny (given a word-level tokenizer over its 97 tokens), and
//! `trainer eval` of the export, in a fresh process, gives the IIA the run reported. The labels
//! are the model's own under a full interchange, kept where they differ from its untouched
//! prediction (IIA 0); a rank-32 DAS spans the whole 32-wide stream, so it must reach IIA 1,
//! which checks the site, the export and `eval` against the model's own numbers. Gemma 2 also
//! runs in bf16.

mod common;

use std::path::Path;

use burn::tensor::{Int, Tensor};
use common::*;
use ferrovene_models::{
    Component, Cpu, Input, NoHooks, Replace, Site, Transformer, forward, gather_positions, load_folder, run_to,
};

const ARCHITECTURES: [&str; 6] = ["gemma2", "gemma3", "qwen3", "phi3", "olmo2", "mistral"];

/// The intervened position: the last of 9.
const POSITION: usize = 8;

/// 40 pairs of 9-token sequences (longer than the 4-token windows), each labelled with what the
/// model itself predicts when block 1's output at the last position is swapped for the source's
/// (the labels a full interchange at the trained site reaches: IIA 1), and kept only where that
/// differs from the untouched prediction.
fn pair_file(model_dir: &Path, path: &Path) {
    let model = load_folder::<Cpu>(model_dir, &Default::default()).unwrap().model;
    let dev = Default::default();
    let site = Site::new(1, Component::BlockOutput);
    let at = || Tensor::<Cpu, 2, Int>::from_ints([[POSITION as i64]], &dev);
    let mut state = 12345u64;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        1 + (state >> 33) as u32 % 96
    };
    let argmax_last = |hidden| {
        let logits: Vec<f32> = model.head(hidden).unwrap().narrow(1, 8, 1).into_data().to_vec().unwrap();
        (0..logits.len()).max_by(|&a, &b| logits[a].total_cmp(&logits[b])).unwrap()
    };
    let text = |ids: &[u32]| ids.iter().map(|t| format!("t{t}")).collect::<Vec<_>>().join(" ");
    let mut lines = Vec::new();
    while lines.len() < 40 {
        let base: Vec<u32> = (0..9).map(|_| next()).collect();
        let source: Vec<u32> = (0..9).map(|_| next()).collect();
        let base_input = Input::<Cpu>::from_ids(std::slice::from_ref(&base), &dev);
        let source_run = run_to(&model, &Input::<Cpu>::from_ids(std::slice::from_ref(&source), &dev), site).unwrap();
        let mut swap = Replace::new().at(site, at(), gather_positions(source_run.activation, at()));
        let label = argmax_last(forward(&model, &base_input, &mut swap));
        // Only pairs where the interchange changes the prediction: the untouched model's IIA is 0.
        if label == argmax_last(forward(&model, &base_input, &mut NoHooks)) {
            continue;
        }
        let i = lines.len();
        lines.push(
            serde_json::json!({
                "base": text(&base), "sources": [text(&source)], "positions": [POSITION],
                "label": format!(" t{label}"), "meta": {"pair": i.to_string()}
            })
            .to_string(),
        );
    }
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

/// Runs the recipe on `arch` in `dtype` and checks the export through `trainer eval`.
fn recipe_runs(arch: &str, dtype: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join(arch);
    tiny_with_tokenizer(arch, &model);
    let pairs = tmp.path().join("pairs.jsonl");
    pair_file(&model, &pairs);
    let out = trainer()
        .args(["das-capitals", "--quiet", "--epochs", "1", "--dtype", dtype, "--model"])
        .arg(&model)
        .arg("--set")
        .arg(format!("pairs=\"{}\"", pairs.display()))
        .args(["--set", "site=\"1.block_output\"", "--set", "rank=32", "--set", "split_by=\"pair\"", "--out"])
        .arg(tmp.path().join("runs"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{arch} ({dtype}): {}", String::from_utf8_lossy(&out.stderr));
    let run = only_run(&tmp.path().join("runs/das-capitals"));
    let report = report(&run);
    let iia =
        report["metrics"]["dev"]["iia"].as_f64().unwrap_or_else(|| panic!("{arch}: no metrics.dev.iia: {report}"));
    // Rank 32 spans the whole residual stream: the rotated interchange is the full interchange
    // the labels came from, whatever the training did (bf16 rounds the model's own numbers).
    let least = if dtype == "f32" { 1.0 } else { 0.8 };
    assert!(iia >= least, "{arch} ({dtype}): IIA {iia}, where the untouched model's is 0: {report}");
    let eval = trainer()
        .args(["eval", "--json", "--dtype", dtype, "--intervention"])
        .arg(run.join("intervention.safetensors"))
        .arg("--pairs")
        .arg(run.join("dev.jsonl"))
        .arg("--model")
        .arg(&model)
        .output()
        .unwrap();
    assert!(eval.status.success(), "{arch}: {}", String::from_utf8_lossy(&eval.stderr));
    let fresh: serde_json::Value = serde_json::from_slice(&eval.stdout).unwrap();
    eprintln!("{arch} ({dtype}): IIA {iia}; eval {}", fresh["overall"]);
    assert_eq!(fresh["overall"]["iia"].as_f64(), Some(iia), "{arch}: eval in a fresh process: {fresh}");
    assert_eq!(fresh["overall"]["iia_no_intervention"].as_f64(), Some(0.0), "{arch}: {fresh}");
}

#[test]
fn a_das_recipe_runs_on_every_new_architecture_and_its_export_evaluates_the_same() {
    for arch in ARCHITECTURES {
        recipe_runs(arch, "f32");
    }
}

#[test]
fn gemma2_runs_in_bf16() {
    recipe_runs("gemma2", "bf16");
}
