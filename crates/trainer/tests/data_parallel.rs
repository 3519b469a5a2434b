//! Data-parallel training (`ferrovene_trainer::parallel`, burn's collective all-reduce): two replicas on
//! two CPU devices of burn's collective (two peers of the flex backend), each with half of every
//! batch, train low-rank DAS to what `fit::fit` reaches on one device with the whole batch — the
//! loss at every step and the trained rotation, within float tolerance.
//! Runs with `cargo test -p trainer --features collective --test data_parallel`.
#![cfg(feature = "collective")]

#[path = "common/golden_runs.rs"]
mod golden_runs;

use burn::backend::Autodiff;
use ferrovene_data::TokenizedExample;
use ferrovene_interventions::Intervention;
use ferrovene_models::AnyModel;
use ferrovene_trainer::fit::{FitConfig, FitIo, Objective, fit};
use ferrovene_trainer::objectives::das::{DasObjective, PairBatch, loss};
use ferrovene_trainer::parallel::{Shard, fit_data_parallel};
use golden_runs::{DAS_W_TOLERANCE, Golden, batch_of, examples, low_rank_das, max_diff, tiny_gpt2, torch, values};

type B = Autodiff<ferrovene_models::Cpu>;

/// One replica's shard: its batches, with DAS's loss (what `DasObjective` computes; it holds its
/// batches behind a reference that cannot cross threads).
struct ShardPairs<'a> {
    model: &'a AnyModel<B>,
    batches: Vec<PairBatch<B>>,
}

impl Objective<B> for ShardPairs<'_> {
    fn batches(&self) -> usize {
        self.batches.len()
    }
    fn loss(&self, module: &Intervention<B>, index: usize) -> anyhow::Result<burn::tensor::Tensor<B, 1>> {
        loss(self.model, &self.batches[index], module)
    }
    fn validate(&self, _module: &Intervention<B>) -> anyhow::Result<Option<(f32, f32)>> {
        Ok(None)
    }
}

/// `RᵀR`, the projector onto the intervention's subspace.
fn projector(iv: &Intervention<B>) -> Vec<f32> {
    let r = iv.rotation().expect("a rotation").matrix();
    values(r.clone().transpose().matmul(r))
}

/// The low-rank DAS training golden's start, its 8 pairs and the tiny GPT-2 they run on.
fn low_rank_das_on_the_golden_pairs() -> (Intervention<B>, Vec<TokenizedExample>, AnyModel<B>) {
    let dev = Default::default();
    let (name, start, _) = low_rank_das::<B>(&dev);
    (start, examples(&Golden::read(name)), tiny_gpt2::<B>(&dev))
}

#[test]
fn two_devices_with_half_batches_train_like_one_device_with_the_whole_batch() {
    let dev = Default::default();
    let (start, pairs, model) = low_rank_das_on_the_golden_pairs();
    let cfg =
        FitConfig { weight_decay: 0.01, grad_clip: Some(1.0), warmup: 0.2, ..FitConfig::constant(12, 1e-2, 0, false) };
    let none: Vec<PairBatch<B>> = Vec::new();

    // One device, the whole batch of 8 pairs, through the training loop every recipe uses.
    let whole = vec![batch_of(&pairs, &model, &dev)];
    let single = fit(&DasObjective::new(&model, &whole, &none, 0.0), start.clone(), &cfg, FitIo::default()).unwrap();

    // Two devices, each with 4 of the 8 pairs of every batch.
    let shards = pairs
        .chunks(4)
        .map(|c| Shard {
            device: dev,
            objective: ShardPairs { model: &model, batches: vec![batch_of(c, &model, &dev)] },
        })
        .collect();
    let parallel = fit_data_parallel(shards, start.clone(), &cfg).unwrap();

    assert_eq!(parallel.losses.len(), 12);
    let d_loss = max_diff(&parallel.losses, &single.state.losses);
    // DAS's loss does not change when W turns inside its subspace, so W itself matches only to
    // the noise that Adam amplifies along those directions (golden_runs::DAS_W_TOLERANCE says
    // why); the subspace, the projector RᵀR, is what training determines. The two runs' gradients
    // differ in f32 rounding (two 4-row means averaged against one 8-row mean), and Adam's
    // per-coordinate m/(√v + ε) turns relative rounding in small coordinates into steps of the
    // learning rate's size: measured 2.6e-5 on RᵀR after 12 steps (losses 4.8e-7), so 1e-4.
    let d_w = max_diff(&values(torch(&parallel.module).w()), &values(torch(&single.module).w()));
    let d_p = max_diff(&projector(&parallel.module), &projector(&single.module));
    let moved = max_diff(&projector(&parallel.module), &projector(&start));
    eprintln!("losses differ by {d_loss:.2e}; RᵀR by {d_p:.2e} (moved {moved:.2e} from the start); W by {d_w:.2e}");
    assert!(d_loss < 1e-5, "losses differ by {d_loss}: {:?} vs {:?}", parallel.losses, single.state.losses);
    assert!(d_p < 1e-4, "the trained subspaces differ by {d_p}");
    assert!(d_w < DAS_W_TOLERANCE, "the trained rotations differ by {d_w}");
    assert!(moved > 1e-2, "training moved the subspace ({moved})");
}

/// Shards must cover the same batches: a mismatch is an error, not a hang in the all-reduce.
#[test]
fn shards_with_different_batch_counts_are_refused() {
    let dev = Default::default();
    let (start, pairs, model) = low_rank_das_on_the_golden_pairs();
    let one = vec![batch_of(&pairs[..4], &model, &dev)];
    let two = vec![batch_of(&pairs[..4], &model, &dev), batch_of(&pairs[4..], &model, &dev)];
    let shards = vec![
        Shard { device: dev, objective: ShardPairs { model: &model, batches: one } },
        Shard { device: dev, objective: ShardPairs { model: &model, batches: two } },
    ];
    let e = fit_data_parallel::<B, Intervention<B>, _>(shards, start, &FitConfig::constant(1, 1e-2, 0, false))
        .err()
        .expect("refused")
        .to_string();
    assert!(e.contains("shard 1 has 2 batches and shard 0 has 1"), "{e}");
}
