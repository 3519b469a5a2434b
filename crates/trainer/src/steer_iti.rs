//! `steer-iti`: Inference-Time Intervention (Li et al. 2023, arXiv 2306.03341) on templated
//! true/false statements.
//!
//! 1. Statements from templates — capitals, one-digit arithmetic, category membership — each fact
//!    once with its true answer and once with a false one; facts split into train, validation and
//!    held-out.
//! 2. A logistic-regression probe per attention head on `head_attention_value_output` (the head's
//!    output before the output projection) at the last token of a run of true or of false
//!    statements; heads ranked by probe accuracy on validation facts. Where the run ends is the
//!    recipe's [`ProbeAt`]: by default with the next fact's prompt, so the probe reads the
//!    position that predicts an answer — the position the shift is later added at — after true or
//!    after false statements; or with the fact's own statement, the paper's position.
//! 3. For the top K heads, the mass-mean shift: `θ = mean(true) − mean(false)` per head,
//!    normalised, scaled by the standard deviation `σ` of the activations along it. The
//!    intervention adds `α·σ·θ̂` to those heads at every position.
//! 4. The effect of α on the probability of the true answer after held-out prompts (the statement
//!    without its answer), beside the same heads shifted along random directions (same σ rule).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::steering::Steering;
use ferrovene_interventions::Intervention;
use ferrovene_models::rng::Rng;
use ferrovene_models::{forward, load, Capture, Component, FnHook, Input, NoHooks, Site, TextTokenizer, Transformer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::heatmap::Heatmap;
use crate::lineplot::{LinePlot, Series};

/// The recipe's kind.
pub const KIND: &str = "steer-iti";

const CAPITALS: [(&str, &str); 44] = [
    ("France", "Paris"), ("Italy", "Rome"), ("Germany", "Berlin"), ("Spain", "Madrid"), ("Japan", "Tokyo"), ("Russia", "Moscow"),
    ("Egypt", "Cairo"), ("Greece", "Athens"), ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Ireland", "Dublin"), ("Norway", "Oslo"),
    ("Poland", "Warsaw"), ("Hungary", "Budapest"), ("Sweden", "Stockholm"), ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Belgium", "Brussels"),
    ("England", "London"), ("China", "Beijing"), ("Kenya", "Nairobi"), ("Peru", "Lima"), ("Cuba", "Havana"), ("Thailand", "Bangkok"),
    ("Canada", "Ottawa"), ("Chile", "Santiago"), ("Colombia", "Bogotá"), ("India", "New Delhi"), ("Iran", "Tehran"), ("Iraq", "Baghdad"),
    ("Turkey", "Ankara"), ("Syria", "Damascus"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"), ("Bulgaria", "Sofia"), ("Serbia", "Belgrade"),
    ("Croatia", "Zagreb"), ("Switzerland", "Bern"), ("Scotland", "Edinburgh"), ("Wales", "Cardiff"), ("Australia", "Canberra"), ("Vietnam", "Hanoi"),
    ("Indonesia", "Jakarta"), ("Ghana", "Accra"),
];
const CATEGORIES: [(&str, [&str; 6]); 6] = [
    ("animal", ["dog", "horse", "rabbit", "lion", "elephant", "tiger"]),
    ("fruit", ["apple", "banana", "cherry", "mango", "orange", "pear"]),
    ("vehicle", ["car", "bus", "truck", "bicycle", "tractor", "motorcycle"]),
    ("tool", ["hammer", "wrench", "saw", "screwdriver", "drill", "chisel"]),
    ("musical instrument", ["piano", "guitar", "violin", "trumpet", "flute", "cello"]),
    ("piece of furniture", ["chair", "sofa", "table", "wardrobe", "bed", "desk"]),
];

/// One fact: a prompt and its true and false answers.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Fact {
    /// Topic (`capitals`, `arithmetic`, `categories`).
    pub topic: &'static str,
    /// The statement up to its answer, e.g. `The capital of France is`.
    pub prompt: String,
    /// The true answer, with its leading space.
    pub truth: String,
    /// A false answer of the same type.
    pub falsehood: String,
}

/// Every fact, in a fixed order; false answers drawn with `seed`.
pub fn facts(seed: u64) -> Vec<Fact> {
    let mut rng = Rng::new(seed);
    let mut out = Vec::new();
    for (i, (country, capital)) in CAPITALS.iter().enumerate() {
        let other = CAPITALS[(i + 1 + rng.below(CAPITALS.len() - 1)) % CAPITALS.len()].1;
        out.push(Fact { topic: "capitals", prompt: format!("The capital of {country} is"), truth: format!(" {capital}"), falsehood: format!(" {other}") });
    }
    let wrong_digit = |rng: &mut Rng, right: u32| loop {
        let w = rng.below(10) as u32;
        if w != right {
            break w;
        }
    };
    for a in 1..=8u32 {
        for b in 1..=(9 - a) {
            let wrong = wrong_digit(&mut rng, a + b);
            out.push(Fact { topic: "arithmetic", prompt: format!("{a} plus {b} equals"), truth: format!(" {}", a + b), falsehood: format!(" {wrong}") });
        }
    }
    for a in 2..=9u32 {
        for b in 1..a {
            let wrong = wrong_digit(&mut rng, a - b);
            out.push(Fact { topic: "arithmetic", prompt: format!("{a} minus {b} equals"), truth: format!(" {}", a - b), falsehood: format!(" {wrong}") });
        }
    }
    for (c, (category, items)) in CATEGORIES.iter().enumerate() {
        for item in items {
            let other = CATEGORIES[(c + 1 + rng.below(CATEGORIES.len() - 1)) % CATEGORIES.len()].0;
            let article = if item.starts_with(['a', 'e', 'i', 'o', 'u']) { "An" } else { "A" };
            out.push(Fact { topic: "categories", prompt: format!("{article} {item} is a kind of"), truth: format!(" {category}"), falsehood: format!(" {other}") });
        }
    }
    out
}

/// Where each probed text ends, and so which token the probes read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProbeAt {
    /// After the context statements, the fact's prompt without its answer: the probe reads the
    /// position that predicts an answer, labelled by whether the statements before it were true.
    NextPrompt,
    /// The fact's own statement with its true or false answer (ITI's position: the answer's last
    /// token), labelled by that statement.
    Statement,
}

/// The recipe (`recipes/steer-iti.toml`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SteerItiRecipe {
    /// One line for `trainer list`.
    pub description: String,
    /// `steer-iti`.
    pub kind: String,
    /// Model spec.
    pub model: String,
    /// Share of facts held out for the α curve.
    pub held_out_fraction: f64,
    /// Share of facts that rank the heads (probes are fitted on the rest).
    pub validation_fraction: f64,
    /// Statements (all true, or all false, from training facts) before each probed text.
    pub context_statements: usize,
    /// Contexts drawn per train or validation fact (each gives a true and a false text): more
    /// draws average the mass mean over more contexts.
    pub contexts_per_fact: usize,
    /// Where each probed text ends.
    pub probe_at: ProbeAt,
    /// Heads shifted (ITI's K).
    pub top_k: usize,
    /// Scales α of the shift, in units of σ.
    pub alphas: Vec<f64>,
    /// α of the exported shift.
    pub export_alpha: f64,
    /// Random-direction controls averaged at each α.
    pub random_controls: usize,
    /// Gradient steps of each head's logistic regression.
    pub probe_steps: usize,
    /// Seed of the false answers, the split, the contexts and the random directions.
    pub seed: u64,
}

impl SteerItiRecipe {
    /// Parses and checks a recipe.
    pub fn from_toml(text: &str) -> Result<Self> {
        let r: Self = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        if r.kind != KIND {
            bail!("kind `{}` is not `{KIND}`", r.kind);
        }
        if !(r.held_out_fraction > 0.0 && r.validation_fraction > 0.0 && r.held_out_fraction + r.validation_fraction < 0.9) {
            bail!("`held_out_fraction` and `validation_fraction` must be positive and leave at least 10% of the facts for training");
        }
        if r.probe_at == ProbeAt::NextPrompt && r.context_statements == 0 {
            bail!("`probe_at = \"next-prompt\"` labels each prompt by the statements before it: set `context_statements` to 1 or more");
        }
        if r.top_k == 0 || r.alphas.is_empty() || r.probe_steps == 0 || r.contexts_per_fact == 0 {
            bail!("`top_k`, `probe_steps`, `contexts_per_fact` and `alphas` must be non-zero / non-empty");
        }
        Ok(r)
    }

    /// The recipe with `key=value` overrides applied.
    pub fn with_overrides(&self, sets: &[String]) -> Result<Self> {
        crate::recipe::apply_overrides(self, sets, None, Self::from_toml)
    }
}

/// The probed texts of the facts `ids`, each with its label: per fact, `contexts_per_fact` draws
/// of `context_statements` other facts from `pool`, written once all true (label true) and once
/// all false (label false), then the fact as [`ProbeAt`] says.
pub fn probed_texts(all: &[Fact], ids: &[usize], pool: &[usize], r: &SteerItiRecipe, rng: &mut Rng) -> Vec<(String, bool)> {
    let mut texts = Vec::new();
    for &i in ids.iter().flat_map(|i| std::iter::repeat_n(i, r.contexts_per_fact)) {
        let mut others: Vec<usize> = pool.iter().copied().filter(|&j| j != i).collect();
        rng.shuffle(&mut others);
        let context: Vec<&Fact> = others.iter().take(r.context_statements).map(|&j| &all[j]).collect();
        for truth in [true, false] {
            let answer = |f: &Fact| if truth { f.truth.clone() } else { f.falsehood.clone() };
            let mut text: String = context.iter().map(|f| format!("{}{}. ", f.prompt, answer(f))).collect();
            match r.probe_at {
                ProbeAt::NextPrompt => text.push_str(&all[i].prompt),
                ProbeAt::Statement => text.push_str(&format!("{}{}", all[i].prompt, answer(&all[i]))),
            }
            texts.push((text, truth));
        }
    }
    texts
}

/// `[layer][text][width]` head outputs at each text's last token.
fn head_outputs<B: Backend, M: Transformer<B>>(model: &M, rows: &[Vec<u32>], pad_id: u32, device: &B::Device) -> Result<Vec<Vec<Vec<f32>>>> {
    let layers = model.n_layers();
    let sites: Vec<Site> = (0..layers).map(|l| Site::new(l, Component::HeadAttentionValueOutput)).collect();
    let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::new(); layers];
    for chunk in rows.chunks(32) {
        let input = Input::<B>::padded(chunk, pad_id, true, device);
        let seq = input.dims()[1];
        let mut cap = Capture::new(sites.clone());
        forward(model, &input, &mut cap);
        for (l, site) in sites.iter().enumerate() {
            let h = cap.get(*site).context("every layer's heads are captured")?;
            let [b, _, w] = h.dims();
            let last: Vec<f32> = h.slice([0..b, seq - 1..seq]).into_data().convert::<f32>().to_vec().map_err(|e| anyhow!("{e:?}"))?;
            out[l].extend(last.chunks(w).map(<[f32]>::to_vec));
        }
    }
    Ok(out)
}

/// Held-out accuracy of an L2-regularised logistic regression on standardised features.
pub fn probe_accuracy(train: &[&[f32]], train_y: &[bool], test: &[&[f32]], test_y: &[bool], steps: usize) -> f32 {
    let d = train.first().map_or(0, |x| x.len());
    let n = train.len() as f64;
    let mean: Vec<f64> = (0..d).map(|j| train.iter().map(|x| x[j] as f64).sum::<f64>() / n).collect();
    let std: Vec<f64> = (0..d).map(|j| (train.iter().map(|x| (x[j] as f64 - mean[j]).powi(2)).sum::<f64>() / n).sqrt().max(1e-6)).collect();
    let z = |x: &[f32]| -> Vec<f64> { (0..d).map(|j| (x[j] as f64 - mean[j]) / std[j]).collect() };
    let (xs, ts): (Vec<Vec<f64>>, Vec<Vec<f64>>) = (train.iter().map(|x| z(x)).collect(), test.iter().map(|x| z(x)).collect());
    let (mut w, mut b) = (vec![0.0f64; d], 0.0f64);
    let (lr, l2) = (0.5, 1e-2);
    for _ in 0..steps {
        let mut gw = vec![0.0f64; d];
        let mut gb = 0.0;
        for (x, &y) in xs.iter().zip(train_y) {
            let p = 1.0 / (1.0 + (-(x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + b)).exp());
            let e = p - y as u8 as f64;
            gb += e;
            for (g, xi) in gw.iter_mut().zip(x) {
                *g += e * xi;
            }
        }
        for (wj, g) in w.iter_mut().zip(&gw) {
            *wj -= lr * (g / n + l2 * *wj);
        }
        b -= lr * gb / n;
    }
    let hits = ts.iter().zip(test_y).filter(|(x, y)| ((x.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>() + b) > 0.0) == **y).count();
    hits as f32 / test.len().max(1) as f32
}

/// `σ·θ̂` for one head: `θ̂` the unit direction, `σ` the standard deviation of the projections
/// of `all` onto it.
fn scaled_direction(direction: &[f64], all: &[&[f32]]) -> Vec<f32> {
    let norm = direction.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    let unit: Vec<f64> = direction.iter().map(|x| x / norm).collect();
    let proj: Vec<f64> = all.iter().map(|x| x.iter().zip(&unit).map(|(a, b)| *a as f64 * b).sum()).collect();
    let m = proj.iter().sum::<f64>() / proj.len().max(1) as f64;
    let sigma = (proj.iter().map(|p| (p - m).powi(2)).sum::<f64>() / proj.len().max(1) as f64).sqrt();
    unit.iter().map(|u| (u * sigma) as f32).collect()
}

/// Per prompt, the probability of the true answer's first token and `p(true) / (p(true) +
/// p(false))`, with `shifts` (per layer, `[width]`, scaled by `alpha`) added at the last position.
fn true_answer_probability<B: Backend, M: Transformer<B>>(
    model: &M,
    prompts: &[(Vec<u32>, u32, u32)],
    shifts: &BTreeMap<usize, Vec<f32>>,
    alpha: f64,
    pad_id: u32,
    device: &B::Device,
) -> Result<Vec<(f64, f64)>> {
    let vectors: BTreeMap<Site, Tensor<B, 3>> = shifts
        .iter()
        .map(|(&l, v)| (Site::new(l, Component::HeadAttentionValueOutput), Tensor::<B, 1>::from_data(TensorData::new(v.clone(), [v.len()]), device).reshape([1, 1, v.len()]) * alpha))
        .collect();
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(32) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|(ids, _, _)| ids.clone()).collect();
        let input = Input::<B>::padded(&rows, pad_id, true, device);
        let [b, seq] = input.dims();
        let hidden = if alpha == 0.0 || vectors.is_empty() {
            forward(model, &input, &mut NoHooks)
        } else {
            // At the last position only: the token whose next-token prediction is the answer,
            // as ITI shifts each generated token.
            let mut add = FnHook::new(vectors.keys().copied(), |site, h: Tensor<B, 3>| {
                let [_, seq, width] = h.dims();
                let before = Tensor::<B, 3>::zeros([1, seq - 1, width], &h.device());
                h + Tensor::cat(vec![before, vectors[&site].clone()], 1)
            });
            forward(model, &input, &mut add)
        };
        let logits = model.head(hidden.slice([0..b, seq - 1..seq])).ok_or_else(|| anyhow!("steer-iti needs a language model"))?;
        let probs: Vec<f32> = softmax(logits, 2).into_data().convert::<f32>().to_vec().map_err(|e| anyhow!("{e:?}"))?;
        let v = probs.len() / b;
        for (r, (_, t, f)) in chunk.iter().enumerate() {
            let (pt, pf) = (probs[r * v + *t as usize] as f64, probs[r * v + *f as usize] as f64);
            out.push((pt, pt / (pt + pf).max(1e-30)));
        }
    }
    Ok(out)
}

/// Means of the per-prompt numbers over `rows`.
fn means(values: &[(f64, f64)], rows: &[usize]) -> (f32, f32) {
    let n = rows.len().max(1) as f64;
    let (a, b) = rows.iter().fold((0.0, 0.0), |(a, b), &i| (a + values[i].0, b + values[i].1));
    ((a / n) as f32, (b / n) as f32)
}

/// One topic's numbers at one α.
#[derive(Debug, Clone, Serialize)]
pub struct TopicPoint {
    /// Held-out prompts of the topic.
    pub n: usize,
    /// Mean p(true answer) with the ITI shift.
    pub p_true: f32,
    /// Mean p(true) / (p(true) + p(false)) with the ITI shift.
    pub true_share: f32,
    /// Mean p(true answer) with random directions.
    pub p_true_random: f32,
    /// Mean true share with random directions.
    pub true_share_random: f32,
}

/// One α's numbers.
#[derive(Debug, Clone, Serialize)]
pub struct AlphaPoint {
    /// α.
    pub alpha: f64,
    /// Mean p(true answer) with the ITI shift.
    pub p_true: f32,
    /// Mean p(true) / (p(true) + p(false)) with the ITI shift.
    pub true_share: f32,
    /// Mean p(true answer) with random directions (mean over the controls).
    pub p_true_random: f32,
    /// Mean true share with random directions.
    pub true_share_random: f32,
    /// The same numbers per topic.
    pub by_topic: BTreeMap<&'static str, TopicPoint>,
}

/// The prompt's ids up to where the true and false answers part, and the first token of each
/// from there (` 5` and ` 7` share a leading space token under digit splitting).
fn answer_choice(tok: &TextTokenizer, fact: &Fact) -> Result<(Vec<u32>, u32, u32)> {
    let (t, f) = (tok.encode_plain(&fact.truth)?, tok.encode_plain(&fact.falsehood)?);
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let (Some(&ti), Some(&fi)) = (t.get(common), f.get(common)) else {
        bail!("the answers {:?} and {:?} of {:?} do not part", fact.truth, fact.falsehood, fact.prompt);
    };
    let mut ids = tok.encode(&fact.prompt)?;
    ids.extend(&t[..common]);
    Ok((ids, ti, fi))
}

/// Runs the recipe: probes per head, heatmap, top-K mass-mean shift, α curve with its random
/// control, exports; returns the run folder.
pub fn run<B: Backend>(name: &str, r: &SteerItiRecipe, out_root: &Path, show: bool, device: &B::Device) -> Result<PathBuf> {
    let started = std::time::Instant::now();
    let dir = crate::run::start_run(out_root, name, r)?;
    let loaded = load::<B>(&r.model, device).with_context(|| format!("loading model `{}`", r.model))?;
    let (model, tok) = (&loaded.model, loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", r.model))?);
    let info = model.site_info(Site::new(0, Component::HeadAttentionValueOutput))?;
    let (heads, width) = (info.heads, info.width);
    let head_dim = width / heads;
    if r.top_k > heads * model.n_layers() {
        bail!("`top_k = {}` is more than the model's {} heads", r.top_k, heads * model.n_layers());
    }

    // Facts, split by fact into train (probes, directions), validation (head ranking) and
    // held-out (the α curve). Each train or validation fact gives, per context drawn, two probed
    // texts: one after true statements (label true), one after the same statements made false
    // (label false). Context statements come from other training facts, so held-out answers
    // never reach the probes.
    let all = facts(r.seed);
    let mut order: Vec<usize> = (0..all.len()).collect();
    Rng::new(r.seed ^ 0x5EED).shuffle(&mut order);
    let n_test = (all.len() as f64 * r.held_out_fraction).round() as usize;
    let n_val = (all.len() as f64 * r.validation_fraction).round() as usize;
    let (test_facts, rest) = order.split_at(n_test);
    let (val_facts, train_facts) = rest.split_at(n_val);
    if r.context_statements >= train_facts.len() {
        bail!("`context_statements = {}` needs more training facts than the {} left by the held-out and validation fractions", r.context_statements, train_facts.len());
    }
    let mut context_rng = Rng::new(r.seed ^ 0xC0_47_E7);
    let mut statements = |ids: &[usize]| -> Result<(Vec<Vec<u32>>, Vec<bool>)> {
        let texts = probed_texts(&all, ids, train_facts, r, &mut context_rng);
        Ok((texts.iter().map(|(t, _)| tok.encode(t)).collect::<Result<_, _>>()?, texts.iter().map(|(_, y)| *y).collect()))
    };
    let (train_rows, train_y) = statements(train_facts)?;
    let (val_rows, val_y) = statements(val_facts)?;
    let bar = crate::events::progress(3, "reading head outputs, probing, steering");
    if !show {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let train_acts = head_outputs(model, &train_rows, tok.pad_id, device)?;
    let val_acts = head_outputs(model, &val_rows, tok.pad_id, device)?;
    bar.inc(1);

    // A probe per head.
    let slice = |acts: &[Vec<f32>], h: usize| -> Vec<Vec<f32>> { acts.iter().map(|x| x[h * head_dim..(h + 1) * head_dim].to_vec()).collect() };
    let mut accuracy = vec![vec![0f32; heads]; model.n_layers()];
    for l in 0..model.n_layers() {
        for h in 0..heads {
            let (tr, va) = (slice(&train_acts[l], h), slice(&val_acts[l], h));
            let tr_refs: Vec<&[f32]> = tr.iter().map(Vec::as_slice).collect();
            let va_refs: Vec<&[f32]> = va.iter().map(Vec::as_slice).collect();
            accuracy[l][h] = probe_accuracy(&tr_refs, &train_y, &va_refs, &val_y, r.probe_steps);
        }
    }
    bar.inc(1);
    let mut ranked: Vec<(usize, usize)> = (0..model.n_layers()).flat_map(|l| (0..heads).map(move |h| (l, h))).collect();
    ranked.sort_by(|a, b| accuracy[b.0][b.1].total_cmp(&accuracy[a.0][a.1]).then(a.cmp(b)));
    let top: Vec<(usize, usize)> = ranked[..r.top_k].to_vec();

    // Mass-mean shifts σ·θ̂ for the top heads, and random directions with the same σ rule.
    let shifts_along = |direction: &dyn Fn(usize, usize, &[Vec<f32>]) -> Vec<f64>| -> BTreeMap<usize, Vec<f32>> {
        let mut by_layer: BTreeMap<usize, Vec<f32>> = BTreeMap::new();
        for &(l, h) in &top {
            let acts = slice(&train_acts[l], h);
            let refs: Vec<&[f32]> = acts.iter().map(Vec::as_slice).collect();
            let v = scaled_direction(&direction(l, h, &acts), &refs);
            by_layer.entry(l).or_insert_with(|| vec![0.0; width])[h * head_dim..(h + 1) * head_dim].copy_from_slice(&v);
        }
        by_layer
    };
    let mass_mean = |_: usize, _: usize, acts: &[Vec<f32>]| -> Vec<f64> {
        let mean = |want: bool| -> Vec<f64> {
            let rows: Vec<&Vec<f32>> = acts.iter().zip(&train_y).filter(|(_, y)| **y == want).map(|(x, _)| x).collect();
            (0..head_dim).map(|j| rows.iter().map(|x| x[j] as f64).sum::<f64>() / rows.len().max(1) as f64).collect()
        };
        mean(true).iter().zip(mean(false)).map(|(a, b)| a - b).collect()
    };
    let iti = shifts_along(&mass_mean);
    let controls: Vec<BTreeMap<usize, Vec<f32>>> = (0..r.random_controls)
        .map(|c| {
            let rng = std::cell::RefCell::new(Rng::new(r.seed ^ (0xC0_47_20 + c as u64)));
            shifts_along(&|_, _, _| (0..head_dim).map(|_| rng.borrow_mut().normal()).collect())
        })
        .collect();

    // The α curve on held-out prompts.
    let prompts: Vec<(Vec<u32>, u32, u32)> = test_facts.iter().map(|&i| answer_choice(tok, &all[i])).collect::<Result<Vec<_>>>()?;
    let mut topics: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
    for (row, &i) in test_facts.iter().enumerate() {
        topics.entry(all[i].topic).or_default().push(row);
    }
    let every: Vec<usize> = (0..prompts.len()).collect();
    let mut curve = Vec::new();
    for &alpha in &r.alphas {
        let shifted = true_answer_probability(model, &prompts, &iti, alpha, tok.pad_id, device)?;
        // At α = 0 every shift is zero: the controls are the model alone, already computed.
        let random = if alpha == 0.0 {
            shifted.clone()
        } else {
            let mut mean = vec![(0.0, 0.0); prompts.len()];
            for c in &controls {
                for (acc, (p, s)) in mean.iter_mut().zip(true_answer_probability(model, &prompts, c, alpha, tok.pad_id, device)?) {
                    acc.0 += p / controls.len().max(1) as f64;
                    acc.1 += s / controls.len().max(1) as f64;
                }
            }
            mean
        };
        let point = |rows: &[usize]| {
            let ((p_true, true_share), (p_true_random, true_share_random)) = (means(&shifted, rows), means(&random, rows));
            TopicPoint { n: rows.len(), p_true, true_share, p_true_random, true_share_random }
        };
        let all_rows = point(&every);
        curve.push(AlphaPoint {
            alpha,
            p_true: all_rows.p_true,
            true_share: all_rows.true_share,
            p_true_random: all_rows.p_true_random,
            true_share_random: all_rows.true_share_random,
            by_topic: topics.iter().map(|(&t, rows)| (t, point(rows))).collect(),
        });
    }
    bar.inc(1);
    bar.finish_and_clear();

    // Plots, CSVs, exports, report.
    Heatmap {
        title: &format!("{name}: validation accuracy of a probe per head (true vs false statements)"),
        rows: (0..model.n_layers()).map(|l| l.to_string()).collect(),
        columns: (0..heads).map(|h| h.to_string()).collect(),
        values: accuracy.iter().map(|row| row.iter().map(|&a| Some(a)).collect()).collect(),
        axes: ("layer", "head"),
    }
    .write(&dir.join("head-accuracy"))?;
    let mut csv = String::from("layer,head,accuracy\n");
    for (l, row) in accuracy.iter().enumerate() {
        for (h, a) in row.iter().enumerate() {
            let _ = writeln!(csv, "{l},{h},{a}");
        }
    }
    std::fs::write(dir.join("head-accuracy.csv"), csv)?;
    let mut csv = String::from("alpha,topic,prompts,p_true,true_share,p_true_random,true_share_random\n");
    for p in &curve {
        let _ = writeln!(csv, "{},all,{},{},{},{},{}", p.alpha, prompts.len(), p.p_true, p.true_share, p.p_true_random, p.true_share_random);
        for (t, x) in &p.by_topic {
            let _ = writeln!(csv, "{},{t},{},{},{},{},{}", p.alpha, x.n, x.p_true, x.true_share, x.p_true_random, x.true_share_random);
        }
    }
    std::fs::write(dir.join("alpha.csv"), csv)?;
    LinePlot {
        title: &format!("{name}: p(true answer) on held-out prompts against α"),
        axes: ("α (in σ along each head's direction)", "mean p(true answer)"),
        series: vec![
            Series { name: format!("ITI, top {} heads", r.top_k), points: curve.iter().map(|p| (p.alpha, p.p_true as f64)).collect() },
            Series { name: "random directions".into(), points: curve.iter().map(|p| (p.alpha, p.p_true_random as f64)).collect() },
        ]
        .into_iter()
        .chain(topics.keys().map(|&t| Series { name: format!("ITI, {t}"), points: curve.iter().map(|p| (p.alpha, p.by_topic[t].p_true as f64)).collect() }))
        .collect(),
    }
    .write(&dir.join("alpha"))?;
    let export_dir = dir.join("iti");
    std::fs::create_dir_all(&export_dir)?;
    for (&l, v) in &iti {
        let iv = Intervention::Steering(Steering::fixed(Tensor::<B, 1>::from_data(TensorData::new(v.clone(), [width]), device), r.export_alpha));
        let site = format!("{l}.head_attention_value_output");
        let heads_here: Vec<usize> = top.iter().filter(|(tl, _)| *tl == l).map(|(_, h)| *h).collect();
        let config = ExportConfig {
            format: 0, kind: String::new(), width: 0, hyper: Default::default(),
            placement: PlacementConfig { sites: vec![site], positions: "all".into(), site_width: width, dims: vec![], composition: Default::default() },
            model: ModelConfig { id: r.model.clone(), revision: loaded.revision.clone(), arch: model.arch().into(), hidden_size: model.width() },
            training: json!({"recipe": name, "heads": heads_here, "alpha": r.export_alpha, "rule": "mass-mean shift, sigma-scaled"}),
        };
        export::save(&iv, config, &export_dir.join(format!("layer-{l}.safetensors")))?;
    }
    let topic_counts = |ids: &[usize]| -> BTreeMap<&str, usize> {
        let mut m = BTreeMap::new();
        for &i in ids {
            *m.entry(all[i].topic).or_insert(0) += 1;
        }
        m
    };
    let report = json!({
        "recipe": name, "config": r,
        "data": {"train_facts": topic_counts(train_facts), "validation_facts": topic_counts(val_facts), "held_out_facts": topic_counts(test_facts)},
        "top_heads": top.iter().map(|&(l, h)| json!({"layer": l, "head": h, "accuracy": accuracy[l][h]})).collect::<Vec<_>>(),
        "alpha_curve": curve,
        "timings_s": {"total": started.elapsed().as_secs_f64()},
        "model": {"spec": r.model, "path": loaded.path, "revision": loaded.revision},
    });
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;

    let mut out = format!("{name}: probes on {} heads; top {} by validation accuracy:", heads * model.n_layers(), r.top_k);
    for &(l, h) in top.iter().take(8) {
        let _ = write!(out, " {l}.{h} ({:.2})", accuracy[l][h]);
    }
    let _ = writeln!(out, "\neffect of α on {} held-out prompts (mean p(true answer); p(true)/(p(true)+p(false)) in brackets):", prompts.len());
    let _ = writeln!(out, "{:>7} {:>18} {:>22}", "alpha", "ITI", "random directions");
    for p in &curve {
        let _ = writeln!(out, "{:>7} {:>9.4} ({:.3}) {:>13.4} ({:.3})", p.alpha, p.p_true, p.true_share, p.p_true_random, p.true_share_random);
    }
    let _ = writeln!(out, "by topic, mean p(true answer) with ITI / random directions:");
    let _ = writeln!(out, "{:>7} {}", "alpha", topics.iter().map(|(t, rows)| format!("{:>24}", format!("{t} ({})", rows.len()))).collect::<String>());
    for p in &curve {
        let cells: String = p.by_topic.values().map(|x| format!("{:>24}", format!("{:.4} / {:.4}", x.p_true, x.p_true_random))).collect();
        let _ = writeln!(out, "{:>7} {cells}", p.alpha);
    }
    print!("{out}");
    println!("run folder: {} ({:.0} s)", dir.display(), started.elapsed().as_secs_f64());
    Ok(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_have_distinct_true_and_false_answers() {
        let f = facts(1);
        assert_eq!(f.len(), 44 + 36 + 36 + 36);
        assert!(f.iter().all(|x| x.truth != x.falsehood));
        assert_eq!(f, facts(1), "the same seed gives the same facts");
    }

    fn recipe() -> SteerItiRecipe {
        SteerItiRecipe::from_toml(&std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../recipes/steer-iti.toml")).unwrap()).unwrap()
    }

    #[test]
    fn probed_texts_pair_one_context_as_true_and_as_false_from_the_pool_only() {
        let all = facts(1);
        let r = recipe();
        let (ids, pool): (Vec<usize>, Vec<usize>) = ((0..4).collect(), (4..60).collect());
        let texts = probed_texts(&all, &ids, &pool, &r, &mut Rng::new(5));
        assert_eq!(texts.len(), ids.len() * r.contexts_per_fact * 2);
        for (k, pair) in texts.chunks(2).enumerate() {
            let fact = &all[ids[k / r.contexts_per_fact]];
            let [(t, true), (f, false)] = pair else { panic!("true then false: {pair:?}") };
            assert!(t.ends_with(&fact.prompt) && f.ends_with(&fact.prompt), "{t:?} / {f:?}");
            // The same context facts, each with its true answer in one text and its false one in
            // the other; none of them is outside the pool (held-out answers never reach probes).
            let (ts, fs): (Vec<&str>, Vec<&str>) = (t.split(". ").collect(), f.split(". ").collect());
            assert_eq!(ts.len(), r.context_statements + 1);
            for (a, b) in ts.iter().zip(&fs).take(r.context_statements) {
                let j = pool.iter().copied().find(|&j| a.starts_with(&all[j].prompt)).unwrap_or_else(|| panic!("{a:?} is not a pool fact"));
                assert_eq!(*a, format!("{}{}", all[j].prompt, all[j].truth));
                assert_eq!(*b, format!("{}{}", all[j].prompt, all[j].falsehood));
            }
        }
        let statement = SteerItiRecipe { probe_at: ProbeAt::Statement, context_statements: 0, contexts_per_fact: 1, ..r.clone() };
        let texts = probed_texts(&all, &ids, &pool, &statement, &mut Rng::new(5));
        assert_eq!(texts[0], (format!("{}{}", all[0].prompt, all[0].truth), true));
        assert_eq!(texts[1], (format!("{}{}", all[0].prompt, all[0].falsehood), false));
        let bad = toml::to_string(&SteerItiRecipe { context_statements: 0, ..r }).unwrap();
        let err = SteerItiRecipe::from_toml(&bad).unwrap_err().to_string();
        assert!(err.contains("context_statements"), "{err}");
    }

    #[test]
    fn probe_separates_a_planted_direction_and_not_noise() {
        let mut rng = Rng::new(3);
        let sample = |rng: &mut Rng, shift: f32| -> Vec<f32> { (0..8).map(|j| rng.normal() as f32 + if j == 2 { shift } else { 0.0 }).collect() };
        let make = |rng: &mut Rng, n: usize, shift: f32| -> (Vec<Vec<f32>>, Vec<bool>) {
            (0..n).map(|i| (sample(rng, if i % 2 == 0 { shift } else { -shift }), i % 2 == 0)).unzip()
        };
        let (tr, ty) = make(&mut rng, 200, 2.0);
        let (te, ey) = make(&mut rng, 200, 2.0);
        let refs = |v: &[Vec<f32>]| -> Vec<Vec<f32>> { v.to_vec() };
        let (tr, te) = (refs(&tr), refs(&te));
        let tr_r: Vec<&[f32]> = tr.iter().map(Vec::as_slice).collect();
        let te_r: Vec<&[f32]> = te.iter().map(Vec::as_slice).collect();
        assert!(probe_accuracy(&tr_r, &ty, &te_r, &ey, 200) > 0.95);
        let (nt, ny) = make(&mut rng, 200, 0.0);
        let (ne, nyy) = make(&mut rng, 200, 0.0);
        let nt_r: Vec<&[f32]> = nt.iter().map(Vec::as_slice).collect();
        let ne_r: Vec<&[f32]> = ne.iter().map(Vec::as_slice).collect();
        let chance = probe_accuracy(&nt_r, &ny, &ne_r, &nyy, 200);
        assert!((chance - 0.5).abs() < 0.12, "noise gives {chance}");
    }

    #[test]
    fn scaled_direction_has_the_spread_of_the_projections() {
        let acts: Vec<Vec<f32>> = vec![vec![1.0, 0.0], vec![-1.0, 0.0], vec![3.0, 5.0], vec![-3.0, -5.0]];
        let refs: Vec<&[f32]> = acts.iter().map(Vec::as_slice).collect();
        let v = scaled_direction(&[2.0, 0.0], &refs);
        // Projections on x: 1, −1, 3, −3 → σ = √5.
        assert!((v[0] - 5f32.sqrt()).abs() < 1e-5 && v[1] == 0.0, "{v:?}");
    }
}
