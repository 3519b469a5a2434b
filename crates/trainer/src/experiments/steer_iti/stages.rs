//! The stages of a steer-iti run: the facts split, a probe per head, the shifts on the top
//! heads, and the α curve on held-out prompts.

use std::collections::BTreeMap;

use anyhow::{Result, bail};
use burn::tensor::backend::Backend;
use ferrovene_models::rng::Rng;
use ferrovene_models::{Component, Site, TextTokenizer, Transformer};
use serde::Serialize;

use super::facts::{self, Fact, facts, probed_texts};
use super::heads::{self, scaled_direction};
use super::recipe::SteerItiRecipe;
use crate::objectives::probe::logistic_regression_accuracy;

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

/// The facts split by fact: train (probes, directions), validation (head ranking) and held-out
/// (the α curve).
pub struct FactSplit {
    /// Every fact.
    pub all: Vec<Fact>,
    /// Indices of the held-out facts.
    pub test: Vec<usize>,
    /// Indices of the validation facts.
    pub validation: Vec<usize>,
    /// Indices of the training facts.
    pub train: Vec<usize>,
}

pub fn split_facts(r: &SteerItiRecipe) -> Result<FactSplit> {
    let all = facts(r.seed);
    let mut order: Vec<usize> = (0..all.len()).collect();
    Rng::new(r.seed ^ 0x5EED).shuffle(&mut order);
    let n_test = (all.len() as f64 * r.held_out_fraction).round() as usize;
    let n_val = (all.len() as f64 * r.validation_fraction).round() as usize;
    let (test, rest) = order.split_at(n_test);
    let (validation, train) = rest.split_at(n_val);
    if r.context_statements >= train.len() {
        bail!(
            "`context_statements = {}` needs more training facts than the {} left by the held-out and validation fractions",
            r.context_statements,
            train.len()
        );
    }
    Ok(FactSplit { test: test.to_vec(), validation: validation.to_vec(), train: train.to_vec(), all })
}

/// What the probes found: per layer and head, the validation accuracy; the top-K heads; and the
/// training texts' head outputs and labels (for the directions).
pub struct Probes {
    /// `[layer][head]` validation accuracy.
    pub accuracy: Vec<Vec<f32>>,
    /// The K most accurate heads, `(layer, head)`.
    pub top: Vec<(usize, usize)>,
    /// `[layer][text][width]` head outputs of the training texts.
    pub train_acts: Vec<Vec<Vec<f32>>>,
    /// Labels of the training texts (true statements before).
    pub train_y: Vec<bool>,
    /// Heads per layer.
    pub heads: usize,
    /// Width of one head.
    pub head_dim: usize,
}

impl Probes {
    /// One head's slice of each text's head outputs.
    fn slice(&self, acts: &[Vec<f32>], h: usize) -> Vec<Vec<f32>> {
        acts.iter().map(|x| x[h * self.head_dim..(h + 1) * self.head_dim].to_vec()).collect()
    }
}

/// Reads every head on the probed texts of the training and validation facts, fits a probe per
/// head and ranks the heads. Each train or validation fact gives, per context drawn, two texts:
/// one after true statements (label true), one after the same statements made false (label
/// false). Context statements come from other training facts, so held-out answers never reach
/// the probes.
pub fn probe_heads<B: Backend, M: Transformer<B>>(
    r: &SteerItiRecipe,
    model: &M,
    tok: &TextTokenizer,
    split: &FactSplit,
    device: &B::Device,
) -> Result<Probes> {
    let info = model.site_info(Site::new(0, Component::HeadAttentionValueOutput))?;
    let (heads, layers) = (info.heads, model.n_layers());
    let mut context_rng = Rng::new(r.seed ^ 0xC0_47_E7);
    let mut statements = |ids: &[usize]| -> Result<(Vec<Vec<u32>>, Vec<bool>)> {
        let texts = probed_texts(&split.all, ids, &split.train, r, &mut context_rng);
        Ok((
            texts.iter().map(|(t, _)| tok.encode(t)).collect::<Result<_, _>>()?,
            texts.iter().map(|(_, y)| *y).collect(),
        ))
    };
    let (train_rows, train_y) = statements(&split.train)?;
    let (val_rows, val_y) = statements(&split.validation)?;
    let train_acts = heads::head_outputs(model, &train_rows, tok.pad_id, device)?;
    let val_acts = heads::head_outputs(model, &val_rows, tok.pad_id, device)?;
    let mut probes = Probes {
        accuracy: vec![vec![0f32; heads]; layers],
        top: Vec::new(),
        train_acts,
        train_y,
        heads,
        head_dim: info.width / heads,
    };
    // `l` picks the same layer from two lists (training and validation activations).
    #[allow(clippy::needless_range_loop)]
    for l in 0..layers {
        for h in 0..heads {
            let (tr, va) = (probes.slice(&probes.train_acts[l], h), probes.slice(&val_acts[l], h));
            let tr_refs: Vec<&[f32]> = tr.iter().map(Vec::as_slice).collect();
            let va_refs: Vec<&[f32]> = va.iter().map(Vec::as_slice).collect();
            probes.accuracy[l][h] =
                logistic_regression_accuracy(&tr_refs, &probes.train_y, &va_refs, &val_y, r.probe_c)?;
        }
    }
    let accuracy = &probes.accuracy;
    let mut ranked: Vec<(usize, usize)> = (0..layers).flat_map(|l| (0..heads).map(move |h| (l, h))).collect();
    ranked.sort_by(|a, b| accuracy[b.0][b.1].total_cmp(&accuracy[a.0][a.1]).then(a.cmp(b)));
    probes.top = ranked[..r.top_k].to_vec();
    Ok(probes)
}

/// Per layer, `[width]` shifts `σ·θ̂` on the top heads (zero elsewhere) along `direction(acts)`.
pub type Shifts = BTreeMap<usize, Vec<f32>>;

/// The shifts along `direction(acts)` on the top heads.
fn shifts_along(p: &Probes, width: usize, direction: &dyn Fn(&[Vec<f32>]) -> Vec<f64>) -> Shifts {
    let mut by_layer: Shifts = BTreeMap::new();
    for &(l, h) in &p.top {
        let acts = p.slice(&p.train_acts[l], h);
        let refs: Vec<&[f32]> = acts.iter().map(Vec::as_slice).collect();
        let v = scaled_direction(&direction(&acts), &refs);
        by_layer.entry(l).or_insert_with(|| vec![0.0; width])[h * p.head_dim..(h + 1) * p.head_dim].copy_from_slice(&v);
    }
    by_layer
}

/// The mass-mean shifts (ITI's) and the random-direction controls (same σ rule).
pub fn shifts(r: &SteerItiRecipe, p: &Probes, width: usize) -> (Shifts, Vec<Shifts>) {
    let mass_mean = |acts: &[Vec<f32>]| -> Vec<f64> {
        let mean = |want: bool| -> Vec<f64> {
            let rows: Vec<&Vec<f32>> =
                acts.iter().zip(&p.train_y).filter(|(_, y)| **y == want).map(|(x, _)| x).collect();
            (0..p.head_dim).map(|j| rows.iter().map(|x| x[j] as f64).sum::<f64>() / rows.len().max(1) as f64).collect()
        };
        mean(true).iter().zip(mean(false)).map(|(a, b)| a - b).collect()
    };
    let iti = shifts_along(p, width, &mass_mean);
    let controls = (0..r.random_controls)
        .map(|c| {
            let rng = std::cell::RefCell::new(Rng::new(r.seed ^ (0xC0_47_20 + c as u64)));
            shifts_along(p, width, &|_| (0..p.head_dim).map(|_| rng.borrow_mut().normal()).collect())
        })
        .collect();
    (iti, controls)
}

/// The α curve on the held-out prompts: mean p(true answer) and true share with the ITI shift
/// and with random directions, overall and per topic.
pub struct Curve {
    /// One point per α.
    pub points: Vec<AlphaPoint>,
    /// Per topic, the rows of its held-out prompts.
    pub topics: BTreeMap<&'static str, Vec<usize>>,
    /// Held-out prompts.
    pub n_prompts: usize,
}

pub fn alpha_curve<B: Backend, M: Transformer<B>>(
    r: &SteerItiRecipe,
    model: &M,
    tok: &TextTokenizer,
    split: &FactSplit,
    (iti, controls): (&Shifts, &[Shifts]),
    device: &B::Device,
) -> Result<Curve> {
    let prompts: Vec<(Vec<u32>, u32, u32)> =
        split.test.iter().map(|&i| facts::answer_choice(tok, &split.all[i])).collect::<Result<Vec<_>>>()?;
    let mut topics: BTreeMap<&'static str, Vec<usize>> = BTreeMap::new();
    for (row, &i) in split.test.iter().enumerate() {
        topics.entry(split.all[i].topic).or_default().push(row);
    }
    let every: Vec<usize> = (0..prompts.len()).collect();
    let probability = |shifts: &Shifts, alpha: f64| {
        heads::true_answer_probability(model, &prompts, shifts, alpha, tok.pad_id, device)
    };
    let mut points = Vec::new();
    for &alpha in &r.alphas {
        let shifted = probability(iti, alpha)?;
        // At α = 0 every shift is zero: the controls are the model alone, already computed.
        let random = if alpha == 0.0 {
            shifted.clone()
        } else {
            let mut mean = vec![(0.0, 0.0); prompts.len()];
            for c in controls {
                for (acc, (p, s)) in mean.iter_mut().zip(probability(c, alpha)?) {
                    acc.0 += p / controls.len().max(1) as f64;
                    acc.1 += s / controls.len().max(1) as f64;
                }
            }
            mean
        };
        let point = |rows: &[usize]| {
            let ((p_true, true_share), (p_true_random, true_share_random)) =
                (means(&shifted, rows), means(&random, rows));
            TopicPoint { n: rows.len(), p_true, true_share, p_true_random, true_share_random }
        };
        let all = point(&every);
        let by_topic = topics.iter().map(|(&t, rows)| (t, point(rows))).collect();
        points.push(AlphaPoint {
            alpha,
            p_true: all.p_true,
            true_share: all.true_share,
            p_true_random: all.p_true_random,
            true_share_random: all.true_share_random,
            by_topic,
        });
    }
    Ok(Curve { points, topics, n_prompts: prompts.len() })
}
