//! The filler-gap recipe: held-out items (and their texts) never appear in training, both
//! directions of every drawn item are present, and a small sweep with the generalisation
//! experiments writes its heatmaps, numbers and export.

use std::collections::HashSet;

use ferrovene_data::filler_gap::CONSTRUCTIONS;
use ferrovene_models::rng::Rng;
use ferrovene_trainer::experiments::Recipe;
use ferrovene_trainer::experiments::filler_gap::{FillerGapRecipe, draw, split};

fn filler_gap(text: &str) -> anyhow::Result<FillerGapRecipe> {
    match Recipe::from_toml(text)? {
        Recipe::FillerGap(r) => Ok(r),
        other => panic!("a filler-gap recipe: {other:?}"),
    }
}

mod common;

use common::{only_run, root, trainer};

#[test]
fn held_out_bases_never_appear_in_training_and_both_directions_are_drawn() {
    let splits = split(1, 50);
    for c in CONSTRUCTIONS {
        let s = &splits[c];
        assert!(s.test.len() >= 50 && s.train.len() > 200, "{c}: {} / {}", s.train.len(), s.test.len());
        let texts = |items: &[ferrovene_data::filler_gap::Item]| -> HashSet<String> {
            items.iter().flat_map(|i| [i.side(true).text, i.side(false).text]).collect()
        };
        let (train, test) = (texts(&s.train), texts(&s.test));
        assert!(train.is_disjoint(&test), "{c}: {:?}", train.intersection(&test).next());
        let pairs = draw(&[&s.train], 40, &mut Rng::new(3));
        assert_eq!(pairs.len(), 40);
        for p in &pairs {
            assert!(
                pairs.iter().any(|q| q.item == p.item && q.gap_in_base != p.gap_in_base),
                "{c}: the swapped pair is missing"
            );
        }
    }
}

#[test]
fn a_small_sweep_writes_heatmaps_numbers_and_export() {
    let text = std::fs::read_to_string(root().join("recipes/das-filler-gap.toml")).unwrap();
    let r = filler_gap(&text).unwrap();
    assert_eq!(
        (r.train_pairs, r.test_pairs, r.rank, r.batch_size, r.epochs, r.warmup, r.lr),
        (400, 100, 1, 4, 1, 0.1, 0.005),
        "the paper's defaults"
    );
    assert!(format!("{:#}", filler_gap(&text.replace("\"verb\"]", "\"adverb\"]")).unwrap_err()).contains("adverb"));
    let out =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-fg-{}", std::process::id()));
    let status = trainer()
        .args([
            "sweep",
            "das-filler-gap",
            "--layers",
            "24",
            "--positions",
            "verb",
            "--set",
            "train_pairs=16",
            "--set",
            "test_pairs=8",
            "--set",
            "generalization=true",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    let run = only_run(&out.join("das-filler-gap"));
    for f in [
        "iia.svg",
        "iia.png",
        "log_odds.svg",
        "log_odds.png",
        "sweep.csv",
        "report.json",
        "intervention.safetensors",
        "generalization.svg",
        "generalization.png",
        "generalization.csv",
        "recipe.toml",
    ] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let report = common::report(&run);
    let site = &report["sweep"][0];
    assert_eq!((site["layer"].as_u64(), site["position"].as_str()), (Some(24), Some("verb")));
    for key in ["iia", "iia_none", "iia_random", "iia_mean_difference", "log_odds_gain"] {
        assert!(site[key].is_number(), "{key}");
    }
    let m = report["generalization"]["matrix"].as_array().unwrap();
    assert_eq!((m.len(), m[0].as_array().unwrap().len()), (7, 7));
    assert_eq!(report["generalization"]["leave_one_out"].as_array().unwrap().len(), 7);
    let csv = std::fs::read_to_string(run.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 2);
    let g = std::fs::read_to_string(run.join("generalization.csv")).unwrap();
    assert_eq!(g.lines().count(), 1 + 49 + 7, "header, the 7 x 7 matrix, leave-one-out");
}

#[test]
fn layers_are_a_list_or_all() {
    use ferrovene_trainer::recipe::Layers;
    assert_eq!(Layers::All("all".into()).resolve(3).unwrap(), vec![0, 1, 2]);
    assert!(Layers::All("every".into()).check().is_err());
    assert!(Layers::List(vec![]).check().is_err());
    assert!(format!("{:#}", Layers::List(vec![1, 30]).resolve(30).unwrap_err()).contains("layer 30 does not exist"));
    let text = std::fs::read_to_string(root().join("recipes/das-filler-gap.toml")).unwrap();
    let Recipe::FillerGap(r) = Recipe::from_toml(&text).unwrap().with_overrides(&["layers=\"all\"".into()]).unwrap()
    else {
        panic!("a filler-gap recipe")
    };
    assert_eq!(r.layers, Layers::All("all".into()));
}
