//! `trainer sweep <recipe>`: a sweep recipe with its swept layers and positions (filler-gap) or
//! regions, tasks, methods and template file (suites) set from the command line.

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};

use crate::commands::recipe_run::RecipeRun;
use crate::device::{Compute, Devices, dispatch};
use crate::experiments::Recipe;
use crate::recipe::{self, Override};
use crate::shard::Shard;

/// `trainer sweep`'s options.
pub struct SweepArgs {
    /// The recipe (a sweep kind).
    pub recipe: String,
    /// Layers to sweep.
    pub layers: Option<Vec<usize>>,
    /// Positions to sweep (filler-gap).
    pub positions: Option<Vec<String>>,
    /// Regions to sweep (suites).
    pub regions: Option<Vec<String>>,
    /// Tasks to run (suites).
    pub tasks: Option<Vec<String>>,
    /// Methods to run (suites).
    pub methods: Option<Vec<String>>,
    /// A template file in CausalGym's format instead of the recipe's suite.
    pub templates: Option<PathBuf>,
    /// Every layer and every position.
    pub full: bool,
    /// Skip the follow-up experiments at the best site.
    pub no_generalization: bool,
    /// Suites: print each task's pairs and regions, and stop before loading the model.
    pub dry_run: bool,
    /// Other overrides (`key=value`).
    pub sets: Vec<String>,
    /// Where runs go.
    pub out: PathBuf,
    /// Where to compute, and the frozen model's precision.
    pub compute: Compute,
    /// Go on with the sweep in this run folder: its finished units are kept, the rest run.
    pub resume: Option<PathBuf>,
    /// Run only this shard of the sweep's units (else a job array's index, if any).
    pub shard: Option<Shard>,
    /// Share the sweep's units between these devices (one shard each, then merged).
    pub devices: Devices,
}

/// Runs the sweep (or goes on with the one in `--resume`'s folder).
pub fn sweep(a: SweepArgs) -> Result<()> {
    let path = recipe::find(&a.recipe)?;
    let (recipe, resume) = match &a.resume {
        Some(dir) => (crate::commands::run::resume_recipe(dir, &recipe::stem(&path), &path)?, a.resume.clone()),
        None => {
            let table = recipe::read_table(&path)?;
            let overrides = overrides(&a, &path, &table)?;
            (Recipe::from_table(table, &overrides)?, None)
        }
    };
    if a.dry_run {
        let Recipe::Suite(suite) = &recipe else {
            return Err(anyhow!(
                "`--dry-run` checks a template suite's pairs: `{}` is kind `{}`, not `suite`",
                a.recipe,
                recipe.kind()
            ));
        };
        print!("{}", crate::experiments::suite::dry_run(suite)?);
        return Ok(());
    }
    crate::units::on_signal_keep_units()?;
    let devices = a.devices.checked()?.to_vec();
    if !devices.is_empty() {
        return crate::commands::sweep_devices::on_devices(recipe, recipe::stem(&path), a.out, a.compute, &devices);
    }
    let run = RecipeRun {
        name: recipe::stem(&path),
        recipe,
        out: a.out,
        resume,
        progress: true,
        cache_budget: crate::memory::default_cache_budget(),
        nodes: None,
    };
    dispatch(a.compute, run).map(|_| ())
}

/// The overrides the sweep's flags make on the recipe's `table` (file `path`), each shown in
/// errors as the user typed it; a flag the recipe's kind has no axis for is refused.
fn overrides(a: &SweepArgs, path: &std::path::Path, table: &toml::Table) -> Result<Vec<Override>> {
    let as_written =
        Recipe::from_table(table.clone(), &[]).map_err(|e| e.context(format!("recipe {}", path.display())))?;
    let axes = as_written.sweep_axes().ok_or_else(|| {
        anyhow!("`trainer sweep` runs sweep recipes (kinds `filler-gap` and `suite`); `{}` is kind `{}`: run it with `trainer {}`, and for a pair-file recipe vary the site with --set site=\"L.block_output\"", a.recipe, as_written.kind(), a.recipe)
    })?;
    let strings = |v: &[String]| toml::Value::Array(v.iter().map(|p| toml::Value::String(p.clone())).collect());
    let kind = as_written.kind();
    let only = |flag: &str, ok: bool, key: &str| -> Result<()> {
        if ok {
            Ok(())
        } else {
            Err(anyhow!("`{flag}` does not apply to `{}` (kind `{kind}`); it has `--{}`", a.recipe, key))
        }
    };
    let mut overrides = Vec::new();
    if a.full {
        overrides.push(
            Override::new(
                axes.positions_key,
                strings(&axes.every_position.iter().map(|p| p.to_string()).collect::<Vec<_>>()),
            )
            .typed_as("--full"),
        );
        overrides.push(Override::new("layers", "all").typed_as("--full"));
    }
    if let Some(l) = &a.layers {
        let typed = format!("--layers {}", l.iter().map(|x| x.to_string()).collect::<Vec<_>>().join(","));
        overrides.push(
            Override::new("layers", toml::Value::Array(l.iter().map(|&x| toml::Value::Integer(x as i64)).collect()))
                .typed_as(typed),
        );
    }
    let typed = |flag: &str, v: &[String]| format!("{flag} {}", v.join(","));
    if let Some(p) = &a.positions {
        only("--positions", axes.positions_key == "positions", axes.positions_key)?;
        overrides.push(Override::new("positions", strings(p)).typed_as(typed("--positions", p)));
    }
    if let Some(r) = &a.regions {
        only("--regions", axes.positions_key == "regions", axes.positions_key)?;
        overrides.push(Override::new("regions", strings(r)).typed_as(typed("--regions", r)));
    }
    for (flag, value, key) in [("--tasks", &a.tasks, "tasks"), ("--methods", &a.methods, "methods")] {
        if let Some(v) = value {
            only(flag, axes.suite, axes.positions_key)?;
            overrides.push(Override::new(key, strings(v)).typed_as(typed(flag, v)));
        }
    }
    if let Some(t) = &a.templates {
        only("--templates", axes.suite, axes.positions_key)?;
        if !t.exists() {
            return Err(anyhow!(
                "--templates {}: no such file (a JSON suite in CausalGym's template format; see datasets/suites/README.md)",
                t.display()
            ));
        }
        overrides
            .push(Override::new("suite", t.display().to_string()).typed_as(format!("--templates {}", t.display())));
    }
    if a.no_generalization {
        let key = axes.follow_up.ok_or_else(|| {
            anyhow!(
                "`--no-generalization` does not apply to `{}` (kind `{kind}`): it has no follow-up experiments",
                a.recipe
            )
        })?;
        overrides.push(Override::new(key, false).typed_as("--no-generalization"));
    }
    let shard = match (a.shard, a.dry_run) {
        (Some(s), true) => bail!("--shard {s}: `--dry-run` prints every task's pairs; it takes no shard"),
        (Some(s), false) => Some((s, format!("--shard {s}"))),
        // A dry run inside a job array checks the whole file.
        (None, true) => None,
        (None, false) => Shard::from_env(|k| std::env::var(k).ok())?,
    };
    if let Some((s, from)) = shard {
        eprintln!("shard {s} ({from})");
        overrides.push(Override::new("shard", s.to_string()).typed_as(from));
    }
    for set in &a.sets {
        overrides.push(set.parse()?);
    }
    Ok(overrides)
}
