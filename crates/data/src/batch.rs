//! Batching: padding on the side a model wants, attention masks, positions shifted through the
//! padding, batches of similar lengths, shuffles and splits that depend on the seed alone.

use std::collections::{BTreeMap, BTreeSet};

use ferrovene_models::rng::Rng;

use crate::tokenize::TokenizedInput;

/// Which side padding goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PaddingSide {
    /// Before the tokens: the last real token of every row is the last column (causal LMs).
    Left,
    /// After the tokens (encoders).
    Right,
}

impl PaddingSide {
    /// The side a model wants: left for causal LMs (their last real token is the last column),
    /// right for bidirectional encoders (BERT). Pass `Transformer::causal()`.
    pub fn for_model(causal: bool) -> Self {
        if causal { PaddingSide::Left } else { PaddingSide::Right }
    }
}

/// Rows padded to one length.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PaddedBatch {
    /// `[batch][seq]` token ids.
    pub ids: Vec<Vec<u32>>,
    /// `[batch][seq]`, 1 for real tokens, 0 for padding.
    pub mask: Vec<Vec<u32>>,
    /// `[batch][k]` positions, shifted by the padding.
    pub positions: Vec<Vec<usize>>,
}

/// Pads `rows` with `pad_id` on `side`, shifting each row's positions accordingly.
pub fn pad(rows: &[&TokenizedInput], pad_id: u32, side: PaddingSide) -> PaddedBatch {
    let len = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
    let mut out = PaddedBatch { ids: Vec::new(), mask: Vec::new(), positions: Vec::new() };
    for r in rows {
        let pad = len - r.ids.len();
        let (ids, mask, shift): (Vec<u32>, Vec<u32>, usize) = match side {
            PaddingSide::Left => (
                std::iter::repeat_n(pad_id, pad).chain(r.ids.iter().copied()).collect(),
                std::iter::repeat_n(0, pad).chain(std::iter::repeat_n(1, r.ids.len())).collect(),
                pad,
            ),
            PaddingSide::Right => (
                r.ids.iter().copied().chain(std::iter::repeat_n(pad_id, pad)).collect(),
                std::iter::repeat_n(1, r.ids.len()).chain(std::iter::repeat_n(0, pad)).collect(),
                0,
            ),
        };
        out.ids.push(ids);
        out.mask.push(mask);
        out.positions.push(r.positions.iter().map(|p| p + shift).collect());
    }
    out
}

/// Batches of at most `batch_size` indices whose rows have similar lengths (less padding), in an
/// order shuffled from `seed`. Equal seeds give equal batches.
pub fn length_buckets(lengths: &[usize], batch_size: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = Rng::new(seed);
    let mut order: Vec<usize> = (0..lengths.len()).collect();
    rng.shuffle(&mut order); // random order among equal lengths
    order.sort_by_key(|&i| lengths[i]); // stable: ties keep the shuffled order
    let mut batches: Vec<Vec<usize>> = order.chunks(batch_size.max(1)).map(<[usize]>::to_vec).collect();
    rng.shuffle(&mut batches);
    batches
}

/// Splits example indices into (train, held out) so that no group (a template, a base text, any
/// key) is on both sides: whole groups, chosen from `seed`, are held out until at least
/// `held_out_fraction` of the examples are.
pub fn split_by_group(groups: &[String], held_out_fraction: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let mut members: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, g) in groups.iter().enumerate() {
        members.entry(g.as_str()).or_default().push(i);
    }
    let mut names: Vec<&str> = members.keys().copied().collect();
    Rng::new(seed).shuffle(&mut names);
    let target = (held_out_fraction * groups.len() as f64).ceil() as usize;
    let mut held: BTreeSet<usize> = BTreeSet::new();
    for name in names {
        if held.len() >= target {
            break;
        }
        held.extend(&members[name]);
    }
    let train = (0..groups.len()).filter(|i| !held.contains(i)).collect();
    (train, held.into_iter().collect())
}
