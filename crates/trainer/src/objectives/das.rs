//! DAS at one site on counterfactual pairs, with the frozen part computed once.
//!
//! Per batch, [`prepare`] runs the frozen model once on the sources up to the site (keeping only
//! their vectors at the chosen positions) and once on the bases up to the site (a checkpoint);
//! in a causal model the positions before the first intervened one are then cached as keys and
//! values at every later block (`SharedBases::skipping_prefix`). Every step only intervenes on
//! the cached activation, goes on from the site for the positions from the first intervened
//! one, and applies the output head at the label position alone.

use anyhow::{bail, Context, Result};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{loss::cross_entropy_with_logits, Int, Tensor, TensorData};
use ferrovene_data::batch::{pad, PaddingSide};
use ferrovene_data::{LabelId, TokenizedExample, TokenizedInput};
use ferrovene_interventions::{Composition, Intervene, Intervention, Placement};
use ferrovene_models::{forward, gather_positions, keys_values_after, resume, run_to, Checkpoint, Component, Input, KvCache, NoHooks, Site, Transformer};

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
    /// The first position any intervention or label of the batch touches.
    fn first_touched(&self) -> Option<usize> {
        let ints = |t: &Tensor<B, 2, Int>| t.clone().into_data().convert::<i64>().to_vec::<i64>().unwrap_or_default();
        ints(&self.base_positions).into_iter().chain(ints(&self.label_positions)).min().map(|p| p.max(0) as usize)
    }

    /// The batch going on from `suffix`, the checkpoint from position `start` on.
    fn starting_at(mut self, start: usize, suffix: Checkpoint<B>) -> Self {
        let full = std::mem::replace(&mut self.checkpoint, suffix);
        self.base_positions = self.base_positions - start as i64;
        self.label_positions = self.label_positions - start as i64;
        self.prefix = Some(Prefix { start, input: full.input });
        self
    }
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
    let side = PaddingSide::for_model(model.causal());
    let sources = SharedSources::compute(model, site, pairs, pad_id, batch_size, device)?;
    // Bases are shared the same way where the checkpoint is the activation alone (a site between
    // blocks); a site inside a block also keeps the block's input, so its batches run their own.
    let between_blocks = matches!(site.component, Component::Embeddings | Component::BlockInput | Component::BlockOutput);
    let shared_bases = if between_blocks { Some(SharedBases::compute(model, site, pairs, pad_id, batch_size, device)?) } else { None };
    let mut out = Vec::new();
    for (c, chunk) in pairs.chunks(batch_size.max(1)).enumerate() {
        let first = c * batch_size.max(1);
        let mut bases = Vec::new();
        let (mut labels, mut base_labels) = (Vec::new(), Vec::new());
        for ex in chunk {
            let TokenizedExample::Pair { base, base_label, label, .. } = ex else { bail!("DAS needs counterfactual pairs, got another kind of example") };
            let LabelId::Token(l) = label else { bail!("DAS needs a text label (a continuation), not a class") };
            bases.push(base);
            labels.push(*l);
            base_labels.push(match base_label { Some(LabelId::Token(t)) => Some(*t), _ => None });
        }
        let b = pad(&bases, pad_id, side);
        let base_input = input_of::<B>(&b.ids, &b.mask, device);
        let source_vectors = sources.rows(first..first + chunk.len(), device);
        let last = last_real(&b.mask);
        let checkpoint = match &shared_bases {
            Some(shared) => Checkpoint { site, activation: shared.assemble(first..first + chunk.len(), b.ids[0].len()), block_input: None, input: base_input },
            None => run_to(model, &base_input, site).context("running the bases to the site")?,
        };
        let batch = PairBatch {
            checkpoint,
            base_positions: int2::<B>(&b.positions, device),
            source_vectors,
            label_positions: int2::<B>(&last, device),
            labels,
            base_labels: base_labels.into_iter().collect(),
            dims: Vec::new(),
            prefix: None,
        };
        out.push(match &shared_bases {
            Some(shared) => shared.skipping_prefix(batch, first..first + chunk.len()),
            None => batch,
        });
    }
    Ok(out)
}

/// The source vectors of every pair, each distinct source (ids and positions) run once: pair
/// files usually draw their sources from a few prompts, each used by many pairs.
struct SharedSources<B: Backend> {
    /// `[distinct sources, k, width]`.
    vectors: Tensor<B, 3>,
    /// For each pair, its source's row in `vectors`.
    row_of_pair: Vec<usize>,
}

impl<B: Backend> SharedSources<B> {
    fn compute<M: Transformer<B>>(model: &M, site: Site, pairs: &[&TokenizedExample], pad_id: u32, batch_size: usize, device: &B::Device) -> Result<Self> {
        let mut distinct: Vec<&TokenizedInput> = Vec::new();
        let mut index: std::collections::HashMap<(&[u32], &[usize]), usize> = std::collections::HashMap::new();
        let mut row_of_pair = Vec::with_capacity(pairs.len());
        for ex in pairs {
            let TokenizedExample::Pair { sources, .. } = ex else { bail!("DAS needs counterfactual pairs, got another kind of example") };
            let [src] = sources.as_slice() else { bail!("this trainer takes one source per pair ({} given)", sources.len()) };
            let row = *index.entry((src.ids.as_slice(), src.positions.as_slice())).or_insert_with(|| {
                distinct.push(src);
                distinct.len() - 1
            });
            row_of_pair.push(row);
        }
        let chunks = distinct.chunks(batch_size.max(1)).map(|c| source_vectors(model, site, c, pad_id, model.causal(), device)).collect::<Result<Vec<_>>>()?;
        if chunks.is_empty() {
            bail!("no pairs to prepare");
        }
        Ok(SharedSources { vectors: Tensor::cat(chunks, 0), row_of_pair })
    }

    /// `[pairs, k, width]`: the source vectors of pairs `range`.
    fn rows(&self, range: std::ops::Range<usize>, device: &B::Device) -> Tensor<B, 3> {
        let rows: Vec<i64> = self.row_of_pair[range].iter().map(|&r| r as i64).collect();
        self.vectors.clone().select(0, Tensor::<B, 1, Int>::from_data(TensorData::new(rows.clone(), [rows.len()]), device))
    }
}

/// Every pair's base activation at the site, each distinct base (its ids) run once, stored
/// padded on the model's side to the longest base, so that a batch's rows are one `select` and
/// one `narrow` away (a batch pads on the same side, to its own longest row).
struct SharedBases<B: Backend> {
    /// `[distinct bases, longest, width]`.
    activations: Tensor<B, 3>,
    /// Causal models: per layer, the distinct bases' keys and values (`[distinct, kv_heads,
    /// longest, head_dim]`) at the blocks after the site, for the batches' prefixes.
    keys_values: Option<LayerKeysValues<B>>,
    row_of_pair: Vec<usize>,
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

impl<B: Backend> SharedBases<B> {
    fn compute<M: Transformer<B>>(model: &M, site: Site, pairs: &[&TokenizedExample], pad_id: u32, batch_size: usize, device: &B::Device) -> Result<Self> {
        let mut distinct: Vec<&TokenizedInput> = Vec::new();
        let mut index: std::collections::HashMap<&[u32], usize> = std::collections::HashMap::new();
        let mut row_of_pair = Vec::with_capacity(pairs.len());
        for ex in pairs {
            let TokenizedExample::Pair { base, .. } = ex else { bail!("DAS needs counterfactual pairs, got another kind of example") };
            let row = *index.entry(base.ids.as_slice()).or_insert_with(|| {
                distinct.push(base);
                distinct.len() - 1
            });
            row_of_pair.push(row);
        }
        let side = PaddingSide::for_model(model.causal());
        let longest = distinct.iter().map(|b| b.ids.len()).max().unwrap_or(0);
        let (mut activations, mut per_chunk): (Vec<Tensor<B, 3>>, Vec<LayerKeysValues<B>>) = (Vec::new(), Vec::new());
        for chunk in distinct.chunks(batch_size.max(1)) {
            let b = pad(chunk, pad_id, side);
            let checkpoint = run_to(model, &input_of::<B>(&b.ids, &b.mask, device), site).context("running the bases to the site")?;
            if model.causal() {
                let cache = keys_values_after(model, &checkpoint);
                per_chunk.push((0..model.n_layers()).map(|l| cache.layer(l).map(|(k, v)| (pad_dim(k, 2, longest, side), pad_dim(v, 2, longest, side)))).collect());
            }
            activations.push(pad_dim(checkpoint.activation, 1, longest, side));
        }
        if activations.is_empty() {
            bail!("no pairs to prepare");
        }
        let keys_values = model.causal().then(|| {
            (0..model.n_layers())
                .map(|l| {
                    let chunks: Option<Vec<(Tensor<B, 4>, Tensor<B, 4>)>> = per_chunk.iter().map(|c| c[l].clone()).collect();
                    chunks.map(|c| {
                        let (ks, vs): (Vec<_>, Vec<_>) = c.into_iter().unzip();
                        (Tensor::cat(ks, 0), Tensor::cat(vs, 0))
                    })
                })
                .collect()
        });
        Ok(SharedBases { activations: Tensor::cat(activations, 0), keys_values, row_of_pair, side, longest })
    }

    /// The rows of pairs `range`, and where a batch padded to `seq` starts in the stored length.
    fn rows(&self, range: std::ops::Range<usize>, seq: usize) -> (Tensor<B, 1, Int>, usize) {
        let rows: Vec<i64> = self.row_of_pair[range].iter().map(|&r| r as i64).collect();
        let offset = if self.side == PaddingSide::Left { self.longest - seq } else { 0 };
        (Tensor::from_data(TensorData::new(rows.clone(), [rows.len()]), &self.activations.device()), offset)
    }

    /// `[pairs, seq, width]`: the base activations of pairs `range`, as a batch padded to `seq`.
    fn assemble(&self, range: std::ops::Range<usize>, seq: usize) -> Tensor<B, 3> {
        let (rows, offset) = self.rows(range, seq);
        self.activations.clone().select(0, rows).narrow(1, offset, seq)
    }

    /// `batch` (pairs `range`) going on from its first touched position, the keys and values of
    /// the positions before it taken from the distinct bases'. Unchanged without a prefix or for
    /// an encoder.
    fn skipping_prefix(&self, batch: PairBatch<B>, range: std::ops::Range<usize>) -> PairBatch<B> {
        let (Some(keys_values), Some(start)) = (&self.keys_values, batch.first_touched()) else { return batch };
        let input = &batch.checkpoint.input;
        let [_, seq] = input.dims();
        if start == 0 || start >= seq {
            return batch;
        }
        let (rows, offset) = self.rows(range, seq);
        let take = |t: &Tensor<B, 4>| t.clone().select(0, rows.clone()).narrow(2, offset, start);
        let per_layer = keys_values.iter().map(|kv| kv.as_ref().map(|(k, v)| (take(k), take(v)))).collect();
        let rest = seq - start;
        let cache = KvCache::from_parts(per_layer, input.mask.clone().narrow(1, 0, start));
        let suffix_input = Input { ids: input.ids.clone().narrow(1, start, rest), mask: input.mask.clone().narrow(1, start, rest), token_types: None, past: Some(cache) };
        let suffix = Checkpoint { site: batch.checkpoint.site, activation: batch.checkpoint.activation.clone().narrow(1, start, rest), block_input: None, input: suffix_input };
        batch.starting_at(start, suffix)
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
            Some(&last) if trim => TokenizedInput { ids: s.ids[..(last + 1).min(s.ids.len())].to_vec(), positions: s.positions.clone() },
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
pub fn logits<B: Backend, M: Transformer<B>>(model: &M, batch: &PairBatch<B>, iv: Option<&Intervention<B>>) -> Result<Tensor<B, 2>> {
    let site = batch.checkpoint.site;
    let act = match iv {
        None => batch.checkpoint.activation.clone(),
        Some(iv) => {
            let info = model.site_info(site)?;
            let placement = Placement::new(info, iv, batch.base_positions.clone(), Some(batch.source_vectors.clone()), batch.dims.clone())?;
            Intervene::new(vec![placement], Composition::Parallel).apply_at(site, batch.checkpoint.activation.clone())
        }
    };
    let hidden = resume(model, &batch.checkpoint, act, &mut NoHooks)?;
    let at = gather_positions(hidden, batch.label_positions.clone());
    let logits = model.head(at).context("DAS on next-token labels needs a language model")?;
    let [n, _, v] = logits.dims();
    Ok(logits.reshape([n, v]))
}

/// The same logits by the plain path: a full forward with the intervention as a hook, the head
/// on every position. Slower; used to check the cached path.
pub fn logits_plain<B: Backend, M: Transformer<B>>(model: &M, batch: &PairBatch<B>, iv: &Intervention<B>) -> Result<Tensor<B, 2>> {
    let site = batch.checkpoint.site;
    let (input, offset) = match &batch.prefix {
        Some(p) => (&p.input, p.start as i64),
        None => (&batch.checkpoint.input, 0),
    };
    let placement = Placement::new(model.site_info(site)?, iv, batch.base_positions.clone() + offset, Some(batch.source_vectors.clone()), batch.dims.clone())?;
    let mut hooks = Intervene::new(vec![placement], Composition::Parallel);
    let all = model.head(forward(model, input, &mut hooks)).context("a language model")?;
    let at = gather_positions(all, batch.label_positions.clone() + offset);
    let [n, _, v] = at.dims();
    Ok(at.reshape([n, v]))
}

/// The counterfactual cross-entropy of one batch at the label position (mean over pairs).
pub fn loss<B: Backend, M: Transformer<B>>(model: &M, batch: &PairBatch<B>, iv: &Intervention<B>) -> Result<Tensor<B, 1>> {
    let logits = logits(model, batch, Some(iv))?;
    let [n, v] = logits.dims();
    let labels = Tensor::<B, 1, Int>::from_data(TensorData::new(batch.labels.iter().map(|&l| l as i64).collect::<Vec<_>>(), [n]), &logits.device());
    Ok(cross_entropy_with_logits(logits, labels.one_hot::<2>(v).float()))
}

/// DAS as a training objective: counterfactual cross-entropy on the training batches (plus
/// Boundless DAS's boundary penalty `λ·β`), IIA and loss on the validation batches.
pub struct DasObjective<'a, B: Backend, M: Transformer<B>> {
    /// The frozen model.
    pub model: &'a M,
    /// Training batches.
    pub train: &'a [PairBatch<B>],
    /// Validation batches (may be empty).
    pub validation: &'a [PairBatch<B>],
    /// Weight λ of the boundary penalty (Boundless DAS only).
    pub boundary_penalty: f64,
}

impl<B: AutodiffBackend, M: Transformer<B>> Objective<B> for DasObjective<'_, B, M> {
    fn batches(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, iv: &Intervention<B>, index: usize) -> Result<Tensor<B, 1>> {
        let ce = loss(self.model, &self.train[index], iv)?;
        Ok(match iv {
            Intervention::Boundless(b) if self.boundary_penalty != 0.0 => ce + b.boundary.val().sum() * self.boundary_penalty,
            _ => ce,
        })
    }

    fn validate(&self, iv: &Intervention<B>) -> Result<Option<(f32, f32)>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        let m = evaluate(self.model, self.validation, Some(iv))?;
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
pub fn evaluate<B: Backend, M: Transformer<B>>(model: &M, batches: &[PairBatch<B>], iv: Option<&Intervention<B>>) -> Result<Metrics> {
    let (mut hits, mut beats, mut base_hits, mut n, mut with_base) = (0usize, 0usize, 0usize, 0usize, true);
    let (mut log_odds, mut nll) = (0f64, 0f64);
    for batch in batches {
        let l = logits(model, batch, iv)?;
        let v = l.dims()[1];
        let values: Vec<f32> = l.into_data().convert::<f32>().to_vec().map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
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
