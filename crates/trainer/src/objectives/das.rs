//! DAS on counterfactual pairs at one site or several at once, with the frozen part computed once.
//!
//! Per batch, [`prepare`] runs the frozen model once on the sources up to each site (keeping only
//! their vectors at the chosen positions) and once on the bases up to the site (a checkpoint; with
//! several sites, the one before them all, [`checkpoint_site`]);
//! in a causal model the positions before the first intervened one are then cached as keys and
//! values at every later block (`SharedBases::skipping_prefix`). Every step only intervenes on
//! the cached activation, goes on from the site for the positions from the first intervened
//! one, and applies the output head at the label position alone.

use anyhow::{Context, Result, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor};
use ferrovene_data::batch::{PaddingSide, pad};
use ferrovene_data::{LabelId, TokenizedExample, TokenizedInput};
use ferrovene_interventions::{Composition, Intervene, Intervention, Placed, checkpoint_site};
use ferrovene_models::head_loss::model_nll;
use ferrovene_models::{Checkpoint, Input, KvCache, Site, Transformer, forward, gather_positions, resume, run_to};

use super::batches::BatchList;
pub use super::das_shared::source_vectors;
use super::das_shared::{SharedBases, SharedSources};
use crate::batch::{input_of, int2, last_real};
use crate::fit::Objective;

/// One batch of pairs, with the frozen model's work done.
pub struct PairBatch<B: Backend> {
    /// The base run up to the site (with several sites, the one before them all).
    pub checkpoint: Checkpoint<B>,
    /// `[batch, k]` intervention positions in the (padded) base.
    pub base_positions: Tensor<B, 2, Int>,
    /// Per intervened site, `[batch, k, width]` source vectors at their positions.
    pub sources: Vec<(Site, Tensor<B, 3>)>,
    /// `[batch, 1]` the position whose next-token prediction is scored (the last real token).
    pub label_positions: Tensor<B, 2, Int>,
    /// `[batch]` counterfactual label tokens.
    pub labels: Vec<u32>,
    /// `[batch]` base label tokens, when every pair gives one.
    pub base_labels: Option<Vec<u32>>,
    /// The subspace of the site the intervention acts on (all dims when empty).
    pub dims: Vec<usize>,
    /// Set when the checkpoint starts after an unchanged prefix (causal models, sites between
    /// blocks).
    pub prefix: Option<Prefix<B>>,
}

/// The positions before every intervened one, which a causal model computes the same with and
/// without the intervention: their keys and values are cached once, and each step recomputes
/// only the positions from `start` on.
pub struct Prefix<B: Backend> {
    /// The first recomputed position; the batch's positions count from it.
    pub start: usize,
    /// The whole base input (for the plain path).
    pub input: Input<B>,
}

impl<B: Backend> PairBatch<B> {
    /// The batch going on from `suffix`, the checkpoint from position `start` on.
    fn starting_at(mut self, start: usize, suffix: Checkpoint<B>) -> Self {
        let full = std::mem::replace(&mut self.checkpoint, suffix);
        self.base_positions = self.base_positions - start as i64;
        self.label_positions = self.label_positions - start as i64;
        self.prefix = Some(Prefix { start, input: full.input });
        self
    }
}

/// Fewest prompts per chunk of the shared base and source runs (see [`prepare`]).
pub(super) const SHARED_RUN_ROWS: usize = 64;

/// One pair's parts, checked once: base, source, label, base label.
type PairParts<'a> = (&'a TokenizedInput, &'a TokenizedInput, u32, Option<u32>);

fn pair_parts<'a>(ex: &'a TokenizedExample) -> Result<PairParts<'a>> {
    let TokenizedExample::Pair { base, sources, base_label, label } = ex else {
        bail!("DAS needs counterfactual pairs, got another kind of example")
    };
    let [src] = sources.as_slice() else { bail!("this trainer takes one source per pair ({} given)", sources.len()) };
    let LabelId::Token(l) = label else { bail!("DAS needs a text label (a continuation), not a class") };
    Ok((
        base,
        src,
        *l,
        match base_label {
            Some(LabelId::Token(t)) => Some(*t),
            _ => None,
        },
    ))
}

/// Prepares batches of pairs (one source each) for `site`, computing the frozen parts once.
pub fn prepare<B: Backend, M: Transformer<B>>(
    model: &M,
    site: Site,
    pairs: &[&TokenizedExample],
    pad_id: u32,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<PairBatch<B>>> {
    prepare_at(model, &[site], pairs, pad_id, batch_size, device)
}

/// Prepares batches of pairs for interventions at every site of `sites` at once: the bases run
/// to the site before them all, the sources to each site.
pub fn prepare_at<B: Backend, M: Transformer<B>>(
    model: &M,
    sites: &[Site],
    pairs: &[&TokenizedExample],
    pad_id: u32,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<PairBatch<B>>> {
    for &s in sites {
        model.site_info(s)?;
    }
    let site = checkpoint_site(sites).context("DAS needs at least one site")?;
    model.site_info(site)?;
    let parts: Vec<PairParts<'_>> = pairs.iter().map(|ex| pair_parts(ex)).collect::<Result<_>>()?;
    if parts.is_empty() {
        return Ok(Vec::new());
    }
    let side = PaddingSide::for_model(model.causal());
    let bs = batch_size.max(1);
    let all_sources: Vec<&TokenizedInput> = parts.iter().map(|p| p.1).collect();
    // The shared runs go in chunks of at least `SHARED_RUN_ROWS` prompts: a matrix product of
    // more rows reads the frozen weights fewer times per prompt.
    let run_rows = bs.max(SHARED_RUN_ROWS);
    let sources = sites
        .iter()
        .map(|&s| Ok((s, SharedSources::compute(model, s, &all_sources, pad_id, run_rows, device)?)))
        .collect::<Result<Vec<_>>>()?;
    // Bases are shared the same way where the checkpoint is the activation alone (a site between
    // blocks); a site inside a block also keeps the block's input, so its batches run their own.
    let between_blocks = site.next_block().is_some();
    let all_bases: Vec<&TokenizedInput> = parts.iter().map(|p| p.0).collect();
    let shared_bases = if between_blocks {
        Some(SharedBases::compute(model, site, &all_bases, pad_id, run_rows, device)?)
    } else {
        None
    };
    let mut out = Vec::new();
    for (c, chunk) in parts.chunks(bs).enumerate() {
        let range = c * bs..c * bs + chunk.len();
        let b = pad(&all_bases[range.clone()], pad_id, side);
        let base_input = input_of::<B>(&b.ids, &b.mask, device);
        let last = last_real(&b.mask);
        let checkpoint = match &shared_bases {
            Some(shared) => Checkpoint {
                site,
                activation: shared.assemble(range.clone(), b.ids[0].len()),
                block_input: None,
                input: base_input,
            },
            None => run_to(model, &base_input, site).context("running the bases to the site")?,
        };
        let labels: Vec<u32> = chunk.iter().map(|p| p.2).collect();
        let batch = PairBatch {
            checkpoint,
            base_positions: int2::<B>(&b.positions, device),
            sources: sources.iter().map(|(s, shared)| (*s, shared.rows(range.clone()))).collect(),
            label_positions: int2::<B>(&last, device),
            labels,
            base_labels: chunk.iter().map(|p| p.3).collect(),
            dims: Vec::new(),
            prefix: None,
        };
        // The first position any intervention or label of the batch touches.
        let first_touched = b.positions.iter().chain(&last).flatten().copied().min();
        out.push(match (&shared_bases, first_touched) {
            (Some(shared), Some(start)) => {
                let seq = b.ids[0].len();
                match shared.keys_values_of(range, seq) {
                    Some(kv) => batch.skipping_prefix(start, kv),
                    None => batch,
                }
            }
            _ => batch,
        });
    }
    Ok(out)
}

impl<B: Backend> PairBatch<B> {
    /// The batch going on from position `start` (the first one any intervention or label of the
    /// batch touches), given the frozen run's keys and values of its rows at every block after
    /// the site (`[batch, kv_heads, seq, head_dim]`, `None` for the other blocks): each step then
    /// recomputes only the positions from `start` on. Unchanged when `start` is 0 or past the end.
    pub fn skipping_prefix(self, start: usize, keys_values: Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>) -> Self {
        let input = &self.checkpoint.input;
        let [_, seq] = input.dims();
        if start == 0 || start >= seq {
            return self;
        }
        let per_layer =
            keys_values.into_iter().map(|kv| kv.map(|(k, v)| (k.narrow(2, 0, start), v.narrow(2, 0, start)))).collect();
        let rest = seq - start;
        let cache = KvCache::from_parts(per_layer, input.mask.clone().narrow(1, 0, start));
        let suffix_input = Input {
            ids: input.ids.clone().narrow(1, start, rest),
            mask: input.mask.clone().narrow(1, start, rest),
            token_types: None,
            past: Some(cache),
        };
        let suffix = Checkpoint {
            site: self.checkpoint.site,
            activation: self.checkpoint.activation.clone().narrow(1, start, rest),
            block_input: None,
            input: suffix_input,
        };
        self.starting_at(start, suffix)
    }
}

/// Next-token logits at the label position (`[batch, vocab]`), from the cache: intervene on the
/// cached activation, go on from the site, apply the head at the label position only.
pub fn logits<B: Backend, M: Transformer<B>>(
    model: &M,
    batch: &PairBatch<B>,
    iv: Option<&dyn Placed<B>>,
) -> Result<Tensor<B, 2>> {
    let hidden = label_hidden(model, batch, iv)?;
    let logits = model.head(hidden).context("DAS on next-token labels needs a language model")?;
    let [n, _, v] = logits.dims();
    Ok(logits.reshape([n, v]))
}

/// The final hidden state at the label position (`[batch, 1, width]`), from the cache: the
/// placements at the checkpoint's site act on its activation, the others as hooks on the way on.
fn label_hidden<B: Backend, M: Transformer<B>>(
    model: &M,
    batch: &PairBatch<B>,
    iv: Option<&dyn Placed<B>>,
) -> Result<Tensor<B, 3>> {
    let site = batch.checkpoint.site;
    let placements = match iv {
        None => Vec::new(),
        Some(iv) => {
            iv.placements(site, &|s| Ok(model.site_info(s)?), &batch.base_positions, &batch.sources, &batch.dims)?
        }
    };
    let mut hooks = Intervene::new(placements, Composition::Parallel);
    let act = hooks.apply_at(site, batch.checkpoint.activation.clone());
    let hidden = resume(model, &batch.checkpoint, act, &mut hooks)?;
    Ok(gather_positions(hidden, batch.label_positions.clone()))
}

/// The same logits by the plain path: a full forward with the intervention as a hook, the head
/// on every position. Slower; used to check the cached path.
pub fn logits_plain<B: Backend, M: Transformer<B>>(
    model: &M,
    batch: &PairBatch<B>,
    iv: &dyn Placed<B>,
) -> Result<Tensor<B, 2>> {
    let site = batch.checkpoint.site;
    let (input, offset) = match &batch.prefix {
        Some(p) => (&p.input, p.start as i64),
        None => (&batch.checkpoint.input, 0),
    };
    let placements = iv.placements(
        site,
        &|s| Ok(model.site_info(s)?),
        &(batch.base_positions.clone() + offset),
        &batch.sources,
        &batch.dims,
    )?;
    let mut hooks = Intervene::new(placements, Composition::Parallel);
    let all = model.head(forward(model, input, &mut hooks)).context("a language model")?;
    let at = gather_positions(all, batch.label_positions.clone() + offset);
    let [n, _, v] = at.dims();
    Ok(at.reshape([n, v]))
}

/// The counterfactual cross-entropy of one batch at the label position (mean over pairs), taken
/// at the head without the logits where it can be ([`ferrovene_models::head_loss`]).
pub fn loss<B: Backend, M: Transformer<B>>(
    model: &M,
    batch: &PairBatch<B>,
    iv: &dyn Placed<B>,
) -> Result<Tensor<B, 1>> {
    let hidden = label_hidden(model, batch, Some(iv))?;
    let [n, _, width] = hidden.dims();
    let labels: Vec<usize> = batch.labels.iter().map(|&l| l as usize).collect();
    let nll = model_nll(model, hidden.reshape([n, width]), &labels)
        .context("DAS on next-token labels needs a language model")?;
    Ok(nll.mean())
}

/// DAS as a training objective: counterfactual cross-entropy on the training batches (plus
/// Boundless DAS's boundary penalty `λ·β`), IIA and loss on the validation batches.
pub struct DasObjective<'a, B: Backend, M: Transformer<B>> {
    /// The frozen model.
    pub model: &'a M,
    /// Training batches.
    pub train: &'a dyn BatchList<PairBatch<B>>,
    /// Validation batches (may be empty).
    pub validation: &'a dyn BatchList<PairBatch<B>>,
    /// Weight λ of the boundary penalty (Boundless DAS only).
    pub boundary_penalty: f64,
    /// The last validation's metrics, under the parameter values they were measured with.
    last_validation: std::cell::RefCell<Option<(Vec<Vec<f32>>, Metrics)>>,
}

impl<'a, B: Backend, M: Transformer<B>> DasObjective<'a, B, M> {
    /// The objective on `train`, validated on `validation`.
    pub fn new(
        model: &'a M,
        train: &'a dyn BatchList<PairBatch<B>>,
        validation: &'a dyn BatchList<PairBatch<B>>,
        boundary_penalty: f64,
    ) -> Self {
        DasObjective { model, train, validation, boundary_penalty, last_validation: Default::default() }
    }

    /// The metrics of `iv` on the validation batches: the last validation's when it measured
    /// these very parameter values (the final validation of a run whose held-out examples also
    /// validate), else evaluated now.
    pub fn validation_metrics<P: Placed<B> + burn::module::Module<B>>(&self, iv: &P) -> Result<Metrics> {
        let values = parameter_values(iv);
        if let Some((seen, m)) = &*self.last_validation.borrow()
            && *seen == values
        {
            return Ok(*m);
        }
        let m = evaluate(self.model, self.validation, Some(iv as &dyn Placed<B>))?;
        *self.last_validation.borrow_mut() = Some((values, m));
        Ok(m)
    }
}

/// Every float parameter of `iv`, flattened, in visiting order.
fn parameter_values<B: Backend, P: burn::module::Module<B>>(iv: &P) -> Vec<Vec<f32>> {
    struct Values(Vec<Vec<f32>>);
    impl<B: Backend> burn::module::ModuleVisitor<B> for Values {
        fn visit_float<const D: usize>(&mut self, param: &burn::module::Param<Tensor<B, D>>) {
            self.0.push(param.val().into_data().convert::<f32>().to_vec().unwrap_or_default());
        }
    }
    let mut v = Values(Vec::new());
    burn::module::Module::visit(iv, &mut v);
    v.0
}

impl<B, M, P> Objective<B, P> for DasObjective<'_, B, M>
where
    B: AutodiffBackend,
    M: Transformer<B>,
    P: Placed<B> + burn::module::Module<B>,
{
    fn batches(&self) -> usize {
        self.train.count()
    }

    fn loss(&self, iv: &P, index: usize) -> Result<Tensor<B, 1>> {
        let mut ce = None;
        self.train.visit(index, &mut |batch| {
            ce = Some(loss(self.model, batch, iv)?);
            Ok(())
        })?;
        let mut total = ce.context("a training batch")?;
        if self.boundary_penalty != 0.0 {
            // Boundless DAS's penalty λ·β, on every boundary of the set.
            for member in iv.members() {
                if let Intervention::Boundless(b) = member {
                    total = total + b.boundary.val().sum() * self.boundary_penalty;
                }
            }
        }
        Ok(total)
    }

    fn validate(&self, iv: &P) -> Result<Option<(f32, f32)>> {
        if self.validation.count() == 0 {
            return Ok(None);
        }
        let m = self.validation_metrics(iv)?;
        Ok(Some((m.loss, m.iia)))
    }
}

/// Evaluation results.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Metrics {
    /// Share of pairs whose argmax is the counterfactual label.
    pub iia: f32,
    /// Share of pairs with p(counterfactual label) > p(base label), when base labels are given.
    pub label_beats_base: Option<f32>,
    /// Share of pairs whose argmax is the base label (without intervention: the model's accuracy
    /// on the task, which must be high before alignment means anything).
    pub base_label_accuracy: Option<f32>,
    /// Mean of log p(counterfactual label) − log p(base label), when base labels are given.
    pub mean_log_odds: Option<f32>,
    /// Mean cross-entropy of the counterfactual label.
    pub loss: f32,
    /// Number of pairs.
    pub n: usize,
}

/// IIA, the p(label) > p(base label) variant, mean log-odds and loss with `iv`, or without any
/// intervention.
pub fn evaluate<B: Backend, M: Transformer<B>>(
    model: &M,
    batches: &dyn BatchList<PairBatch<B>>,
    iv: Option<&dyn Placed<B>>,
) -> Result<Metrics> {
    let (mut hits, mut beats, mut base_hits, mut n, mut with_base) = (0usize, 0usize, 0usize, 0usize, true);
    let (mut log_odds, mut nll) = (0f64, 0f64);
    for index in 0..batches.count() {
        batches.visit(index, &mut |batch| {
            let l = logits(model, batch, iv)?;
            let v = l.dims()[1];
            let values: Vec<f32> =
                l.into_data().convert::<f32>().to_vec().map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
            for (row, &label) in batch.labels.iter().enumerate() {
                let r = &values[row * v..(row + 1) * v];
                let argmax = r.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
                let max = r[argmax] as f64;
                let log_z = max + r.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
                nll += log_z - r[label as usize] as f64;
                hits += (argmax == label as usize) as usize;
                match &batch.base_labels {
                    Some(bl) => {
                        beats += (r[label as usize] > r[bl[row] as usize]) as usize;
                        base_hits += (argmax == bl[row] as usize) as usize;
                        log_odds += r[label as usize] as f64 - r[bl[row] as usize] as f64;
                    }
                    None => with_base = false,
                }
                n += 1;
            }
            Ok(())
        })?;
    }
    let share = |k: usize| k as f32 / n.max(1) as f32;
    Ok(Metrics {
        iia: share(hits),
        label_beats_base: with_base.then(|| share(beats)),
        base_label_accuracy: with_base.then(|| share(base_hits)),
        mean_log_odds: with_base.then(|| (log_odds / n.max(1) as f64) as f32),
        loss: (nll / n.max(1) as f64) as f32,
        n,
    })
}
