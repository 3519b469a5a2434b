//! The training loop's settings: [`FitConfig`] (rate, schedule, clipping, accumulation,
//! validation, early stopping, checkpoints, seed), and the optimizer it builds.

use anyhow::{Result, bail};
use burn::grad_clipping::GradientClippingConfig;
use burn::module::AutodiffModule;
use burn::optim::AdamW;
use burn::optim::AdamWConfig;
use burn::optim::adaptor::OptimizerAdaptor;
use burn::tensor::backend::AutodiffBackend;
use ferrovene_interventions::das::TemperatureSchedule;
use serde::{Deserialize, Serialize};

use crate::divergence::{check_non_negative, check_rate};
use crate::schedule::Decay;

/// Which validation number early stopping watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StopOn {
    /// Accuracy (IIA for DAS), higher is better.
    #[default]
    Accuracy,
    /// Validation loss, lower is better.
    Loss,
}

/// Stop when the validation number has not improved for `patience` validations, and keep the
/// best intervention.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EarlyStopping {
    /// What to watch.
    #[serde(default)]
    pub metric: StopOn,
    /// How many validations without improvement end the run.
    pub patience: usize,
}

/// Training settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitConfig {
    /// Passes over the batches.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Share of the optimizer steps spent warming up.
    pub warmup: f64,
    /// Decay after the warmup.
    pub decay: Decay,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Clip each parameter's gradient to this L2 norm (burn's norm clipping, per tensor).
    pub grad_clip: Option<f64>,
    /// Batches whose gradients are summed into one optimizer step.
    pub accumulate: usize,
    /// τ over the optimizer steps, for interventions with a temperature (Boundless DAS, sigmoid
    /// masks); `steps = 0` means the whole run.
    pub temperature: Option<TemperatureSchedule>,
    /// Validate every this many optimizer steps; 0 = at the end of every epoch.
    pub eval_every: usize,
    /// Early stopping on the validation set.
    pub early_stopping: Option<EarlyStopping>,
    /// Write a checkpoint every this many optimizer steps (0: only on Ctrl-C and at the ends of
    /// epochs). Runs with a run folder also write one at the end of every epoch.
    pub checkpoint_every: usize,
    /// Write a checkpoint when this many minutes have passed since the last one (0: never for
    /// that reason), so that a kill loses at most that much work.
    pub checkpoint_minutes: f64,
    /// Seed of the batch order.
    pub seed: u64,
    /// Shuffle the batch order of each epoch (from `seed`); off, batches go in index order (for
    /// objectives that order their batches themselves).
    pub shuffle: bool,
}

impl FitConfig {
    /// Adam at a constant rate: no warmup, decay, weight decay, clipping, accumulation,
    /// validation schedule or checkpoints (torch's `Adam(lr)` step for step; see
    /// [`FitConfig::optimizer`]). Callers change the fields they need.
    pub fn constant(epochs: usize, lr: f64, seed: u64, shuffle: bool) -> Self {
        FitConfig {
            epochs,
            lr,
            warmup: 0.0,
            decay: Decay::Constant,
            weight_decay: 0.0,
            grad_clip: None,
            accumulate: 1,
            temperature: None,
            eval_every: 0,
            early_stopping: None,
            checkpoint_every: 0,
            checkpoint_minutes: 0.0,
            seed,
            shuffle,
        }
    }

    /// Refuses settings no run can train with: a learning rate that is not finite and
    /// positive, negative or non-finite decay or clipping, no epochs or accumulation.
    pub fn check(&self) -> Result<()> {
        check_rate("lr", self.lr)?;
        check_non_negative("weight_decay", self.weight_decay)?;
        if let Some(c) = self.grad_clip {
            check_non_negative("grad_clip", c)?;
        }
        if self.epochs == 0 || self.accumulate == 0 {
            bail!("`epochs` and `accumulate` must be at least 1");
        }
        Ok(())
    }

    /// Optimizer steps in the whole run for `batches` batches per epoch.
    pub fn total_steps(&self, batches: usize) -> usize {
        (self.epochs * batches).div_ceil(self.accumulate.max(1)).max(1)
    }

    /// The optimizer, built the same way for a fresh run and a resumed one: AdamW with torch's
    /// epsilon (1e-8; burn's default is 1e-5), so that with weight decay 0 it is torch's Adam
    /// step for step (the training goldens run through it).
    pub fn optimizer<B: AutodiffBackend, M: AutodiffModule<B>>(&self) -> OptimizerAdaptor<AdamW, M, B> {
        AdamWConfig::new()
            .with_epsilon(1e-8)
            .with_weight_decay(self.weight_decay as f32)
            .with_grad_clipping(self.grad_clip.map(|c| GradientClippingConfig::Norm(c as f32)))
            .init::<B, M>()
    }
}
