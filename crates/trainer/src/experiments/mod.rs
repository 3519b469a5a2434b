//! Every recipe kind, as one closed type: [`Recipe`] (a TOML file's `kind` picks the variant),
//! and [`Experiment`], what each kind does with its recipe (check it, run it on a backend).
//!
//! Adding a kind: one file in this folder with its recipe type and its `Experiment` impl, and one
//! line in `recipe_kinds!` below — the variant, from which the enum and every dispatching match
//! are generated (ARCHITECTURE.md).

pub mod experiment;
pub mod filler_gap;
pub mod hierarchical;
pub mod pairs;
pub mod prefix;
pub mod probe_layers;
pub mod reft_memorise;
pub mod steer_iti;
pub mod suite;

use std::path::Path;
use std::sync::atomic::AtomicBool;

use anyhow::{Context, Result, anyhow};
use burn::tensor::backend::AutodiffBackend;
use serde::{Deserialize, Serialize};

pub use experiment::{Experiment, RunContext, RunEnd, SweepAxes};

use crate::recipe::{self, Override};
use filler_gap::FillerGapRecipe;
use hierarchical::HierarchicalRecipe;
use pairs::{Method, PairRecipe, Pairs};
use probe_layers::ProbeLayersRecipe;
use reft_memorise::ReftMemoriseRecipe;
use steer_iti::SteerItiRecipe;
use suite::SuiteRecipe;

/// Defines [`Recipe`] from one list of kinds — each a variant, the type of its recipe, and the
/// [`Experiment`] it is (`|r| r` when the recipe type is one) — and the methods that dispatch to
/// each kind's experiment, every one an exhaustive match generated from that list.
macro_rules! recipe_kinds {
    ($( $(#[$doc:meta])* $variant:ident($ty:ty) => |$r:ident| $experiment:expr, )*) => {
        /// A recipe of any kind; the `kind` a file writes (kebab-case) picks the variant. Unknown
        /// kinds and unknown keys are errors that name them.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        #[serde(tag = "kind", rename_all = "kebab-case")]
        pub enum Recipe {
            $( $(#[$doc])* $variant($ty), )*
        }

        impl Recipe {
            /// One line for `trainer list`.
            pub fn description(&self) -> String {
                match self { $( Recipe::$variant($r) => $experiment.description(), )* }
            }

            /// Checks the values that need no model.
            pub fn check(&self) -> Result<()> {
                match self { $( Recipe::$variant($r) => $experiment.check(), )* }
            }

            /// Whether `--resume` applies.
            pub fn resumable(&self) -> bool {
                match self { $( Recipe::$variant($r) => $experiment.resumable(), )* }
            }

            /// The axes `trainer sweep` sets, for sweep kinds.
            pub fn sweep_axes(&self) -> Option<SweepAxes> {
                match self { $( Recipe::$variant($r) => $experiment.sweep_axes(), )* }
            }

            /// Whether `--nodes` can share this recipe's training between nodes.
            pub fn several_nodes(&self) -> bool {
                match self { $( Recipe::$variant($r) => $experiment.several_nodes(), )* }
            }

            /// Whether `--devices` can share this recipe's training between devices.
            pub fn data_parallel(&self) -> bool {
                match self { $( Recipe::$variant($r) => $experiment.data_parallel(), )* }
            }

            /// Runs the recipe on backend `B`: on the first of `devices`, its training shared
            /// between them all when there are several.
            pub fn run<B: AutodiffBackend>(&self, opts: RunOptions<'_>, devices: &[B::Device]) -> Result<RunEnd> {
                let as_run = toml::to_string(self)?;
                let ctx = RunContext { name: opts.name, out_root: opts.out_root, resume: opts.resume, interrupt: opts.interrupt, progress: opts.progress, as_run: &as_run, cache_budget: opts.cache_budget, nodes: opts.nodes };
                let device = devices.first().ok_or_else(|| anyhow!("no device to run on"))?;
                if devices.len() > 1 && !self.data_parallel() {
                    anyhow::bail!("{}", devices_refused(&self.kind()));
                }
                if opts.nodes.is_some() && !self.several_nodes() {
                    anyhow::bail!("{}", nodes_refused(&self.kind()));
                }
                match self {
                    $( Recipe::$variant($r) if devices.len() > 1 => $experiment.run_shared::<B>(&ctx, devices), )*
                    $( Recipe::$variant($r) => $experiment.run::<B>(&ctx, device), )*
                }
            }
        }
    };
}

/// Why `--devices` does not apply to recipes of `kind`, and what does.
pub fn devices_refused(kind: &str) -> String {
    format!(
        "--devices: recipes of kind `{kind}` train on one device (data-parallel training covers the pair-file kinds \
         das, boundless, reft and probe and ReFT memorisation, and the sweeps, filler-gap and suite, run one shard per device); give one --device"
    )
}

/// Why `--nodes` does not apply to recipes of `kind`, and what does.
pub fn nodes_refused(kind: &str) -> String {
    format!(
        "--nodes: recipes of kind `{kind}` train on one node (several-node training covers the pair-file kinds das, \
         boundless, reft and probe); sweeps scale out with --shard"
    )
}

recipe_kinds! {
    /// Low-rank DAS on a pair file.
    Das(PairRecipe) => |r| Pairs { method: Method::Das, recipe: r },
    /// Boundless DAS on a pair file.
    Boundless(PairRecipe) => |r| Pairs { method: Method::Boundless, recipe: r },
    /// ReFT on prompt/target examples.
    Reft(PairRecipe) => |r| Pairs { method: Method::Reft, recipe: r },
    /// A linear probe on text/class examples.
    Probe(PairRecipe) => |r| Pairs { method: Method::Probe, recipe: r },
    /// The hierarchical-equality MLP and DAS on it.
    HierarchicalEquality(HierarchicalRecipe) => |r| r,
    /// The filler-gap sweep over layers × positions.
    FillerGap(FillerGapRecipe) => |r| r,
    /// A probe per layer beside its control task.
    ProbeLayers(ProbeLayersRecipe) => |r| r,
    /// ReFT that memorises or instructs, judged by generation.
    ReftMemorise(ReftMemoriseRecipe) => |r| r,
    /// Inference-time intervention on true/false statements.
    SteerIti(SteerItiRecipe) => |r| r,
    /// Every method at every layer × region of template-suite tasks (CausalGym).
    Suite(SuiteRecipe) => |r| r,
}

/// How a recipe is run from the command line: its name, where runs go, and what may stop it.
pub struct RunOptions<'a> {
    /// The recipe's name (its file name): runs go to `out_root/name/<timestamp>/`.
    pub name: &'a str,
    /// Where run folders go (`runs/`).
    pub out_root: &'a Path,
    /// Go on from this run folder's latest checkpoint (kinds that are [`Experiment::resumable`]).
    pub resume: Option<&'a Path>,
    /// Set by Ctrl-C: checkpoint and stop.
    pub interrupt: Option<&'a AtomicBool>,
    /// Progress bars (drawn only on a terminal anyway).
    pub progress: bool,
    /// Most bytes the frozen cache may take (see `--cache-budget`).
    pub cache_budget: u64,
    /// This node's part in a several-node run (`--nodes`).
    pub nodes: Option<&'a crate::nodes::NodePlan>,
}

impl Recipe {
    /// Reads and checks a recipe file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading recipe {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("recipe {}", path.display()))
    }

    /// Parses and checks a recipe.
    pub fn from_toml(text: &str) -> Result<Self> {
        let recipe: Recipe = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        recipe.check()?;
        Ok(recipe)
    }

    /// Reads and checks a recipe from its table, with `overrides` applied first (errors name the
    /// overridden keys).
    pub fn from_table(mut table: toml::Table, overrides: &[Override]) -> Result<Self> {
        recipe::apply(&mut table, overrides);
        let set = overrides.iter().map(|o| o.typed.as_str()).collect::<Vec<_>>().join(" ");
        let what = || if overrides.is_empty() { String::new() } else { format!("with {set}: ") };
        let recipe: Recipe = table.try_into().map_err(|e| anyhow!("{}{}", what(), e.to_string().trim()))?;
        recipe.check().map_err(|e| anyhow!("{}{e:#}", what()))?;
        Ok(recipe)
    }

    /// The recipe with `key=value` overrides (TOML values) applied and checked again.
    pub fn with_overrides(&self, sets: &[String]) -> Result<Self> {
        let overrides: Vec<Override> = sets.iter().map(|s| s.parse()).collect::<Result<_>>()?;
        Self::from_table(toml::Table::try_from(self)?, &overrides)
    }

    /// The kind's name, as recipes write it.
    pub fn kind(&self) -> String {
        toml::Table::try_from(self)
            .ok()
            .and_then(|t| t.get("kind").and_then(|k| k.as_str()).map(str::to_string))
            .unwrap_or_default()
    }
}

/// The recipes in `dir` with their descriptions (or why they do not parse), sorted by name.
pub fn list(dir: &Path) -> Result<Vec<(String, Result<String>)>> {
    Ok(recipe::files(dir)?
        .into_iter()
        .map(|(name, path)| (name, Recipe::from_file(&path).map(|r| r.description())))
        .collect())
}
