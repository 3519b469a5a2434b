//! The examples of a pair-file run: the recipe's JSONL file read, tokenised, and split by a
//! metadata field into training, validation and held-out examples (or held out in a file of
//! their own).

use std::path::Path;

use anyhow::{Context, Result, anyhow, bail};
use ferrovene_data::batch::split_by_group;
use ferrovene_data::format::{Loaded, parse_jsonl};
use ferrovene_data::{OnError, TokenizedExample, tokenize};

use super::recipe::{Method, PairRecipe};
use crate::experiments::prefix::Prefix;
use crate::run_dir::fnv1a;

/// The examples of a run, tokenised and split.
pub struct Examples {
    /// FNV-1a of the example file(s).
    pub hash: String,
    /// Every example, tokenised: those of `pairs`, then those of `held_out` if given.
    pub tokenized: Vec<TokenizedExample>,
    /// Indices of the training examples.
    pub train: Vec<usize>,
    /// Indices of the validation examples (empty without early stopping).
    pub validation: Vec<usize>,
    /// Indices of the held-out examples.
    pub dev: Vec<usize>,
    /// The held-out examples' lines as they were in their file (for `dev.jsonl`).
    pub dev_lines: Vec<String>,
    /// What went before every input (the recipe's `prefix`), in words.
    pub prefix: String,
}

impl Examples {
    /// The examples at `idx`.
    pub fn pick(&self, idx: &[usize]) -> Vec<&TokenizedExample> {
        idx.iter().map(|&i| &self.tokenized[i]).collect()
    }
}

/// One example file, read, parsed and tokenised.
struct ExampleFile {
    text: String,
    file: Loaded,
    tokenized: Vec<TokenizedExample>,
}

impl ExampleFile {
    fn read(
        path: &Path,
        key: &str,
        method: Method,
        tok: &ferrovene_models::TextTokenizer,
        prefix: &Prefix,
    ) -> Result<Self> {
        let bytes =
            std::fs::read(path).with_context(|| format!("reading {} (the recipe's `{key}`)", path.display()))?;
        let text = ferrovene_data::format::utf8(path, &bytes)?.to_string();
        let file = parse_jsonl(path, &text, OnError::Stop)?;
        let (wanted, what) = match method {
            Method::Das | Method::Boundless => ("pair", "counterfactual pairs (`base`, `sources`, `label`)"),
            Method::Reft => ("prompt", "prompts with targets (`prompt`, `target`)"),
            Method::Probe => ("text", "texts with classes (`text`, `class`)"),
        };
        if let Some((line, ex)) = file.examples.iter().find(|(_, ex)| ex.kind() != wanted) {
            bail!(
                "{}:{line}: kind `{}` trains on {what}, but this line is a {} example",
                path.display(),
                method.name(),
                ex.kind()
            );
        }
        let tokenized = file
            .examples
            .iter()
            .map(|(l, e)| tokenize(e, tok, &file.path, *l).map(|t| prefix.apply_example(t)))
            .collect::<std::result::Result<_, _>>()?;
        Ok(ExampleFile { text, file, tokenized })
    }

    /// The value of metadata field `field` of every example (its split group).
    fn groups(&self, field: &str) -> Result<Vec<String>> {
        let f = &self.file;
        f.examples
            .iter()
            .map(|(l, e)| {
                e.meta().get(field).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).ok_or_else(|| {
                    anyhow!("{}:{l}: no metadata field `{field}` (the recipe's split_by)", f.path.display())
                })
            })
            .collect()
    }

    /// The lines of examples `idx`, as they were in the file.
    fn lines(&self, idx: &[usize]) -> Vec<String> {
        let lines: Vec<&str> = self.text.lines().collect();
        idx.iter().map(|&i| lines[self.file.examples[i].0 - 1].to_string()).collect()
    }
}

/// Reads, tokenises (with the recipe's `prefix` before every input) and splits the recipe's
/// example file(s): held out from `pairs` by `dev_fraction`, or every example of `held_out`.
pub fn read(r: &PairRecipe, method: Method, tok: &ferrovene_models::TextTokenizer) -> Result<Examples> {
    let prefix = Prefix::new(&r.prefix, tok)?;
    let pairs = ExampleFile::read(&r.pairs, "pairs", method, tok, &prefix)?;
    let by = r.split_by.as_deref().unwrap_or_default();
    let groups = if r.split_by.is_some() { pairs.groups(by)? } else { vec![String::new(); pairs.tokenized.len()] };
    let (rest, dev, held_out) = match (&r.held_out, r.dev_fraction) {
        (Some(path), _) => {
            let held = ExampleFile::read(path, "held_out", method, tok, &prefix)?;
            let n = pairs.tokenized.len();
            ((0..n).collect(), (n..n + held.tokenized.len()).collect(), Some(held))
        }
        (None, Some(fraction)) => {
            let (rest, dev) = split_by_group(&groups, fraction, r.seed);
            (rest, dev, None)
        }
        (None, None) => bail!("the recipe needs `dev_fraction` or `held_out`"),
    };
    let (train, validation) = if r.early_stopping.is_some() {
        let rest_groups: Vec<String> = rest.iter().map(|&i| groups[i].clone()).collect();
        let (t, v) = split_by_group(&rest_groups, r.validation_fraction, r.seed ^ 0x5EED);
        (t.into_iter().map(|i| rest[i]).collect(), v.into_iter().map(|i| rest[i]).collect::<Vec<_>>())
    } else {
        (rest, Vec::new())
    };
    if train.is_empty() || dev.is_empty() || (r.early_stopping.is_some() && validation.is_empty()) {
        bail!(
            "the split by `{by}` left {} training, {} validation and {} held-out examples; adjust dev_fraction, validation_fraction, split_by or held_out",
            train.len(),
            validation.len(),
            dev.len()
        );
    }
    let (hash, dev_lines, tokenized) = match held_out {
        Some(held) => {
            let hash = fnv1a(format!("{}\n{}", fnv1a(pairs.text.as_bytes()), fnv1a(held.text.as_bytes())).as_bytes());
            let lines = held.lines(&(0..held.tokenized.len()).collect::<Vec<_>>());
            (hash, lines, pairs.tokenized.into_iter().chain(held.tokenized).collect())
        }
        None => (fnv1a(pairs.text.as_bytes()), pairs.lines(&dev), pairs.tokenized),
    };
    Ok(Examples { hash, tokenized, train, validation, dev, dev_lines, prefix: prefix.about })
}
