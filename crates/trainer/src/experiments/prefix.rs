//! What a recipe's `prefix` puts before every input. CausalGym's code prepends `<|endoftext|>`
//! to every sentence; without it, a word at the start of a sentence is the model's attention sink
//! and barely carries its meaning (SmolLM2 on `npi_any_subj-relc`: the difference of means at
//! 6.det1 gives a log odds-ratio of 0.21 without, 3.46 with).

use anyhow::{Context, Result};
use ferrovene_data::{TokenizedExample, TokenizedInput};
use ferrovene_models::TextTokenizer;

/// The `prefix` value that means CausalGym's own: `<|endoftext|>` where the vocabulary has it as
/// one token (GPT-2, Pythia, SmolLM2, Qwen), else nothing beyond what the tokenizer adds.
pub const CAUSALGYM_PREFIX: &str = "causalgym";

/// The tokens a `prefix` puts before every input, after the tokens the tokenizer itself puts
/// first (a BOS), and what they are in words for the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prefix {
    /// The prefix's tokens.
    pub ids: Vec<u32>,
    /// The tokens the tokenizer puts before any text (its BOS, where it adds one).
    pub lead: Vec<u32>,
    /// What the prefix is, in words.
    pub about: String,
}

impl Prefix {
    /// `prefix` read with `tok`: [`CAUSALGYM_PREFIX`] is `<|endoftext|>` where the vocabulary
    /// has it as one token, else nothing; `""` is nothing; any other text is its tokens.
    pub fn new(prefix: &str, tok: &TextTokenizer) -> Result<Self> {
        const ENDOFTEXT: &str = "<|endoftext|>";
        let (ids, about) = if prefix == CAUSALGYM_PREFIX {
            match tok.inner().token_to_id(ENDOFTEXT) {
                Some(id) => (vec![id], format!("{ENDOFTEXT} (token {id}), as CausalGym's code prepends it")),
                None => (vec![], format!("nothing: the vocabulary has no {ENDOFTEXT} (CausalGym's prefix)")),
            }
        } else if prefix.is_empty() {
            (vec![], "nothing".into())
        } else {
            let ids = tok.encode_plain(prefix).with_context(|| format!("`prefix` {prefix:?}"))?;
            let about = format!("{prefix:?} (tokens {ids:?})");
            (ids, about)
        };
        // What the tokenizer adds before a text: `encode` less `encode_plain`, up to where the
        // plain tokens start.
        let (full, plain) = (tok.encode("a")?, tok.encode_plain("a")?);
        let start = (0..=full.len().saturating_sub(plain.len())).find(|&i| full[i..].starts_with(&plain)).unwrap_or(0);
        Ok(Prefix { ids, lead: full[..start].to_vec(), about })
    }

    /// `input` with the prefix after its leading special tokens (at the start when it has none
    /// of the tokenizer's), its positions shifted past it.
    pub fn apply(&self, input: TokenizedInput) -> TokenizedInput {
        if self.ids.is_empty() {
            return input;
        }
        let at = if input.ids.starts_with(&self.lead) { self.lead.len() } else { 0 };
        let mut ids = input.ids[..at].to_vec();
        ids.extend(&self.ids);
        ids.extend(&input.ids[at..]);
        let positions = input.positions.iter().map(|&p| if p < at { p } else { p + self.ids.len() }).collect();
        TokenizedInput { ids, positions }
    }

    /// Every input of `example` with the prefix ([`Prefix::apply`]).
    pub fn apply_example(&self, example: TokenizedExample) -> TokenizedExample {
        match example {
            TokenizedExample::Pair { base, sources, base_label, label } => TokenizedExample::Pair {
                base: self.apply(base),
                sources: sources.into_iter().map(|s| self.apply(s)).collect(),
                base_label,
                label,
            },
            TokenizedExample::Prompt { prompt, target } => {
                TokenizedExample::Prompt { prompt: self.apply(prompt), target }
            }
            TokenizedExample::Text { text, class } => TokenizedExample::Text { text: self.apply(text), class },
        }
    }
}
