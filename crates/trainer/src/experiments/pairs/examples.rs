//! The examples of a pair-file run: the recipe's JSONL file read, tokenised, and split by a
//! metadata field into training, validation and held-out examples.

use anyhow::{anyhow, bail, Context, Result};
use ferrovene_data::batch::split_by_group;
use ferrovene_data::format::{parse_jsonl, Loaded};
use ferrovene_data::{tokenize, OnError, TokenizedExample};

use super::recipe::PairRecipe;
use crate::run_dir::fnv1a;

/// The examples of a run, tokenised and split.
pub struct Examples {
    /// The file's text (the held-out lines are copied from it).
    pub text: String,
    /// FNV-1a of the text.
    pub hash: String,
    /// The parsed file.
    pub file: Loaded,
    /// Every example, tokenised.
    pub tokenized: Vec<TokenizedExample>,
    /// Indices of the training examples.
    pub train: Vec<usize>,
    /// Indices of the validation examples (empty without early stopping).
    pub validation: Vec<usize>,
    /// Indices of the held-out examples.
    pub dev: Vec<usize>,
}

impl Examples {
    /// The examples at `idx`.
    pub fn pick(&self, idx: &[usize]) -> Vec<&TokenizedExample> {
        idx.iter().map(|&i| &self.tokenized[i]).collect()
    }
}

/// Reads, tokenises and splits the recipe's example file.
pub fn read(r: &PairRecipe, tok: &ferrovene_models::TextTokenizer) -> Result<Examples> {
    let text = std::fs::read_to_string(&r.pairs).with_context(|| format!("reading {} (the recipe's `pairs`)", r.pairs.display()))?;
    let hash = fnv1a(text.as_bytes());
    let file = parse_jsonl(&r.pairs, &text, OnError::Stop)?;
    let tokenized: Vec<TokenizedExample> = file.examples.iter().map(|(l, e)| tokenize(e, tok, &file.path, *l)).collect::<std::result::Result<_, _>>()?;
    let groups: Vec<String> = file
        .examples
        .iter()
        .map(|(l, e)| {
            e.meta().get(&r.split_by).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).ok_or_else(|| {
                anyhow!("{}:{l}: no metadata field `{}` (the recipe's split_by)", file.path.display(), r.split_by)
            })
        })
        .collect::<Result<_>>()?;
    let (train, validation, dev) = split(&groups, r)?;
    Ok(Examples { text, hash, file, tokenized, train, validation, dev })
}

/// The training, validation and held-out indices: held-out groups first, then (with early
/// stopping) validation groups from what is left.
fn split(groups: &[String], r: &PairRecipe) -> Result<(Vec<usize>, Vec<usize>, Vec<usize>)> {
    let (rest, dev) = split_by_group(groups, r.dev_fraction, r.seed);
    let (train, validation) = if r.early_stopping.is_some() {
        let rest_groups: Vec<String> = rest.iter().map(|&i| groups[i].clone()).collect();
        let (t, v) = split_by_group(&rest_groups, r.validation_fraction, r.seed ^ 0x5EED);
        (t.into_iter().map(|i| rest[i]).collect(), v.into_iter().map(|i| rest[i]).collect::<Vec<_>>())
    } else {
        (rest, Vec::new())
    };
    if train.is_empty() || dev.is_empty() || (r.early_stopping.is_some() && validation.is_empty()) {
        bail!(
            "the split by `{}` left {} training, {} validation and {} held-out examples; adjust dev_fraction, validation_fraction or split_by",
            r.split_by, train.len(), validation.len(), dev.len()
        );
    }
    Ok((train, validation, dev))
}

