//! `das-hierarchical-equality`: the classic DAS result (Geiger et al., arXiv 2303.02536; pyvene's
//! DAS tutorial), reproduced from scratch.
//!
//! Four objects a, b, c, d (random vectors of width 4); the label is (a = b) = (c = d). The causal
//! model has two intermediate variables, WX = (a = b) and YZ = (c = d). An MLP (three hidden ReLU
//! layers of width 16) is trained on the task; then, at one hidden layer, full DAS learns a
//! 16 × 16 rotation whose first half should hold WX and second half YZ: interchanging those
//! rotated coordinates from source inputs must change the output exactly as setting WX, YZ or
//! both in the causal model does. The neuron-aligned baseline interchanges the same dimensions
//! without a rotation.
//!
//! The recipe's trainings are small and many (five MLPs of 31,250 steps, fifteen rotations of
//! 7,820), so [`run`] trains them stacked ([`stacked`]): every seed's MLP as one model, then
//! every (layer, seed) rotation as one. [`run_seed`] is one seed alone, the reference the stacked
//! run is tested against.

pub mod stacked;

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::module::Module;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::loss::cross_entropy_with_logits;
use burn::tensor::{Int, Tensor, TensorData};
use ferrovene_interventions::das::DasFull;
use ferrovene_interventions::{Intervention, Orthogonal};
use ferrovene_models::arch::mlp::{Mlp, MlpConfig};
use ferrovene_models::rng::Rng;
use ferrovene_models::{Component, NoHooks, Site};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::events::progress_if;
use crate::experiments::experiment::{Experiment, RunContext, RunEnd};
use crate::fit::{FitConfig, FitIo, Objective, fit};
use crate::run_dir::RunDir;

/// The recipe (`recipes/das-hierarchical-equality.toml`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HierarchicalRecipe {
    /// One line for `trainer list`.
    pub description: String,
    /// One full run (MLP and every DAS) per seed; the table shows mean ± sd over them.
    pub seeds: Vec<u64>,
    /// Width of each object vector.
    pub object_width: usize,
    /// Hidden-layer widths of the MLP.
    pub hidden: Vec<usize>,
    /// Training examples for the MLP.
    pub mlp_examples: usize,
    /// Epochs over them.
    pub mlp_epochs: usize,
    /// Adam learning rate for the MLP.
    pub mlp_lr: f64,
    /// MLP batch size.
    pub mlp_batch: usize,
    /// Counterfactual training pairs for DAS (a third each intervening on WX, YZ, both).
    pub das_train_pairs: usize,
    /// Held-out counterfactual pairs (fresh samples).
    pub das_test_pairs: usize,
    /// Epochs of DAS.
    pub das_epochs: usize,
    /// Adam learning rate for the rotation.
    pub das_lr: f64,
    /// DAS batch size.
    pub das_batch: usize,
    /// Hidden layers to align (1-based, as in the paper: 1 = the first hidden layer).
    pub layers: Vec<usize>,
    /// Train the seeds' MLPs, then all rotations, as stacked models (the default; the same
    /// numbers to rounding, about a third of the time); `false` runs each seed alone.
    #[serde(default = "stacked_by_default")]
    pub stacked: bool,
}

fn stacked_by_default() -> bool {
    true
}

impl Experiment for HierarchicalRecipe {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn check(&self) -> Result<()> {
        let r = self;
        if r.seeds.is_empty() || r.hidden.is_empty() {
            bail!("`seeds` and `hidden` must not be empty");
        }
        if let Some(&bad) = r.layers.iter().find(|&&l| l == 0 || l > r.hidden.len()) {
            bail!("`layers` has {bad}; the MLP's hidden layers are 1..={}", r.hidden.len());
        }
        if r.hidden.iter().any(|&w| w % 2 != 0) {
            bail!("hidden widths must be even (half of the rotated dimensions for WX, half for YZ)");
        }
        crate::divergence::check_rate("mlp_lr", r.mlp_lr)?;
        crate::divergence::check_rate("das_lr", r.das_lr)
    }

    fn run<B: AutodiffBackend>(&self, ctx: &RunContext<'_>, device: &B::Device) -> Result<RunEnd> {
        run::<B>(ctx, self, device).map(RunEnd::Done)
    }
}

/// One input: the four objects concatenated, and the truth of the two equalities.
#[derive(Debug, Clone)]
pub struct Objects {
    /// `[a, b, c, d]`, `4 × width` numbers.
    pub x: Vec<f32>,
    /// a = b.
    pub wx: bool,
    /// c = d.
    pub yz: bool,
}

impl Objects {
    /// A sample with each equality true half the time (objects uniform in [−1, 1]^width).
    pub fn sample(rng: &mut Rng, width: usize) -> Self {
        let vec = |rng: &mut Rng| (0..width).map(|_| (2.0 * rng.uniform() - 1.0) as f32).collect::<Vec<f32>>();
        let a = vec(rng);
        let wx = rng.uniform() < 0.5;
        let b = if wx { a.clone() } else { vec(rng) };
        let c = vec(rng);
        let yz = rng.uniform() < 0.5;
        let d = if yz { c.clone() } else { vec(rng) };
        Objects { x: [a, b, c, d].concat(), wx, yz }
    }

    /// The task's label: (a = b) = (c = d).
    pub fn label(&self) -> bool {
        self.wx == self.yz
    }
}

/// Which variables of the causal model a pair intervenes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// WX from the first source.
    Wx,
    /// YZ from the second source.
    Yz,
    /// Both.
    Both,
}

/// A counterfactual pair: base, two sources, and the causal model's output after the interchange.
#[derive(Debug, Clone)]
pub struct EqualityPair {
    /// The base input.
    pub base: Objects,
    /// Source of WX.
    pub wx_source: Objects,
    /// Source of YZ.
    pub yz_source: Objects,
    /// What is interchanged.
    pub target: Target,
    /// The counterfactual label.
    pub label: bool,
}

impl EqualityPair {
    /// A pair intervening on `target`, its label from the causal model.
    pub fn sample(rng: &mut Rng, width: usize, target: Target) -> Self {
        let (base, wx_source, yz_source) =
            (Objects::sample(rng, width), Objects::sample(rng, width), Objects::sample(rng, width));
        let wx = if target == Target::Yz { base.wx } else { wx_source.wx };
        let yz = if target == Target::Wx { base.yz } else { yz_source.yz };
        EqualityPair { base, wx_source, yz_source, target, label: wx == yz }
    }

    /// `n` pairs, a third intervening on each of WX, YZ and both.
    pub fn dataset(rng: &mut Rng, width: usize, n: usize) -> Vec<Self> {
        (0..n).map(|i| Self::sample(rng, width, [Target::Wx, Target::Yz, Target::Both][i % 3])).collect()
    }
}

fn rows<B: Backend>(xs: &[&[f32]], device: &B::Device) -> Tensor<B, 2> {
    let d = xs.first().map_or(0, |x| x.len());
    Tensor::from_data(
        TensorData::new(xs.iter().flat_map(|x| x.iter().copied()).collect::<Vec<_>>(), [xs.len(), d]),
        device,
    )
}

fn classes<B: Backend>(labels: &[bool], device: &B::Device) -> Tensor<B, 2> {
    Tensor::<B, 1, Int>::from_data(
        TensorData::new(labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [labels.len()]),
        device,
    )
    .one_hot::<2>(2)
    .float()
}

/// The MLP's training: batches of the task's examples in the order of a seeded shuffle per
/// epoch, cross-entropy of the label.
struct MlpObjective<'a, B: Backend> {
    data: &'a [Objects],
    /// Every batch of every epoch, in training order (indices into `data`).
    batches: Vec<Vec<usize>>,
    device: B::Device,
}

impl<B: AutodiffBackend> Objective<B, Mlp<B>> for MlpObjective<'_, B> {
    fn batches(&self) -> usize {
        self.batches.len()
    }

    fn loss(&self, mlp: &Mlp<B>, index: usize) -> Result<Tensor<B, 1>> {
        let chunk = &self.batches[index];
        let xs: Vec<&[f32]> = chunk.iter().map(|&i| self.data[i].x.as_slice()).collect();
        let ys: Vec<bool> = chunk.iter().map(|&i| self.data[i].label()).collect();
        Ok(cross_entropy_with_logits(mlp.predict(rows::<B>(&xs, &self.device)), classes::<B>(&ys, &self.device)))
    }

    fn validate(&self, _: &Mlp<B>) -> Result<Option<(f32, f32)>> {
        Ok(None)
    }
}

/// One seed's MLP training before it runs: the generator, the fresh MLP and its samples drawn
/// from it, and the batch order of every epoch (drawn up front from the same generator, after the
/// samples). The generator goes on to draw the held-out samples ([`held_out_accuracy`]).
pub(crate) struct MlpStart<B: Backend> {
    pub(crate) rng: Rng,
    pub(crate) mlp: Mlp<B>,
    pub(crate) data: Vec<Objects>,
    pub(crate) batches: Vec<Vec<usize>>,
}

impl<B: Backend> MlpStart<B> {
    /// The draws of seed `seed`, in the order every run of the recipe makes them.
    pub(crate) fn draw(r: &HierarchicalRecipe, seed: u64, device: &B::Device) -> Self {
        let mut rng = Rng::new(seed);
        let config = MlpConfig { d_in: 4 * r.object_width, hidden: r.hidden.clone(), d_out: 2 };
        let mlp = Mlp::<B>::init_seeded(&config, &mut rng, device);
        let data: Vec<Objects> = (0..r.mlp_examples).map(|_| Objects::sample(&mut rng, r.object_width)).collect();
        let mut order: Vec<usize> = (0..data.len()).collect();
        let mut batches = Vec::new();
        for _ in 0..r.mlp_epochs {
            rng.shuffle(&mut order);
            batches.extend(order.chunks(r.mlp_batch.max(1)).map(<[usize]>::to_vec));
        }
        MlpStart { rng, mlp, data, batches }
    }
}

/// The trained MLP's accuracy on 10,000 fresh samples drawn from `rng`.
pub(crate) fn held_out_accuracy<B: Backend>(
    mlp: &Mlp<B>,
    rng: &mut Rng,
    r: &HierarchicalRecipe,
    device: &B::Device,
) -> Result<f32> {
    let test: Vec<Objects> = (0..10_000).map(|_| Objects::sample(rng, r.object_width)).collect();
    let xs: Vec<&[f32]> = test.iter().map(|o| o.x.as_slice()).collect();
    let predicted = argmax(mlp.predict(rows::<B>(&xs, device)))?;
    Ok(predicted.iter().zip(&test).filter(|(p, o)| (**p == 1) == o.label()).count() as f32 / test.len() as f32)
}

/// Trains the MLP on the task; returns it frozen with its held-out accuracy.
pub fn train_mlp<B: AutodiffBackend>(r: &HierarchicalRecipe, seed: u64, device: &B::Device) -> Result<(Mlp<B>, f32)> {
    let MlpStart { mut rng, mlp, data, batches } = MlpStart::<B>::draw(r, seed, device);
    let objective = MlpObjective { data: &data, batches, device: device.clone() };
    let mlp = fit(&objective, mlp, &FitConfig::constant(1, r.mlp_lr, seed, false), FitIo::default())?.module.no_grad();
    let accuracy = held_out_accuracy(&mlp, &mut rng, r, device)?;
    Ok((mlp, accuracy))
}

fn argmax<B: Backend>(logits: Tensor<B, 2>) -> Result<Vec<usize>> {
    let c = logits.dims()[1];
    let v: Vec<f32> = logits.into_data().convert::<f32>().to_vec().map_err(|e| anyhow::anyhow!("{e:?}"))?;
    Ok(v.chunks(c).map(|r| r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)).collect())
}

/// A batch of pairs with the frozen MLP's activations at the site cached.
pub struct EqualityBatch<B: Backend> {
    base: Tensor<B, 2>,
    wx_source: Tensor<B, 2>,
    yz_source: Tensor<B, 2>,
    /// 1 on the WX half of the rotated coordinates for pairs that interchange WX.
    wx_mask: Tensor<B, 2>,
    /// 1 on the YZ half for pairs that interchange YZ.
    yz_mask: Tensor<B, 2>,
    labels: Vec<bool>,
}

/// Caches the activations at `site` for the pairs, in batches.
pub fn prepare<B: Backend>(
    mlp: &Mlp<B>,
    site: Site,
    pairs: &[EqualityPair],
    batch: usize,
    device: &B::Device,
) -> Result<Vec<EqualityBatch<B>>> {
    let width = mlp.sites().get(site.layer).map(|s| s.width).context("site outside the MLP")?;
    let half = width / 2;
    let act = |objs: Vec<&Objects>| -> Result<Tensor<B, 2>> {
        let xs: Vec<&[f32]> = objs.iter().map(|o| o.x.as_slice()).collect();
        let a = mlp.run_to(rows::<B>(&xs, device), site)?;
        let [n, _, w] = a.dims();
        Ok(a.reshape([n, w]))
    };
    let mask = |chunk: &[EqualityPair], on: fn(Target) -> bool, range: std::ops::Range<usize>| -> Tensor<B, 2> {
        let v: Vec<f32> = chunk
            .iter()
            .flat_map(|p| {
                let r = range.clone();
                (0..width).map(move |i| (on(p.target) && r.contains(&i)) as u8 as f32)
            })
            .collect();
        Tensor::from_data(TensorData::new(v, [chunk.len(), width]), device)
    };
    pairs
        .chunks(batch.max(1))
        .map(|chunk| {
            Ok(EqualityBatch {
                base: act(chunk.iter().map(|p| &p.base).collect())?,
                wx_source: act(chunk.iter().map(|p| &p.wx_source).collect())?,
                yz_source: act(chunk.iter().map(|p| &p.yz_source).collect())?,
                wx_mask: mask(chunk, |t| t != Target::Yz, 0..half),
                yz_mask: mask(chunk, |t| t != Target::Wx, half..width),
                labels: chunk.iter().map(|p| p.label).collect(),
            })
        })
        .collect()
}

/// Output logits after interchanging, in the basis `r` (rows orthonormal, `d × d`), the WX half
/// from the WX source and the YZ half from the YZ source.
fn intervened<B: Backend>(mlp: &Mlp<B>, site: Site, b: &EqualityBatch<B>, r: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
    let rt = r.clone().transpose();
    let (rb, rw, ry) =
        (b.base.clone().matmul(rt.clone()), b.wx_source.clone().matmul(rt.clone()), b.yz_source.clone().matmul(rt));
    let keep = b.wx_mask.ones_like() - b.wx_mask.clone() - b.yz_mask.clone();
    let mixed = rb * keep + rw * b.wx_mask.clone() + ry * b.yz_mask.clone();
    let h = mixed.matmul(r);
    let [n, w] = h.dims();
    Ok(mlp.resume(site, h.reshape([n, 1, w]), &mut NoHooks)?)
}

/// IIA with the rotation `r`: the share of pairs whose output is the causal model's.
pub fn iia<B: Backend>(mlp: &Mlp<B>, site: Site, batches: &[EqualityBatch<B>], r: &Tensor<B, 2>) -> Result<f32> {
    let (mut hits, mut n) = (0, 0);
    for b in batches {
        for (p, l) in argmax(intervened(mlp, site, b, r.clone())?)?.into_iter().zip(&b.labels) {
            hits += ((p == 1) == *l) as usize;
            n += 1;
        }
    }
    Ok(hits as f32 / n.max(1) as f32)
}

/// DAS on the pairs: counterfactual cross-entropy through the rotation.
pub struct EqualityObjective<'a, B: Backend> {
    /// The frozen MLP.
    pub mlp: &'a Mlp<B>,
    /// Where.
    pub site: Site,
    /// Training batches.
    pub train: &'a [EqualityBatch<B>],
}

impl<B: AutodiffBackend> Objective<B> for EqualityObjective<'_, B> {
    fn batches(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, iv: &Intervention<B>, index: usize) -> Result<Tensor<B, 1>> {
        let r = iv.rotation().context("DAS needs a rotation")?.matrix();
        let b = &self.train[index];
        Ok(cross_entropy_with_logits(intervened(self.mlp, self.site, b, r)?, classes::<B>(&b.labels, &b.base.device())))
    }

    fn validate(&self, _: &Intervention<B>) -> Result<Option<(f32, f32)>> {
        Ok(None)
    }
}

/// Results of one seed.
#[derive(Debug, Clone, Serialize)]
pub struct SeedResult {
    /// The seed.
    pub seed: u64,
    /// The MLP's held-out accuracy on the task.
    pub mlp_accuracy: f32,
    /// Per aligned layer (1-based): (layer, DAS IIA, neuron-aligned IIA).
    pub layers: Vec<(usize, f32, f32)>,
}

/// Trains the MLP and aligns every requested layer, for one seed.
pub fn run_seed<B: AutodiffBackend>(r: &HierarchicalRecipe, seed: u64, device: &B::Device) -> Result<SeedResult> {
    let (mlp, mlp_accuracy) = train_mlp::<B>(r, seed, device)?;
    let mut rng = Rng::new(seed ^ 0xDA5);
    let train_pairs = EqualityPair::dataset(&mut rng, r.object_width, r.das_train_pairs);
    let test_pairs = EqualityPair::dataset(&mut rng, r.object_width, r.das_test_pairs);
    let mut layers = Vec::new();
    for &layer in &r.layers {
        let site = Site::new(layer - 1, Component::Hidden);
        let width = r.hidden[layer - 1];
        let train = prepare(&mlp, site, &train_pairs, r.das_batch, device)?;
        let test = prepare(&mlp, site, &test_pairs, 1024, device)?;
        let iv = Intervention::DasFull(DasFull {
            rotation: Orthogonal::random(width, width, &mut Rng::new(seed.wrapping_add(layer as u64)), device),
            k: width / 2,
        });
        let cfg = FitConfig::constant(r.das_epochs, r.das_lr, seed, true);
        let fitted = fit(&EqualityObjective { mlp: &mlp, site, train: &train }, iv, &cfg, FitIo::default())?;
        let rotation = fitted.module.rotation().context("a rotation")?.matrix();
        let das = iia(&mlp, site, &test, &rotation)?;
        let neurons = iia(&mlp, site, &test, &Tensor::eye(width, device))?;
        layers.push((layer, das, neurons));
    }
    Ok(SeedResult { seed, mlp_accuracy, layers })
}

fn mean_sd(v: &[f32]) -> (f32, f32) {
    let n = v.len().max(1) as f32;
    let mean = v.iter().sum::<f32>() / n;
    let var = if v.len() > 1 { v.iter().map(|x| (x - mean).powi(2)).sum::<f32>() / (n - 1.0) } else { 0.0 };
    (mean, var.sqrt())
}

/// Published held-out IIA for the table: (row, paper, pyvene tutorial, 10-seed reproduction).
const PUBLISHED: &[(&str, &str, &str, &str)] = &[
    ("layer 1, DAS", "1.00", "0.97", "0.842 ± 0.082"),
    ("layer 2, DAS", "-", "-", "0.614"),
    ("layer 3, DAS", "-", "-", "0.498"),
    ("neuron-aligned", "-", "-", "0.724 (best)"),
];

/// The table of results beside the published numbers.
pub fn table(results: &[SeedResult]) -> String {
    let mut out = String::new();
    let mlp: Vec<f32> = results.iter().map(|s| s.mlp_accuracy).collect();
    let (m, sd) = mean_sd(&mlp);
    let _ = writeln!(
        out,
        "das-hierarchical-equality: held-out IIA, mean ± sd over {} seeds (MLP test accuracy {m:.3} ± {sd:.3})",
        results.len()
    );
    let _ = writeln!(
        out,
        "{:<28} {:>15}  {:>6}  {:>15}  {:>20}",
        "", "ferrovene", "paper", "pyvene tutorial", "10-seed reproduction"
    );
    let layers: Vec<usize> = results.first().map(|s| s.layers.iter().map(|l| l.0).collect()).unwrap_or_default();
    let published = |row: &str| PUBLISHED.iter().find(|p| p.0 == row).map_or(("-", "-", "-"), |p| (p.1, p.2, p.3));
    for (i, layer) in layers.iter().enumerate() {
        let (m, sd) = mean_sd(&results.iter().map(|s| s.layers[i].1).collect::<Vec<_>>());
        let row = format!("layer {layer}, DAS");
        let p = published(&row);
        let _ = writeln!(out, "{row:<28} {:>15}  {:>6}  {:>15}  {:>20}", format!("{m:.3} ± {sd:.3}"), p.0, p.1, p.2);
    }
    for (i, layer) in layers.iter().enumerate() {
        let (m, sd) = mean_sd(&results.iter().map(|s| s.layers[i].2).collect::<Vec<_>>());
        let p = published("neuron-aligned");
        let _ = writeln!(
            out,
            "{:<28} {:>15}  {:>6}  {:>15}  {:>20}",
            format!("layer {layer}, neuron-aligned"),
            format!("{m:.3} ± {sd:.3}"),
            p.0,
            p.1,
            if i == 0 { p.2 } else { "" }
        );
    }
    out
}

/// The per-seed results as CSV.
fn csv(results: &[SeedResult]) -> String {
    let mut csv = String::from("seed,mlp_accuracy,layer,das_iia,neuron_aligned_iia\n");
    for s in results {
        for (layer, das, neurons) in &s.layers {
            let _ = writeln!(csv, "{},{},{layer},{das},{neurons}", s.seed, s.mlp_accuracy);
        }
    }
    csv
}

/// Runs the recipe over its seeds; prints the table; writes `report.json`, `results.csv` and the
/// recipe into `out_root/name/<timestamp>/`.
pub fn run<B: AutodiffBackend>(ctx: &RunContext<'_>, r: &HierarchicalRecipe, device: &B::Device) -> Result<PathBuf> {
    let dir = RunDir::create(ctx.out_root, ctx.name, ctx.as_run)?;
    let started = std::time::Instant::now();
    // As many threads as rayon would use (RAYON_NUM_THREADS, else the cores), at most one a seed.
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = std::env::var("RAYON_NUM_THREADS")
        .ok()
        .and_then(|t| t.parse::<usize>().ok())
        .filter(|&t| t > 0)
        .unwrap_or(cores)
        .min(r.seeds.len())
        .max(1);
    let results = if r.stacked {
        let bar = progress_if(ctx.progress, threads, "stacked trainings (one stack of seeds per thread)");
        let results = stacked::run_seeds_in_threads::<B>(r, device, threads, &|| bar.inc(1))?;
        bar.finish_and_clear();
        results
    } else {
        let bar = progress_if(ctx.progress, r.seeds.len(), "seeds");
        let mut results = Vec::new();
        for &seed in &r.seeds {
            results.push(run_seed::<B>(r, seed, device)?);
            bar.inc(1);
        }
        bar.finish_and_clear();
        results
    };
    let table = table(&results);
    print!("{table}");
    dir.write("results.csv", csv(&results))?;
    dir.write_report(json!({
        "recipe": ctx.name, "seeds": results, "table": table, "stacked": r.stacked,
        "threads": if r.stacked { threads } else { 1 }, "timings_s": {"total": started.elapsed().as_secs_f64()},
        "published": PUBLISHED.iter().map(|p| json!({"row": p.0, "paper": p.1, "pyvene_tutorial": p.2, "reproduction_10_seeds": p.3})).collect::<Vec<_>>(),
    }))?;
    println!("run folder: {} ({:.0} s)", dir.path().display(), dir.elapsed());
    Ok(dir.path().to_path_buf())
}
