//! `suite` recipes (`recipes/syntax-suites.toml`): CausalGym's benchmark (Arora, Jurafsky & Potts,
//! ACL 2024) on template suites — every method (DAS and six fitted directions) as a
//! one-dimensional interchange at every layer × region of every task, scored by IIA and the log
//! odds-ratio beside a control task (selectivity, after Hewitt & Liang 2019).
//!
//! Per task, the frozen model runs once per batch of pairs ([`mod@cache`]); every site, every method
//! and the control task read those activations (`share_frozen = false` runs it again per site
//! and method, only to measure what that saves).

pub mod cache;
pub mod dry_run;
pub mod recipe;
pub mod report;
pub mod site;
pub mod stack;

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::AutodiffBackend;
use ferrovene_data::suite::{self as suites, Suite, Task};
use ferrovene_models::{TextTokenizer, Transformer};
use serde::{Deserialize, Serialize};
use serde_json::json;

pub use cache::{Cached, Labels, SuitePair, cache, tokenize_pairs};
pub use dry_run::dry_run;
pub use recipe::{
    CAUSALGYM_PREFIX, LAST, METHODS, Names, SourceIndex, SuiteRecipe, common_slots, select_tasks, task_regions,
};
pub use report::{Row, Summary, summarize, table};
pub use site::{DasSettings, MethodScore, Methods, Score, evaluate, score_layer, train_das};

use crate::device::load_frozen;
use crate::events::progress_if;
use crate::experiments::experiment::{Experiment, RunContext, RunEnd, SweepAxes};
use crate::experiments::prefix::Prefix;
use crate::run_dir::RunDir;
use crate::units::UnitLog;

/// Pairs per frozen run (and per evaluation batch): many rows read the weights fewer times per
/// row; DAS's batches are row ranges of these.
const FROZEN_CHUNK: usize = 64;

impl Experiment for SuiteRecipe {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn check(&self) -> Result<()> {
        SuiteRecipe::check(self)
    }

    fn sweep_axes(&self) -> Option<SweepAxes> {
        Some(SweepAxes { positions_key: "regions", every_position: &["all"], follow_up: None, suite: true })
    }

    fn run<B: AutodiffBackend>(&self, ctx: &RunContext<'_>, device: &B::Device) -> Result<RunEnd> {
        run::<B>(ctx, self, device).map(RunEnd::Done)
    }
}

/// The control words' first tokens; they must differ.
fn control_ids(tok: &TextTokenizer, words: &[String; 2]) -> Result<[u32; 2]> {
    let first = |w: &String| {
        tok.encode_plain(w)
            .ok()
            .and_then(|ids| ids.first().copied())
            .ok_or_else(|| anyhow!("control word {w:?} tokenises to nothing"))
    };
    let ids = [first(&words[0])?, first(&words[1])?];
    if ids[0] == ids[1] {
        bail!("the control words {:?} and {:?} start with the same token: change `control`", words[0], words[1]);
    }
    Ok(ids)
}

/// A task's training and test pairs, cached.
type TrainTest<B> = (Vec<Cached<B>>, Vec<Cached<B>>);

/// What a suite sweep keeps as it goes ([`UnitLog`]): a task's facts once its pairs are cached,
/// then each of its layers' rows as the layer ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "unit", rename_all = "kebab-case")]
pub enum SuiteUnit {
    /// A task's regions and the model's accuracy on its test bases.
    Task {
        /// The task.
        task: String,
        /// Its regions, in order.
        regions: Vec<String>,
        /// Share of test bases where the model prefers the base's continuation.
        accuracy: f32,
        /// Seconds its frozen runs took.
        frozen_s: f64,
    },
    /// Every method at every region of one layer of one task.
    Layer {
        /// The task.
        task: String,
        /// The layer.
        layer: usize,
        /// Its rows.
        rows: Vec<Row>,
    },
}

/// One task's sweep: its regions, the model's accuracy on its test bases, and its rows.
struct TaskRun {
    regions: Vec<String>,
    accuracy: f32,
    rows: Vec<Row>,
    frozen_s: f64,
}

/// The rows of every logged layer, tasks and layers in the sweep's order.
fn rows_in_order(tasks: &[(&String, &Task)], layers: &[usize], log: &[SuiteUnit]) -> Vec<Row> {
    let mut rows = Vec::new();
    for (name, _) in tasks {
        for &l in layers {
            for u in log {
                if let SuiteUnit::Layer { task, layer, rows: r } = u
                    && task == *name
                    && *layer == l
                {
                    rows.extend(r.iter().cloned());
                    break;
                }
            }
        }
    }
    rows
}

/// Every site of one task, layer by layer, each layer logged as it ends and `results.csv`
/// rewritten; the layers already in `log` are not run again, and a task whose layers are all
/// there is not cached again. `bar` advances once per site.
#[allow(clippy::too_many_arguments)]
fn run_task<B: AutodiffBackend, M: Transformer<B>>(
    r: &SuiteRecipe,
    suite: &Suite,
    tasks: &[(&String, &Task)],
    name: &str,
    model: &M,
    tok: &TextTokenizer,
    layers: &[usize],
    (control, prefix): ([u32; 2], &Prefix),
    bar: &indicatif::ProgressBar,
    (dir, log): (&RunDir, &mut UnitLog<SuiteUnit>),
    device: &B::Device,
) -> Result<TaskRun> {
    let task = &suite.tasks[name];
    let regions = task_regions(task, &r.regions)?;
    let logged_layer = |log: &UnitLog<SuiteUnit>, l: usize| {
        log.done().iter().any(|u| matches!(u, SuiteUnit::Layer { task, layer, .. } if task == name && *layer == l))
    };
    let logged_task = log.done().iter().find_map(|u| match u {
        SuiteUnit::Task { task, accuracy, frozen_s, .. } if task == name => Some((*accuracy, *frozen_s)),
        _ => None,
    });
    let task_rows = |log: &UnitLog<SuiteUnit>| rows_in_order(&[(&name.to_string(), task)], layers, log.done());
    if let Some((accuracy, frozen_s)) = logged_task
        && layers.iter().all(|&l| logged_layer(log, l))
    {
        bar.inc((regions.len() * layers.len()) as u64);
        return Ok(TaskRun { regions, accuracy, rows: task_rows(log), frozen_s });
    }
    let split = suites::split(suite, name, r.train_pairs, r.test_pairs, r.seed)?;
    let tokenized = |pairs| tokenize_pairs(suite, name, pairs, &regions, control, tok, prefix, r.source_index);
    let (train, test) = (tokenized(&split.train)?, tokenized(&split.test)?);
    let methods = Methods {
        vanilla: r.has_vanilla(),
        das: r.has_das().then_some(DasSettings {
            batch_size: r.batch_size,
            epochs: r.epochs,
            lr: r.lr,
            warmup: r.warmup,
            seed: r.seed,
        }),
        fitted: r.fitted_methods(),
        seed: r.seed,
    };
    let started = Instant::now();
    let frozen = |layers: &[usize]| -> Result<TrainTest<B>> {
        Ok((
            cache(model, tok.pad_id, &train, layers, FROZEN_CHUNK.div_ceil(r.batch_size) * r.batch_size, device)?,
            cache(model, tok.pad_id, &test, layers, FROZEN_CHUNK, device)?,
        ))
    };
    let todo: Vec<usize> = layers.iter().copied().filter(|&l| !logged_layer(log, l)).collect();
    let (train_c, test_c) = frozen(&todo)?;
    let frozen_s = started.elapsed().as_secs_f64();
    let plain: Vec<[f32; 4]> = test_c.iter().flat_map(|c| c.plain().to_vec()).collect();
    let accuracy = plain.iter().filter(|p| p[1] > p[0]).count() as f32 / plain.len().max(1) as f32;
    let (accuracy, frozen_s) = match logged_task {
        Some(logged) => logged,
        None => {
            log.push(SuiteUnit::Task { task: name.to_string(), regions: regions.clone(), accuracy, frozen_s })?;
            (accuracy, frozen_s)
        }
    };
    let all: Vec<usize> = (0..regions.len()).collect();
    for &layer in layers {
        if !todo.contains(&layer) {
            bar.inc(regions.len() as u64);
            continue;
        }
        bar.set_message(format!("{name}, layer {layer}"));
        let scores = if r.share_frozen {
            score_layer(model, &train_c, &test_c, layer, &all, &methods, device)?
        } else {
            separately(model, &methods, layer, regions.len(), &frozen, device)?
        };
        let rows = scores
            .into_iter()
            .map(|(k, score)| Row { task: name.to_string(), layer, region: regions[k].clone(), score })
            .collect();
        log.push(SuiteUnit::Layer { task: name.to_string(), layer, rows })?;
        // The numbers of every finished layer, before any picture.
        let done = rows_in_order(tasks, layers, log.done());
        dir.write("results.csv", report::csv(&done)?)?;
        dir.write("results.json", serde_json::to_string_pretty(&done)?)?;
        bar.inc(regions.len() as u64);
    }
    Ok(TaskRun { regions, accuracy, rows: task_rows(log), frozen_s })
}

/// The layer's sites each with each method on its own frozen run of the pairs (what running
/// every site and method as its own experiment costs); DAS's task and control trainings share
/// one run, as they would in one experiment with a control.
fn separately<B: AutodiffBackend, M: Transformer<B>>(
    model: &M,
    methods: &Methods,
    layer: usize,
    regions: usize,
    frozen: &dyn Fn(&[usize]) -> Result<TrainTest<B>>,
    device: &B::Device,
) -> Result<Vec<(usize, MethodScore)>> {
    let alone = Methods { das: None, vanilla: false, fitted: vec![], seed: methods.seed };
    let mut one_each: Vec<Methods> =
        methods.das.map(|d| Methods { das: Some(d), ..alone.clone() }).into_iter().collect();
    if methods.vanilla {
        one_each.push(Methods { vanilla: true, ..alone.clone() });
    }
    one_each.extend(methods.fitted.iter().map(|&m| Methods { fitted: vec![m], ..alone.clone() }));
    let mut out = Vec::new();
    for region in 0..regions {
        for m in &one_each {
            let (train, test) = frozen(&[layer])?;
            out.extend(score_layer(model, &train, &test, layer, &[region], m, device)?);
        }
    }
    Ok(out)
}

/// The layers of each task this run sweeps: all of them, or its shard's (units are a task's
/// layers, each costing its regions times the blocks from the layer on).
fn shard_layers(r: &SuiteRecipe, tasks: &[(&String, &Task)], layers: &[usize], n_layers: usize) -> Vec<Vec<usize>> {
    let units: Vec<(usize, usize)> = (0..tasks.len()).flat_map(|t| layers.iter().map(move |&l| (t, l))).collect();
    let regions: Vec<usize> = tasks.iter().map(|(_, t)| task_regions(t, &r.regions).map_or(0, |g| g.len())).collect();
    let mine = crate::shard::pick(r.shard, &units, |&(t, l)| (regions[t] * (n_layers.saturating_sub(l) + 1)) as f64);
    let mut of_task = vec![Vec::new(); tasks.len()];
    for ((t, l), m) in units.into_iter().zip(mine) {
        if m {
            of_task[t].push(l);
        }
    }
    of_task
}

/// What the numbers rest on: how often the model already prefers the base's continuation, the
/// prefix, and where sources are read.
fn print_conventions(r: &SuiteRecipe, per_task: &[serde_json::Value], prefix: &Prefix) {
    for t in per_task {
        println!(
            "{}: the model prefers the base's continuation on {:.0}% of the test bases",
            t["task"].as_str().unwrap_or(""),
            100.0 * t["model_accuracy"].as_f64().unwrap_or(0.0)
        );
    }
    let index = match r.source_index {
        SourceIndex::Own => "own",
        SourceIndex::Base => "base's",
    };
    println!("before every sentence: {}; sources read at their {index} token index", prefix.about);
}

/// Runs the recipe: every task's sweep, its heatmaps, and the summary.
pub fn run<B: AutodiffBackend>(ctx: &RunContext<'_>, r: &SuiteRecipe, device: &B::Device) -> Result<PathBuf> {
    let suite = suites::read_suite(Path::new(&r.suite))?;
    let tasks = select_tasks(&suite, &r.tasks)?;
    recipe::check_regions(&tasks, &r.regions)?;
    let loaded = load_frozen::<B>(&r.model, device).with_context(|| format!("loading model `{}`", r.model))?;
    let (model, tok) =
        (&loaded.model, loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", r.model))?);
    let layers = r.layers.resolve(model.n_layers())?;
    let control = control_ids(tok, &r.control)?;
    // The prefix's tokens, and what they are in words for the report.
    let prefix = Prefix::new(&r.prefix, tok)?;
    let words = (control, &prefix);
    for (name, task) in &tasks {
        task.check_continuations(|t| tok.encode_plain(t).ok().and_then(|i| i.first().copied()))
            .map_err(|e| anyhow!("{}: task `{name}` with the {} tokenizer: {e}", suite.path.display(), r.model))?;
    }
    // A task without any of the asked regions (slots other tasks have) has nothing to sweep.
    let (tasks, skipped): (Vec<_>, Vec<_>) =
        tasks.into_iter().partition(|(_, t)| task_regions(t, &r.regions).is_ok_and(|g| !g.is_empty()));
    let skipped: Vec<&String> = skipped.into_iter().map(|(n, _)| n).collect();
    if tasks.is_empty() {
        bail!("none of the tasks run has any of the regions {:?}; see `regions` in recipes/README.md", r.regions);
    }
    if !skipped.is_empty() {
        eprintln!(
            "skipped, having none of the regions asked: {}",
            skipped.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
        );
    }
    let dir = match ctx.resume {
        Some(d) => RunDir::reopen(d, ctx.name, ctx.as_run)?,
        None => RunDir::create(ctx.out_root, ctx.name, ctx.as_run)?,
    };
    let mut log = UnitLog::open(&dir, format!("trainer sweep {} --resume {}", ctx.name, dir.path().display()))?;
    let of_task = shard_layers(r, &tasks, &layers, model.n_layers());
    let sites: usize = tasks
        .iter()
        .zip(&of_task)
        .map(|((_, t), l)| task_regions(t, &r.regions).map_or(0, |g| g.len()) * l.len())
        .sum();
    let bar = progress_if(ctx.progress, sites, "sites");
    let (mut rows, mut per_task, mut frozen_s) = (Vec::new(), Vec::new(), 0.0);
    let write_report = |rows: &[Row], per_task: &[serde_json::Value], frozen_s: f64, complete: bool| {
        dir.write_report(json!({
            "recipe": ctx.name, "complete": complete, "shard": r.shard, "suite": suite.path, "tasks": per_task, "skipped_tasks": skipped, "layers": layers, "methods": r.methods,
            "prefix": prefix.about, "source_index": r.source_index,
            "summary": summarize(rows), "rows": rows,
            "timing": {"frozen_runs_s": frozen_s, "total_s": dir.elapsed(), "share_frozen": r.share_frozen},
            "model": {"spec": r.model, "path": loaded.path, "revision": loaded.revision},
        }))
    };
    for (i, (name, task)) in tasks.iter().enumerate() {
        let task_layers = &of_task[i];
        if task_layers.is_empty() {
            continue;
        }
        let t = run_task(r, &suite, &tasks, name, model, tok, task_layers, words, &bar, (&dir, &mut log), device)
            .with_context(|| format!("task `{name}`"))?;
        report::heatmaps(&dir, name, task_layers, &t.regions, &t.rows)?;
        per_task.push(
            json!({"task": name, "description": task.description, "about": task.about, "notes": task.notes, "not_swept": recipe::blank_slots(task), "regions": t.regions, "model_accuracy": t.accuracy}),
        );
        frozen_s += t.frozen_s;
        rows.extend(t.rows);
        if i + 1 < tasks.len() {
            // The report of the tasks done so far (`complete: false`), for an interrupted sweep.
            write_report(&rows, &per_task, frozen_s, false)?;
        }
    }
    bar.finish_and_clear();
    dir.write("results.csv", report::csv(&rows)?)?;
    dir.write("results.json", serde_json::to_string_pretty(&rows)?)?;
    let summary = summarize(&rows);
    write_report(&rows, &per_task, frozen_s, true)?;
    print_conventions(r, &per_task, &prefix);
    print!("{}", table(ctx.name, &summary));
    println!(
        "{} tasks × {} layers × their regions = {sites} sites; run folder: {} ({:.0} s)",
        tasks.len(),
        layers.len(),
        dir.path().display(),
        dir.elapsed()
    );
    if let Some(shard) = r.shard {
        println!("shard {shard}: {sites} of the sweep's sites; join the shards with `trainer merge DIR…`");
    }
    Ok(dir.path().to_path_buf())
}
