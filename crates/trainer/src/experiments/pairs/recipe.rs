//! The recipe of the pair-file kinds (`das`, `boundless`, `reft`, `probe`): schema in
//! `recipes/README.md`.

use std::path::PathBuf;

use anyhow::{Result, bail};
use ferrovene_interventions::Share;
use ferrovene_interventions::das::{Annealing, TemperatureSchedule};
use ferrovene_interventions::reft::ReftFamily;
use ferrovene_models::Site;
use serde::{Deserialize, Serialize};

use crate::fit::{EarlyStopping, FitConfig};
use crate::recipe::SiteKeys;
use crate::schedule::Decay;

/// What a pair-file recipe trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// Low-rank DAS (a `rank × d` rotation) on counterfactual pairs.
    Das,
    /// Boundless DAS: a full rotation with a learned boundary, temperature annealed.
    Boundless,
    /// A ReFT intervention trained with the language-model loss on prompt/target examples.
    Reft,
    /// A linear probe trained with cross-entropy on text/class examples.
    Probe,
}

impl Method {
    /// The recipe's `kind` for the method.
    pub fn name(self) -> &'static str {
        match self {
            Method::Das => "das",
            Method::Boundless => "boundless",
            Method::Reft => "reft",
            Method::Probe => "probe",
        }
    }
}

/// Boundless DAS's temperature schedule, as a recipe writes it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Temperature {
    /// τ at the first step.
    pub start: f64,
    /// τ at the last annealing step and after.
    pub end: f64,
    /// `linear` (pyvene) or `geometric` (the default; see recipes/README.md).
    #[serde(default = "geometric")]
    pub annealing: Annealing,
    /// Annealing steps; 0 (the default) = the whole run.
    #[serde(default)]
    pub steps: usize,
}

fn geometric() -> Annealing {
    Annealing::Geometric
}

fn one() -> usize {
    1
}

fn default_checkpoint_every() -> usize {
    100
}

fn default_checkpoint_minutes() -> f64 {
    5.0
}

fn default_validation_fraction() -> f64 {
    0.1
}

/// A pair-file recipe. Unknown keys are errors that name them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairRecipe {
    /// One line for `trainer list`.
    pub description: String,
    /// Model spec (registry name, folder, .gguf, hub id).
    pub model: String,
    /// Example file (JSONL: pairs for DAS, prompt/target for ReFT, text/class for probes),
    /// relative to the working directory.
    pub pairs: PathBuf,
    /// Site, `LAYER.COMPONENT` (parsed when the recipe is read; checked against the model before
    /// the run folder is made). Give this or `sites`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<Site>,
    /// Several sites, trained jointly in one forward and exported as one file (DAS, Boundless
    /// DAS, ReFT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites: Option<Vec<Site>>,
    /// Which placements share parameters: `none` (one set per site and position, the default),
    /// `positions` (one per site, pyreft's `share_weights`), `all` (one everywhere).
    #[serde(default)]
    pub share: Share,
    /// Rank of the DAS rotation or of the ReFT subspace (`das`, `reft`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// ReFT family (`loreft` by default; `noreft`, `consreft`, `lobireft`, `direft`, `nodireft`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<ReftFamily>,
    /// Examples per batch.
    pub batch_size: usize,
    /// Examples per batch when evaluating (validation and held-out splits; default: four times
    /// `batch_size`, at least 64): no gradients are kept there, and bigger batches read the
    /// frozen weights fewer times. The metrics do not depend on it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eval_batch_size: Option<usize>,
    /// Batches whose gradients make one optimizer step.
    #[serde(default = "one")]
    pub accumulate: usize,
    /// Passes over the training examples.
    pub epochs: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Share of steps for the linear warmup.
    #[serde(default)]
    pub warmup: f64,
    /// Decay after the warmup: `linear` (default), `cosine`, `constant`.
    #[serde(default)]
    pub schedule: Decay,
    /// AdamW weight decay.
    #[serde(default)]
    pub weight_decay: f64,
    /// Clip each parameter's gradient to this norm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grad_clip: Option<f64>,
    /// Seed of the initialisation, the split and the batch order.
    pub seed: u64,
    /// What goes before every input of the example files, after the tokenizer's own BOS: `""`
    /// (the default) for nothing, `"causalgym"` for `<|endoftext|>` where the vocabulary has it
    /// (CausalGym's prefix), or any text (its tokens). Positions count from the text's start.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub prefix: String,
    /// A separate file of held-out examples for the final evaluation (then every example of
    /// `pairs` trains, and `dev_fraction` is not used), relative to the working directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_out: Option<PathBuf>,
    /// Share of the `split_by` groups held out for evaluation (without `held_out`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_fraction: Option<f64>,
    /// Metadata field whose values never straddle a split (e.g. `base`, `template`): the
    /// held-out split, and the validation split of early stopping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub split_by: Option<String>,
    /// Validate every this many optimizer steps (0: every epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Stop when validation stops improving (and keep the best intervention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Share of the training groups set aside for validation when early stopping is on.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// Write a checkpoint every this many optimizer steps (besides the end of every epoch,
    /// Ctrl-C and SIGTERM; 0: only those).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
    /// Also write one when this many minutes have passed since the last (0: never for that
    /// reason): a killed run loses at most this much work.
    #[serde(default = "default_checkpoint_minutes")]
    pub checkpoint_minutes: f64,
    /// Start from the interventions of this export (ours, or one `trainer import` made from a
    /// pyvene or pyreft folder) instead of a fresh draw: the same sites, kind and shapes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
    /// Boundless DAS: temperature schedule (default 1 → 0.1, geometric, over the run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<Temperature>,
    /// Boundless DAS: weight of the boundary penalty (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary_penalty: Option<f64>,
    /// Boundless DAS: initial boundary β as a share of the width (default 0.1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boundary_init: Option<f64>,
}

impl PairRecipe {
    /// Where the interventions go: `site` or `sites`.
    pub fn site_keys(&self) -> SiteKeys<'_> {
        SiteKeys { site: self.site, sites: self.sites.as_deref() }
    }

    /// Checks the keys `method` needs and the ranges of the values.
    pub fn check(&self, method: Method) -> Result<()> {
        let kind = method.name();
        let sites = self.site_keys().list()?;
        if method == Method::Probe && sites.len() > 1 {
            bail!(
                "a probe reads one site, but {} lists {}: probe each site in its own recipe, or compare layers with the `probe-layers` kind",
                self.site_keys().describe(),
                sites.len()
            );
        }
        if matches!(method, Method::Das | Method::Reft) && self.rank.is_none() {
            bail!("kind `{kind}` needs `rank`");
        }
        if self.family.is_some() && method != Method::Reft {
            bail!("`family` is a ReFT key; kind `{kind}` does not use it");
        }
        if method != Method::Boundless {
            for (key, set) in [
                ("temperature", self.temperature.is_some()),
                ("boundary_penalty", self.boundary_penalty.is_some()),
                ("boundary_init", self.boundary_init.is_some()),
            ] {
                if set {
                    bail!("`{key}` is a Boundless DAS key; kind `{kind}` does not use it");
                }
            }
        }
        if self.batch_size == 0 || self.epochs == 0 || self.accumulate == 0 || self.eval_batch_size == Some(0) {
            bail!("`batch_size`, `eval_batch_size`, `epochs` and `accumulate` must be at least 1");
        }
        match (&self.held_out, self.dev_fraction) {
            (Some(_), Some(_)) => bail!(
                "give either `held_out` (a file of held-out examples) or `dev_fraction` (a share of `pairs`), not both"
            ),
            (None, None) => bail!(
                "the recipe needs held-out examples: `dev_fraction` (a share of `pairs`, with `split_by`) or `held_out` (a file)"
            ),
            (None, Some(f)) if !(f > 0.0 && f < 1.0) => {
                bail!("`dev_fraction` must be between 0 and 1 (exclusive), not {f}")
            }
            _ => {}
        }
        let needs_groups = self.dev_fraction.is_some() || self.early_stopping.is_some();
        if needs_groups && self.split_by.is_none() {
            bail!(
                "`split_by` (a metadata field whose values never straddle a split) is needed with `dev_fraction` or `early_stopping`"
            );
        }
        if self.early_stopping.is_some() && !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            bail!(
                "early stopping needs a validation split: `validation_fraction` between 0 and 1, not {}",
                self.validation_fraction
            );
        }
        if !(0.0..=1.0).contains(&self.warmup) {
            bail!("`warmup` is a share of the steps, between 0 and 1, not {}", self.warmup);
        }
        crate::divergence::check_non_negative("checkpoint_minutes", self.checkpoint_minutes)?;
        if self.rank == Some(0) {
            bail!("`rank` must be at least 1 (and at most the site's width)");
        }
        self.fit_config(method).check()
    }

    /// Examples per batch when evaluating: `eval_batch_size`, or four times `batch_size` and at
    /// least 64.
    pub fn eval_batch_size(&self) -> usize {
        self.eval_batch_size.unwrap_or((4 * self.batch_size).max(64))
    }

    /// The training loop's settings.
    pub fn fit_config(&self, method: Method) -> FitConfig {
        let temperature = (method == Method::Boundless).then(|| {
            let t = self.temperature.unwrap_or(Temperature {
                start: 1.0,
                end: 0.1,
                annealing: Annealing::Geometric,
                steps: 0,
            });
            TemperatureSchedule { start: t.start, end: t.end, steps: t.steps, annealing: t.annealing }
        });
        FitConfig {
            epochs: self.epochs,
            lr: self.lr,
            warmup: self.warmup,
            decay: self.schedule,
            weight_decay: self.weight_decay,
            grad_clip: self.grad_clip,
            accumulate: self.accumulate,
            temperature,
            eval_every: self.eval_every,
            early_stopping: self.early_stopping,
            checkpoint_every: self.checkpoint_every,
            checkpoint_minutes: self.checkpoint_minutes,
            seed: self.seed,
            shuffle: true,
        }
    }
}
