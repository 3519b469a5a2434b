//! Recipes: TOML files in `recipes/` that say what to train (schema in `recipes/README.md`);
//! reading, checking, overriding, listing and finding them. Running one is [`crate::run`].

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use ferrovene_interventions::das::Annealing;
use ferrovene_interventions::reft::ReftFamily;
use serde::{Deserialize, Serialize};

use crate::fit::EarlyStopping;
use crate::schedule::Decay;

/// What a recipe trains.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// Low-rank DAS (a `rank × d` rotation) on counterfactual pairs.
    Das,
    /// Boundless DAS: a full rotation with a learned boundary, temperature annealed.
    Boundless,
    /// A ReFT intervention trained with the language-model loss on prompt/target examples.
    Reft,
    /// A linear probe trained with cross-entropy on text/class examples.
    Probe,
}

impl Kind {
    /// The recipe's name for the kind.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Das => "das",
            Kind::Boundless => "boundless",
            Kind::Reft => "reft",
            Kind::Probe => "probe",
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

fn default_validation_fraction() -> f64 {
    0.1
}

/// A recipe (schema in `recipes/README.md`). Unknown keys are errors that name them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// One line for `trainer list`.
    pub description: String,
    /// What to train.
    pub kind: Kind,
    /// Model spec (registry name, folder, .gguf, hub id).
    pub model: String,
    /// Example file (JSONL: pairs for DAS, prompt/target for ReFT, text/class for probes),
    /// relative to the working directory.
    pub pairs: PathBuf,
    /// Site, `LAYER.COMPONENT`.
    pub site: String,
    /// Rank of the DAS rotation or of the ReFT subspace (`das`, `reft`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<usize>,
    /// ReFT family (`loreft` by default; `noreft`, `consreft`, `lobireft`, `direft`, `nodireft`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<ReftFamily>,
    /// Examples per batch.
    pub batch_size: usize,
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
    /// Share of examples held out for evaluation.
    pub dev_fraction: f64,
    /// Metadata field whose values never straddle a split (e.g. `base`, `template`).
    pub split_by: String,
    /// Validate every this many optimizer steps (0: every epoch).
    #[serde(default)]
    pub eval_every: usize,
    /// Stop when validation stops improving (and keep the best intervention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub early_stopping: Option<EarlyStopping>,
    /// Share of the training groups set aside for validation when early stopping is on.
    #[serde(default = "default_validation_fraction")]
    pub validation_fraction: f64,
    /// Write a checkpoint every this many optimizer steps (0: only on Ctrl-C).
    #[serde(default = "default_checkpoint_every")]
    pub checkpoint_every: usize,
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

/// Every key a recipe may have (for `--set` and error messages).
pub const KEYS: &[&str] = &[
    "description", "kind", "model", "pairs", "site", "rank", "family", "batch_size", "accumulate", "epochs", "lr", "warmup",
    "schedule", "weight_decay", "grad_clip", "seed", "dev_fraction", "split_by", "eval_every", "early_stopping",
    "validation_fraction", "checkpoint_every", "temperature", "boundary_penalty", "boundary_init",
];

impl Recipe {
    /// Reads a recipe file; errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading recipe {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("recipe {}", path.display()))
    }

    /// Parses a recipe and checks that the keys its kind needs are there.
    pub fn from_toml(text: &str) -> Result<Self> {
        let recipe: Recipe = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        recipe.check()?;
        Ok(recipe)
    }

    fn check(&self) -> Result<()> {
        let kind = self.kind.name();
        match self.kind {
            Kind::Das | Kind::Reft if self.rank.is_none() => bail!("kind `{kind}` needs `rank`"),
            _ => {}
        }
        if self.family.is_some() && self.kind != Kind::Reft {
            bail!("`family` is a ReFT key; kind `{kind}` does not use it");
        }
        if self.kind != Kind::Boundless {
            for (key, set) in [("temperature", self.temperature.is_some()), ("boundary_penalty", self.boundary_penalty.is_some()), ("boundary_init", self.boundary_init.is_some())] {
                if set {
                    bail!("`{key}` is a Boundless DAS key; kind `{kind}` does not use it");
                }
            }
        }
        if self.batch_size == 0 || self.epochs == 0 || self.accumulate == 0 {
            bail!("`batch_size`, `epochs` and `accumulate` must be at least 1");
        }
        if !(self.dev_fraction > 0.0 && self.dev_fraction < 1.0) {
            bail!("`dev_fraction` must be between 0 and 1 (exclusive), not {}", self.dev_fraction);
        }
        if self.early_stopping.is_some() && !(self.validation_fraction > 0.0 && self.validation_fraction < 1.0) {
            bail!("early stopping needs a validation split: `validation_fraction` between 0 and 1, not {}", self.validation_fraction);
        }
        if !(0.0..=1.0).contains(&self.warmup) {
            bail!("`warmup` is a share of the steps, between 0 and 1, not {}", self.warmup);
        }
        Ok(())
    }

    /// Applies `key=value` overrides (values in TOML syntax: `lr=0.05`, `site="8.block_output"`,
    /// `early_stopping={patience=3}`; a bare word is taken as a string).
    pub fn with_overrides(&self, sets: &[String]) -> Result<Self> {
        apply_overrides(self, sets, Some(KEYS), Self::from_toml)
    }
}

/// Applies `key=value` overrides to a recipe of any kind: the recipe as a TOML table, each value
/// parsed as TOML (a bare word taken as a string), keys checked against `keys` (`None`: the keys
/// the recipe has), and the result parsed and checked again by `parse`.
pub fn apply_overrides<T: Serialize>(recipe: &T, sets: &[String], keys: Option<&[&str]>, parse: impl Fn(&str) -> Result<T>) -> Result<T> {
    let mut table = toml::Table::try_from(recipe).map_err(|e| anyhow!("{e}"))?;
    let own: Vec<String> = table.keys().cloned().collect();
    let own: Vec<&str> = own.iter().map(String::as_str).collect();
    let keys = keys.unwrap_or(&own);
    for set in sets {
        let (key, value) = set.split_once('=').ok_or_else(|| anyhow!("--set `{set}`: write it as key=value"))?;
        let key = key.trim();
        if !keys.contains(&key) {
            bail!("--set `{set}`: unknown recipe key `{key}` (keys: {})", keys.join(", "));
        }
        let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", value.trim()))
            .ok()
            .and_then(|t| t.get("v").cloned())
            .unwrap_or_else(|| toml::Value::String(value.trim().to_string()));
        table.insert(key.to_string(), parsed);
    }
    parse(&toml::to_string(&table)?).context("after --set")
}

/// Where recipes live: `$FERROVENE_RECIPES`, else `recipes/` in the working directory.
pub fn recipes_dir() -> PathBuf {
    std::env::var_os("FERROVENE_RECIPES").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("recipes"))
}

/// The recipes in `dir`, with their descriptions, sorted by name.
pub fn list(dir: &Path) -> Result<Vec<(String, Result<String>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing recipes in {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            out.push((name, describe(&path)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// The kind named in a recipe file (recipes of different kinds have different schemas).
pub fn kind_of(path: &Path) -> Result<String> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading recipe {}", path.display()))?;
    let table: toml::Table = toml::from_str(&text).map_err(|e| anyhow!("recipe {}: {e}", path.display()))?;
    table.get("kind").and_then(|k| k.as_str()).map(str::to_string).ok_or_else(|| anyhow!("recipe {}: no `kind`", path.display()))
}

/// A recipe's description, after checking the recipe against its kind's schema.
fn describe(path: &Path) -> Result<String> {
    let kind = kind_of(path)?;
    let text = || std::fs::read_to_string(path).with_context(|| format!("reading recipe {}", path.display()));
    Ok(match kind.as_str() {
        crate::hierarchical::KIND => crate::hierarchical::HierarchicalRecipe::from_toml(&text()?)?.description,
        crate::probe_layers::KIND => crate::probe_layers::ProbeLayersRecipe::from_toml(&text()?)?.description,
        crate::filler_gap::KIND => crate::filler_gap::FillerGapRecipe::from_toml(&text()?)?.description,
        crate::reft_memorise::KIND => crate::reft_memorise::ReftMemoriseRecipe::from_toml(&text()?)?.description,
        crate::steer_iti::KIND => crate::steer_iti::SteerItiRecipe::from_toml(&text()?)?.description,
        _ => Recipe::from_file(path)?.description,
    })
}

/// Finds a recipe by name (in [`recipes_dir`]) or path.
pub fn find(name: &str) -> Result<PathBuf> {
    let as_path = PathBuf::from(name);
    if as_path.extension().is_some_and(|e| e == "toml") && as_path.exists() {
        return Ok(as_path);
    }
    let dir = recipes_dir();
    let path = dir.join(format!("{name}.toml"));
    if path.exists() {
        return Ok(path);
    }
    let known: Vec<String> = list(&dir).map(|l| l.into_iter().map(|(n, _)| n).collect()).unwrap_or_default();
    bail!("no recipe `{name}` in {} (recipes: {}); `trainer list` describes them", dir.display(), if known.is_empty() { "none".into() } else { known.join(", ") })
}

