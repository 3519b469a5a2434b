//! Every method at the sites of one layer (its `block_output` at each region) of one task, from
//! the cached activations: DAS trained on the task and, apart, on the control task; the fitted
//! directions from the training bases' activations; each applied as a one-dimensional
//! interchange and scored on the test pairs (IIA and log odds-ratio, task and control). The DAS
//! trainings of a layer share their forwards, and so do the evaluations ([`super::stack`]).

use anyhow::Result;
use burn::module::Module;
use burn::tensor::backend::AutodiffBackend;
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::directions::{self, interchange_along};
use ferrovene_interventions::fixed::{Fixed, FixedOp};
use ferrovene_interventions::{Intervention, Orthogonal};
use ferrovene_models::Transformer;
use ferrovene_models::rng::Rng;
use serde::{Deserialize, Serialize};

use super::cache::{Cached, Labels, rows4};
use super::stack::{Stack, Stacked, StackedDas, logits, repeat};
use crate::fit::{FitConfig, FitIo, fit};
use crate::objectives::odds::log_odds_ratio;
use crate::schedule::Decay;

/// A method's numbers on one label set, over the test pairs.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Score {
    /// Share of pairs with p(source label) > p(base label) after the intervention.
    pub iia: f32,
    /// Mean log odds-ratio (nats).
    pub odds: f32,
}

/// One method at one site: on the task, on the control task, and the difference (selectivity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MethodScore {
    /// The method's name.
    pub method: String,
    /// On the task (`on_task` in JSON: a [`super::Row`] flattens this beside its own `task`,
    /// the task's name, and one object must not hold a key twice).
    #[serde(rename = "on_task")]
    pub task: Score,
    /// On the control task.
    pub control: Score,
}

impl MethodScore {
    /// Task minus control: Hewitt & Liang's selectivity, of the IIA and of the odds-ratio.
    pub fn selectivity(&self) -> Score {
        Score { iia: self.task.iia - self.control.iia, odds: self.task.odds - self.control.odds }
    }
}

/// How DAS trains at a site (CausalGym: rank 1, batch 4, one epoch of 400 pairs, 5e-3).
#[derive(Debug, Clone, Copy)]
pub struct DasSettings {
    /// Pairs per batch.
    pub batch_size: usize,
    /// Epochs over the training batches.
    pub epochs: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Share of steps of linear warmup, then linear decay.
    pub warmup: f64,
    /// Seed of the initialisation and the batch order.
    pub seed: u64,
}

/// The methods a sweep runs at every site.
#[derive(Debug, Clone)]
pub struct Methods {
    /// DAS, when asked, and how it trains.
    pub das: Option<DasSettings>,
    /// The whole vector interchanged (`vanilla`).
    pub vanilla: bool,
    /// The fitted directions, in order.
    pub fitted: Vec<directions::Method>,
    /// Seed of the random direction (and of k-means' start).
    pub seed: u64,
}

/// Trains rank-1 DAS at `layer` for every block (region number, labels) together, on one batch
/// order (batches of `s.batch_size` pairs); each block's rotation starts from its own seed.
/// Returns one intervention per block.
pub fn train_das<B: AutodiffBackend, M: Transformer<B>>(
    model: &M,
    train: &[Cached<B>],
    layer: usize,
    blocks: &[(usize, Labels)],
    s: DasSettings,
    device: &B::Device,
) -> Result<Vec<Intervention<B>>> {
    let bs = s.batch_size.max(1);
    let mut stacks: Vec<Stack<B>> = Vec::new();
    for c in train {
        for from in (0..c.len()).step_by(bs) {
            stacks.push(c.stack(layer, blocks, from..(from + bs).min(c.len()), device)?);
        }
    }
    let ivs = blocks
        .iter()
        .map(|&(region, labels)| {
            let seed =
                s.seed ^ ((layer as u64) << 8) ^ ((region as u64) << 16) ^ (((labels == Labels::Control) as u64) << 24);
            Intervention::DasLowRank(DasLowRank {
                rotation: Orthogonal::random(1, model.width(), &mut Rng::new(seed), device),
            })
        })
        .collect();
    let cfg = FitConfig { warmup: s.warmup, decay: Decay::Linear, ..FitConfig::constant(s.epochs, s.lr, s.seed, true) };
    Ok(fit(&StackedDas { model, stacks: &stacks }, Stacked { ivs }, &cfg, FitIo::default())?.module.ivs)
}

/// The scores of each block's intervention (at its region number) on the test pairs, on the
/// task's labels and on the control's (one intervened run serves both: only the scored
/// continuations differ). All blocks run in one forward per test batch.
pub fn evaluate<B: AutodiffBackend, M: Transformer<B>>(
    model: &M,
    test: &[Cached<B>],
    layer: usize,
    blocks: &[(usize, Intervention<B>)],
    device: &B::Device,
) -> Result<Vec<(Score, Score)>> {
    let spec: Vec<(usize, Labels)> = blocks.iter().map(|(r, _)| (*r, Labels::Task)).collect();
    let ivs: Vec<Intervention<B>> = blocks.iter().map(|(_, iv)| iv.clone().no_grad()).collect();
    let mut sums = vec![[0f64; 4]; blocks.len()];
    let mut n = 0usize;
    for c in test {
        let stack = c.stack(layer, &spec, 0..c.len(), device)?;
        let scored = repeat(c.scored_ids(device), blocks.len());
        let picked = rows4(logits(model, &stack, &ivs)?.gather(1, scored))?;
        for (row, after) in picked.iter().enumerate() {
            let (k, before) = (row / stack.rows, &c.plain()[row % stack.rows]);
            sums[k][0] += (after[0] > after[1]) as u8 as f64;
            sums[k][1] += log_odds_ratio(before, after, 0, 1);
            sums[k][2] += (after[2] > after[3]) as u8 as f64;
            sums[k][3] += log_odds_ratio(before, after, 2, 3);
        }
        n += stack.rows;
    }
    let mean = |s: f64| (s / n.max(1) as f64) as f32;
    Ok(sums
        .iter()
        .map(|s| (Score { iia: mean(s[0]), odds: mean(s[1]) }, Score { iia: mean(s[2]), odds: mean(s[3]) }))
        .collect())
}

/// Every asked method at every region (numbers `regions`) of `layer` ([`score_site`]). Returns
/// (region number, score) in region order, methods in `methods`' order.
pub fn score_layer<B: AutodiffBackend, M: Transformer<B>>(
    model: &M,
    train: &[Cached<B>],
    test: &[Cached<B>],
    layer: usize,
    regions: &[usize],
    methods: &Methods,
    device: &B::Device,
) -> Result<Vec<(usize, MethodScore)>> {
    let mut out: Vec<(usize, MethodScore)> = Vec::new();
    for &r in regions {
        out.extend(score_site(model, train, test, layer, r, methods, device)?.into_iter().map(|s| (r, s)));
    }
    Ok(out)
}

/// Every asked method at one site (`layer`, region number `region`), DAS's task and control
/// trainings in one stack and every method's evaluation in another: the rows of one site start
/// at the same position, so nothing before it is recomputed.
pub fn score_site<B: AutodiffBackend, M: Transformer<B>>(
    model: &M,
    train: &[Cached<B>],
    test: &[Cached<B>],
    layer: usize,
    region: usize,
    methods: &Methods,
    device: &B::Device,
) -> Result<Vec<MethodScore>> {
    let (r, mut blocks, mut names) = (region, Vec::new(), Vec::new());
    if let Some(s) = methods.das {
        blocks.extend(
            train_das(model, train, layer, &[(r, Labels::Task), (r, Labels::Control)], s, device)?
                .into_iter()
                .map(|iv| (r, iv)),
        );
        names.extend(["das", "das"]);
    }
    if methods.vanilla {
        blocks.push((r, Intervention::Fixed(Fixed::new(FixedOp::Interchange))));
        names.push("vanilla");
    }
    if !methods.fitted.is_empty() {
        let (mut xs, mut ys) = (Vec::new(), Vec::new());
        for c in train {
            let (x, y) = c.class_vectors(layer, r, device)?;
            xs.extend(x);
            ys.extend(y);
        }
        let seed = methods.seed ^ ((layer as u64) << 8) ^ ((r as u64) << 16);
        for &m in &methods.fitted {
            let u =
                directions::fit(m, &xs, &ys, seed).map_err(|e| anyhow::anyhow!("layer {layer}, region {r}: {e}"))?;
            blocks.push((r, interchange_along::<B>(&u, device)));
            names.push(m.name());
        }
    }
    let scores = evaluate(model, test, layer, &blocks, device)?;
    let mut out: Vec<MethodScore> = Vec::new();
    for (k, (name, (task, control))) in names.into_iter().zip(scores).enumerate() {
        // DAS's two blocks: the task-trained one's task score, the control-trained one's control score.
        if methods.das.is_some() && k == 1 {
            out[0].control = control;
        } else {
            out.push(MethodScore { method: name.into(), task, control });
        }
    }
    Ok(out)
}
