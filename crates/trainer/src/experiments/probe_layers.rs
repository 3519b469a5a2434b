//! `probe-layers`: a linear probe on every layer's `block_output`, with Hewitt & Liang's control
//! task, on labelled texts generated from templates (the sentiment of an adjective in short
//! review-like sentences). Selectivity = accuracy − control accuracy, per layer.
//!
//! The control task gives every adjective a random but fixed class, so a probe can only solve it
//! by memorising word identities; held-out sentences use new frames with the same adjectives, so
//! memorisation carries over and the control accuracy measures what the probe could do without
//! the property. One forward per batch yields every layer's activations.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::Tensor;
use burn::tensor::backend::{AutodiffBackend, Backend};
use ferrovene_data::TokenizedInput;
use ferrovene_data::batch::{PaddingSide, pad};
use ferrovene_interventions::Intervention;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::probe::LinearProbe;
use ferrovene_models::rng::Rng;
use ferrovene_models::{TextTokenizer, Transformer, block_outputs, gather_positions};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::batch::{input_of, int2};
use crate::device::load_frozen;
use crate::events::progress_if;
use crate::experiments::experiment::{Experiment, RunContext, RunEnd};
use crate::fit::{FitConfig, FitIo, fit};
use crate::objectives::probe::{FeatureBatch, ProbeObjective, evaluate, majority_share};
use crate::plot::Heatmap;
use crate::recipe::Layers;
use crate::run_dir::RunDir;

const POSITIVE: [&str; 12] = [
    "wonderful",
    "great",
    "brilliant",
    "lovely",
    "superb",
    "delightful",
    "excellent",
    "charming",
    "pleasant",
    "marvellous",
    "splendid",
    "fantastic",
];
const NEGATIVE: [&str; 12] = [
    "awful",
    "terrible",
    "dreadful",
    "boring",
    "horrible",
    "dull",
    "painful",
    "lousy",
    "dismal",
    "tedious",
    "miserable",
    "appalling",
];
const FRAMES: [&str; 8] = [
    "The movie was {}.",
    "I found the book {}.",
    "Her speech sounded {}.",
    "The food tasted {}.",
    "That concert felt {}.",
    "His idea seemed {}.",
    "Our trip was {}.",
    "The show looked {}.",
];

/// The recipe (`recipes/probe-layers.toml`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProbeLayersRecipe {
    /// One line for `trainer list`.
    pub description: String,
    /// Model spec.
    pub model: String,
    /// Layers probed: a list, or `"all"`.
    pub layers: Layers,
    /// Sentence frames held out for evaluation (of 8).
    pub held_out_frames: usize,
    /// Epochs of probe training.
    pub epochs: usize,
    /// Adam learning rate.
    pub lr: f64,
    /// Texts per batch.
    pub batch_size: usize,
    /// Seed of the control labels, the initialisation and the batch order.
    pub seed: u64,
}

impl Experiment for ProbeLayersRecipe {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn check(&self) -> Result<()> {
        if self.held_out_frames == 0 || self.held_out_frames >= FRAMES.len() {
            bail!("`held_out_frames` must be between 1 and {}", FRAMES.len() - 1);
        }
        crate::divergence::check_rate("lr", self.lr)?;
        self.layers.check()
    }

    fn run<B: AutodiffBackend>(&self, ctx: &RunContext<'_>, device: &B::Device) -> Result<RunEnd> {
        run::<B>(ctx, self, device).map(RunEnd::Done)
    }
}

/// One labelled sentence: its text, frame, adjective, real class and control class.
#[derive(Debug, Clone)]
pub struct Labelled {
    /// The sentence.
    pub text: String,
    /// Index of its frame.
    pub frame: usize,
    /// The adjective.
    pub adjective: &'static str,
    /// 1 = positive sentiment.
    pub class: usize,
    /// The adjective's random class (the control task).
    pub control: usize,
}

/// Every frame × adjective, with control classes drawn per adjective from `seed` (half of each).
pub fn dataset(seed: u64) -> Vec<Labelled> {
    let words: Vec<(&'static str, usize)> =
        POSITIVE.iter().map(|w| (*w, 1)).chain(NEGATIVE.iter().map(|w| (*w, 0))).collect();
    let mut control: Vec<usize> = (0..words.len()).map(|i| i % 2).collect();
    Rng::new(seed ^ 0x0C04_7201).shuffle(&mut control);
    let mut out = Vec::new();
    for (f, frame) in FRAMES.iter().enumerate() {
        for (k, (w, class)) in words.iter().enumerate() {
            out.push(Labelled {
                text: frame.replace("{}", w),
                frame: f,
                adjective: w,
                class: *class,
                control: control[k],
            });
        }
    }
    out
}

/// A sentence's tokens and the position of its adjective's last token.
fn adjective_input(tok: &TextTokenizer, l: &Labelled) -> Result<TokenizedInput> {
    let start = l.text.find(l.adjective).context("the adjective is in its sentence")?;
    let end = start + l.adjective.len();
    let (ids, offsets) = tok.encode_with_offsets(&l.text)?;
    let last = offsets
        .iter()
        .rposition(|&(a, b)| b > a && a < end && b > start)
        .with_context(|| format!("no token covers {:?} in {:?}", l.adjective, l.text))?;
    Ok(TokenizedInput { ids, positions: vec![last] })
}

/// Per layer: `[n, 1, width]` activations at each text's adjective (its last token), batched.
fn features<B: Backend, M: Transformer<B>>(
    model: &M,
    tok: &TextTokenizer,
    data: &[Labelled],
    layers: &[usize],
    batch: usize,
    device: &B::Device,
) -> Result<BTreeMap<usize, Vec<Tensor<B, 3>>>> {
    let deepest = layers.iter().copied().max().unwrap_or(0);
    let mut out: BTreeMap<usize, Vec<_>> = BTreeMap::new();
    for chunk in data.chunks(batch.max(1)) {
        let inputs: Vec<TokenizedInput> = chunk.iter().map(|l| adjective_input(tok, l)).collect::<Result<_>>()?;
        let refs: Vec<&TokenizedInput> = inputs.iter().collect();
        let p = pad(&refs, tok.pad_id, PaddingSide::for_model(model.causal()));
        let input = input_of::<B>(&p.ids, &p.mask, device);
        let positions = int2::<B>(&p.positions, device);
        for (l, x) in block_outputs(model, &input, layers, deepest).0 {
            out.entry(l).or_default().push(gather_positions(x, positions.clone()));
        }
    }
    Ok(out)
}

fn batches<B: Backend>(feats: &[Tensor<B, 3>], data: &[Labelled], batch: usize, control: bool) -> Vec<FeatureBatch<B>> {
    feats
        .iter()
        .zip(data.chunks(batch.max(1)))
        .map(|(f, chunk)| FeatureBatch {
            features: f.clone(),
            classes: chunk.iter().map(|l| if control { l.control } else { l.class }).collect(),
        })
        .collect()
}

/// One layer's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct LayerResult {
    /// Layer.
    pub layer: usize,
    /// Held-out accuracy on the real task.
    pub accuracy: f32,
    /// Held-out accuracy on the control task.
    pub control_accuracy: f32,
    /// accuracy − control accuracy.
    pub selectivity: f32,
}

/// The probes of every layer, the most accurate layer's probe, and the held-out majority share.
struct Probed<B: AutodiffBackend> {
    results: Vec<LayerResult>,
    best: (Intervention<B>, usize),
    majority: f32,
}

/// Trains a probe and a control probe per layer on the cached features.
fn probe_layers<B: AutodiffBackend, M: Transformer<B>>(
    ctx: &RunContext<'_>,
    r: &ProbeLayersRecipe,
    model: &M,
    tok: &TextTokenizer,
    split: (&[Labelled], &[Labelled]),
    layers: &[usize],
    device: &B::Device,
) -> Result<Probed<B>> {
    let (train, test) = split;
    let train_f = features(model, tok, train, layers, r.batch_size, device)?;
    let test_f = features(model, tok, test, layers, r.batch_size, device)?;
    let cfg = FitConfig::constant(r.epochs, r.lr, r.seed, true);
    let bar = progress_if(ctx.progress, layers.len(), "layers");
    let mut results = Vec::new();
    let mut best: Option<(f32, Intervention<B>, usize)> = None;
    for &layer in layers {
        let mut acc = [0.0f32; 2];
        for (k, control) in [false, true].into_iter().enumerate() {
            let tr = batches(&train_f[&layer], train, r.batch_size, control);
            let te = batches(&test_f[&layer], test, r.batch_size, control);
            let iv =
                Intervention::Probe(LinearProbe::init(model.width(), 2, &mut Rng::new(r.seed ^ layer as u64), device));
            let fitted = fit(&ProbeObjective { train: &tr, validation: &[] }, iv, &cfg, FitIo::default())?;
            acc[k] = evaluate(&fitted.module, &te)?.0;
            if !control && best.as_ref().is_none_or(|b| acc[0] > b.0) {
                best = Some((acc[0], fitted.module, layer));
            }
        }
        results.push(LayerResult { layer, accuracy: acc[0], control_accuracy: acc[1], selectivity: acc[0] - acc[1] });
        bar.inc(1);
    }
    bar.finish_and_clear();
    let majority = majority_share(&batches(&test_f[&layers[0]], test, r.batch_size, false));
    let (_, probe, layer) = best.context("no layers")?;
    Ok(Probed { results, best: (probe, layer), majority })
}

/// The table, CSV and plot of the per-layer numbers.
fn write_layers(dir: &RunDir, name: &str, results: &[LayerResult], majority: f32, n_test: usize) -> Result<String> {
    let mut table = format!(
        "{name}: held-out probe accuracy per layer at the adjective ({n_test} sentences, majority class {majority:.2})\n"
    );
    let _ = writeln!(table, "{:>6} {:>9} {:>9} {:>12}", "layer", "accuracy", "control", "selectivity");
    let mut csv = String::from("layer,accuracy,control_accuracy,selectivity\n");
    for x in results {
        let _ =
            writeln!(table, "{:>6} {:>9.3} {:>9.3} {:>12.3}", x.layer, x.accuracy, x.control_accuracy, x.selectivity);
        let _ = writeln!(csv, "{},{},{},{}", x.layer, x.accuracy, x.control_accuracy, x.selectivity);
    }
    dir.write("layers.csv", csv)?;
    Heatmap {
        title: &format!("{name}: accuracy, control accuracy and selectivity by layer"),
        rows: vec!["accuracy".into(), "control".into(), "selectivity".into()],
        columns: results.iter().map(|x| x.layer.to_string()).collect(),
        values: vec![
            results.iter().map(|x| Some(x.accuracy)).collect(),
            results.iter().map(|x| Some(x.control_accuracy)).collect(),
            results.iter().map(|x| Some(x.selectivity.max(0.0))).collect(),
        ],
        scale: 1.0,
        axes: ("", "layer"),
    }
    .write(&dir.join("layers"))?;
    Ok(table)
}

/// Runs the recipe: a probe and a control probe per layer; table, plot, CSV/JSON, the most
/// accurate layer's probe exported.
pub fn run<B: AutodiffBackend>(ctx: &RunContext<'_>, r: &ProbeLayersRecipe, device: &B::Device) -> Result<PathBuf> {
    let loaded = load_frozen::<B>(&r.model, device).with_context(|| format!("loading model `{}`", r.model))?;
    let (model, tok) =
        (&loaded.model, loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", r.model))?);
    let layers = r.layers.resolve(model.n_layers())?;
    let dir = RunDir::create(ctx.out_root, ctx.name, ctx.as_run)?;
    let mut frames: Vec<usize> = (0..FRAMES.len()).collect();
    Rng::new(r.seed).shuffle(&mut frames);
    let held: Vec<usize> = frames[..r.held_out_frames].to_vec();
    let (test, train): (Vec<Labelled>, Vec<Labelled>) =
        dataset(r.seed).into_iter().partition(|l| held.contains(&l.frame));
    let probed = probe_layers(ctx, r, model, tok, (&train, &test), &layers, device)?;
    let table = write_layers(&dir, ctx.name, &probed.results, probed.majority, test.len())?;
    let (probe, best_layer) = &probed.best;
    let placement = PlacementConfig {
        sites: vec![format!("{best_layer}.block_output")],
        positions: "span:adj".into(),
        site_width: model.width(),
        ..Default::default()
    };
    let config = ExportConfig::new(
        placement,
        ModelConfig::of(&loaded),
        json!({"recipe": ctx.name, "classes": ["negative", "positive"]}),
    );
    export::save(probe, config, &dir.join("intervention.safetensors"))?;
    dir.write_report(json!({
        "recipe": ctx.name, "layers": probed.results, "majority_class": probed.majority,
        "data": {"train": train.len(), "test": test.len(), "held_out_frames": held},
        "model": {"spec": r.model, "path": loaded.path, "revision": loaded.revision},
    }))?;
    print!("{table}");
    println!("run folder: {} ({:.0} s)", dir.path().display(), dir.elapsed());
    Ok(dir.path().to_path_buf())
}
