//! DAS at one (layer, position) site of the sweep, from the cached activations, with the
//! paper's metrics beside its controls (no intervention, a random direction, the difference of
//! means).

use anyhow::{Context, Result};
use burn::tensor::backend::AutodiffBackend;
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::{Intervention, Orthogonal};
use ferrovene_models::Transformer;
use ferrovene_models::rng::Rng;
use serde::{Deserialize, Serialize};

use super::cache::{Cached, mean_difference, site_batches};
use super::recipe::FillerGapRecipe;
use crate::fit::{FitConfig, FitIo, fit};
use crate::objectives::das::{DasObjective, Metrics, evaluate};
use crate::schedule::Decay;

/// The numbers of one site (a unit of the sweep's [`crate::units::UnitLog`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SiteResult {
    /// Layer.
    pub layer: usize,
    /// Position (span name).
    pub position: String,
    /// The paper's IIA: share of held-out pairs with p(source label) > p(base label).
    pub iia: f32,
    /// Mean log-odds gain over no intervention.
    pub log_odds_gain: f32,
    /// Controls: no intervention, a random direction, the difference-of-means direction.
    pub iia_none: f32,
    /// Random direction.
    pub iia_random: f32,
    /// Difference of means.
    pub iia_mean_difference: f32,
    /// Training loss of the first and the last step.
    pub loss: (f32, f32),
}

/// The paper's IIA: the share of pairs with p(source label) > p(base label).
pub fn p_beats(m: &Metrics) -> f32 {
    m.label_beats_base.unwrap_or(0.0)
}

/// Trains rank-`r.rank` DAS at one site on `train`; returns it with the first and last step's
/// loss.
pub fn train_das<B: AutodiffBackend, M: Transformer<B>>(
    model: &M,
    r: &FillerGapRecipe,
    train: &[Cached<B>],
    layer: usize,
    position: &str,
    device: &B::Device,
) -> Result<(Intervention<B>, (f32, f32))> {
    let train_b = site_batches(train, layer, position, device)?;
    let iv = Intervention::DasLowRank(DasLowRank {
        rotation: Orthogonal::random(r.rank, model.width(), &mut Rng::new(r.seed ^ (layer as u64) << 8), device),
    });
    let cfg = FitConfig {
        epochs: r.epochs,
        lr: r.lr,
        warmup: r.warmup,
        decay: Decay::Linear,
        weight_decay: 0.0,
        grad_clip: None,
        accumulate: 1,
        temperature: None,
        eval_every: 0,
        early_stopping: None,
        checkpoint_every: 0,
        checkpoint_minutes: 0.0,
        seed: r.seed,
        shuffle: true,
    };
    let fitted = fit(&DasObjective::new(model, &train_b, &Vec::new(), 0.0), iv, &cfg, FitIo::default())?;
    let losses = &fitted.state.losses;
    let loss = (losses.first().copied().unwrap_or(f32::NAN), losses.last().copied().unwrap_or(f32::NAN));
    Ok((fitted.module, loss))
}

/// Trains rank-`r.rank` DAS at one site on `train`, returns it with its held-out numbers beside
/// the controls.
pub fn train_site<B: AutodiffBackend, M: Transformer<B>>(
    model: &M,
    r: &FillerGapRecipe,
    train: &[Cached<B>],
    test: &[Cached<B>],
    layer: usize,
    position: &str,
    device: &B::Device,
) -> Result<(Intervention<B>, SiteResult)> {
    let (iv, loss) = train_das(model, r, train, layer, position, device)?;
    let test_b = site_batches(test, layer, position, device)?;
    let with = evaluate(model, &test_b, Some(&iv))?;
    let none = evaluate(model, &test_b, None)?;
    let random = evaluate(
        model,
        &test_b,
        Some(&iv.with_random_rotation(&mut Rng::new(r.seed ^ 0xA11CE)).context("a rotation")?),
    )?;
    let dm = Intervention::DasLowRank(DasLowRank {
        rotation: Orthogonal::fixed(mean_difference(train, layer, position, device)?),
    });
    let mean_diff = evaluate(model, &test_b, Some(&dm))?;
    let result = SiteResult {
        layer,
        position: position.to_string(),
        iia: p_beats(&with),
        log_odds_gain: with.mean_log_odds.unwrap_or(0.0) - none.mean_log_odds.unwrap_or(0.0),
        iia_none: p_beats(&none),
        iia_random: p_beats(&random),
        iia_mean_difference: p_beats(&mean_diff),
        loss,
    };
    Ok((iv, result))
}

/// The best site of the sweep (its trained intervention is the run's export).
#[derive(Debug, Clone, PartialEq)]
pub struct Best {
    /// Its IIA.
    pub iia: f32,
    /// Its layer.
    pub layer: usize,
    /// Its position (span name).
    pub position: String,
}
