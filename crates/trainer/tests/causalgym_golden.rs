//! CausalGym's own numbers on its own pairs (`tests/golden/causalgym/agr_sv_num_subj-relc.json`:
//! CausalGym's code on SmolLM2, one task, the exact 400 training and 100 evaluation pairs it
//! drew, with its `<|endoftext|>` prefix and its reading of the source at the base's token
//! index): the suite sweep's methods on those pairs give CausalGym's log odds-ratio at every
//! site (layers 6, 12, 18 × 5 regions) — the whole-vector interchange and the difference of means
//! within 0.01 (the issue asks 0.05), the probe within 0.2 (another solver and regularisation), DAS within 0.3 (its
//! initialisation noise), the random direction near zero as CausalGym's is.
//!
//! Not at the last region (`{object}`, the sentence's last token): there CausalGym reads 9 of
//! the 100 evaluation sources at a padding position (the base's index, past the source's end),
//! whose activation a masked pad token has only in its padded batch; we read the source's last
//! token. Those sites are printed, not compared.

use std::path::PathBuf;

use burn::backend::Autodiff;
use ferrovene_data::TokenizedInput;
use ferrovene_interventions::directions::Method;
use ferrovene_models::load;
use ferrovene_trainer::experiments::suite::{
    DasSettings, Labels, Methods, SuitePair, cache, evaluate, score_layer, train_das,
};
use serde_json::Value;

type B = Autodiff<ferrovene_models::Cpu>;

fn golden() -> Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/causalgym/agr_sv_num_subj-relc.json");
    let text = std::fs::read_to_string(&p)
        .unwrap_or_else(|e| panic!("golden missing: {} (copied from ../shared/golden/causalgym): {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

fn ids(v: &Value) -> Vec<u32> {
    v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as u32).collect()
}

/// The golden's pairs as the sweep's pairs: positions the base's last token of each swept span,
/// the source read at the same index (CausalGym's reading) or, past the source's end, at its
/// last token; the directions fitted on the base at the source's own index (CausalGym's
/// collection), as `source_index = "base"` sets them.
fn pairs(g: &Value, split: &str) -> Vec<SuitePair> {
    let swept: Vec<usize> =
        g["swept_positions"].as_array().unwrap().iter().map(|x| x.as_u64().unwrap() as usize).collect();
    let second = g["types"][1].as_str().unwrap();
    g[split]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let (base, source) = (ids(&p["base_ids"]), ids(&p["src_ids"]));
            let at: Vec<usize> =
                swept.iter().map(|&k| p["base_last_tok_per_span"][k].as_u64().unwrap() as usize).collect();
            let own: Vec<usize> =
                swept.iter().map(|&k| p["src_last_tok_per_span"][k].as_u64().unwrap() as usize).collect();
            let base_end = base.len() - 1;
            let end = source.len() - 1;
            let (ys, yb) = (p["src_label_id"].as_u64().unwrap() as u32, p["base_label_id"].as_u64().unwrap() as u32);
            SuitePair {
                source: TokenizedInput { ids: source, positions: at.iter().map(|&i| i.min(end)).collect() },
                base: TokenizedInput { ids: base, positions: at },
                task: [ys, yb],
                control: [ys, yb],
                class: p["base_type"].as_str() == Some(second),
                // CausalGym fits its directions on the base at the source's index.
                fit_positions: Some(own.iter().map(|&i| i.min(base_end)).collect()),
            }
        })
        .collect()
}

/// CausalGym's log odds-ratio of `method` at (`layer`, swept region `k`).
fn reference(g: &Value, method: &str, layer: usize, k: usize) -> f64 {
    let position = g["swept_positions"][k].as_u64().unwrap();
    g["sites"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["method"] == method && s["layer"] == layer && s["position"] == position)
        .unwrap_or_else(|| panic!("{method} at {layer}/{position} in the golden"))["log_odds_ratio"]
        .as_f64()
        .unwrap()
}

#[test]
fn the_sweeps_methods_give_causalgyms_numbers_on_its_own_pairs() {
    let device = Default::default();
    let g = golden();
    let loaded = load::<B>("smollm2-135m", &device).expect("fixture: run scripts/fetch-fixtures");
    let model = loaded.model;
    let (train, test) = (pairs(&g, "train"), pairs(&g, "eval"));
    assert_eq!((train.len(), test.len()), (400, 100));
    let layers = [6usize, 12, 18];
    let regions = g["swept_positions"].as_array().unwrap().len();
    // Which regions some evaluation source is read past its end at (CausalGym's padding reads).
    for (k, _) in (0..regions).enumerate() {
        let past = g["eval"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| {
                let k_span = g["swept_positions"][k].as_u64().unwrap() as usize;
                p["base_last_tok_per_span"][k_span].as_u64().unwrap() as usize >= p["src_ids"].as_array().unwrap().len()
            })
            .count();
        assert_eq!(past, if k == regions - 1 { 9 } else { 0 }, "region {k}: sources read past their end");
    }
    // CausalGym pads with token 0; pads are masked, so the pad id does not matter.
    let train_c = cache(&model, 0, &train, &layers, 64, &device).unwrap();
    let test_c = cache(&model, 0, &test, &layers, 64, &device).unwrap();
    // The plain run: the base term of every eval pair's odds-ratio.
    let plain: Vec<f64> = test_c.iter().flat_map(|c| c.plain().iter().map(|p| (p[1] - p[0]) as f64)).collect();
    let want: Vec<f64> = g["base_term_per_eval_pair"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    let worst = plain.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
    assert!(worst < 2e-3, "the plain runs' base terms differ from CausalGym's by up to {worst}");

    let fitted =
        Methods { das: None, vanilla: true, fitted: vec![Method::Mean, Method::Probe, Method::Random], seed: 0 };
    let das = DasSettings { batch_size: 4, epochs: 1, lr: 5e-3, warmup: 0.1, seed: 0 };
    let mut report = Vec::new();
    let mut failures = Vec::new();
    for &layer in &layers {
        let all: Vec<usize> = (0..regions).collect();
        let scores = score_layer(&model, &train_c, &test_c, layer, &all, &fitted, &device).unwrap();
        // DAS at every region of the layer, trained together (one batch order), as CausalGym trains it.
        let blocks: Vec<(usize, Labels)> = all.iter().map(|&k| (k, Labels::Task)).collect();
        let ivs = train_das(&model, &train_c, layer, &blocks, das, &device).unwrap();
        let das_scores =
            evaluate(&model, &test_c, layer, &all.iter().copied().zip(ivs).collect::<Vec<_>>(), &device).unwrap();
        let ours = scores
            .iter()
            .map(|(k, s)| (s.method.clone(), *k, s.task.odds as f64))
            .chain(das_scores.iter().enumerate().map(|(k, (task, _))| ("das".to_string(), k, task.odds as f64)));
        for (method, k, odds) in ours {
            let theirs = reference(&g, &method, layer, k);
            let tolerance = match method.as_str() {
                // Measured: vanilla and mean within 5e-4, probe 0.06, random 0.03, DAS 0.24.
                "vanilla" | "mean" => 0.01,
                "probe" => 0.2,
                "das" => 0.3,
                _ => 0.05,
            };
            let past_end = k == regions - 1;
            report.push(format!(
                "{method:>7} {layer:>2}/{k}: ours {odds:+.3}, CausalGym {theirs:+.3}{}",
                if past_end { " (CausalGym reads padding here: not compared)" } else { "" }
            ));
            if !past_end && (odds - theirs).abs() > tolerance {
                failures.push(format!(
                    "{method} at layer {layer}, region {k}: {odds:.4} vs {theirs:.4} (tolerance {tolerance})"
                ));
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "{}\n{}", failures.join("\n"), report.join("\n"));
}
