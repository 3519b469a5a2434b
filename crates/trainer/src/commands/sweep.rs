//! `trainer sweep <recipe>`: a sweep recipe with its swept layers and positions set from the
//! command line.

use std::path::PathBuf;

use anyhow::{anyhow, Result};

use crate::commands::run::RecipeRun;
use crate::device::{dispatch, Compute};
use crate::experiments::Recipe;
use crate::recipe::{self, Override};

/// `trainer sweep`'s options.
pub struct SweepArgs {
    /// The recipe (a sweep kind).
    pub recipe: String,
    /// Layers to sweep.
    pub layers: Option<Vec<usize>>,
    /// Positions to sweep.
    pub positions: Option<Vec<String>>,
    /// Every layer and every position.
    pub full: bool,
    /// Skip the follow-up experiments at the best site.
    pub no_generalization: bool,
    /// Other overrides (`key=value`).
    pub sets: Vec<String>,
    /// Where runs go.
    pub out: PathBuf,
    /// Where to compute, and the frozen model's precision.
    pub compute: Compute,
}

/// Runs the sweep.
pub fn sweep(a: SweepArgs) -> Result<()> {
    let path = recipe::find(&a.recipe)?;
    let table = recipe::read_table(&path)?;
    let as_written = Recipe::from_table(table.clone(), &[]).map_err(|e| e.context(format!("recipe {}", path.display())))?;
    let axes = as_written.sweep_axes().ok_or_else(|| {
        anyhow!("`trainer sweep` runs sweep recipes (kind `filler-gap`); `{}` is kind `{}`: run it with `trainer {}`, and for a pair-file recipe vary the site with --set site=\"L.block_output\"", a.recipe, as_written.kind(), a.recipe)
    })?;
    let strings = |v: &[String]| toml::Value::Array(v.iter().map(|p| toml::Value::String(p.clone())).collect());
    let mut overrides = Vec::new();
    if a.full {
        overrides.push(Override::new("layers", "all"));
        overrides.push(Override::new("positions", strings(&axes.every_position.iter().map(|p| p.to_string()).collect::<Vec<_>>())));
    }
    if let Some(l) = &a.layers {
        overrides.push(Override::new("layers", toml::Value::Array(l.iter().map(|&x| toml::Value::Integer(x as i64)).collect())));
    }
    if let Some(p) = &a.positions {
        overrides.push(Override::new("positions", strings(p)));
    }
    if a.no_generalization {
        overrides.push(Override::new(axes.follow_up, false));
    }
    for set in &a.sets {
        overrides.push(set.parse()?);
    }
    let r = Recipe::from_table(table, &overrides)?;
    dispatch(a.compute, RecipeRun { name: recipe::stem(&path), recipe: r, out: a.out, resume: None, progress: true, cache_budget: crate::memory::default_cache_budget() }).map(|_| ())
}
