//! Pairs for the sweep and their frozen activations: construction-wise train/held-out splits,
//! pairs drawn evenly over constructions, and one forward per batch that caches the
//! `block_output` of every swept layer for bases and sources.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use anyhow::{Context, Result, bail};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ferrovene_data::batch::{PaddingSide, pad};
use ferrovene_data::filler_gap::{CONSTRUCTIONS, Item, items};
use ferrovene_data::{LabelId, TokenizedExample, TokenizedInput, tokenize};
use ferrovene_models::rng::Rng;
use ferrovene_models::{
    Checkpoint, Component, Input, Site, TextTokenizer, Transformer, block_outputs, gather_positions,
};

use super::recipe::POSITIONS;
use crate::batch::{input_of, int2, last_real};
use crate::objectives::das::PairBatch;

/// A directed pair: an item and which side is the base.
#[derive(Debug, Clone)]
pub struct Directed {
    /// The item.
    pub item: Item,
    /// Whether the base is the side with the gap.
    pub gap_in_base: bool,
}

/// Training and held-out items of one construction; held-out groups (same non-gap text) never
/// appear in training.
pub struct Split {
    /// Training items.
    pub train: Vec<Item>,
    /// Held-out items.
    pub test: Vec<Item>,
}

/// Splits every construction's items: `test_items` held-out items each, by group.
pub fn split(seed: u64, test_items: usize) -> BTreeMap<&'static str, Split> {
    CONSTRUCTIONS
        .iter()
        .enumerate()
        .map(|(k, &c)| {
            let all = items(c);
            let mut groups: Vec<String> = all.iter().map(Item::group).collect::<BTreeSet<_>>().into_iter().collect();
            Rng::new(seed ^ ((k as u64 + 1) * 0x51_7CC1)).shuffle(&mut groups);
            let mut held = BTreeSet::new();
            let mut count = 0;
            for g in &groups {
                if count >= test_items {
                    break;
                }
                count += all.iter().filter(|i| &i.group() == g).count();
                held.insert(g.clone());
            }
            let (test, train): (Vec<Item>, Vec<Item>) = all.into_iter().partition(|i| held.contains(&i.group()));
            (c, Split { train, test })
        })
        .collect()
}

/// `n` directed pairs from `pools` (one pool per construction, drawn evenly), both directions of
/// each drawn item.
pub fn draw(pools: &[&[Item]], n: usize, rng: &mut Rng) -> Vec<Directed> {
    let mut out = Vec::new();
    let per = n.div_ceil(2 * pools.len().max(1));
    for pool in pools {
        let mut idx: Vec<usize> = (0..pool.len()).collect();
        rng.shuffle(&mut idx);
        for &i in idx.iter().take(per) {
            out.push(Directed { item: pool[i].clone(), gap_in_base: true });
            out.push(Directed { item: pool[i].clone(), gap_in_base: false });
        }
    }
    rng.shuffle(&mut out);
    out.truncate(n);
    out
}

/// A batch of directed pairs with the frozen model's `block_output`s at every swept layer.
#[derive(Clone)]
pub struct Cached<B: Backend> {
    input: Input<B>,
    base: BTreeMap<usize, Tensor<B, 3>>,
    source: BTreeMap<usize, Tensor<B, 3>>,
    base_positions: BTreeMap<&'static str, Vec<Vec<usize>>>,
    source_positions: BTreeMap<&'static str, Vec<Vec<usize>>>,
    last: Vec<Vec<usize>>,
    labels: Vec<u32>,
    base_labels: Vec<u32>,
    gap_in_base: Vec<bool>,
}

/// Runs the frozen model once per batch on bases and sources, keeping every swept layer.
pub fn cache<B: Backend, M: Transformer<B>>(
    model: &M,
    tok: &TextTokenizer,
    pairs: &[Directed],
    layers: &[usize],
    batch: usize,
    device: &B::Device,
) -> Result<Vec<Cached<B>>> {
    let sites: Vec<Site> = layers.iter().map(|&l| Site::new(l, Component::BlockOutput)).collect();
    for s in &sites {
        model.site_info(*s)?;
    }
    let side = PaddingSide::for_model(model.causal());
    let deepest = layers.iter().copied().max().unwrap_or(0);
    let mut out = Vec::new();
    for chunk in pairs.chunks(batch.max(1)) {
        let (mut bases, mut sources, mut labels, mut base_labels) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for d in chunk {
            let t = tokenize(&d.item.example_at(d.gap_in_base, &POSITIONS), tok, Path::new("filler-gap"), 1)?;
            let TokenizedExample::Pair {
                base,
                sources: mut srcs,
                base_label: Some(LabelId::Token(bl)),
                label: LabelId::Token(l),
            } = t
            else {
                bail!("the generator makes pairs with text labels");
            };
            bases.push(base);
            sources.push(srcs.remove(0));
            labels.push(l);
            base_labels.push(bl);
        }
        let run = |rows: &[TokenizedInput]| -> Result<(Input<B>, BTreeMap<usize, Tensor<B, 3>>, Vec<Vec<usize>>, Vec<Vec<u32>>)> {
            let refs: Vec<&TokenizedInput> = rows.iter().collect();
            let p = pad(&refs, tok.pad_id, side);
            let input = input_of::<B>(&p.ids, &p.mask, device);
            // Only as deep as the deepest swept layer.
            let acts = block_outputs(model, &input, layers, deepest).0;
            Ok((input, acts, p.positions, p.mask))
        };
        let (input, base, bpos, mask) = run(&bases)?;
        let (_, source, spos, _) = run(&sources)?;
        let by_name = |pos: &[Vec<usize>]| {
            POSITIONS.iter().enumerate().map(|(k, &n)| (n, pos.iter().map(|r| vec![r[k]]).collect())).collect()
        };
        out.push(Cached {
            input,
            base,
            source,
            base_positions: by_name(&bpos),
            source_positions: by_name(&spos),
            last: last_real(&mask),
            labels,
            base_labels,
            gap_in_base: chunk.iter().map(|d| d.gap_in_base).collect(),
        });
    }
    Ok(out)
}

/// The DAS batches of one site from the caches.
pub fn site_batches<B: Backend>(
    cached: &[Cached<B>],
    layer: usize,
    position: &str,
    device: &B::Device,
) -> Result<Vec<PairBatch<B>>> {
    cached
        .iter()
        .map(|c| {
            let base = c.base.get(&layer).with_context(|| format!("layer {layer} was not cached"))?;
            let bp = c.base_positions.get(position).with_context(|| format!("no position `{position}`"))?;
            let sp = &c.source_positions[position];
            Ok(PairBatch {
                checkpoint: Checkpoint {
                    site: Site::new(layer, Component::BlockOutput),
                    activation: base.clone(),
                    block_input: None,
                    input: c.input.clone(),
                },
                base_positions: int2::<B>(bp, device),
                sources: vec![(
                    Site::new(layer, Component::BlockOutput),
                    gather_positions(c.source[&layer].clone(), int2::<B>(sp, device)),
                )],
                label_positions: int2::<B>(&c.last, device),
                labels: c.labels.clone(),
                base_labels: Some(c.base_labels.clone()),
                dims: vec![],
                prefix: None,
            })
        })
        .collect()
}

/// The difference of the mean base activation with a gap and without, at the site, normalised:
/// the difference-of-means control direction.
pub fn mean_difference<B: Backend>(
    cached: &[Cached<B>],
    layer: usize,
    position: &str,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let (mut gap, mut plain): (Option<Tensor<B, 1>>, Option<Tensor<B, 1>>) = (None, None);
    let (mut ng, mut np) = (0usize, 0usize);
    for c in cached {
        let v = gather_positions(c.base[&layer].clone(), int2::<B>(&c.base_positions[position], device));
        let [n, _, d] = v.dims();
        let rows = v.reshape([n, d]);
        for (i, &g) in c.gap_in_base.iter().enumerate() {
            let row: Tensor<B, 1> = rows.clone().narrow(0, i, 1).reshape([d]);
            let (acc, count) = if g { (&mut gap, &mut ng) } else { (&mut plain, &mut np) };
            *acc = Some(match acc.take() {
                Some(a) => a + row,
                None => row,
            });
            *count += 1;
        }
    }
    let (Some(g), Some(p)) = (gap, plain) else { bail!("the difference of means needs pairs of both directions") };
    let diff = g / ng as f64 - p / np as f64;
    let norm = diff.clone().powf_scalar(2.0).sum().sqrt();
    let d = diff.dims()[0];
    Ok((diff / norm.unsqueeze::<1>().expand([d])).reshape([1, d]))
}
