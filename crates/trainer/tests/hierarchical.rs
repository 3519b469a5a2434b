//! The hierarchical-equality recipe: the causal model's counterfactual labels, and a short run
//! (one seed, layer 1) in which an MLP trained from scratch reaches ≥ 0.99 and full DAS finds WX
//! and YZ with held-out IIA ≥ 0.9, far above the neuron-aligned baseline.

use std::path::Path;

use burn::backend::Autodiff;
use ferrovene_interventions::das::DasFull;
use ferrovene_interventions::{Intervention, Orthogonal};
use ferrovene_models::arch::mlp::StackedMlp;
use ferrovene_models::rng::Rng;
use ferrovene_models::{Component, Site};
use ferrovene_trainer::experiments::Recipe;
use ferrovene_trainer::experiments::hierarchical::stacked::{align, run_seeds, train_mlps};
use ferrovene_trainer::experiments::hierarchical::{
    EqualityObjective, EqualityPair, HierarchicalRecipe, Objects, Target, iia, prepare, run_seed, train_mlp,
};
use ferrovene_trainer::fit::{FitConfig, FitIo, fit};

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
    let r = HierarchicalRecipe {
        seeds: vec![1],
        layers: vec![1],
        mlp_examples: 100_000,
        das_train_pairs: 20_000,
        das_lr: 0.003,
        ..recipe()
    };
    let result = run_seed::<AD>(&r, 1, &Default::default()).unwrap();
    let (layer, das, neurons) = result.layers[0];
    eprintln!("MLP accuracy {:.4}; layer {layer}: DAS IIA {das:.3}, neuron-aligned {neurons:.3}", result.mlp_accuracy);
    assert!(result.mlp_accuracy >= 0.99, "the MLP must solve the task first: {}", result.mlp_accuracy);
    assert!(das >= 0.9, "DAS IIA at layer 1: {das}");
    assert!(das >= neurons + 0.2, "DAS {das} vs neuron-aligned {neurons}");
}

/// A recipe small enough to run alone and stacked in a test: two seeds, 300 MLP steps, two
/// epochs of 16 DAS batches (the last one ragged, 40 of 64 pairs) at two layers, given out of
/// order.
fn small() -> HierarchicalRecipe {
    HierarchicalRecipe {
        seeds: vec![1, 2],
        mlp_examples: 19_200,
        mlp_epochs: 1,
        das_train_pairs: 1000,
        das_test_pairs: 600,
        das_epochs: 2,
        das_lr: 0.01,
        layers: vec![2, 1],
        ..recipe()
    }
}

/// Every float parameter of a module, flattened in visiting order.
fn values<M: burn::module::Module<AD>>(m: &M) -> Vec<f32> {
    struct Values(Vec<f32>);
    impl burn::module::ModuleVisitor<AD> for Values {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<burn::tensor::Tensor<AD, D>>) {
            self.0.extend(p.val().into_data().convert::<f32>().to_vec::<f32>().unwrap());
        }
    }
    let mut v = Values(Vec::new());
    m.visit(&mut v);
    v.0
}

fn max_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

#[test]
fn stacked_trainings_equal_each_seed_alone() {
    let r = small();
    let device = Default::default();
    // The MLPs: each stacked one is its seed's run alone.
    let stacked = train_mlps::<AD>(&r, &r.seeds, &device).unwrap();
    let mut alone = Vec::new();
    for (s, &seed) in r.seeds.iter().enumerate() {
        let (mlp, accuracy) = train_mlp::<AD>(&r, seed, &device).unwrap();
        let diff = max_diff(&values(&mlp), &values(&stacked[s].0));
        eprintln!(
            "seed {seed}: MLP parameters differ by at most {diff:e}; accuracy {accuracy} alone, {} stacked",
            stacked[s].1
        );
        assert!(diff <= 1e-6, "seed {seed}: the stacked MLP is its run alone: {diff}");
        assert!((accuracy - stacked[s].1).abs() <= 1e-3);
        alone.push((mlp, accuracy));
    }
    // Different seeds train different models (one shared state would make them one).
    assert!(max_diff(&values(&stacked[0].0), &values(&stacked[1].0)) > 0.1);

    // The rotations, on the same frozen MLPs: each stacked one is its (seed, layer)'s run alone.
    let frozen = StackedMlp::stack(&alone.iter().map(|(m, _)| m.clone()).collect::<Vec<_>>()).unwrap();
    let mut pairs = Vec::new();
    for &seed in &r.seeds {
        let mut rng = Rng::new(seed ^ 0xDA5);
        let train = EqualityPair::dataset(&mut rng, r.object_width, r.das_train_pairs);
        pairs.push((train.clone(), EqualityPair::dataset(&mut rng, r.object_width, r.das_test_pairs)));
    }
    let rotations = align::<AD>(&r, &r.layers, &alone, &frozen, &pairs, &device).unwrap();
    for (i, &layer) in r.layers.iter().enumerate() {
        let site = Site::new(layer - 1, Component::Hidden);
        for (s, &seed) in r.seeds.iter().enumerate() {
            let mlp = &alone[s].0;
            let train = prepare(mlp, site, &pairs[s].0, r.das_batch, &device).unwrap();
            let iv = Intervention::DasFull(DasFull {
                rotation: Orthogonal::random(16, 16, &mut Rng::new(seed + layer as u64), &device),
                k: 8,
            });
            let cfg = FitConfig::constant(r.das_epochs, r.das_lr, seed, true);
            let fitted = fit(&EqualityObjective { mlp, site, train: &train }, iv, &cfg, FitIo::default()).unwrap();
            let by_itself = fitted.module.rotation().unwrap().matrix();
            let start = Orthogonal::<AD>::random(16, 16, &mut Rng::new(seed + layer as u64), &device).matrix();
            let moved =
                max_diff(&by_itself.to_data().to_vec::<f32>().unwrap(), &start.to_data().to_vec::<f32>().unwrap());
            let diff = max_diff(
                &by_itself.to_data().to_vec::<f32>().unwrap(),
                &rotations[i * 2 + s].to_data().to_vec::<f32>().unwrap(),
            );
            eprintln!(
                "seed {seed}, layer {layer}: R moved {moved:.3} in training; stacked and alone differ by {diff:e}"
            );
            assert!(moved > 0.05, "the rotation trains");
            assert!(diff <= 1e-5, "seed {seed}, layer {layer}: the stacked rotation is its run alone: {diff}");
            let test = prepare(mlp, site, &pairs[s].1, 1024, &device).unwrap();
            let (a, b) =
                (iia(mlp, site, &test, &by_itself).unwrap(), iia(mlp, site, &test, &rotations[i * 2 + s]).unwrap());
            assert!((a - b).abs() <= 1e-3, "seed {seed}, layer {layer}: IIA {a} alone, {b} stacked");
        }
    }

    // The whole recipe, stacked and seed by seed: the same results, in the recipe's layer order.
    let together = run_seeds::<AD>(&r, &device).unwrap();
    for (s, &seed) in r.seeds.iter().enumerate() {
        assert_eq!(together[s].layers.iter().map(|l| l.0).collect::<Vec<_>>(), r.layers);
        assert!((together[s].mlp_accuracy - alone[s].1).abs() <= 1e-3, "seed {seed}");
    }
}
