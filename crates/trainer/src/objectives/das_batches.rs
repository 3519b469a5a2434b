//! Where DAS's batches come from: kept in memory after one preparation (the frozen cache), or —
//! when that cache would exceed the memory budget — prepared again each time a batch is used
//! and dropped after, with the same numbers (the frozen runs are then repeated every epoch).

use anyhow::Result;
use burn::tensor::backend::Backend;
use ferrovene_data::batch::PaddingSide;
use ferrovene_data::{TokenizedExample, TokenizedInput};
use ferrovene_models::{Component, Site, Transformer};

use super::batches::BatchList;
use super::das::{PairBatch, prepare_at};

/// Batches prepared when used: the pairs and what [`prepare_at`] needs, no tensors kept.
pub struct OnDemand<'a, B: Backend, M: Transformer<B>> {
    /// The frozen model.
    pub model: &'a M,
    /// The intervened sites.
    pub sites: Vec<Site>,
    /// The pairs, in batch order.
    pub pairs: Vec<&'a TokenizedExample>,
    /// The tokenizer's padding id.
    pub pad_id: u32,
    /// Pairs per batch.
    pub batch_size: usize,
    /// Where to compute.
    pub device: B::Device,
}

impl<B: Backend, M: Transformer<B>> BatchList<PairBatch<B>> for OnDemand<'_, B, M> {
    fn count(&self) -> usize {
        self.pairs.len().div_ceil(self.batch_size.max(1))
    }
    fn visit(&self, index: usize, f: &mut dyn FnMut(&PairBatch<B>) -> Result<()>) -> Result<()> {
        let bs = self.batch_size.max(1);
        let pairs = &self.pairs[index * bs..((index + 1) * bs).min(self.pairs.len())];
        for batch in prepare_at(self.model, &self.sites, pairs, self.pad_id, bs, &self.device)? {
            f(&batch)?;
        }
        Ok(())
    }
}

/// About how many bytes [`prepare_at`] keeps for `pairs` in batches of `batch_size` (f32): per
/// batch the base activations at the checkpoint's site (`seq × width` per pair), the source
/// vectors at each site and, in a causal model at a site between blocks, the keys and values of
/// the positions before the first intervened one at every block after the site.
pub fn cache_bytes<B: Backend, M: Transformer<B>>(
    model: &M,
    sites: &[Site],
    pairs: &[&TokenizedExample],
    batch_size: usize,
) -> u64 {
    let Some(site) = ferrovene_interventions::checkpoint_site(sites) else { return 0 };
    let width = model.width() as u64;
    let between_blocks = site.next_block().is_some();
    let later_blocks = site.next_block().map_or(0, |b| model.n_layers().saturating_sub(b)) as u64;
    let kv_width = (0..model.n_layers())
        .flat_map(|l| model.block_sites(l))
        .find(|s| s.site.component == Component::KeyOutput)
        .map_or(width, |s| s.width as u64);
    let left = PaddingSide::for_model(model.causal()) == PaddingSide::Left;
    let mut floats = 0u64;
    for chunk in pairs.chunks(batch_size.max(1)) {
        let parts: Vec<(&TokenizedInput, usize)> = chunk
            .iter()
            .filter_map(|ex| match ex {
                TokenizedExample::Pair { base, sources, .. } => {
                    Some((base, sources.first().map_or(0, |s| s.positions.len())))
                }
                _ => None,
            })
            .collect();
        let seq = parts.iter().map(|(b, _)| b.ids.len()).max().unwrap_or(0);
        let first_touched = parts
            .iter()
            .map(|(b, _)| {
                let offset = if left { seq - b.ids.len() } else { 0 };
                offset + b.positions.iter().copied().min().unwrap_or(0).min(b.ids.len().saturating_sub(1))
            })
            .min()
            .unwrap_or(0);
        let prefix = if model.causal() && between_blocks { first_touched as u64 } else { 0 };
        let rows = parts.len() as u64;
        let sources: u64 = parts.iter().map(|(_, k)| *k as u64).sum();
        floats += rows * seq as u64 * width * if between_blocks { 1 } else { 2 }
            + sources * width * sites.len() as u64
            + later_blocks * 2 * rows * prefix * kv_width;
    }
    floats * 4
}
