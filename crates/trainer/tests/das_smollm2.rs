//! End to end on SmolLM2 (the fixture): low-rank DAS at the country token of
//! "The capital of {country} is" learns to move the capital; dev IIA (on held-out base countries)
//! is far above the no-intervention control; the cached path equals the plain path; the model's
//! weights are bit-identical after training; the export reloads with the same IIA.

use burn::backend::Autodiff;
use burn::module::{Module, ModuleVisitor, Param};
use burn::tensor::Tensor;
use ferrovene_data::batch::split_by_group;
use ferrovene_data::{OnError, TokenizedExample, load_jsonl, tokenize};
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::{Intervention, Orthogonal, Rng};
use ferrovene_models::{Component, Site, Transformer, load};
use ferrovene_trainer::fit::{FitConfig, FitIo, fit};
use ferrovene_trainer::objectives::das::{DasObjective, evaluate, logits, logits_plain, prepare, source_vectors};
use ferrovene_trainer::schedule::Decay;

type AD = Autodiff<ferrovene_models::Cpu>;

const COUNTRIES: [(&str, &str); 12] = [
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
    ("England", " London"),
    ("Ireland", " Dublin"),
];

fn pair_file() -> std::path::PathBuf {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-das-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut lines = Vec::new();
    for (b, bl) in COUNTRIES {
        for (s, sl) in COUNTRIES {
            if b == s {
                continue;
            }
            let span = |c: &str| serde_json::json!({"country": [15, 15 + c.chars().count()]});
            lines.push(
                serde_json::json!({
                    "base": format!("The capital of {b} is"), "spans": span(b),
                    "sources": [format!("The capital of {s} is")], "source_spans": [span(s)],
                    "positions": [{"span": "country"}],
                    "base_label": bl, "label": sl, "meta": {"base": b}
                })
                .to_string(),
            );
        }
    }
    let p = dir.join("capitals.jsonl");
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

/// A hash of every parameter's bits.
struct Bits(u64);

impl ModuleVisitor<AD> for Bits {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<AD, D>>) {
        for v in param.val().into_data().to_vec::<f32>().unwrap() {
            self.0 = (self.0 ^ v.to_bits() as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
}

#[test]
fn das_on_smollm2_learns_the_capital_and_round_trips() {
    let dev = Default::default();
    let loaded = load::<AD>("smollm2-135m", &dev).expect("fixture: run scripts/fetch-fixtures");
    let tok = loaded.tokenizer.clone().unwrap();
    let model = &loaded.model;
    let file = load_jsonl(&pair_file(), OnError::Stop).unwrap();
    let examples: Vec<_> = file.examples.iter().map(|(l, e)| tokenize(e, &tok, &file.path, *l).unwrap()).collect();
    let groups: Vec<String> =
        file.examples.iter().map(|(_, e)| e.meta()["base"].as_str().unwrap().to_string()).collect();
    let (train_idx, dev_idx) = split_by_group(&groups, 0.25, 1);
    let pick = |idx: &[usize]| idx.iter().map(|&i| &examples[i]).collect::<Vec<_>>();
    let site = Site::new(6, Component::BlockOutput);
    let train_batches = prepare(model, site, &pick(&train_idx), tok.pad_id, 8, &dev).unwrap();
    let dev_batches = prepare(model, site, &pick(&dev_idx), tok.pad_id, 8, &dev).unwrap();

    let mut before = Bits(0xcbf2_9ce4_8422_2325);
    model.visit(&mut before);

    let iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(32, 576, &mut Rng::new(3), &dev) });
    // the cached path (head at the label position only) equals the plain forward with a hook
    let cached: Vec<f32> = logits(model, &dev_batches[0], Some(&iv)).unwrap().into_data().to_vec().unwrap();
    let plain: Vec<f32> = logits_plain(model, &dev_batches[0], &iv).unwrap().into_data().to_vec().unwrap();
    let diff = cached.iter().zip(&plain).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-3, "cached and plain paths differ by {diff}");
    // sources cut after their last intervened position give the same vectors as whole sources
    let sources: Vec<_> = pick(&dev_idx)
        .iter()
        .take(8)
        .map(|e| match e {
            TokenizedExample::Pair { sources, .. } => &sources[0],
            _ => unreachable!(),
        })
        .collect();
    assert!(
        sources.iter().any(|s| s.positions.iter().max().unwrap() + 1 < s.ids.len()),
        "the test needs sources with tokens after the country"
    );
    let trimmed: Vec<f32> =
        source_vectors(model, site, &sources, tok.pad_id, true, &dev).unwrap().into_data().to_vec().unwrap();
    let whole: Vec<f32> =
        source_vectors(model, site, &sources, tok.pad_id, false, &dev).unwrap().into_data().to_vec().unwrap();
    let diff = trimmed.iter().zip(&whole).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-4, "trimmed and whole sources differ by {diff}");

    let control = evaluate(model, &dev_batches, None).unwrap();
    let vanilla = Intervention::Fixed(ferrovene_interventions::fixed::Fixed::new(
        ferrovene_interventions::fixed::FixedOp::Interchange,
    ));
    let full_swap = evaluate(model, &dev_batches, Some(&vanilla)).unwrap();
    let untrained = evaluate(model, &dev_batches, Some(&iv)).unwrap();
    let cfg = FitConfig {
        epochs: 4,
        lr: 1e-1,
        warmup: 0.1,
        decay: Decay::Linear,
        weight_decay: 0.0,
        grad_clip: None,
        accumulate: 1,
        temperature: None,
        eval_every: 0,
        early_stopping: None,
        checkpoint_every: 0,
        checkpoint_minutes: 0.0,
        seed: 3,
        shuffle: true,
    };
    let no_validation = Vec::new();
    let objective = DasObjective::new(model, &train_batches, &no_validation, 0.0);
    let fitted = fit(&objective, iv, &cfg, FitIo::default()).unwrap();
    let (iv, losses) = (fitted.module, fitted.state.losses);
    let trained = evaluate(model, &dev_batches, Some(&iv)).unwrap();
    let random = evaluate(model, &dev_batches, Some(&iv.with_random_rotation(&mut Rng::new(0)).unwrap())).unwrap();
    assert!(
        trained.iia >= random.iia + 0.5,
        "trained {trained:?} vs the same intervention with a random rotation {random:?}"
    );
    assert_eq!(control.base_label_accuracy, Some(1.0), "the model knows the dev capitals");
    eprintln!(
        "dev pairs {}: control {control:?}, random rotation {random:?}, full interchange {full_swap:?}, untrained {untrained:?}, trained {trained:?}; loss {:.3} → {:.3}",
        trained.n,
        losses[0],
        losses[losses.len() - 1]
    );
    assert!(control.iia <= 0.1, "without intervention the base capital wins: {control:?}");
    assert!(
        trained.iia >= control.iia + 0.5,
        "trained DAS should move the capital: {trained:?} vs control {control:?}"
    );

    let mut after = Bits(0xcbf2_9ce4_8422_2325);
    model.visit(&mut after);
    assert_eq!(before.0, after.0, "the model's weights changed during training");

    // export, reload, same IIA
    let path = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-das-{}/intervention.safetensors", std::process::id()));
    let config = ExportConfig::new(
        PlacementConfig {
            sites: vec![site.to_string()],
            positions: "span:country".into(),
            site_width: 576,
            ..Default::default()
        },
        ModelConfig {
            id: "smollm2-135m".into(),
            revision: None,
            arch: model.arch().into(),
            hidden_size: model.width(),
        },
        serde_json::json!({"epochs": cfg.epochs, "dev_iia": trained.iia}),
    );
    export::save(&iv, config, &path).unwrap();
    let sites = model.sites();
    let target = export::Target { arch: model.arch(), hidden_size: model.width(), sites: &sites };
    let (back, _) = export::load_for::<AD>(&path, &target, &dev).unwrap();
    assert_eq!(evaluate(model, &dev_batches, Some(&back)).unwrap(), trained, "the reloaded export gives the same IIA");
}
