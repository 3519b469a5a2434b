//! Running a recipe: load the model frozen, read and split the examples, compute the frozen parts
//! once, train the intervention ([`crate::fit`]), evaluate it on the held-out examples beside its
//! controls, and leave everything in `runs/<recipe>/<timestamp>/`.
//!
//! The run folder is made first and the recipe written into it, so a crash or Ctrl-C leaves a
//! folder that `--resume` can go on from.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use burn::module::{AutodiffModule, Param};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::Tensor;
use ferrovene_data::batch::split_by_group;
use ferrovene_data::format::parse_jsonl;
use ferrovene_data::{tokenize, OnError, TokenizedExample};
use ferrovene_interventions::das::{BoundlessDas, DasLowRank, TemperatureSchedule};
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::probe::LinearProbe;
use ferrovene_interventions::reft::{ReftFamily, ReftIntervention};
use ferrovene_interventions::{Activation, Intervention, Orthogonal};
use ferrovene_models::rng::Rng;
use ferrovene_models::{load, Site, Transformer};
use serde_json::{json, Value};

use crate::events::{progress, Events};
use crate::fit::{fit, FitConfig, FitIo, Fitted, Objective, Outcome};
use crate::recipe::{Kind, Recipe};
use crate::{das, probe, reft};

/// How to run a recipe.
pub struct RunOptions<'a> {
    /// Where run folders go (`runs/`).
    pub out_root: &'a Path,
    /// Go on from this run folder's latest checkpoint.
    pub resume: Option<&'a Path>,
    /// Set by Ctrl-C: checkpoint and stop.
    pub interrupt: Option<&'a AtomicBool>,
    /// Progress bars (drawn only on a terminal anyway).
    pub progress: bool,
}

/// A recipe kind that runs as one self-contained experiment of short runs (no checkpoints):
/// hierarchical equality, the filler-gap sweep, probes per layer.
pub trait Experiment {
    /// Runs it on backend `B`; returns the run folder under `out_root/name/`.
    fn run_on<B: AutodiffBackend>(&self, name: &str, out_root: &Path, progress: bool, device: &B::Device) -> Result<PathBuf>;
}

impl Experiment for crate::hierarchical::HierarchicalRecipe {
    fn run_on<B: AutodiffBackend>(&self, name: &str, out_root: &Path, progress: bool, device: &B::Device) -> Result<PathBuf> {
        crate::hierarchical::run::<B>(name, self, out_root, progress, device)
    }
}

impl Experiment for crate::filler_gap::FillerGapRecipe {
    fn run_on<B: AutodiffBackend>(&self, name: &str, out_root: &Path, progress: bool, device: &B::Device) -> Result<PathBuf> {
        crate::filler_gap::run::<B>(name, self, out_root, progress, device)
    }
}

impl Experiment for crate::probe_layers::ProbeLayersRecipe {
    fn run_on<B: AutodiffBackend>(&self, name: &str, out_root: &Path, progress: bool, device: &B::Device) -> Result<PathBuf> {
        crate::probe_layers::run::<B>(name, self, out_root, progress, device)
    }
}

impl Experiment for crate::reft_memorise::ReftMemoriseRecipe {
    fn run_on<B: AutodiffBackend>(&self, name: &str, out_root: &Path, progress: bool, device: &B::Device) -> Result<PathBuf> {
        crate::reft_memorise::run::<B>(name, self, out_root, progress, device)
    }
}

impl Experiment for crate::steer_iti::SteerItiRecipe {
    fn run_on<B: AutodiffBackend>(&self, name: &str, out_root: &Path, progress: bool, device: &B::Device) -> Result<PathBuf> {
        // Nothing is trained by gradient: the forward passes need no autodiff.
        crate::steer_iti::run::<B::InnerBackend>(name, self, out_root, progress, device)
    }
}

/// How a run ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Trained, evaluated and exported into this folder.
    Done(PathBuf),
    /// Stopped by Ctrl-C with a checkpoint in this folder.
    Interrupted(PathBuf),
}

/// FNV-1a of bytes, as hex: data hashes and fingerprints in reports.
pub fn fnv1a(bytes: &[u8]) -> String {
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3));
    format!("{h:016x}")
}

/// `YYYYMMDD-HHMMSS` (UTC) for run folders.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// A fresh run folder `root/name/<timestamp>` with the recipe as run written into it first, so
/// that even a crashed run says what it was.
pub(crate) fn start_run<T: serde::Serialize>(root: &Path, name: &str, recipe: &T) -> Result<PathBuf> {
    let dir = new_run_dir(root, name)?;
    std::fs::write(dir.join("recipe.toml"), toml::to_string(recipe)?).with_context(|| format!("writing the recipe into {}", dir.display()))?;
    Ok(dir)
}

/// A fresh folder `root/name/<timestamp>` (suffixed if two runs start in the same second).
fn new_run_dir(root: &Path, name: &str) -> Result<PathBuf> {
    let base = root.join(name).join(timestamp());
    let mut dir = base.clone();
    let mut i = 1;
    while dir.exists() {
        dir = PathBuf::from(format!("{}-{i}", base.display()));
        i += 1;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating run folder {}", dir.display()))?;
    Ok(dir)
}

/// Prepares examples batch by batch with a progress bar.
fn prepare_all<'e, T>(examples: &[&'e TokenizedExample], batch_size: usize, what: &str, show: bool, mut f: impl FnMut(&[&'e TokenizedExample]) -> Result<Vec<T>>) -> Result<Vec<T>> {
    let bar = progress(examples.len(), what);
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut out = Vec::new();
    for chunk in examples.chunks(batch_size.max(1)) {
        out.extend(f(chunk)?);
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// The training, validation and held-out indices: held-out groups first, then (with early
/// stopping) validation groups from what is left.
fn split(groups: &[String], recipe: &Recipe) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
    let (rest, dev) = split_by_group(groups, recipe.dev_fraction, recipe.seed);
    let (train, validation) = if recipe.early_stopping.is_some() {
        let rest_groups: Vec<String> = rest.iter().map(|&i| groups[i].clone()).collect();
        let (t, v) = split_by_group(&rest_groups, recipe.validation_fraction, recipe.seed ^ 0x5EED);
        (t.into_iter().map(|i| rest[i]).collect(), v.into_iter().map(|i| rest[i]).collect::<Vec<_>>())
    } else {
        (rest, Vec::new())
    };
    if train.is_empty() || dev.is_empty() || (recipe.early_stopping.is_some() && validation.is_empty()) {
        bail!(
            "the split by `{}` left {} training, {} validation and {} held-out examples; adjust dev_fraction, validation_fraction or split_by",
            recipe.split_by, train.len(), validation.len(), dev.len()
        );
    }
    Ok((train, validation, dev))
}

/// The fit settings of a recipe.
fn fit_config(r: &Recipe) -> FitConfig {
    let temperature = (r.kind == Kind::Boundless).then(|| {
        let t = r.temperature.unwrap_or(crate::recipe::Temperature { start: 1.0, end: 0.1, annealing: ferrovene_interventions::das::Annealing::Geometric, steps: 0 });
        TemperatureSchedule { start: t.start, end: t.end, steps: t.steps, annealing: t.annealing }
    });
    FitConfig {
        epochs: r.epochs,
        lr: r.lr,
        warmup: r.warmup,
        decay: r.schedule,
        weight_decay: r.weight_decay,
        grad_clip: r.grad_clip,
        accumulate: r.accumulate,
        temperature,
        eval_every: r.eval_every,
        early_stopping: r.early_stopping,
        checkpoint_every: r.checkpoint_every,
        seed: r.seed,
    }
}

/// The freshly initialised intervention a recipe trains (also the skeleton a checkpoint loads
/// into), from the recipe's seed.
fn initial<B: AutodiffBackend>(r: &Recipe, width: usize, classes: usize, device: &B::Device) -> Result<Intervention<B>> {
    let mut rng = Rng::new(r.seed);
    let rank = || r.rank.ok_or_else(|| anyhow!("kind `{}` needs `rank`", r.kind.name()));
    Ok(match r.kind {
        Kind::Das => Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(rank()?, width, &mut rng, device) }),
        Kind::Boundless => {
            let beta = r.boundary_init.unwrap_or(0.1);
            Intervention::Boundless(BoundlessDas {
                rotation: Orthogonal::random(width, width, &mut rng, device),
                boundary: Param::from_tensor(Tensor::from_floats([beta as f32], device)),
                temperature: r.temperature.map_or(1.0, |t| t.start),
            })
        }
        Kind::Reft => Intervention::Reft(ReftIntervention::new(r.family.unwrap_or(ReftFamily::LoReft), width, rank()?, Activation::Identity, 0.0, &mut rng, device)),
        Kind::Probe => Intervention::Probe(LinearProbe::init(width, classes, &mut rng, device)),
    })
}

/// Runs `recipe` (named `name`) on backend `B`.
pub fn run<B: AutodiffBackend>(name: &str, recipe: &Recipe, opts: RunOptions<'_>, device: &B::Device) -> Result<RunEnd>
where
    Intervention<B>: AutodiffModule<B>,
{
    let started = Instant::now();
    let dir = match opts.resume {
        Some(d) => d.to_path_buf(),
        None => start_run(opts.out_root, name, recipe)?,
    };
    let site: Site = recipe.site.parse()?;
    let loaded = load::<B>(&recipe.model, device).with_context(|| format!("loading model `{}`", recipe.model))?;
    let model = &loaded.model;
    let info = model.site_info(site)?;
    let tok = loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", recipe.model))?;
    let data_text = std::fs::read_to_string(&recipe.pairs).with_context(|| format!("reading {} (the recipe's `pairs`)", recipe.pairs.display()))?;
    let data_hash = fnv1a(data_text.as_bytes());
    let file = parse_jsonl(&recipe.pairs, &data_text, OnError::Stop)?;
    let examples: Vec<TokenizedExample> = file.examples.iter().map(|(l, e)| tokenize(e, tok, &file.path, *l)).collect::<std::result::Result<_, _>>()?;
    let groups: Vec<String> = file
        .examples
        .iter()
        .map(|(l, e)| {
            e.meta().get(&recipe.split_by).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).ok_or_else(|| {
                anyhow!("{}:{l}: no metadata field `{}` (the recipe's split_by)", file.path.display(), recipe.split_by)
            })
        })
        .collect::<Result<_>>()?;
    let (train_idx, val_idx, dev_idx) = split(&groups, recipe)?;
    let pick = |idx: &[usize]| idx.iter().map(|&i| &examples[i]).collect::<Vec<_>>();
    let (train_ex, val_ex, dev_ex) = (pick(&train_idx), pick(&val_idx), pick(&dev_idx));

    let fingerprint = fnv1a(format!("{}\n{data_hash}", toml::to_string(recipe)?).as_bytes());
    let mut events = Events::create(&dir.join("tensorboard"))?;
    let cfg = fit_config(recipe);
    let bs = recipe.batch_size;
    let show = opts.progress;
    let mut timings = (0.0, 0.0);
    let mut timed_fit = |objective: &dyn Objective<B>, iv: Intervention<B>| -> Result<Fitted<B>> {
        let t0 = started.elapsed().as_secs_f64();
        let io = FitIo {
            run_dir: Some(dir.as_path()),
            events: Some(&mut events),
            interrupt: opts.interrupt,
            resume: opts.resume.is_some(),
            progress: show,
            fingerprint: fingerprint.clone(),
        };
        let fitted = fit(objective, iv, &cfg, io)?;
        timings = (t0, started.elapsed().as_secs_f64() - t0);
        Ok(fitted)
    };

    let (fitted, metrics): (Fitted<B>, Value) = match recipe.kind {
        Kind::Das | Kind::Boundless => {
            let prep = |ex: &[&TokenizedExample], what| prepare_all(ex, bs, what, show, |c| das::prepare(model, site, c, tok.pad_id, bs, device));
            let (train, val, dev) = (prep(&train_ex, "train")?, prep(&val_ex, "validation")?, prep(&dev_ex, "held out")?);
            let objective = das::DasObjective { model, train: &train, validation: if val.is_empty() { &dev } else { &val }, boundary_penalty: recipe.boundary_penalty.unwrap_or(1.0) };
            let iv = initial::<B>(recipe, info.width, 0, device)?;
            let fitted = timed_fit(&objective, iv)?;
            if fitted.outcome == Outcome::Interrupted {
                return interrupted(name, &dir, &fitted);
            }
            let iv = &fitted.intervention;
            let with = das::evaluate(model, &dev, Some(iv))?;
            let none = das::evaluate(model, &dev, None)?;
            let random = das::evaluate(model, &dev, Some(&iv.with_random_rotation(&mut Rng::new(recipe.seed ^ 1)).ok_or_else(|| anyhow!("DAS has a rotation"))?))?;
            let m = |m: &das::Metrics| json!({"iia": m.iia, "label_beats_base": m.label_beats_base, "mean_log_odds": m.mean_log_odds, "base_label_accuracy": m.base_label_accuracy, "loss": m.loss, "n": m.n});
            println!(
                "{name}: held-out IIA {:.3} (no intervention {:.3}, random rotation {:.3}) on {} pairs; p(label) > p(base) {}",
                with.iia, none.iia, random.iia, with.n, with.label_beats_base.map_or("-".into(), |v| format!("{v:.3}"))
            );
            let mut dev_metrics = m(&with);
            if let Intervention::Boundless(b) = iv {
                dev_metrics["boundary_dims"] = json!(b.boundary_dims(info.width));
            }
            (fitted, json!({"dev": dev_metrics, "controls": {"no_intervention": m(&none), "random_rotation": m(&random)}}))
        }
        Kind::Reft => {
            let prep = |ex: &[&TokenizedExample], what| prepare_all(ex, bs, what, show, |c| reft::prepare(model, site, c, tok.pad_id, bs, device));
            let (train, val, dev) = (prep(&train_ex, "train")?, prep(&val_ex, "validation")?, prep(&dev_ex, "held out")?);
            let objective = reft::ReftObjective { model, train: &train, validation: if val.is_empty() { &dev } else { &val } };
            let iv = initial::<B>(recipe, info.width, 0, device)?;
            let fitted = timed_fit(&objective, iv)?;
            if fitted.outcome == Outcome::Interrupted {
                return interrupted(name, &dir, &fitted);
            }
            let with = reft::evaluate(model, &dev, Some(&fitted.intervention))?;
            let none = reft::evaluate(model, &dev, None)?;
            let on_train = reft::evaluate(model, &train, Some(&fitted.intervention))?;
            println!(
                "{name}: held-out target-token accuracy {:.3} (no intervention {:.3}), exact recall {:.3} (training examples: {:.3})",
                with.token_accuracy, none.token_accuracy, with.exact, on_train.exact
            );
            (fitted, json!({"dev": with, "train": on_train, "controls": {"no_intervention": none}}))
        }
        Kind::Probe => {
            let classes = probe::class_count(&examples.iter().collect::<Vec<_>>());
            if classes < 2 {
                bail!("{}: a probe needs at least two classes (found {classes})", recipe.pairs.display());
            }
            let prep = |ex: &[&TokenizedExample], what| prepare_all(ex, bs, what, show, |c| probe::features(model, site, c, tok.pad_id, bs, device));
            let (train, val, dev) = (prep(&train_ex, "train")?, prep(&val_ex, "validation")?, prep(&dev_ex, "held out")?);
            let objective = probe::ProbeObjective { train: &train, validation: if val.is_empty() { &dev } else { &val } };
            let iv = initial::<B>(recipe, info.width, classes, device)?;
            let fitted = timed_fit(&objective, iv)?;
            if fitted.outcome == Outcome::Interrupted {
                return interrupted(name, &dir, &fitted);
            }
            let (acc, loss) = probe::evaluate(&fitted.intervention, &dev)?;
            let majority = probe::majority_share(&dev);
            println!("{name}: held-out probe accuracy {acc:.3} (majority class {majority:.3}) on {} texts, {classes} classes", dev_ex.len());
            (fitted, json!({"dev": {"accuracy": acc, "loss": loss, "n": dev_ex.len()}, "controls": {"majority_class": majority}}))
        }
    };

    let report = json!({
        "recipe": name, "config": recipe, "seed": recipe.seed,
        "data": {"pairs": recipe.pairs, "hash_fnv1a64": data_hash, "train": train_idx.len(), "validation": val_idx.len(), "dev": dev_idx.len()},
        "metrics": metrics,
        "training": {
            "outcome": match fitted.outcome { Outcome::StoppedEarly => "stopped early", _ => "finished" },
            "steps": fitted.state.step, "resumed": opts.resume.is_some(),
            "loss": {"first": fitted.state.losses.first(), "last": fitted.state.losses.last()},
            "validations": fitted.state.history, "best": fitted.state.best,
        },
        "timings_s": {"prepare": timings.0, "train": timings.1, "total": started.elapsed().as_secs_f64()},
        "machine": {"os": std::env::consts::OS, "arch": std::env::consts::ARCH, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)},
        "versions": {"ferrovene": env!("CARGO_PKG_VERSION"), "burn": "0.21.0"},
        "model": {"spec": recipe.model, "path": loaded.path, "revision": loaded.revision},
    });
    let config = ExportConfig {
        format: 0,
        kind: String::new(),
        width: 0,
        hyper: Default::default(),
        placement: PlacementConfig { sites: vec![recipe.site.clone()], positions: "from the example file".into(), site_width: info.width, dims: vec![], composition: Default::default() },
        model: ModelConfig { id: recipe.model.clone(), revision: loaded.revision.clone(), arch: model.arch().into(), hidden_size: model.width() },
        training: report["metrics"].clone(),
    };
    export::save(&fitted.intervention, config, &dir.join("intervention.safetensors"))?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    // The held-out examples, as they were in the file, so `trainer eval` can reproduce the numbers.
    let lines: Vec<&str> = data_text.lines().collect();
    let dev_lines: Vec<&str> = dev_idx.iter().map(|&i| lines[file.examples[i].0 - 1]).collect();
    std::fs::write(dir.join("dev.jsonl"), dev_lines.join("\n") + "\n")?;
    println!("run folder: {} (TensorBoard: tensorboard --logdir {})", dir.display(), events.dir().display());
    Ok(RunEnd::Done(dir))
}

fn interrupted<B: AutodiffBackend>(name: &str, dir: &Path, fitted: &Fitted<B>) -> Result<RunEnd> {
    eprintln!(
        "interrupted at step {}; checkpoint written. Go on with: trainer {name} --resume {}",
        fitted.state.step,
        dir.display()
    );
    Ok(RunEnd::Interrupted(dir.to_path_buf()))
}
