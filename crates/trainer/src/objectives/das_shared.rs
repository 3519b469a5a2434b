//! The frozen runs DAS shares across batches: each distinct source and base prompt run once
//! (pair files draw them from a few prompts, each used by many pairs), and the keys and values
//! of the bases' unchanged prefixes kept for the steps ([`super::das::prepare`]).

use anyhow::{Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::{Int, Tensor, TensorData};
use ferrovene_data::TokenizedInput;
use ferrovene_data::batch::{PaddingSide, pad};
use ferrovene_models::{Site, Transformer, gather_positions, keys_values_after, run_to};

use crate::batch::{input_of, int2};

/// The distinct inputs of a list (by `key`), and for each item the index of its distinct input:
/// what a shared run computes once and every item then selects.
pub(super) struct Distinct<'a> {
    inputs: Vec<&'a TokenizedInput>,
    row_of_item: Vec<usize>,
}

impl<'a> Distinct<'a> {
    pub(super) fn of<K: std::hash::Hash + Eq>(
        items: &[&'a TokenizedInput],
        key: impl Fn(&'a TokenizedInput) -> K,
    ) -> Self {
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
pub(super) struct SharedSources<'a, B: Backend> {
    /// `[distinct sources, k, width]`.
    vectors: Tensor<B, 3>,
    distinct: Distinct<'a>,
}

impl<'a, B: Backend> SharedSources<'a, B> {
    pub(super) fn compute<M: Transformer<B>>(
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
    pub(super) fn rows(&self, range: std::ops::Range<usize>) -> Tensor<B, 3> {
        self.vectors.clone().select(0, self.distinct.rows(range, &self.vectors.device()))
    }
}

/// Every pair's base activation at the site, each distinct base (its ids) run once, stored
/// padded on the model's side to the longest base, so that a batch's rows are one `select` and
/// one `narrow` away (a batch pads on the same side, to its own longest row).
pub(super) struct SharedBases<'a, B: Backend> {
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
    pub(super) fn compute<M: Transformer<B>>(
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
    pub(super) fn rows(&self, range: std::ops::Range<usize>, seq: usize) -> (Tensor<B, 1, Int>, usize) {
        let offset = if self.side == PaddingSide::Left { self.longest - seq } else { 0 };
        (self.distinct.rows(range, &self.activations.device()), offset)
    }

    /// `[pairs, seq, width]`: the base activations of pairs `range`, as a batch padded to `seq`.
    pub(super) fn assemble(&self, range: std::ops::Range<usize>, seq: usize) -> Tensor<B, 3> {
        let (rows, offset) = self.rows(range, seq);
        self.activations.clone().select(0, rows).narrow(1, offset, seq)
    }

    /// The frozen keys and values of pairs `range` as a batch padded to `seq` (`[batch, kv_heads,
    /// seq, head_dim]` per block after the site, `None` for the others), for
    /// [`PairBatch::skipping_prefix`]; `None` for an encoder.
    pub(super) fn keys_values_of(&self, range: std::ops::Range<usize>, seq: usize) -> Option<LayerKeysValues<B>> {
        let keys_values = self.keys_values.as_ref()?;
        let (rows, offset) = self.rows(range, seq);
        let take = |t: &Tensor<B, 4>| t.clone().select(0, rows.clone()).narrow(2, offset, seq);
        Some(keys_values.iter().map(|kv| kv.as_ref().map(|(k, v)| (take(k), take(v)))).collect())
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
