//! The hierarchical-equality recipe: the causal model's counterfactual labels, and a short run
//! (one seed, layer 1) in which an MLP trained from scratch reaches ≥ 0.99 and full DAS finds WX
//! and YZ with held-out IIA ≥ 0.9, far above the neuron-aligned baseline.

use std::path::Path;

use burn::backend::Autodiff;
use ferrovene_models::rng::Rng;
use trainer::experiments::hierarchical::{run_seed, EqualityPair, HierarchicalRecipe, Objects, Target};
use trainer::experiments::Recipe;

type AD = Autodiff<ferrovene_models::Cpu>;

fn recipe() -> HierarchicalRecipe {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../recipes/das-hierarchical-equality.toml");
    match Recipe::from_file(&path).unwrap() {
        Recipe::HierarchicalEquality(r) => r,
        other => panic!("a hierarchical-equality recipe: {other:?}"),
    }
}

#[test]
fn counterfactual_labels_follow_the_causal_model() {
    let mut rng = Rng::new(7);
    let (mut wx_true, mut label_true, n) = (0, 0, 4000);
    for _ in 0..n {
        let o = Objects::sample(&mut rng, 4);
        let (a, b, c, d) = (&o.x[0..4], &o.x[4..8], &o.x[8..12], &o.x[12..16]);
        assert_eq!((a == b, c == d), (o.wx, o.yz));
        wx_true += o.wx as usize;
        label_true += o.label() as usize;
    }
    for share in [wx_true, label_true] {
        assert!((share as f64 / n as f64 - 0.5).abs() < 0.03, "balanced: {share} of {n}");
    }
    for _ in 0..200 {
        let p = EqualityPair::sample(&mut rng, 4, Target::Wx);
        assert_eq!(p.label, p.wx_source.wx == p.base.yz);
        let p = EqualityPair::sample(&mut rng, 4, Target::Yz);
        assert_eq!(p.label, p.base.wx == p.yz_source.yz);
        let p = EqualityPair::sample(&mut rng, 4, Target::Both);
        assert_eq!(p.label, p.wx_source.wx == p.yz_source.yz);
    }
    let r = recipe();
    assert_eq!((r.seeds.len(), r.hidden.clone(), r.layers.clone()), (5, vec![16, 16, 16], vec![1, 2, 3]));
    let e = format!("{:#}", Recipe::HierarchicalEquality(r).with_overrides(&["layers=[0, 4]".into()]).unwrap_err());
    assert!(e.contains("`layers` has 0"), "{e}");
}

#[test]
fn a_short_run_finds_wx_and_yz_at_layer_one() {
    let r = HierarchicalRecipe { seeds: vec![1], layers: vec![1], mlp_examples: 100_000, das_train_pairs: 20_000, das_lr: 0.003, ..recipe() };
    let result = run_seed::<AD>(&r, 1, &Default::default()).unwrap();
    let (layer, das, neurons) = result.layers[0];
    eprintln!("MLP accuracy {:.4}; layer {layer}: DAS IIA {das:.3}, neuron-aligned {neurons:.3}", result.mlp_accuracy);
    assert!(result.mlp_accuracy >= 0.99, "the MLP must solve the task first: {}", result.mlp_accuracy);
    assert!(das >= 0.9, "DAS IIA at layer 1: {das}");
    assert!(das >= neurons + 0.2, "DAS {das} vs neuron-aligned {neurons}");
}
