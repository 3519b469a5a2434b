//! `trainer <recipe>`: read the recipe, apply the command line's overrides to its TOML table,
//! check it, and run it on the chosen device; Ctrl-C (or SIGTERM) checkpoints resumable kinds.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use anyhow::{Result, bail};
use clap::Parser;

use crate::commands::recipe_run::{INTERRUPT, RecipeRun, TERMINATED};
use crate::device::{Compute, DeviceSpec, Devices, dispatch_on};
use crate::experiments::{Recipe, RunEnd};
use crate::nodes::NodeArgs;
use crate::recipe::{self, Override};

/// Options of a recipe run.
#[derive(Parser, Debug)]
#[command(
    name = "trainer <RECIPE>",
    about = "Run a recipe: train, evaluate on held-out data, export (`trainer list` shows the recipes)"
)]
pub struct RecipeArgs {
    /// Recipe name (recipes/NAME.toml) or path to a .toml file.
    pub recipe: String,
    /// Override the recipe's `model`.
    #[arg(long)]
    pub model: Option<String>,
    /// Override the recipe's `seed` (or set `seeds = [N]` in recipes that run several seeds).
    #[arg(long)]
    pub seed: Option<u64>,
    /// Override the recipe's `epochs`.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Where runs go (default: runs/).
    #[arg(long, default_value = "runs")]
    pub out: PathBuf,
    /// Override any recipe key, its value in TOML: --set lr=0.05 --set site="8.block_output".
    #[arg(long = "set")]
    pub sets: Vec<String>,
    /// `--device` and `--dtype`.
    #[command(flatten)]
    pub compute: Compute,
    /// `--devices`.
    #[command(flatten)]
    pub devices: Devices,
    /// `--nodes` and the flags that go with it.
    #[command(flatten)]
    pub nodes: NodeArgs,
    /// Go on from the latest checkpoint of this run folder (written every `checkpoint_every`
    /// steps and on Ctrl-C); the recipe is the one saved in the folder.
    #[arg(long, conflicts_with_all = ["model", "seed", "epochs", "sets"])]
    pub resume: Option<PathBuf>,
    /// No progress bars (they are drawn only on a terminal anyway).
    #[arg(long)]
    pub quiet: bool,
    /// Most memory the frozen cache may take (see `--help`).
    #[arg(long, value_parser = crate::memory::parse_size, value_name = "SIZE", long_help = cache_budget_help())]
    pub cache_budget: Option<u64>,
}

/// `--cache-budget`'s long help, with the default it would take now.
fn cache_budget_help() -> String {
    let now = crate::memory::available().map_or("4.0 GB: available memory unknown here".into(), |a| {
        format!(
            "{} of {} available now",
            crate::memory::human(crate::memory::default_cache_budget()),
            crate::memory::human(a)
        )
    });
    format!(
        "Most memory the frozen cache may take: the model's work on the examples, computed once before training \
         (DAS kinds; its size is printed first). Over it, each batch's frozen part is computed when the batch is used \
         instead: slower, the same numbers. Bytes or K/M/G/T, e.g. 512M, 8G.\n[default: half the memory available when \
         the run starts; {now}]"
    )
}

/// The overrides `--model`, `--seed`, `--epochs` and `--set` make, each on a key the recipe has.
fn overrides(a: &RecipeArgs, table: &toml::Table) -> Result<Vec<Override>> {
    let has = |key: &str| table.contains_key(key);
    let mut out = Vec::new();
    if let Some(m) = &a.model {
        if !has("model") {
            bail!("recipe `{}` has no `model` (it trains its own): --model does not apply", a.recipe);
        }
        out.push(Override::new("model", m.clone()).typed_as(format!("--model {m}")));
    }
    if let Some(s) = a.seed {
        match (has("seed"), has("seeds")) {
            (true, _) => out.push(Override::new("seed", s as i64).typed_as(format!("--seed {s}"))),
            (false, true) => {
                out.push(Override::new("seeds", vec![toml::Value::Integer(s as i64)]).typed_as(format!("--seed {s}")))
            }
            _ => bail!("recipe `{}` has no `seed`: --seed does not apply", a.recipe),
        }
    }
    if let Some(e) = a.epochs {
        if !has("epochs") {
            bail!("recipe `{}` has no `epochs` key (see its keys in recipes/README.md and use --set)", a.recipe);
        }
        out.push(Override::new("epochs", e as i64).typed_as(format!("--epochs {e}")));
    }
    for set in &a.sets {
        out.push(set.parse()?);
    }
    Ok(out)
}

/// The recipe to run: the one saved in the run folder for `--resume`, else the file with the
/// command line's overrides.
fn recipe_of(a: &RecipeArgs, path: &std::path::Path, name: &str) -> Result<Recipe> {
    if let Some(dir) = &a.resume {
        return resume_recipe(dir, name, path);
    }
    let table = recipe::read_table(path)?;
    let overrides = overrides(a, &table)?;
    Recipe::from_table(table, &overrides).map_err(|e| e.context(format!("recipe {}", path.display())))
}

/// The recipe saved in run folder `dir`, to resume it as recipe `name` (file `path`): refused
/// when the folder is a run of another recipe or another kind, or its kind cannot resume.
pub fn resume_recipe(dir: &std::path::Path, name: &str, path: &std::path::Path) -> Result<Recipe> {
    let saved = dir.join("recipe.toml");
    if !saved.exists() {
        bail!("--resume {}: no recipe.toml there; give the folder of an earlier run of `{name}`", dir.display());
    }
    crate::run_dir::check_recipe_name(dir, name)?;
    crate::run_dir::check_not_in_use(dir)?;
    let mut table = recipe::read_table(&saved)?;
    // Suite runs from before `prefix` existed put nothing before their sentences; the default
    // is now CausalGym's `<|endoftext|>`, which would change the layers still to run.
    if table.get("kind").and_then(|k| k.as_str()) == Some("suite") && !table.contains_key("prefix") {
        table.insert("prefix".into(), toml::Value::String(String::new()));
    }
    let r = Recipe::from_table(table, &[]).map_err(|e| e.context(format!("{}", saved.display())))?;
    let given = recipe::read_table(path)?.get("kind").and_then(|k| k.as_str()).map(str::to_string).unwrap_or_default();
    if given != r.kind() {
        bail!(
            "--resume {}: that folder holds a run of kind `{}`, but recipe `{name}` ({}) is kind `{given}`",
            dir.display(),
            r.kind(),
            path.display()
        );
    }
    if !r.resumable() && r.sweep_axes().is_none() {
        bail!(
            "{name} (kind `{}`) is a self-contained experiment of short runs: --resume does not apply; run it again",
            r.kind()
        );
    }
    Ok(r)
}

/// `trainer <recipe> [options]`.
pub fn run_recipe(args: Vec<String>) -> Result<()> {
    let a = RecipeArgs::parse_from(std::iter::once("trainer".to_string()).chain(args));
    let path = recipe::find(&a.recipe)?;
    let name = recipe::stem(&path);
    let r = recipe_of(&a, &path, &name)?;
    let devices: Vec<DeviceSpec> = a.devices.checked()?.to_vec();
    if !devices.is_empty() && r.sweep_axes().is_some() && a.resume.is_none() {
        // A sweep's units are independent trainings: one shard of them per device.
        crate::units::on_signal_keep_units()?;
        return crate::commands::sweep_devices::on_devices(r, name, a.out.clone(), a.compute, &devices);
    }
    if !devices.is_empty() && !r.data_parallel() {
        bail!("{}", crate::experiments::devices_refused(&r.kind()));
    }
    if a.nodes.nodes.is_some() && !r.several_nodes() {
        bail!("{}", crate::experiments::nodes_refused(&r.kind()));
    }
    let nodes = a.nodes.checked()?;
    // Resumable kinds checkpoint on Ctrl-C; the others stop at once, as any program does.
    if r.resumable() {
        // SIGTERM only raises the flags (all a signal handler may safely do); the loop says what
        // it does when it sees them.
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&TERMINATED))?;
        signal_hook::flag::register(signal_hook::consts::SIGTERM, Arc::clone(&INTERRUPT))?;
        // Ctrl-C on a thread of signal-hook's (which may print): the first asks for a checkpoint,
        // a second quits at once.
        let mut ctrl_c = signal_hook::iterator::Signals::new([signal_hook::consts::SIGINT])?;
        std::thread::spawn(move || {
            for _ in ctrl_c.forever() {
                if INTERRUPT.swap(true, Ordering::SeqCst) {
                    eprintln!("\nsecond Ctrl-C: quitting without a checkpoint");
                    std::process::exit(130);
                }
                eprintln!("\nCtrl-C: writing a checkpoint after this step (Ctrl-C again to quit at once)");
            }
        });
    } else if r.sweep_axes().is_some() {
        // Sweeps keep every finished unit as it ends: stop at once, saying what was kept.
        crate::units::on_signal_keep_units()?;
    }
    let cache_budget = a.cache_budget.unwrap_or_else(crate::memory::default_cache_budget);
    let job = RecipeRun {
        name,
        recipe: r,
        out: a.out.clone(),
        resume: a.resume.clone(),
        progress: !a.quiet,
        cache_budget,
        nodes,
    };
    match dispatch_on(a.compute, &devices, job)? {
        RunEnd::Done(_) | RunEnd::NodeDone { interrupted: false } => Ok(()),
        RunEnd::Interrupted(_) | RunEnd::NodeDone { interrupted: true } => {
            std::process::exit(if TERMINATED.load(Ordering::SeqCst) { 143 } else { 130 })
        }
    }
}
