//! The `filler-gap` recipe (`recipes/das-filler-gap.toml`) and the positions it sweeps.

use serde::{Deserialize, Serialize};

use crate::recipe::Layers;

/// Positions every item has (the embedded version adds `article_e`, `noun_e`, `verb_e`).
pub const POSITIONS: [&str; 4] = ["filler", "article", "noun", "verb"];

/// The recipe (`recipes/das-filler-gap.toml`). Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FillerGapRecipe {
    /// One line for `trainer list`.
    pub description: String,
    /// Model spec.
    pub model: String,
    /// Training pairs per run (the paper: 400).
    pub train_pairs: usize,
    /// Held-out pairs per evaluation set (the paper: 100); their items never appear in training.
    pub test_pairs: usize,
    /// Rank of the DAS rotation (the paper: 1).
    pub rank: usize,
    /// Pairs per batch (the paper: 4).
    pub batch_size: usize,
    /// Epochs (the paper: 1).
    pub epochs: usize,
    /// Adam learning rate (the paper: 5e-3).
    pub lr: f64,
    /// Share of steps of linear warmup (the paper: 0.1), then linear decay.
    pub warmup: f64,
    /// Seed of the split, the pairs drawn, the initialisation and the batch order.
    pub seed: u64,
    /// Layers swept (`block_output` of each): a list, or `"all"`.
    pub layers: Layers,
    /// Positions swept: span names from `filler`, `article`, `noun`, `verb`.
    pub positions: Vec<String>,
    /// After the sweep, run the train × evaluate matrix and leave-one-out at the best site.
    pub generalization: bool,
    /// Run only this shard's sites (`I/N`; `trainer sweep --shard`, or a job array's index);
    /// `trainer merge` joins the shards. No follow-up experiments in a shard: merging runs them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::shard::Shard>,
}
