//! From examples to token ids and token positions, with a model's tokenizer.

use std::path::Path;

use ferrovene_models::TextTokenizer;

use crate::error::{DataError, Result};
use crate::format::{Example, Label, Position, Source};

/// One tokenised input and its resolved positions (token indices).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedInput {
    /// Token ids (with the model's special tokens, e.g. BOS where it adds one).
    pub ids: Vec<u32>,
    /// Positions, in the order the example gave them.
    pub positions: Vec<usize>,
}

/// A scored label: the first token of a continuation, or a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LabelId {
    /// Token id.
    Token(u32),
    /// Class index.
    Class(usize),
}

/// A tokenised example.
#[derive(Debug, Clone, PartialEq)]
pub enum TokenizedExample {
    /// A counterfactual pair.
    Pair {
        /// The base.
        base: TokenizedInput,
        /// The sources.
        sources: Vec<TokenizedInput>,
        /// The base label, if given.
        base_label: Option<LabelId>,
        /// The counterfactual label.
        label: LabelId,
    },
    /// A prompt and its target tokens.
    Prompt {
        /// The prompt.
        prompt: TokenizedInput,
        /// The target continuation's tokens.
        target: Vec<u32>,
    },
    /// A text and its class.
    Text {
        /// The text.
        text: TokenizedInput,
        /// Its class.
        class: usize,
    },
}

/// Tokenises `example` (from `path`, line `line`) and resolves its positions; errors name the line.
pub fn tokenize(example: &Example, tok: &TextTokenizer, path: &Path, line: usize) -> Result<TokenizedExample> {
    let err = |reason: String| DataError::Line { path: path.to_path_buf(), line, reason };
    let input = |src: &Source, positions: &[Position], what: &str| input_of(src, positions, what, tok).map_err(err);
    let label = |l: &Label, what: &str| -> Result<LabelId> {
        match l {
            Label::Class(c) => Ok(LabelId::Class(*c)),
            Label::Text(t) => {
                let ids = tok.encode_plain(t).map_err(|e| err(e.to_string()))?;
                ids.first()
                    .map(|&i| LabelId::Token(i))
                    .ok_or_else(|| err(format!("`{what}` {t:?} tokenises to nothing")))
            }
        }
    };
    Ok(match example {
        Example::Pair { base, sources, base_positions, source_positions, base_label, label: l, .. } => {
            TokenizedExample::Pair {
                base: input(base, base_positions, "base")?,
                sources: sources
                    .iter()
                    .zip(source_positions)
                    .enumerate()
                    .map(|(i, (s, p))| input(s, p, &format!("sources[{i}]")))
                    .collect::<Result<_>>()?,
                base_label: base_label.as_ref().map(|b| label(b, "base_label")).transpose()?,
                label: label(l, "label")?,
            }
        }
        Example::Prompt { prompt, target, positions, .. } => {
            let target_ids = tok.encode_plain(target).map_err(|e| err(e.to_string()))?;
            if target_ids.is_empty() {
                return Err(err(format!("`target` {target:?} tokenises to nothing")));
            }
            TokenizedExample::Prompt { prompt: input(prompt, positions, "prompt")?, target: target_ids }
        }
        Example::Text { text, class, positions, .. } => {
            TokenizedExample::Text { text: input(text, positions, "text")?, class: *class }
        }
    })
}

fn input_of(
    src: &Source,
    positions: &[Position],
    what: &str,
    tok: &TextTokenizer,
) -> std::result::Result<TokenizedInput, String> {
    let (ids, offsets, text, spans) = match src {
        Source::Text { text, spans } => {
            let (ids, offsets) = tok.encode_with_offsets(text).map_err(|e| e.to_string())?;
            (ids, Some(offsets), Some(text.as_str()), Some(spans))
        }
        Source::Ids(ids) => {
            let vocab = tok.vocab_size();
            if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| **id as usize >= vocab) {
                return Err(format!(
                    "`{what}` token id {id} (at index {i}) is outside the vocabulary of {vocab} tokens (ids 0..{vocab})"
                ));
            }
            (ids.clone(), None, None, None)
        }
    };
    if ids.is_empty() {
        return Err(format!("`{what}` tokenises to nothing"));
    }
    if let Some(max) = tok.max_positions.filter(|&m| ids.len() > m) {
        return Err(format!(
            "`{what}` is {} tokens long; the model reads at most {max} positions: shorten it",
            ids.len()
        ));
    }
    let n = ids.len();
    let resolved = positions
        .iter()
        .map(|p| {
            let chars = |a: usize, b: usize, name: &str| -> std::result::Result<usize, String> {
                let (Some(text), Some(offsets)) = (text, offsets.as_ref()) else {
                    return Err(format!("{name} in `{what}` needs text, but it was given as token ids"));
                };
                let count = text.chars().count();
                if b > count {
                    return Err(format!("{name} [{a}, {b}) is past the end of `{what}` ({count} characters)"));
                }
                let byte = |c: usize| text.char_indices().nth(c).map_or(text.len(), |(i, _)| i);
                let (start, end) = (byte(a), byte(b));
                offsets
                    .iter()
                    .rposition(|&(s, e)| e > s && s < end && e > start)
                    .ok_or_else(|| format!("{name} [{a}, {b}) of `{what}` covers no token"))
            };
            match p {
                Position::Last => Ok(n - 1),
                Position::Index(i) => {
                    let idx = if *i < 0 { n as i64 + i } else { *i };
                    if idx < 0 || idx >= n as i64 {
                        Err(format!("position {i} is past the end of `{what}` ({n} tokens after tokenisation)"))
                    } else {
                        Ok(idx as usize)
                    }
                }
                Position::Chars(a, b) => chars(*a, *b, "character span"),
                Position::Span(name) => {
                    let spans = spans.ok_or_else(|| {
                        format!("span `{name}` in `{what}` needs text, but it was given as token ids")
                    })?;
                    let &(a, b) = spans.get(name).ok_or_else(|| {
                        let known: Vec<&str> = spans.keys().map(String::as_str).collect();
                        format!(
                            "`{what}` has no span `{name}` (its spans: {})",
                            if known.is_empty() { "none".to_string() } else { known.join(", ") }
                        )
                    })?;
                    chars(a, b, &format!("span `{name}`"))
                }
            }
        })
        .collect::<std::result::Result<Vec<_>, String>>()?;
    Ok(TokenizedInput { ids, positions: resolved })
}
