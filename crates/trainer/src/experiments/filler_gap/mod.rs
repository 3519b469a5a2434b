//! `das-filler-gap` (Boguraev, Potts & Mahowald 2025, arXiv 2505.16002): rank-1 DAS at
//! `block_output` over layers × positions on filler–gap pairs from our generator
//! (`ferrovene_data::filler_gap`), with the paper's metrics and controls, heatmaps, and the
//! train-on-one × evaluate-on-each and leave-one-out generalisation experiments.
//!
//! The frozen model runs once per batch of pairs for the whole sweep ([`mod@cache`]): one forward
//! captures the `block_output` of every swept layer for bases and sources, and every
//! (layer, position) site reuses those activations.

pub mod cache;
mod generalization;
mod recipe;
mod site;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::AutodiffBackend;
use ferrovene_data::filler_gap::{CONSTRUCTIONS, Item};
use ferrovene_interventions::Intervention;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_models::rng::Rng;
use ferrovene_models::{LoadedModel, TextTokenizer, Transformer};
use serde_json::json;

pub use cache::{Cached, Directed, Split, cache, draw, mean_difference, site_batches, split};
pub use recipe::{FillerGapRecipe, POSITIONS};
pub use site::{Best, SiteResult, p_beats, train_das, train_site};

use crate::device::load_frozen;
use crate::events::progress_if;
use crate::experiments::experiment::{Experiment, RunContext, RunEnd, SweepAxes};
use crate::plot::Heatmap;
use crate::run_dir::RunDir;
use crate::units::UnitLog;

impl Experiment for FillerGapRecipe {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn check(&self) -> Result<()> {
        self.layers.check()?;
        if let Some(p) = self.positions.iter().find(|p| !POSITIONS.contains(&p.as_str())) {
            bail!("position `{p}` is not one of {}", POSITIONS.join(", "));
        }
        if let Some(p) = crate::recipe::first_duplicate(&self.positions) {
            bail!("`positions` lists `{p}` twice: each site is swept once");
        }
        if self.positions.is_empty() || self.train_pairs < 2 || self.test_pairs < 2 {
            bail!("`positions` must not be empty; `train_pairs` and `test_pairs` at least 2");
        }
        if self.rank == 0 || self.batch_size == 0 || self.epochs == 0 {
            bail!("`rank`, `batch_size` and `epochs` must be at least 1");
        }
        crate::divergence::check_rate("lr", self.lr)
    }

    fn sweep_axes(&self) -> Option<SweepAxes> {
        Some(SweepAxes {
            positions_key: "positions",
            every_position: &POSITIONS,
            follow_up: Some("generalization"),
            suite: false,
        })
    }

    fn run<B: AutodiffBackend>(&self, ctx: &RunContext<'_>, device: &B::Device) -> Result<RunEnd> {
        run::<B>(ctx, self, device).map(RunEnd::Done)
    }
}

/// The sweep's data: the construction splits, the pooled training and held-out pairs, and their
/// cached activations at the swept layers.
pub struct SweepData<B: AutodiffBackend> {
    /// Per construction, its training and held-out items.
    pub splits: std::collections::BTreeMap<&'static str, Split>,
    /// Cached training batches.
    pub train: Vec<Cached<B>>,
    /// Cached held-out batches.
    pub test: Vec<Cached<B>>,
    /// Held-out pairs.
    pub n_test: usize,
    /// Training pairs.
    pub n_train: usize,
}

/// Draws the pooled pairs (from `rng`, which goes on to the generalisation pairs) and caches
/// them.
fn sweep_data<B: AutodiffBackend, M: Transformer<B>>(
    ctx: &RunContext<'_>,
    r: &FillerGapRecipe,
    model: &M,
    tok: &TextTokenizer,
    layers: &[usize],
    rng: &mut Rng,
    device: &B::Device,
) -> Result<SweepData<B>> {
    let splits = split(r.seed, r.test_pairs.div_ceil(2));
    let pools = |f: fn(&Split) -> &[Item]| -> Vec<&[Item]> { CONSTRUCTIONS.iter().map(|c| f(&splits[c])).collect() };
    let train_pairs = draw(&pools(|s| &s.train), r.train_pairs, rng);
    let test_pairs = draw(&pools(|s| &s.test), r.test_pairs, rng);
    let bar = progress_if(ctx.progress, train_pairs.len() + test_pairs.len(), "caching");
    let train = cache(model, tok, &train_pairs, layers, r.batch_size, device)?;
    bar.inc(train_pairs.len() as u64);
    let test = cache(model, tok, &test_pairs, layers, 32, device)?;
    bar.finish_and_clear();
    Ok(SweepData { splits, train, test, n_test: test_pairs.len(), n_train: train_pairs.len() })
}

/// DAS at every site of the sweep, in order, each site's numbers kept in `log` as it ends (the
/// sites already there, from an interrupted run, are not trained again) with the CSV and heatmaps
/// rewritten; a site that beats every earlier one is exported before it is logged, so the export
/// on disk is always the best logged site's (or the next site's, which a resumed run trains again
/// to the same numbers). Returns the numbers in site order and the best site.
#[allow(clippy::too_many_arguments)]
fn sweep_sites<B: AutodiffBackend, M: Transformer<B>>(
    ctx: &RunContext<'_>,
    r: &FillerGapRecipe,
    loaded: &LoadedModel<B>,
    model: &M,
    data: &SweepData<B>,
    layers: &[usize],
    dir: &RunDir,
    log: &mut UnitLog<SiteResult>,
    device: &B::Device,
) -> Result<(Vec<SiteResult>, Best)> {
    let every: Vec<(usize, String)> =
        layers.iter().flat_map(|&l| r.positions.iter().map(move |p| (l, p.clone()))).collect();
    // A shard's sites; a site's DAS steps run the blocks from its layer on.
    let n_layers = model.n_layers();
    let mine = crate::shard::pick(r.shard, &every, |(l, _)| (n_layers.saturating_sub(*l) + 1) as f64);
    let sites: Vec<(usize, String)> = every.into_iter().zip(mine).filter(|(_, m)| *m).map(|(s, _)| s).collect();
    let bar = progress_if(ctx.progress, sites.len(), "sites");
    let mut best: Option<Best> = None;
    for (layer, position) in &sites {
        let logged = log.done().iter().find(|u| u.layer == *layer && &u.position == position).cloned();
        let (res, trained) = match logged {
            Some(res) => (res, None),
            None => {
                let (iv, res) = train_site(model, r, &data.train, &data.test, *layer, position, device)?;
                (res, Some(iv))
            }
        };
        let beats_every_earlier = best.as_ref().is_none_or(|b| res.iia > b.iia);
        if let Some(iv) = trained {
            if beats_every_earlier {
                export_best(dir, ctx.name, loaded, &iv, *layer, position)?;
            }
            log.push(res.clone())?;
            let done = in_site_order(&sites, log.done());
            write_sweep(dir, ctx.name, &r.positions, layers, &done, data.n_test)?;
            // The report so far (`complete: false`), for an interrupted sweep; the end rewrites it.
            dir.write_report(json!({"recipe": ctx.name, "complete": false, "sweep": done, "sites_done": log.done().len(), "sites": sites.len()}))?;
        }
        bar.set_message(format!("{layer}.{position}: IIA {:.2}", res.iia));
        bar.inc(1);
        if beats_every_earlier {
            best = Some(Best { iia: res.iia, layer: *layer, position: position.clone() });
        }
    }
    bar.finish_and_clear();
    Ok((in_site_order(&sites, log.done()), best.context("no sites")?))
}

/// The logged numbers of the sites done so far, in site order.
fn in_site_order(sites: &[(usize, String)], logged: &[SiteResult]) -> Vec<SiteResult> {
    sites.iter().filter_map(|(l, p)| logged.iter().find(|x| x.layer == *l && &x.position == p).cloned()).collect()
}

/// The sweep's heatmaps (IIA, log-odds gain) and CSV.
fn write_sweep(
    dir: &RunDir,
    name: &str,
    positions: &[String],
    layers: &[usize],
    results: &[SiteResult],
    n_test: usize,
) -> Result<()> {
    // The numbers first: a full disk keeps them rather than the pictures.
    let mut csv =
        String::from("layer,position,iia,log_odds_gain,iia_no_intervention,iia_random_direction,iia_mean_difference\n");
    for x in results {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{}",
            x.layer, x.position, x.iia, x.log_odds_gain, x.iia_none, x.iia_random, x.iia_mean_difference
        );
    }
    dir.write("sweep.csv", csv)?;
    let grid = |f: &dyn Fn(&SiteResult) -> f32| -> Vec<Vec<Option<f32>>> {
        layers
            .iter()
            .map(|&l| {
                positions.iter().map(|p| results.iter().find(|x| x.layer == l && &x.position == p).map(f)).collect()
            })
            .collect()
    };
    let rows: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
    Heatmap {
        title: &format!("{name}: IIA, p(source label) > p(base label), {n_test} held-out pairs"),
        rows: rows.clone(),
        columns: positions.to_vec(),
        values: grid(&|x| x.iia),
        scale: 1.0,
        axes: ("layer", "position"),
    }
    .write(&dir.join("iia"))?;
    let max_gain = results.iter().map(|x| x.log_odds_gain.abs()).fold(1e-6, f32::max);
    Heatmap {
        title: &format!("{name}: log-odds gain (÷ {max_gain:.1})"),
        rows,
        columns: positions.to_vec(),
        values: grid(&|x| x.log_odds_gain / max_gain),
        scale: 1.0,
        axes: ("layer", "position"),
    }
    .write(&dir.join("log_odds"))?;
    Ok(())
}

/// The export of the intervention trained at (`layer`, `position`), the best site so far.
fn export_best<B: AutodiffBackend>(
    dir: &RunDir,
    name: &str,
    loaded: &LoadedModel<B>,
    iv: &Intervention<B>,
    layer: usize,
    position: &str,
) -> Result<()> {
    let placement = PlacementConfig {
        sites: vec![format!("{layer}.block_output")],
        positions: format!("span:{position}"),
        site_width: loaded.model.width(),
        ..Default::default()
    };
    let config = ExportConfig::new(
        placement,
        ModelConfig::of(loaded),
        json!({"recipe": name, "layer": layer, "position": position}),
    );
    dir.check_present()?;
    export::save(iv, config, &dir.join("intervention.safetensors"))?;
    Ok(())
}

/// Runs the recipe: the layer × position sweep on pairs pooled over the constructions, heatmaps,
/// the best site's export, and (if asked) the generalisation experiments at the best site.
pub fn run<B: AutodiffBackend>(ctx: &RunContext<'_>, r: &FillerGapRecipe, device: &B::Device) -> Result<PathBuf> {
    let loaded = load_frozen::<B>(&r.model, device).with_context(|| format!("loading model `{}`", r.model))?;
    let (model, tok) =
        (&loaded.model, loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", r.model))?);
    let layers = r.layers.resolve(model.n_layers())?;
    crate::divergence::check_rank(r.rank, model.width(), &"the block outputs")?;
    ferrovene_data::filler_gap::check_continuations(|t| tok.encode_plain(t).ok().and_then(|i| i.first().copied()))
        .map_err(|e| anyhow!("{} tokenizer: {e}", r.model))?;
    let dir = match ctx.resume {
        Some(d) => RunDir::reopen(d, ctx.name, ctx.as_run)?,
        None => RunDir::create(ctx.out_root, ctx.name, ctx.as_run)?,
    };
    let mut log = UnitLog::open(&dir, format!("trainer sweep {} --resume {}", ctx.name, dir.path().display()))?;
    let mut rng = Rng::new(r.seed);
    let data = sweep_data(ctx, r, model, tok, &layers, &mut rng, device)?;
    let (results, best) = sweep_sites(ctx, r, &loaded, model, &data, &layers, &dir, &mut log, device)?;
    if !dir.join("intervention.safetensors").exists() {
        // Merged shards (each exported its own best): the best site again, to the same numbers.
        let (iv, _) = train_site(model, r, &data.train, &data.test, best.layer, &best.position, device)?;
        export_best(&dir, ctx.name, &loaded, &iv, best.layer, &best.position)?;
    }
    write_sweep(&dir, ctx.name, &r.positions, &layers, &results, data.n_test)?;
    if let Some(shard) = r.shard {
        println!("shard {shard}: {} of the sweep's sites; join the shards with `trainer merge DIR…`", results.len());
    }
    let generalization = if r.generalization && r.shard.is_none() {
        generalization::run(ctx, r, model, tok, &data.splits, &best, &mut rng, &dir, device)?
    } else {
        serde_json::Value::Null
    };
    dir.write_report(json!({
        "recipe": ctx.name, "complete": true, "shard": r.shard, "sweep": results,
        "best": {"layer": best.layer, "position": best.position},
        "generalization": generalization,
        "data": {"train_pairs": data.n_train, "test_pairs": data.n_test, "constructions": CONSTRUCTIONS},
        "model": {"spec": r.model, "path": loaded.path, "revision": loaded.revision},
    }))?;
    print!("{}", table(ctx.name, &layers, &r.positions, &results));
    println!(
        "best site: {}.block_output at `{}`; run folder: {} ({:.0} s)",
        best.layer,
        best.position,
        dir.path().display(),
        dir.elapsed()
    );
    Ok(dir.path().to_path_buf())
}

/// The sweep as a text table: IIA per layer × position, with the controls of each site.
pub fn table(name: &str, layers: &[usize], positions: &[String], results: &[SiteResult]) -> String {
    let mut out = format!(
        "{name}: IIA (p(source label) > p(base label)) per layer × position; controls: none / random direction / difference of means\n"
    );
    let _ = write!(out, "{:>6}", "layer");
    for p in positions {
        let _ = write!(out, "  {:>26}", p);
    }
    out.push('\n');
    for l in layers {
        let _ = write!(out, "{l:>6}");
        for p in positions {
            match results.iter().find(|x| x.layer == *l && &x.position == p) {
                Some(x) => {
                    let _ = write!(
                        out,
                        "  {:>26}",
                        format!("{:.2} ({:.2}/{:.2}/{:.2})", x.iia, x.iia_none, x.iia_random, x.iia_mean_difference)
                    );
                }
                None => {
                    let _ = write!(out, "  {:>26}", "-");
                }
            }
        }
        out.push('\n');
    }
    out
}
