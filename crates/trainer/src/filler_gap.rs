//! `das-filler-gap` (Boguraev, Potts & Mahowald 2025, arXiv 2505.16002): rank-1 DAS at
//! `block_output` over layers × positions on filler–gap pairs from our generator
//! (`ferrovene_data::filler_gap`), with the paper's metrics and controls, heatmaps, and the
//! train-on-one × evaluate-on-each and leave-one-out generalisation experiments.
//!
//! The frozen model runs once per batch of pairs for the whole sweep: one forward captures the
//! `block_output` of every swept layer for bases and sources, and every (layer, position) site
//! reuses those activations.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::Tensor;
use ferrovene_data::batch::{pad, PaddingSide};
use ferrovene_data::filler_gap::{items, Item, CONSTRUCTIONS};
use ferrovene_data::{tokenize, LabelId, TokenizedExample, TokenizedInput};
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::{Intervention, Orthogonal};
use ferrovene_models::rng::Rng;
use ferrovene_models::{gather_positions, load, Checkpoint, Component, Input, NoHooks, Site, TextTokenizer, Transformer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::das::{evaluate, input_of, int2, DasObjective, Metrics, PairBatch};
use crate::events::progress;
use crate::fit::{fit, FitConfig, FitIo};
use crate::heatmap::Heatmap;
use crate::schedule::Decay;

/// The recipe's kind.
pub const KIND: &str = "filler-gap";

/// Positions every item has (the embedded version adds `article_e`, `noun_e`, `verb_e`).
pub const POSITIONS: [&str; 4] = ["filler", "article", "noun", "verb"];

/// Which layers a sweep covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Layers {
    /// These layers.
    List(Vec<usize>),
    /// `"all"`: every layer of the model.
    All(String),
}

impl Layers {
    /// Checks the value without a model: a non-empty list, or the word `"all"`.
    pub fn check(&self) -> Result<()> {
        match self {
            Layers::List(v) if v.is_empty() => bail!("`layers` is empty"),
            Layers::List(_) => Ok(()),
            Layers::All(w) if w == "all" => Ok(()),
            Layers::All(w) => bail!("`layers` is a list of layers or \"all\", not {w:?}"),
        }
    }

    /// The layers for a model with `n` of them.
    pub fn resolve(&self, n: usize) -> Result<Vec<usize>> {
        match self {
            Layers::List(v) => {
                if let Some(&bad) = v.iter().find(|&&l| l >= n) {
                    bail!("layer {bad} does not exist: the model has layers 0..{}", n - 1);
                }
                Ok(v.clone())
            }
            Layers::All(w) if w == "all" => Ok((0..n).collect()),
            Layers::All(w) => bail!("`layers` is a list of layers or \"all\", not {w:?}"),
        }
    }
}

/// The recipe (`recipes/das-filler-gap.toml`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FillerGapRecipe {
    /// One line for `trainer list`.
    pub description: String,
    /// `filler-gap`.
    pub kind: String,
    /// Model spec.
    pub model: String,
    /// Training pairs per run (the paper: 400).
    pub train_pairs: usize,
    /// Held-out pairs per evaluation set (the paper: 100); their items never appear in training.
    pub test_pairs: usize,
    /// Rank of the DAS rotation (the paper: 1).
    pub rank: usize,
    /// Pairs per batch (the paper: 4).
    pub batch_size: usize,
    /// Epochs (the paper: 1).
    pub epochs: usize,
    /// Adam learning rate (the paper: 5e-3).
    pub lr: f64,
    /// Share of steps of linear warmup (the paper: 0.1), then linear decay.
    pub warmup: f64,
    /// Seed of the split, the pairs drawn, the initialisation and the batch order.
    pub seed: u64,
    /// Layers swept (`block_output` of each): a list, or `"all"`.
    pub layers: Layers,
    /// Positions swept: span names from `filler`, `article`, `noun`, `verb`.
    pub positions: Vec<String>,
    /// After the sweep, run the train × evaluate matrix and leave-one-out at the best site.
    pub generalization: bool,
}

impl FillerGapRecipe {
    /// Parses and checks a recipe.
    pub fn from_toml(text: &str) -> Result<Self> {
        let r: Self = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        if r.kind != KIND {
            bail!("kind `{}` is not `{KIND}`", r.kind);
        }
        r.layers.check()?;
        if let Some(p) = r.positions.iter().find(|p| !POSITIONS.contains(&p.as_str())) {
            bail!("position `{p}` is not one of {}", POSITIONS.join(", "));
        }
        if matches!(&r.layers, Layers::List(v) if v.is_empty()) || r.positions.is_empty() || r.train_pairs < 2 || r.test_pairs < 2 {
            bail!("`layers` and `positions` must not be empty; `train_pairs` and `test_pairs` at least 2");
        }
        Ok(r)
    }

    /// Applies `key=value` overrides (TOML values); every key of the recipe may be set.
    pub fn with_overrides(&self, sets: &[String]) -> Result<Self> {
        crate::recipe::apply_overrides(self, sets, None, Self::from_toml)
    }
}

/// A directed pair: an item and which side is the base.
#[derive(Debug, Clone)]
pub struct Directed {
    /// The item.
    pub item: Item,
    /// Whether the base is the side with the gap.
    pub gap_in_base: bool,
}

/// Training and held-out items of one construction; held-out groups (same non-gap text) never
/// appear in training.
pub struct Split {
    /// Training items.
    pub train: Vec<Item>,
    /// Held-out items.
    pub test: Vec<Item>,
}

/// Splits every construction's items: `test_items` held-out items each, by group.
pub fn split(seed: u64, test_items: usize) -> BTreeMap<&'static str, Split> {
    CONSTRUCTIONS
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let all = items(c);
            let mut groups: Vec<String> = all.iter().map(Item::group).collect::<BTreeSet<_>>().into_iter().collect();
            Rng::new(seed ^ (k as u64 + 1) * 0x51_7CC1).shuffle(&mut groups);
            let mut held = BTreeSet::new();
            let mut count = 0;
            for g in &groups {
                if count >= test_items {
                    break;
                }
                count += all.iter().filter(|i| &i.group() == g).count();
                held.insert(g.clone());
            }
            let (test, train): (Vec<Item>, Vec<Item>) = all.into_iter().partition(|i| held.contains(&i.group()));
            (c, Split { train, test })
        })
        .collect()
}

/// `n` directed pairs from `pools` (one pool per construction, drawn evenly), both directions of
/// each drawn item.
pub fn draw(pools: &[&[Item]], n: usize, rng: &mut Rng) -> Vec<Directed> {
    let mut out = Vec::new();
    let per = n.div_ceil(2 * pools.len().max(1));
    for pool in pools {
        let mut idx: Vec<usize> = (0..pool.len()).collect();
        rng.shuffle(&mut idx);
        for &i in idx.iter().take(per) {
            out.push(Directed { item: pool[i].clone(), gap_in_base: true });
            out.push(Directed { item: pool[i].clone(), gap_in_base: false });
        }
    }
    rng.shuffle(&mut out);
    out.truncate(n);
    out
}

/// A batch of directed pairs with the frozen model's `block_output`s at every swept layer.
#[derive(Clone)]
pub struct Cached<B: Backend> {
    input: Input<B>,
    base: BTreeMap<usize, Tensor<B, 3>>,
    source: BTreeMap<usize, Tensor<B, 3>>,
    base_positions: BTreeMap<&'static str, Vec<Vec<usize>>>,
    source_positions: BTreeMap<&'static str, Vec<Vec<usize>>>,
    last: Vec<Vec<usize>>,
    labels: Vec<u32>,
    base_labels: Vec<u32>,
    gap_in_base: Vec<bool>,
}

/// Runs the frozen model once per batch on bases and sources, keeping every swept layer.
pub fn cache<B: Backend, M: Transformer<B>>(model: &M, tok: &TextTokenizer, pairs: &[Directed], layers: &[usize], batch: usize, device: &B::Device) -> Result<Vec<Cached<B>>> {
    let sites: Vec<Site> = layers.iter().map(|&l| Site::new(l, Component::BlockOutput)).collect();
    for s in &sites {
        model.site_info(*s)?;
    }
    let side = PaddingSide::for_arch(model.arch());
    let deepest = layers.iter().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    for chunk in pairs.chunks(batch.max(1)) {
        let (mut bases, mut sources, mut labels, mut base_labels) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for d in chunk {
            let ex = ferrovene_data::format::parse_line(&d.item.pair_json_at(d.gap_in_base, &POSITIONS).to_string()).map_err(|e| anyhow!(e))?;
            let t = tokenize(&ex, tok, Path::new("filler-gap"), 1)?;
            let TokenizedExample::Pair { base, sources: mut srcs, base_label: Some(LabelId::Token(bl)), label: LabelId::Token(l) } = t else {
                bail!("the generator makes pairs with text labels");
            };
            bases.push(base);
            sources.push(srcs.remove(0));
            labels.push(l);
            base_labels.push(bl);
        }
        let run = |rows: &[TokenizedInput]| -> Result<(Input<B>, BTreeMap<usize, Tensor<B, 3>>, Vec<Vec<usize>>, Vec<Vec<u32>>)> {
            let refs: Vec<&TokenizedInput> = rows.iter().collect();
            let p = pad(&refs, tok.pad_id, side);
            let input = input_of::<B>(&p.ids, &p.mask, device);
            // Only as deep as the deepest swept layer.
            let ctx = model.context(&input);
            let mut x = model.embed(&input);
            let mut acts = BTreeMap::new();
            for l in 0..=deepest {
                x = model.block(l, x, &ctx, &mut NoHooks);
                if layers.contains(&l) {
                    acts.insert(l, x.clone());
                }
            }
            Ok((input, acts, p.positions, p.mask))
        };
        let (input, base, bpos, mask) = run(&bases)?;
        let (_, source, spos, _) = run(&sources)?;
        let by_name = |pos: &[Vec<usize>]| POSITIONS.iter().enumerate().map(|(k, &n)| (n, pos.iter().map(|r| vec![r[k]]).collect())).collect();
        out.push(Cached {
            input,
            base,
            source,
            base_positions: by_name(&bpos),
            source_positions: by_name(&spos),
            last: mask.iter().map(|m| vec![m.iter().rposition(|&x| x == 1).unwrap_or(0)]).collect(),
            labels,
            base_labels,
            gap_in_base: chunk.iter().map(|d| d.gap_in_base).collect(),
        });
    }
    Ok(out)
}

/// The DAS batches of one site from the caches.
pub fn site_batches<B: Backend>(cached: &[Cached<B>], layer: usize, position: &str, device: &B::Device) -> Result<Vec<PairBatch<B>>> {
    cached
        .iter()
        .map(|c| {
            let base = c.base.get(&layer).with_context(|| format!("layer {layer} was not cached"))?;
            let bp = c.base_positions.get(position).with_context(|| format!("no position `{position}`"))?;
            let sp = &c.source_positions[position];
            Ok(PairBatch {
                checkpoint: Checkpoint { site: Site::new(layer, Component::BlockOutput), activation: base.clone(), block_input: None, input: c.input.clone() },
                base_positions: int2::<B>(bp, device),
                source_vectors: gather_positions(c.source[&layer].clone(), int2::<B>(sp, device)),
                label_positions: int2::<B>(&c.last, device),
                labels: c.labels.clone(),
                base_labels: Some(c.base_labels.clone()),
                dims: vec![],
            })
        })
        .collect()
}

/// The difference of the mean base activation with a gap and without, at the site, normalised:
/// the difference-of-means control direction.
pub fn mean_difference<B: Backend>(cached: &[Cached<B>], layer: usize, position: &str, device: &B::Device) -> Result<Tensor<B, 2>> {
    let (mut gap, mut plain): (Option<Tensor<B, 1>>, Option<Tensor<B, 1>>) = (None, None);
    let (mut ng, mut np) = (0usize, 0usize);
    for c in cached {
        let v = gather_positions(c.base[&layer].clone(), int2::<B>(&c.base_positions[position], device));
        let [n, _, d] = v.dims();
        let rows = v.reshape([n, d]);
        for (i, &g) in c.gap_in_base.iter().enumerate() {
            let row: Tensor<B, 1> = rows.clone().narrow(0, i, 1).reshape([d]);
            let (acc, count) = if g { (&mut gap, &mut ng) } else { (&mut plain, &mut np) };
            *acc = Some(match acc.take() {
                Some(a) => a + row,
                None => row,
            });
            *count += 1;
        }
    }
    let (Some(g), Some(p)) = (gap, plain) else { bail!("the difference of means needs pairs of both directions") };
    let diff = g / ng as f64 - p / np as f64;
    let norm = diff.clone().powf_scalar(2.0).sum().sqrt();
    let d = diff.dims()[0];
    Ok((diff / norm.unsqueeze::<1>().expand([d])).reshape([1, d]))
}

/// The numbers of one site.
#[derive(Debug, Clone, Serialize)]
pub struct SiteResult {
    /// Layer.
    pub layer: usize,
    /// Position (span name).
    pub position: String,
    /// The paper's IIA: share of held-out pairs with p(source label) > p(base label).
    pub iia: f32,
    /// Mean log-odds gain over no intervention.
    pub log_odds_gain: f32,
    /// Controls: no intervention, a random direction, the difference-of-means direction.
    pub iia_none: f32,
    /// Random direction.
    pub iia_random: f32,
    /// Difference of means.
    pub iia_mean_difference: f32,
    /// Training loss of the first and the last step.
    pub loss: (f32, f32),
}

fn p_beats(m: &Metrics) -> f32 {
    m.label_beats_base.unwrap_or(0.0)
}

/// Trains rank-`r.rank` DAS at one site on `train`; returns it with the first and last step's
/// loss.
pub fn train_das<B: AutodiffBackend, M: Transformer<B>>(
    model: &M,
    r: &FillerGapRecipe,
    train: &[Cached<B>],
    layer: usize,
    position: &str,
    device: &B::Device,
) -> Result<(Intervention<B>, (f32, f32))>
where
    Intervention<B>: AutodiffModule<B>,
{
    let train_b = site_batches(train, layer, position, device)?;
    let iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(r.rank, model.width(), &mut Rng::new(r.seed ^ (layer as u64) << 8), device) });
    let cfg = FitConfig {
        epochs: r.epochs, lr: r.lr, warmup: r.warmup, decay: Decay::Linear, weight_decay: 0.0, grad_clip: None, accumulate: 1,
        temperature: None, eval_every: 0, early_stopping: None, checkpoint_every: 0, seed: r.seed,
    };
    let fitted = fit(&DasObjective { model, train: &train_b, validation: &[], boundary_penalty: 0.0 }, iv, &cfg, FitIo::default())?;
    let losses = &fitted.state.losses;
    let loss = (losses.first().copied().unwrap_or(f32::NAN), losses.last().copied().unwrap_or(f32::NAN));
    Ok((fitted.intervention, loss))
}

/// Trains rank-`r.rank` DAS at one site on `train`, returns it with its held-out numbers beside
/// the controls.
pub fn train_site<B: AutodiffBackend, M: Transformer<B>>(
    model: &M,
    r: &FillerGapRecipe,
    train: &[Cached<B>],
    test: &[Cached<B>],
    layer: usize,
    position: &str,
    device: &B::Device,
) -> Result<(Intervention<B>, SiteResult)>
where
    Intervention<B>: AutodiffModule<B>,
{
    let (iv, loss) = train_das(model, r, train, layer, position, device)?;
    let test_b = site_batches(test, layer, position, device)?;
    let with = evaluate(model, &test_b, Some(&iv))?;
    let none = evaluate(model, &test_b, None)?;
    let random = evaluate(model, &test_b, Some(&iv.with_random_rotation(&mut Rng::new(r.seed ^ 0xA11CE)).context("a rotation")?))?;
    let dm = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::fixed(mean_difference(train, layer, position, device)?) });
    let mean_diff = evaluate(model, &test_b, Some(&dm))?;
    let result = SiteResult {
        layer,
        position: position.to_string(),
        iia: p_beats(&with),
        log_odds_gain: with.mean_log_odds.unwrap_or(0.0) - none.mean_log_odds.unwrap_or(0.0),
        iia_none: p_beats(&none),
        iia_random: p_beats(&random),
        iia_mean_difference: p_beats(&mean_diff),
        loss,
    };
    Ok((iv, result))
}

/// Runs the recipe: the layer × position sweep on pairs pooled over the constructions, heatmaps,
/// the best site's export, and (if asked) the generalisation experiments at the best site.
pub fn run<B: AutodiffBackend>(name: &str, r: &FillerGapRecipe, out_root: &Path, show: bool, device: &B::Device) -> Result<PathBuf>
where
    Intervention<B>: AutodiffModule<B>,
{
    let started = std::time::Instant::now();
    let dir = crate::run::start_run(out_root, name, r)?;
    let loaded = load::<B>(&r.model, device).with_context(|| format!("loading model `{}`", r.model))?;
    let (model, tok) = (&loaded.model, loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", r.model))?);
    let layers = r.layers.resolve(model.n_layers())?;
    ferrovene_data::filler_gap::check_continuations(|t| tok.encode_plain(t).ok().and_then(|i| i.first().copied())).map_err(|e| anyhow!("{} tokenizer: {e}", r.model))?;
    let splits = split(r.seed, r.test_pairs.div_ceil(2));
    let mut rng = Rng::new(r.seed);
    let pools = |f: fn(&Split) -> &[Item], cs: &[&str]| -> Vec<Vec<Item>> { cs.iter().map(|c| f(&splits[c]).to_vec()).collect() };
    let all: Vec<&str> = CONSTRUCTIONS.to_vec();
    let train_pools = pools(|s| &s.train, &all);
    let test_pools = pools(|s| &s.test, &all);
    let train_pairs = draw(&train_pools.iter().map(Vec::as_slice).collect::<Vec<_>>(), r.train_pairs, &mut rng);
    let test_pairs = draw(&test_pools.iter().map(Vec::as_slice).collect::<Vec<_>>(), r.test_pairs, &mut rng);

    let bar = progress(train_pairs.len() + test_pairs.len(), "caching");
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let train = cache(model, tok, &train_pairs, &layers, r.batch_size, device)?;
    bar.inc(train_pairs.len() as u64);
    let test = cache(model, tok, &test_pairs, &layers, 32, device)?;
    bar.finish_and_clear();

    let sites: Vec<(usize, String)> = layers.iter().flat_map(|&l| r.positions.iter().map(move |p| (l, p.clone()))).collect();
    let bar = progress(sites.len(), "sites");
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut results = Vec::new();
    let mut best: Option<(f32, Intervention<B>, usize, String)> = None;
    for (layer, position) in &sites {
        let (iv, res) = train_site(model, r, &train, &test, *layer, position, device)?;
        bar.set_message(format!("{layer}.{position}: IIA {:.2}", res.iia));
        bar.inc(1);
        if best.as_ref().is_none_or(|b| res.iia > b.0) {
            best = Some((res.iia, iv, *layer, position.clone()));
        }
        results.push(res);
    }
    bar.finish_and_clear();
    let (_, best_iv, best_layer, best_position) = best.context("no sites")?;

    // heatmaps, CSV and JSON of the sweep
    let grid = |f: &dyn Fn(&SiteResult) -> f32| -> Vec<Vec<Option<f32>>> {
        layers.iter().map(|&l| r.positions.iter().map(|p| results.iter().find(|x| x.layer == l && &x.position == p).map(f)).collect()).collect()
    };
    let rows: Vec<String> = layers.iter().map(|l| l.to_string()).collect();
    Heatmap { title: &format!("{name}: IIA, p(source label) > p(base label), {} held-out pairs", test_pairs.len()), rows: rows.clone(), columns: r.positions.clone(), values: grid(&|x| x.iia), axes: ("layer", "position") }
        .write(&dir.join("iia"))?;
    let max_gain = results.iter().map(|x| x.log_odds_gain.abs()).fold(1e-6, f32::max);
    Heatmap { title: &format!("{name}: log-odds gain (÷ {max_gain:.1})"), rows, columns: r.positions.clone(), values: grid(&|x| x.log_odds_gain / max_gain), axes: ("layer", "position") }
        .write(&dir.join("log_odds"))?;
    let mut csv = String::from("layer,position,iia,log_odds_gain,iia_no_intervention,iia_random_direction,iia_mean_difference\n");
    for x in &results {
        let _ = writeln!(csv, "{},{},{},{},{},{},{}", x.layer, x.position, x.iia, x.log_odds_gain, x.iia_none, x.iia_random, x.iia_mean_difference);
    }
    std::fs::write(dir.join("sweep.csv"), csv)?;

    // export of the best site
    let config = ExportConfig {
        format: 0, kind: String::new(), width: 0, hyper: Default::default(),
        placement: PlacementConfig { sites: vec![format!("{best_layer}.block_output")], positions: format!("span:{best_position}"), site_width: model.width(), dims: vec![], composition: Default::default() },
        model: ModelConfig { id: r.model.clone(), revision: loaded.revision.clone(), arch: model.arch().into(), hidden_size: model.width() },
        training: json!({"recipe": name, "layer": best_layer, "position": best_position}),
    };
    export::save(&best_iv, config, &dir.join("intervention.safetensors"))?;

    // generalisation at the best site
    let mut generalization = serde_json::Value::Null;
    if r.generalization {
        let layer = [best_layer];
        let per_test: Vec<Vec<Cached<B>>> = CONSTRUCTIONS
            .iter()
            .map(|c| cache(model, tok, &draw(&[&splits[c].test], r.test_pairs, &mut rng), &layer, 32, device))
            .collect::<Result<_>>()?;
        let bar = progress(2 * CONSTRUCTIONS.len(), "generalization");
        if !show {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        // Each construction's training pairs are cached once; leave-one-out trains on an even
        // share of the other six constructions' cached batches.
        let per_train: Vec<Vec<Cached<B>>> = CONSTRUCTIONS
            .iter()
            .map(|c| cache(model, tok, &draw(&[&splits[c].train], r.train_pairs, &mut rng), &layer, r.batch_size, device))
            .collect::<Result<_>>()?;
        let mut matrix = vec![vec![None; CONSTRUCTIONS.len()]; CONSTRUCTIONS.len()];
        let mut loo = Vec::new();
        for (i, c) in CONSTRUCTIONS.iter().enumerate() {
            // Only the matrix row is needed here: no controls.
            let (iv, _) = train_das(model, r, &per_train[i], best_layer, &best_position, device)?;
            for (j, t) in per_test.iter().enumerate() {
                let b = site_batches(t, best_layer, &best_position, device)?;
                matrix[i][j] = Some(p_beats(&evaluate(model, &b, Some(&iv))?));
            }
            bar.inc(1);
            let share = per_train[i].len().div_ceil(CONSTRUCTIONS.len() - 1);
            let mut on_six: Vec<Cached<B>> = Vec::new();
            for (k, t) in per_train.iter().enumerate() {
                if k != i {
                    on_six.extend(t.iter().take(share).cloned());
                }
            }
            let (_, res) = train_site(model, r, &on_six, &per_test[i], best_layer, &best_position, device)?;
            loo.push(json!({"held_out": c, "iia": res.iia, "iia_no_intervention": res.iia_none, "iia_mean_difference": res.iia_mean_difference}));
            bar.inc(1);
        }
        bar.finish_and_clear();
        let names: Vec<String> = CONSTRUCTIONS.iter().map(|c| c.to_string()).collect();
        Heatmap {
            title: &format!("{name}: IIA at {best_layer}.block_output, {best_position}: trained on (rows) × evaluated on (columns)"),
            rows: names.clone(),
            columns: names.iter().map(|n| n.replace("embedded_wh_", "emb_").replace("relative_clause", "relative")).collect(),
            values: matrix.clone(),
            axes: ("trained on", "evaluated on"),
        }
        .write(&dir.join("generalization"))?;
        let mut csv = String::from("trained_on,evaluated_on,iia\n");
        for (i, row) in matrix.iter().enumerate() {
            for (j, v) in row.iter().enumerate() {
                let _ = writeln!(csv, "{},{},{}", CONSTRUCTIONS[i], CONSTRUCTIONS[j], v.unwrap_or(f32::NAN));
            }
        }
        for l in &loo {
            let _ = writeln!(csv, "all but {},{},{}", l["held_out"].as_str().unwrap_or(""), l["held_out"].as_str().unwrap_or(""), l["iia"]);
        }
        std::fs::write(dir.join("generalization.csv"), csv)?;
        generalization = json!({"layer": best_layer, "position": best_position, "constructions": CONSTRUCTIONS, "matrix": matrix, "leave_one_out": loo});
    }

    let report = json!({
        "recipe": name, "config": r, "sweep": results,
        "best": {"layer": best_layer, "position": best_position},
        "generalization": generalization,
        "data": {"train_pairs": train_pairs.len(), "test_pairs": test_pairs.len(), "constructions": CONSTRUCTIONS},
        "timings_s": {"total": started.elapsed().as_secs_f64()},
        "machine": {"os": std::env::consts::OS, "arch": std::env::consts::ARCH, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)},
        "versions": {"ferrovene": env!("CARGO_PKG_VERSION"), "burn": "0.21.0"},
        "model": {"spec": r.model, "path": loaded.path, "revision": loaded.revision},
    });
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    print!("{}", table(name, &layers, &r.positions, &results));
    println!("best site: {best_layer}.block_output at `{best_position}`; run folder: {} ({:.0} s)", dir.display(), started.elapsed().as_secs_f64());
    Ok(dir)
}

/// The sweep as a text table: IIA per layer × position, with the controls of each site.
pub fn table(name: &str, layers: &[usize], positions: &[String], results: &[SiteResult]) -> String {
    let mut out = format!("{name}: IIA (p(source label) > p(base label)) per layer × position; controls: none / random direction / difference of means\n");
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
                    let _ = write!(out, "  {:>26}", format!("{:.2} ({:.2}/{:.2}/{:.2})", x.iia, x.iia_none, x.iia_random, x.iia_mean_difference));
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
