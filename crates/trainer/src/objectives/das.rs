//! DAS at one site on counterfactual pairs, with the frozen part computed once.
//!
//! Per batch, [`prepare`] runs the frozen model once on the sources up to the site (keeping only
//! their vectors at the chosen positions) and once on the bases up to the site (a checkpoint);
//! in a causal model the positions before the first intervened one are then cached as keys and
//! values at every later block (`SharedBases::skipping_prefix`). Every step only intervenes on
//! the cached activation, goes on from the site for the positions from the first intervened
//! one, and applies the output head at the label position alone.

use anyhow::{Context, Result, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use ferrovene_data::batch::{PaddingSide, pad};
use ferrovene_data::{LabelId, TokenizedExample, TokenizedInput};
use ferrovene_interventions::{Composition, Intervene, Intervention, Placement};
use ferrovene_models::head_loss::model_nll;
use ferrovene_models::{
    Checkpoint, Input, KvCache, NoHooks, Site, Transformer, forward, gather_positions, keys_values_after, resume,
    run_to,
};

use super::batches::BatchList;
use crate::batch::{input_of, int2, last_real};
use crate::fit::Objective;

/// One batch of pairs, with the frozen model's work done.
pub struct PairBatch<B: Backend> {
    /// The base run up to the site.
    pub checkpoint: Checkpoint<B>,
    /// `[batch, k]` intervention positions in the (padded) base.
    pub base_positions: Tensor<B, 2, Int>,
    /// `[batch, k, width]` source vectors at their positions.
    pub source_vectors: Tensor<B, 3>,
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
const SHARED_RUN_ROWS: usize = 64;

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
    let sources = SharedSources::compute(model, site, &all_sources, pad_id, run_rows, device)?;
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
            source_vectors: sources.rows(range.clone()),
            label_positions: int2::<B>(&last, device),
            labels,
            base_labels: chunk.iter().map(|p| p.3).collect(),
            dims: Vec::new(),
            prefix: None,
        };
        // The first position any intervention or label of the batch touches.
        let first_touched = b.positions.iter().chain(&last).flatten().copied().min();
        out.push(match (&shared_bases, first_touched) {
            (Some(shared), Some(start)) => shared.skipping_prefix(batch, range, start),
            _ => batch,
        });
    }
    Ok(out)
}

/// The distinct inputs of a list (by `key`), and for each item the index of its distinct input:
/// what a shared run computes once and every item then selects.
struct Distinct<'a> {
    inputs: Vec<&'a TokenizedInput>,
    row_of_item: Vec<usize>,
}

impl<'a> Distinct<'a> {
    fn of<K: std::hash::Hash + Eq>(items: &[&'a TokenizedInput], key: impl Fn(&'a TokenizedInput) -> K) -> Self {
        let mut index: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
        let mut inputs = Vec::new();
        let row_of_item = items
            .iter()
            .map(|&item| {
                *index.entry(key(item)).or_insert_with(|| {
                    inputs.push(item);
                    inputs.len() - 1
                })
            })
            .collect();
        Distinct { inputs, row_of_item }
    }

    /// `[items]`: the distinct rows of items `range`, as an index tensor for `select`.
    fn rows<B: Backend>(&self, range: std::ops::Range<usize>, device: &B::Device) -> Tensor<B, 1, Int> {
        let rows: Vec<i64> = self.row_of_item[range].iter().map(|&r| r as i64).collect();
        Tensor::from_data(TensorData::new(rows.clone(), [rows.len()]), device)
    }
}

/// The source vectors of every pair, each distinct source (ids and positions) run once: pair
/// files usually draw their sources from a few prompts, each used by many pairs.
struct SharedSources<'a, B: Backend> {
    /// `[distinct sources, k, width]`.
    vectors: Tensor<B, 3>,
    distinct: Distinct<'a>,
}

impl<'a, B: Backend> SharedSources<'a, B> {
    fn compute<M: Transformer<B>>(
        model: &M,
        site: Site,
        sources: &[&'a TokenizedInput],
        pad_id: u32,
        batch_size: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let distinct = Distinct::of(sources, |s| (s.ids.as_slice(), s.positions.as_slice()));
        let chunks = distinct
            .inputs
            .chunks(batch_size)
            .map(|c| source_vectors(model, site, c, pad_id, model.causal(), device))
            .collect::<Result<Vec<_>>>()?;
        Ok(SharedSources { vectors: Tensor::cat(chunks, 0), distinct })
    }

    /// `[pairs, k, width]`: the source vectors of pairs `range`.
    fn rows(&self, range: std::ops::Range<usize>) -> Tensor<B, 3> {
        self.vectors.clone().select(0, self.distinct.rows(range, &self.vectors.device()))
    }
}

/// Every pair's base activation at the site, each distinct base (its ids) run once, stored
/// padded on the model's side to the longest base, so that a batch's rows are one `select` and
/// one `narrow` away (a batch pads on the same side, to its own longest row).
struct SharedBases<'a, B: Backend> {
    /// `[distinct bases, longest, width]`.
    activations: Tensor<B, 3>,
    /// Causal models: per layer, the distinct bases' keys and values (`[distinct, kv_heads,
    /// longest, head_dim]`) at the blocks after the site, for the batches' prefixes.
    keys_values: Option<LayerKeysValues<B>>,
    distinct: Distinct<'a>,
    side: PaddingSide,
    longest: usize,
}

type LayerKeysValues<B> = Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>;

/// `t` padded along `dim` to `len` on `side` (the padding's values are never read: attention
/// masks padded positions out).
fn pad_dim<B: Backend, const D: usize>(t: Tensor<B, D>, dim: usize, len: usize, side: PaddingSide) -> Tensor<B, D> {
    let mut shape = t.dims();
    if shape[dim] == len {
        return t;
    }
    shape[dim] = len - shape[dim];
    let zeros = Tensor::<B, D>::zeros(shape, &t.device());
    if side == PaddingSide::Left { Tensor::cat(vec![zeros, t], dim) } else { Tensor::cat(vec![t, zeros], dim) }
}

impl<'a, B: Backend> SharedBases<'a, B> {
    fn compute<M: Transformer<B>>(
        model: &M,
        site: Site,
        bases: &[&'a TokenizedInput],
        pad_id: u32,
        batch_size: usize,
        device: &B::Device,
    ) -> Result<Self> {
        let distinct = Distinct::of(bases, |b| b.ids.as_slice());
        let side = PaddingSide::for_model(model.causal());
        let longest = distinct.inputs.iter().map(|b| b.ids.len()).max().unwrap_or(0);
        let (mut activations, mut per_chunk): (Vec<Tensor<B, 3>>, Vec<LayerKeysValues<B>>) = (Vec::new(), Vec::new());
        for chunk in distinct.inputs.chunks(batch_size) {
            let b = pad(chunk, pad_id, side);
            let checkpoint = run_to(model, &input_of::<B>(&b.ids, &b.mask, device), site)
                .context("running the bases to the site")?;
            if model.causal() {
                let cache = keys_values_after(model, &checkpoint);
                per_chunk.push(
                    (0..model.n_layers())
                        .map(|l| {
                            cache.layer(l).map(|(k, v)| (pad_dim(k, 2, longest, side), pad_dim(v, 2, longest, side)))
                        })
                        .collect(),
                );
            }
            activations.push(pad_dim(checkpoint.activation, 1, longest, side));
        }
        let keys_values = model.causal().then(|| {
            (0..model.n_layers())
                .map(|l| {
                    let chunks: Option<Vec<(Tensor<B, 4>, Tensor<B, 4>)>> =
                        per_chunk.iter().map(|c| c[l].clone()).collect();
                    chunks.map(|c| {
                        let (ks, vs): (Vec<_>, Vec<_>) = c.into_iter().unzip();
                        (Tensor::cat(ks, 0), Tensor::cat(vs, 0))
                    })
                })
                .collect()
        });
        Ok(SharedBases { activations: Tensor::cat(activations, 0), keys_values, distinct, side, longest })
    }

    /// The rows of pairs `range`, and where a batch padded to `seq` starts in the stored length.
    fn rows(&self, range: std::ops::Range<usize>, seq: usize) -> (Tensor<B, 1, Int>, usize) {
        let offset = if self.side == PaddingSide::Left { self.longest - seq } else { 0 };
        (self.distinct.rows(range, &self.activations.device()), offset)
    }

    /// `[pairs, seq, width]`: the base activations of pairs `range`, as a batch padded to `seq`.
    fn assemble(&self, range: std::ops::Range<usize>, seq: usize) -> Tensor<B, 3> {
        let (rows, offset) = self.rows(range, seq);
        self.activations.clone().select(0, rows).narrow(1, offset, seq)
    }

    /// `batch` (pairs `range`) going on from `start`, the first position it touches, the keys
    /// and values of the positions before it taken from the distinct bases'. Unchanged without
    /// a prefix or for an encoder.
    fn skipping_prefix(&self, batch: PairBatch<B>, range: std::ops::Range<usize>, start: usize) -> PairBatch<B> {
        let Some(keys_values) = &self.keys_values else { return batch };
        let [_, seq] = batch.checkpoint.input.dims();
        let (rows, offset) = self.rows(range, seq);
        let take = |t: &Tensor<B, 4>| t.clone().select(0, rows.clone()).narrow(2, offset, seq);
        batch
            .skipping_prefix(start, keys_values.iter().map(|kv| kv.as_ref().map(|(k, v)| (take(k), take(v)))).collect())
    }
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

/// `[batch, k, width]`: each source's activations at its positions at `site`. With `trim` (for
/// causal models) each source is cut after its last position first: later tokens cannot change
/// what a causal model computes before them, so the vectors are the same and the run shorter.
pub fn source_vectors<B: Backend, M: Transformer<B>>(
    model: &M,
    site: Site,
    sources: &[&TokenizedInput],
    pad_id: u32,
    trim: bool,
    device: &B::Device,
) -> Result<Tensor<B, 3>> {
    let trimmed: Vec<TokenizedInput> = sources
        .iter()
        .map(|s| match s.positions.iter().max() {
            Some(&last) if trim => {
                TokenizedInput { ids: s.ids[..(last + 1).min(s.ids.len())].to_vec(), positions: s.positions.clone() }
            }
            _ => (*s).clone(),
        })
        .collect();
    let refs: Vec<&TokenizedInput> = trimmed.iter().collect();
    let s = pad(&refs, pad_id, PaddingSide::for_model(model.causal()));
    let input = input_of::<B>(&s.ids, &s.mask, device);
    let acts = run_to(model, &input, site).context("running the sources to the site")?.activation;
    Ok(gather_positions(acts, int2::<B>(&s.positions, device)))
}

/// Next-token logits at the label position (`[batch, vocab]`), from the cache: intervene on the
/// cached activation, go on from the site, apply the head at the label position only.
pub fn logits<B: Backend, M: Transformer<B>>(
    model: &M,
    batch: &PairBatch<B>,
    iv: Option<&Intervention<B>>,
) -> Result<Tensor<B, 2>> {
    let hidden = label_hidden(model, batch, iv)?;
    let logits = model.head(hidden).context("DAS on next-token labels needs a language model")?;
    let [n, _, v] = logits.dims();
    Ok(logits.reshape([n, v]))
}

/// The final hidden state at the label position (`[batch, 1, width]`), from the cache.
fn label_hidden<B: Backend, M: Transformer<B>>(
    model: &M,
    batch: &PairBatch<B>,
    iv: Option<&Intervention<B>>,
) -> Result<Tensor<B, 3>> {
    let site = batch.checkpoint.site;
    let act = match iv {
        None => batch.checkpoint.activation.clone(),
        Some(iv) => {
            let info = model.site_info(site)?;
            let placement = Placement::new(
                info,
                iv,
                batch.base_positions.clone(),
                Some(batch.source_vectors.clone()),
                batch.dims.clone(),
            )?;
            Intervene::new(vec![placement], Composition::Parallel).apply_at(site, batch.checkpoint.activation.clone())
        }
    };
    let hidden = resume(model, &batch.checkpoint, act, &mut NoHooks)?;
    Ok(gather_positions(hidden, batch.label_positions.clone()))
}

/// The same logits by the plain path: a full forward with the intervention as a hook, the head
/// on every position. Slower; used to check the cached path.
pub fn logits_plain<B: Backend, M: Transformer<B>>(
    model: &M,
    batch: &PairBatch<B>,
    iv: &Intervention<B>,
) -> Result<Tensor<B, 2>> {
    let site = batch.checkpoint.site;
    let (input, offset) = match &batch.prefix {
        Some(p) => (&p.input, p.start as i64),
        None => (&batch.checkpoint.input, 0),
    };
    let placement = Placement::new(
        model.site_info(site)?,
        iv,
        batch.base_positions.clone() + offset,
        Some(batch.source_vectors.clone()),
        batch.dims.clone(),
    )?;
    let mut hooks = Intervene::new(vec![placement], Composition::Parallel);
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
    iv: &Intervention<B>,
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
    pub fn validation_metrics(&self, iv: &Intervention<B>) -> Result<Metrics> {
        let values = parameter_values(iv);
        if let Some((seen, m)) = &*self.last_validation.borrow()
            && *seen == values
        {
            return Ok(*m);
        }
        let m = evaluate(self.model, self.validation, Some(iv))?;
        *self.last_validation.borrow_mut() = Some((values, m));
        Ok(m)
    }
}

/// Every float parameter of `iv`, flattened, in visiting order.
fn parameter_values<B: Backend>(iv: &Intervention<B>) -> Vec<Vec<f32>> {
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

impl<B: AutodiffBackend, M: Transformer<B>> Objective<B> for DasObjective<'_, B, M> {
    fn batches(&self) -> usize {
        self.train.count()
    }

    fn loss(&self, iv: &Intervention<B>, index: usize) -> Result<Tensor<B, 1>> {
        let mut ce = None;
        self.train.visit(index, &mut |batch| {
            ce = Some(loss(self.model, batch, iv)?);
            Ok(())
        })?;
        let ce = ce.context("a training batch")?;
        Ok(match iv {
            Intervention::Boundless(b) if self.boundary_penalty != 0.0 => {
                ce + b.boundary.val().sum() * self.boundary_penalty
            }
            _ => ce,
        })
    }

    fn validate(&self, iv: &Intervention<B>) -> Result<Option<(f32, f32)>> {
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
    iv: Option<&Intervention<B>>,
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
