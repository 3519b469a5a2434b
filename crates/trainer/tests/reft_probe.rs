//! The ReFT and probe objectives on SmolLM2 (the fixture): a rank-4 LoReFT trained with the
//! language-model loss makes greedy decoding reproduce a short target exactly (and the cached
//! path equals a plain forward with the intervention as a hook); `trainer apply --generate`
//! reproduces it from the export in a fresh process; a probe trained with cross-entropy reads a
//! planted class from real activations.

use std::process::Command;

use burn::backend::Autodiff;
use burn::tensor::activation::log_softmax;
use ferrovene_data::format::parse_line;
use ferrovene_data::{Example, tokenize};
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::probe::LinearProbe;
use ferrovene_interventions::reft::{ReftFamily, ReftIntervention};
use ferrovene_interventions::{Activation, Composition, Intervene, Intervention, Placement};
use ferrovene_models::rng::Rng;
use ferrovene_models::{Component, Site, Transformer, forward, gather_positions, load};
use ferrovene_trainer::fit::{FitConfig, FitIo, fit};

type AD = Autodiff<ferrovene_models::Cpu>;

fn cfg(epochs: usize, lr: f64) -> FitConfig {
    FitConfig::constant(epochs, lr, 1, true)
}

#[test]
fn loreft_memorises_a_target_and_apply_reproduces_it() {
    let dev = Default::default();
    let loaded = load::<AD>("smollm2-135m", &dev).expect("fixture: run scripts/fetch-fixtures");
    let (model, tok) = (&loaded.model, loaded.tokenizer.clone().unwrap());
    let target = " Rust keeps the weights frozen.";
    let line: Example =
        parse_line(&serde_json::json!({"prompt": "GO->", "target": target, "positions": ["last"]}).to_string())
            .unwrap();
    let ex = tokenize(&line, &tok, std::path::Path::new("inline"), 1).unwrap();
    let site = Site::new(20, Component::BlockOutput);
    let batches = ferrovene_trainer::objectives::reft::prepare(model, site, &[&ex], tok.pad_id, 1, &dev).unwrap();
    let iv = Intervention::Reft(ReftIntervention::new(
        ReftFamily::LoReft,
        576,
        4,
        Activation::Identity,
        0.0,
        &mut Rng::new(2),
        &dev,
    ));

    // cached path = plain forward with the intervention as a hook
    let cached: Vec<f32> = ferrovene_trainer::objectives::reft::log_probs(model, &batches[0], Some(&iv))
        .unwrap()
        .into_data()
        .to_vec()
        .unwrap();
    let b = &batches[0];
    let placement = Placement::new(model.site_info(site).unwrap(), &iv, b.positions.clone(), None, vec![]).unwrap();
    let hidden = forward(model, &b.checkpoint.input, &mut Intervene::new(vec![placement], Composition::Parallel));
    let plain: Vec<f32> = log_softmax(model.head(gather_positions(hidden, b.target_positions.clone())).unwrap(), 2)
        .into_data()
        .to_vec()
        .unwrap();
    let diff = cached.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-3, "cached and plain ReFT paths differ by {diff}");

    let none = ferrovene_trainer::objectives::reft::evaluate(model, &batches, None).unwrap();
    assert_eq!(none.exact, 0.0, "the model does not say this by itself");
    let objective = ferrovene_trainer::objectives::reft::ReftObjective { model, train: &batches, validation: &[] };
    let fitted = fit(&objective, iv, &cfg(50, 5e-2), FitIo::default()).unwrap();
    let losses = &fitted.state.losses;
    let after = ferrovene_trainer::objectives::reft::evaluate(model, &batches, Some(&fitted.module)).unwrap();
    eprintln!(
        "LM loss {:.3} → {:.3}; token accuracy {:.3} → {:.3}",
        losses[0],
        losses[losses.len() - 1],
        none.token_accuracy,
        after.token_accuracy
    );
    assert_eq!(after.exact, 1.0, "greedy decoding with the intervention reproduces the target: {after:?}");

    // export, then `trainer apply --generate` in a fresh process
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-reft-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("intervention.safetensors");
    let config = ExportConfig::new(
        PlacementConfig {
            sites: vec![site.to_string()],
            positions: "last".into(),
            site_width: 576,
            ..Default::default()
        },
        ModelConfig {
            id: "smollm2-135m".into(),
            revision: None,
            arch: model.arch().into(),
            hidden_size: model.width(),
        },
        serde_json::Value::Null,
    );
    export::save(&fitted.module, config, &path).unwrap();
    let n_tokens = tok.encode_plain(target).unwrap().len();
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["apply", "--json", "--prompt", "GO->", "--generate", &n_tokens.to_string(), "--intervention"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["with"], target, "{json}");
    assert_ne!(json["without"], target);
}

#[test]
fn probe_reads_a_planted_class_from_smollm2_activations() {
    let dev = Default::default();
    let loaded = load::<AD>("smollm2-135m", &dev).expect("fixture: run scripts/fetch-fixtures");
    let (model, tok) = (&loaded.model, loaded.tokenizer.clone().unwrap());
    // class 1: the review is positive; the word decides, the position read is the last token.
    let good = ["great", "wonderful", "brilliant", "superb", "lovely", "excellent", "fantastic", "delightful"];
    let bad = ["awful", "terrible", "dreadful", "boring", "horrible", "dull", "painful", "lousy"];
    let mut examples = Vec::new();
    for (class, words) in [(1, good), (0, bad)] {
        for w in words {
            for frame in ["I thought this movie was {}.", "The food here is {}.", "Honestly, the book felt {}."] {
                let line: Example = parse_line(
                    &serde_json::json!({"text": frame.replace("{}", w), "class": class, "positions": ["last"]})
                        .to_string(),
                )
                .unwrap();
                examples.push((w, tokenize(&line, &tok, std::path::Path::new("inline"), 1).unwrap()));
            }
        }
    }
    // held out: two words of each class, in every frame
    let held = ["superb", "lovely", "horrible", "dull"];
    let train: Vec<_> = examples.iter().filter(|(w, _)| !held.contains(w)).map(|(_, e)| e).collect();
    let test: Vec<_> = examples.iter().filter(|(w, _)| held.contains(w)).map(|(_, e)| e).collect();
    let site = Site::new(20, Component::BlockOutput);
    let train_b = ferrovene_trainer::objectives::probe::features(model, site, &train, tok.pad_id, 8, &dev).unwrap();
    let test_b = ferrovene_trainer::objectives::probe::features(model, site, &test, tok.pad_id, 8, &dev).unwrap();
    assert_eq!(ferrovene_trainer::objectives::probe::class_count(&train), 2);
    let iv = Intervention::Probe(LinearProbe::init(576, 2, &mut Rng::new(4), &dev));
    let (before, _) = ferrovene_trainer::objectives::probe::evaluate(&iv, &test_b).unwrap();
    let fitted = fit(
        &ferrovene_trainer::objectives::probe::ProbeObjective { train: &train_b, validation: &[] },
        iv,
        &cfg(40, 1e-2),
        FitIo::default(),
    )
    .unwrap();
    let (acc, loss) = ferrovene_trainer::objectives::probe::evaluate(&fitted.module, &test_b).unwrap();
    eprintln!("probe on held-out words: accuracy {before:.3} → {acc:.3}, loss {loss:.3}");
    assert!(acc >= 0.9, "held-out accuracy {acc}");
    assert_eq!(ferrovene_trainer::objectives::probe::majority_share(&test_b), 0.5);
}
