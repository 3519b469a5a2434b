//! A task's pairs and their frozen activations: the pairs tokenised with a position for every
//! region, and one frozen forward per batch that keeps the `block_output` of every swept layer
//! (bases whole, sources at the regions), the bases' keys and values at every block (so a site's
//! DAS steps recompute only the positions from the intervened one on), and the plain run's
//! logits of the four scored continuations. Every site, method and the control task read these.

use std::collections::BTreeMap;
use std::ops::Range;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ferrovene_data::batch::{PaddingSide, pad};
use ferrovene_data::format::{Example, Position};
use ferrovene_data::suite::Suite;
use ferrovene_data::{LabelId, TokenizedExample, TokenizedInput, tokenize};
use ferrovene_models::precision::to_f32;
use ferrovene_models::{
    Checkpoint, Component, Input, KvCache, Site, TextTokenizer, Transformer, block_outputs, gather_positions,
};

use super::recipe::{LAST, SourceIndex};
use super::stack::{Stack, column, repeat};
use crate::batch::{input_of, int2, last_real};
use crate::experiments::prefix::Prefix;

/// One pair of a task, tokenised: base and source with one position per region (in the task's
/// region order), the four scored continuations' first tokens, and the base's class.
#[derive(Debug, Clone, PartialEq)]
pub struct SuitePair {
    /// The base and its region positions.
    pub base: TokenizedInput,
    /// The source and its region positions.
    pub source: TokenizedInput,
    /// `[y_s, y_b]`: the source's and the base's continuation.
    pub task: [u32; 2],
    /// `[y_s, y_b]` of the control task.
    pub control: [u32; 2],
    /// Whether the base is of the task's second class.
    pub class: bool,
    /// Where in the base the fitted directions read each region, when not at `base.positions`:
    /// CausalGym's code collects the base's activation at the source's token index (its collect
    /// intervention takes the source's locations), which `source_index = "base"` reproduces.
    pub fit_positions: Option<Vec<usize>>,
}

/// Which labels a batch is scored and trained on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Labels {
    /// The task's continuations.
    Task,
    /// The control task's words.
    Control,
}

/// Tokenises a task's pairs (from `ferrovene_data::suite::split`) with a position for every
/// region (`last`: the last token; else the slot's last token), the control words' first tokens
/// for the control labels; `prefix` goes before every sentence ([`Prefix::apply`]), and
/// `source_index` says whose token index the source is read at.
#[allow(clippy::too_many_arguments)]
pub fn tokenize_pairs(
    suite: &Suite,
    task: &str,
    pairs: &[Example],
    regions: &[String],
    control: [u32; 2],
    tok: &TextTokenizer,
    prefix: &Prefix,
    source_index: SourceIndex,
) -> Result<Vec<SuitePair>> {
    let classes = suite.tasks[task].classes();
    let positions: Vec<Position> =
        regions.iter().map(|r| if r == LAST { Position::Last } else { Position::Span(r.clone()) }).collect();
    pairs
        .iter()
        .enumerate()
        .map(|(i, ex)| {
            let Example::Pair { base, sources, base_label, label, meta, .. } = ex else { bail!("a suite makes pairs") };
            let with_regions = Example::Pair {
                base: base.clone(),
                sources: sources.clone(),
                base_positions: positions.clone(),
                source_positions: vec![positions.clone()],
                base_label: base_label.clone(),
                label: label.clone(),
                meta: meta.clone(),
            };
            // The pair was generated, not read from a line: say which pair and which regions.
            let t = tokenize(&with_regions, tok, &suite.path, i + 1).map_err(|e| {
                let reason = e.to_string();
                let prefix = format!("{}:{}: ", suite.path.display(), i + 1);
                anyhow::anyhow!(
                    "{}: task `{task}`, generated pair {} (regions {}): {}",
                    suite.path.display(),
                    i + 1,
                    regions.join(", "),
                    reason.strip_prefix(&prefix).unwrap_or(&reason)
                )
            })?;
            let TokenizedExample::Pair {
                base,
                mut sources,
                base_label: Some(LabelId::Token(yb)),
                label: LabelId::Token(ys),
            } = t
            else {
                bail!("task `{task}`: a suite pair has text continuations")
            };
            let class = meta.get("base_class").and_then(|c| c.as_str()) == Some(classes[1]);
            let k = class as usize;
            let (base, mut source) = (prefix.apply(base), prefix.apply(sources.remove(0)));
            let mut fit_positions = None;
            if source_index == SourceIndex::Base {
                let (base_end, source_end) = (base.ids.len() - 1, source.ids.len() - 1);
                fit_positions = Some(source.positions.iter().map(|&p| p.min(base_end)).collect());
                source.positions = base.positions.iter().map(|&p| p.min(source_end)).collect();
            }
            Ok(SuitePair { base, source, task: [ys, yb], control: [control[1 - k], control[k]], class, fit_positions })
        })
        .collect()
}

/// Per block, its keys and values (`[n, kv_heads, seq, head_dim]`), where it has them.
type LayerKeysValues<B> = Vec<Option<(Tensor<B, 4>, Tensor<B, 4>)>>;

/// A batch of pairs with the frozen model's work done.
#[derive(Clone)]
pub struct Cached<B: Backend> {
    /// The padded bases (no cache attached).
    input: Input<B>,
    /// Per swept layer, the bases' `block_output`, `[n, seq, width]` (f32).
    base: BTreeMap<usize, Tensor<B, 3>>,
    /// Per swept layer, the sources' `block_output` at the regions, `[n, regions, width]`.
    source: BTreeMap<usize, Tensor<B, 3>>,
    /// Per block, the bases' keys and values (causal models).
    keys_values: Option<LayerKeysValues<B>>,
    /// Per row, the regions' positions in the padded base.
    base_positions: Vec<Vec<usize>>,
    /// Per row, where in the padded base the fitted directions read each region.
    fit_positions: Vec<Vec<usize>>,
    /// Per row, the last real token.
    last: Vec<Vec<usize>>,
    /// The pairs' labels and classes.
    pairs: Vec<SuitePair>,
    /// Per row, the plain run's logits of `[task y_s, task y_b, control y_s, control y_b]`.
    plain: Vec<[f32; 4]>,
}

/// Runs the frozen model once per chunk of `chunk` pairs: every layer for the bases (keeping
/// the swept ones, the keys and values, and the plain logits), up to the deepest swept layer for
/// the sources. Training batches are row ranges of a chunk ([`Cached::stack`]): a forward of
/// many rows reads the frozen weights fewer times per row.
pub fn cache<B: Backend, M: Transformer<B>>(
    model: &M,
    pad_id: u32,
    pairs: &[SuitePair],
    layers: &[usize],
    chunk: usize,
    device: &B::Device,
) -> Result<Vec<Cached<B>>> {
    for &l in layers {
        model.site_info(Site::new(l, Component::BlockOutput))?;
    }
    let side = PaddingSide::for_model(model.causal());
    let deepest = layers.iter().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    for chunk in pairs.chunks(chunk.max(1)) {
        let bases: Vec<&TokenizedInput> = chunk.iter().map(|p| &p.base).collect();
        let b = pad(&bases, pad_id, side);
        let input = input_of::<B>(&b.ids, &b.mask, device);
        let kv = model.causal().then(KvCache::new);
        let run_input = Input { past: kv.clone(), ..input.clone() };
        let (base, x) = block_outputs(model, &run_input, layers, model.n_layers() - 1);
        let last = last_real(&b.mask);
        let hidden = gather_positions(to_f32(model.final_norm(x)), int2::<B>(&last, device));
        let logits = model.head(hidden).context("a suite scores continuations: it needs a language model")?;
        let [n, _, v] = logits.dims();
        let plain = rows4(logits.reshape([n, v]).gather(1, scored_ids(chunk, device)))?;
        let keys_values = kv.map(|c| (0..model.n_layers()).map(|l| c.layer(l)).collect());

        let sources: Vec<&TokenizedInput> = chunk.iter().map(|p| &p.source).collect();
        let s = pad(&sources, pad_id, side);
        let s_input = input_of::<B>(&s.ids, &s.mask, device);
        let at = int2::<B>(&s.positions, device);
        let source = block_outputs(model, &s_input, layers, deepest)
            .0
            .into_iter()
            .map(|(l, y)| (l, gather_positions(y, at.clone())))
            .collect();
        out.push(Cached {
            input,
            base,
            source,
            keys_values,
            fit_positions: chunk
                .iter()
                .zip(&b.positions)
                .map(|(p, at)| match &p.fit_positions {
                    // The padding shifted the base's own positions by the same amount.
                    Some(fit) => fit.iter().map(|&f| f + at[0] - p.base.positions[0]).collect(),
                    None => at.clone(),
                })
                .collect(),
            base_positions: b.positions,
            last,
            pairs: chunk.to_vec(),
            plain,
        });
    }
    Ok(out)
}

/// `[n, 4]`: each pair's scored continuations (task y_s, y_b, control y_s, y_b).
fn scored_ids<B: Backend>(pairs: &[SuitePair], device: &B::Device) -> Tensor<B, 2, Int> {
    let ids: Vec<i64> =
        pairs.iter().flat_map(|p| [p.task[0], p.task[1], p.control[0], p.control[1]]).map(|t| t as i64).collect();
    Tensor::from_data(TensorData::new(ids, [pairs.len(), 4]), device)
}

/// `[n, 4]` values as rows.
pub fn rows4<B: Backend>(t: Tensor<B, 2>) -> Result<Vec<[f32; 4]>> {
    let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().map_err(|e| anyhow::anyhow!("reading logits: {e:?}"))?;
    Ok(v.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect())
}

impl<B: Backend> Cached<B> {
    /// The pairs of the batch.
    pub fn pairs(&self) -> &[SuitePair] {
        &self.pairs
    }

    /// The plain run's logits of each row's four continuations.
    pub fn plain(&self) -> &[[f32; 4]] {
        &self.plain
    }

    /// `[n, 4]` continuation ids (task y_s, y_b, control y_s, y_b) to gather logits with.
    pub fn scored_ids(&self, device: &B::Device) -> Tensor<B, 2, Int> {
        scored_ids(&self.pairs, device)
    }

    /// Rows `rows` of the batch at `layer` as a [`Stack`] of `blocks` (region number, labels),
    /// going on from the first position any block intervenes on or reads a label at; in a
    /// causal model the keys and values before it are the frozen run's.
    pub fn stack(
        &self,
        layer: usize,
        blocks: &[(usize, Labels)],
        rows: Range<usize>,
        device: &B::Device,
    ) -> Result<Stack<B>> {
        let base = self.base.get(&layer).with_context(|| format!("layer {layer} was not cached"))?;
        let (k, n) = (blocks.len(), rows.len());
        let [_, seq, _] = base.dims();
        let (positions, last, pairs) =
            (&self.base_positions[rows.clone()], &self.last[rows.clone()], &self.pairs[rows.clone()]);
        let first = blocks
            .iter()
            .flat_map(|b| positions.iter().map(move |p| p[b.0]))
            .chain(last.iter().flatten().copied())
            .min()
            .unwrap_or(0);
        // An encoder (no keys and values to reuse) goes on from the start.
        let start = if self.keys_values.is_some() { first } else { 0 };
        let rest = seq - start;
        let (ids, mask) =
            (self.input.ids.clone().narrow(0, rows.start, n), self.input.mask.clone().narrow(0, rows.start, n));
        let past = self.keys_values.as_ref().filter(|_| start > 0).map(|kv| {
            let cut = |t: &Tensor<B, 4>| repeat(t.clone().narrow(0, rows.start, n).narrow(2, 0, start), k);
            let per_layer = kv
                .iter()
                .enumerate()
                .map(|(l, kv)| kv.as_ref().filter(|_| l > layer).map(|(key, value)| (cut(key), cut(value))))
                .collect();
            KvCache::from_parts(per_layer, repeat(mask.clone().narrow(1, 0, start), k))
        });
        let suffix = Input {
            ids: repeat(ids.narrow(1, start, rest), k),
            mask: repeat(mask.narrow(1, start, rest), k),
            token_types: None,
            past,
        };
        let shifted =
            |at: &[Vec<usize>], i: usize| -> Vec<Vec<usize>> { at.iter().map(|r| vec![r[i] - start]).collect() };
        let labels: Vec<u32> = blocks
            .iter()
            .flat_map(|(_, l)| {
                pairs.iter().map(move |p| match l {
                    Labels::Task => p.task[0],
                    Labels::Control => p.control[0],
                })
            })
            .collect();
        let activation = repeat(base.clone().narrow(0, rows.start, n).narrow(1, start, rest), k);
        Ok(Stack {
            checkpoint: Checkpoint {
                site: Site::new(layer, Component::BlockOutput),
                activation,
                block_input: None,
                input: suffix,
            },
            positions: blocks.iter().map(|(r, _)| int2::<B>(&shifted(positions, *r), device)).collect(),
            sources: blocks
                .iter()
                .map(|(r, _)| self.source[&layer].clone().narrow(0, rows.start, n).narrow(1, *r, 1))
                .collect(),
            label_positions: repeat(int2::<B>(&shifted(last, 0), device), k),
            labels: column::<B>(&labels, device),
            rows: n,
        })
    }

    /// Rows in the batch.
    pub fn len(&self) -> usize {
        self.pairs.len()
    }

    /// Whether the batch has no rows.
    pub fn is_empty(&self) -> bool {
        self.pairs.is_empty()
    }

    /// The bases' activations at the site, one row per pair, with their classes: what the
    /// directions are fitted on.
    pub fn class_vectors(&self, layer: usize, region: usize, device: &B::Device) -> Result<(Vec<Vec<f32>>, Vec<bool>)> {
        let base = self.base.get(&layer).with_context(|| format!("layer {layer} was not cached"))?;
        let positions: Vec<Vec<usize>> = self.fit_positions.iter().map(|r| vec![r[region]]).collect();
        let rows = gather_positions(base.clone(), int2::<B>(&positions, device));
        let [n, _, d] = rows.dims();
        let flat: Vec<f32> =
            rows.into_data().convert::<f32>().to_vec().map_err(|e| anyhow::anyhow!("reading activations: {e:?}"))?;
        Ok((flat.chunks(d).take(n).map(<[f32]>::to_vec).collect(), self.pairs.iter().map(|p| p.class).collect()))
    }
}
