//! `trainer merge DIR…`: the run folders of a sweep's shards (`trainer sweep … --shard I/N`)
//! joined into the folder one run would have written. Every shard must be there once, have run
//! the same recipe and have finished; their finished units (`units.jsonl`) go into a new run
//! folder, and the sweep then goes on there as `--resume` would: every unit is done, so it only
//! writes the numbers, heatmaps, summary and report (for filler-gap it also trains the best site
//! again for its export, to the same numbers, and runs the follow-up experiments).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};

use crate::commands::recipe_run::RecipeRun;
use crate::device::{Compute, dispatch};
use crate::experiments::Recipe;
use crate::run_dir::{RunDir, recipe_name};
use crate::shard::{Shard, check_complete};

/// One shard's folder, read.
struct ShardDir {
    dir: PathBuf,
    shard: Shard,
    /// Its recipe as run, without `shard`.
    recipe: toml::Table,
}

fn read_shard(dir: &Path, name: &mut Option<String>) -> Result<ShardDir> {
    let shown = dir.display();
    let saved = dir.join("recipe.toml");
    let text = std::fs::read_to_string(&saved)
        .with_context(|| format!("{shown}: no recipe.toml; give the run folders `trainer sweep … --shard I/N` made"))?;
    let held = recipe_name(dir).ok_or_else(|| anyhow!("{shown}: recipe.toml does not name its recipe"))?;
    match name {
        Some(n) if *n != held => {
            bail!("{shown} is a run of `{held}`, the first folder one of `{n}`: merge shards of one sweep")
        }
        _ => *name = Some(held.clone()),
    }
    let mut recipe: toml::Table = text.parse().with_context(|| format!("reading {}", saved.display()))?;
    let shard = recipe
        .remove("shard")
        .and_then(|s| s.as_str().map(str::to_string))
        .ok_or_else(|| anyhow!("{shown} is not a shard (its recipe.toml has no `shard`): give the folders of `trainer sweep {held} --shard I/N`"))?
        .parse::<Shard>()
        .with_context(|| format!("{}", saved.display()))?;
    let report: serde_json::Value = std::fs::read_to_string(dir.join("report.json"))
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default();
    if report["complete"] != serde_json::Value::Bool(true) {
        bail!(
            "{shown}: shard {shard} has not finished (its report.json is missing or says complete: false); finish it with `trainer sweep {held} --resume {shown}`"
        );
    }
    Ok(ShardDir { dir: dir.to_path_buf(), shard, recipe })
}

/// The first key whose value differs between two recipes, with both values.
fn first_difference(a: &toml::Table, b: &toml::Table) -> Option<(String, String, String)> {
    let show = |v: Option<&toml::Value>| v.map_or("(absent)".to_string(), |v| v.to_string());
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().find(|k| a.get(*k) != b.get(*k)).map(|k| (k.clone(), show(a.get(k)), show(b.get(k))))
}

/// Merges the shard folders `dirs` into a new run folder under `out`, and writes what one run
/// would have.
pub fn merge(dirs: Vec<PathBuf>, out: PathBuf, compute: Compute) -> Result<()> {
    let mut name = None;
    let shards = dirs.iter().map(|d| read_shard(d, &mut name)).collect::<Result<Vec<_>>>()?;
    let name = name.ok_or_else(|| anyhow!("no shard folders given"))?;
    check_complete(&shards.iter().map(|s| (s.shard, s.dir.display().to_string())).collect::<Vec<_>>())?;
    let first = &shards[0];
    for s in &shards[1..] {
        if let Some((key, a, b)) = first_difference(&first.recipe, &s.recipe) {
            bail!(
                "{} (shard {}) ran another recipe than {} (shard {}): `{key}` is {b} there and {a} here; merge the shards of one sweep",
                s.dir.display(),
                s.shard,
                first.dir.display(),
                first.shard
            );
        }
    }
    let recipe = Recipe::from_table(first.recipe.clone(), &[])?;
    if recipe.sweep_axes().is_none() {
        bail!("{}: kind `{}` is not a sweep; only sweeps are sharded", first.dir.display(), recipe.kind());
    }
    // The new folder, with every shard's finished units, in shard order.
    let mut by_index: Vec<&ShardDir> = shards.iter().collect();
    by_index.sort_by_key(|s| s.shard.index);
    let mut units = String::new();
    for s in &by_index {
        let path = s.dir.join(crate::units::FILE);
        units += &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    }
    let merged = {
        let dir = RunDir::create(&out, &name, &toml::to_string(&recipe)?)?;
        dir.write(crate::units::FILE, units)?;
        dir.path().to_path_buf()
    };
    println!("{} shards of `{name}` merged into {}", shards.len(), merged.display());
    let run = RecipeRun {
        name,
        recipe,
        out,
        resume: Some(merged),
        progress: true,
        cache_budget: crate::memory::default_cache_budget(),
        nodes: None,
    };
    dispatch(compute, run).map(|_| ())
}
