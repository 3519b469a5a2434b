//! The pair-file kinds (`das`, `boundless`, `reft`, `probe`): load the model frozen, read and
//! split the examples, compute the frozen parts once, train the intervention ([`crate::fit`]),
//! evaluate it on the held-out examples beside its controls, and leave everything in
//! `runs/<recipe>/<timestamp>/`.
//!
//! The model is loaded, the site checked and the examples read before the run folder is made, so
//! a mistake in the recipe leaves no folder behind; once made, the folder holds the recipe, so a
//! crash or Ctrl-C leaves a folder that `--resume` can go on from.

mod examples;
mod recipe;
mod train;

use anyhow::{Context, Result, anyhow};
use burn::tensor::backend::AutodiffBackend;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_models::{LoadedModel, Transformer};
use serde_json::json;

pub use examples::Examples;
pub use recipe::{Method, PairRecipe, Temperature};
pub use train::Trained;

use crate::device::load_frozen;
use crate::experiments::experiment::{Experiment, RunContext, RunEnd};
use crate::fit::Outcome;
use crate::run_dir::{RunDir, fnv1a};

/// A pair-file recipe with the method its `kind` names: what runs.
pub struct Pairs<'a> {
    /// What to train.
    pub method: Method,
    /// The recipe.
    pub recipe: &'a PairRecipe,
}

impl Experiment for Pairs<'_> {
    fn description(&self) -> String {
        self.recipe.description.clone()
    }

    fn check(&self) -> Result<()> {
        self.recipe.check(self.method)
    }

    fn resumable(&self) -> bool {
        true
    }

    fn run<B: AutodiffBackend>(&self, ctx: &RunContext<'_>, device: &B::Device) -> Result<RunEnd> {
        run::<B>(self.method, self.recipe, ctx, std::slice::from_ref(device))
    }

    fn data_parallel(&self) -> bool {
        true
    }

    fn several_nodes(&self) -> bool {
        true
    }

    fn run_shared<B: AutodiffBackend>(&self, ctx: &RunContext<'_>, devices: &[B::Device]) -> Result<RunEnd> {
        run::<B>(self.method, self.recipe, ctx, devices)
    }
}

/// Runs a pair-file recipe on backend `B`, on the first of `devices`, its training shared between
/// them all when there are several (each holds its own copy of the frozen model).
pub fn run<B: AutodiffBackend>(
    method: Method,
    r: &PairRecipe,
    ctx: &RunContext<'_>,
    devices: &[B::Device],
) -> Result<RunEnd> {
    let device = devices.first().ok_or_else(|| anyhow!("no device to run on"))?;
    let loaded = load_frozen::<B>(&r.model, device).with_context(|| format!("loading model `{}`", r.model))?;
    let copies = crate::replicas::model_copies::<B>(&r.model, devices)?;
    let replicas = crate::replicas::replica_models(devices, &loaded.model, &copies);
    let sites = r.site_keys().list()?;
    let widths = sites
        .iter()
        .map(|&s| {
            Ok(loaded.model.site_info(s).with_context(|| format!("the recipe's {}", r.site_keys().describe()))?.width)
        })
        .collect::<Result<Vec<_>>>()?;
    let width = widths[0];
    let tok = loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", r.model))?;
    let examples = examples::read(r, method, tok)?;
    let positions = train::positions_per_example(r, &examples)?;
    // In a several-node run only rank 0 writes a run folder.
    let dir = match (ctx.resume, ctx.nodes) {
        (_, Some(plan)) if !plan.writes() => None,
        (Some(d), _) => Some(RunDir::reopen(d, ctx.name, ctx.as_run)?),
        (None, _) => Some(RunDir::create(ctx.out_root, ctx.name, ctx.as_run)?),
    };
    let fingerprint = fnv1a(format!("{}\n{}", ctx.as_run, examples.hash).as_bytes());
    let joined = ctx.nodes.map(|plan| crate::nodes::join(plan, &fingerprint)).transpose()?;
    let stage = train::Stage {
        method,
        r,
        model: &loaded.model,
        pad_id: tok.pad_id,
        sites,
        widths,
        positions,
        width,
        examples: &examples,
        dir: dir.as_ref(),
        ctx,
        fingerprint,
        started: std::time::Instant::now(),
        device,
        replicas: &replicas,
        node: joined.as_ref(),
    };
    let trained = stage.train()?;
    let Some(dir) = dir else {
        let interrupted = trained.fitted.outcome == Outcome::Interrupted;
        println!(
            "node {}: {} after step {}; node 0 writes the run folder",
            ctx.nodes.map_or(0, |p| p.rank),
            if interrupted { "interrupted" } else { "done" },
            trained.fitted.state.step
        );
        return Ok(RunEnd::NodeDone { interrupted });
    };
    if trained.fitted.outcome == Outcome::Interrupted {
        // A several-node run cannot resume on several nodes (yet): the checkpoint is the same
        // as one node's, and one node goes on from it.
        let on_one = if ctx.nodes.is_some() { " (on one node; several nodes cannot resume)" } else { "" };
        eprintln!(
            "interrupted at step {}; checkpoint written. Go on with: trainer {} --resume {}{on_one}",
            trained.fitted.state.step,
            ctx.name,
            dir.path().display()
        );
        return Ok(RunEnd::Interrupted(dir.path().to_path_buf()));
    }
    write_outputs(r, &loaded, &examples, &trained, &dir, ctx)?;
    println!(
        "run folder: {} (TensorBoard: tensorboard --logdir {})",
        dir.path().display(),
        dir.join("tensorboard").display()
    );
    Ok(RunEnd::Done(dir.path().to_path_buf()))
}

/// The export, `report.json` and `dev.jsonl` (the held-out examples as they were in the file, so
/// `trainer eval` can reproduce the numbers).
fn write_outputs<B: AutodiffBackend>(
    r: &PairRecipe,
    loaded: &LoadedModel<B>,
    ex: &Examples,
    t: &Trained<B>,
    dir: &RunDir,
    ctx: &RunContext<'_>,
) -> Result<()> {
    let state = &t.fitted.state;
    let report = json!({
        "recipe": ctx.name, "seed": r.seed,
        "data": {"pairs": r.pairs, "held_out": r.held_out, "prefix": ex.prefix, "hash_fnv1a64": ex.hash, "train": ex.train.len(), "validation": ex.validation.len(), "dev": ex.dev.len()},
        "metrics": t.metrics,
        "training": {
            "outcome": match t.fitted.outcome { Outcome::StoppedEarly => "stopped early", _ => "finished" },
            "steps": state.step, "resumed": ctx.resume.is_some(),
            "loss": {"first": state.losses.first(), "last": state.losses.last()},
            "losses": state.losses,
            "validations": state.history, "best": state.best,
        },
        "timings_s": {"prepare": t.timings.0, "train": t.timings.1},
        "model": {"spec": r.model, "path": loaded.path, "revision": loaded.revision},
    });
    let mut report = report;
    if let Some(plan) = ctx.nodes {
        report["nodes"] = plan.report();
    }
    let placement = PlacementConfig {
        sites: Vec::new(),
        positions: "from the example file".into(),
        site_width: t.width,
        ..Default::default()
    };
    let mut config = ExportConfig::new(placement, ModelConfig::of(loaded), t.metrics.clone());
    config.set = set_config(r.share);
    export::save_set(&t.fitted.module, config, &dir.join("intervention.safetensors"))?;
    dir.write_report(report)?;
    dir.write("dev.jsonl", ex.dev_lines.join("\n") + "\n")?;
    Ok(())
}

/// The export's `set` entry before its members are filled in: only how the recipe shared them.
pub(crate) fn set_config(share: ferrovene_interventions::Share) -> Option<export::SetConfig> {
    Some(export::SetConfig { members: Vec::new(), slots: Vec::new(), share })
}
