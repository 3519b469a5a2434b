//! Filler–gap pairs after Boguraev, Potts & Mahowald (2025, arXiv 2505.16002), with our own
//! lexicon (`datasets/filler-gap/README.md` describes the design).
//!
//! Seven constructions, each animate and inanimate, each single-clause and with an extra
//! embedded clause, all written `{prefix} {filler} the {noun} {verb}`. A pair shares everything
//! but the filler: one side has a filler–gap dependency and continues with what closes the gap
//! (`?`, `.`, ` was`); the other has none and continues with an object (` him`, ` it`). Every
//! item gives both directions. Named character spans (`filler`, `article`, `noun`, `verb`, and in
//! the embedded version `article_e`, `noun_e`, `verb_e`) let positions survive tokenisation.

use serde_json::{Value, json};

use crate::format::{Example, Label, Position, Source};

/// The seven constructions.
pub const CONSTRUCTIONS: [&str; 7] = [
    "matrix_wh",
    "embedded_wh_know",
    "embedded_wh_wonder",
    "relative_clause",
    "cleft",
    "pseudo_cleft",
    "topicalization",
];

/// Subjects of the gapped clause (and of the extra embedded clause).
const AGENTS: [&str; 12] = [
    "lawyer", "doctor", "teacher", "farmer", "pilot", "nurse", "baker", "singer", "driver", "painter", "judge",
    "sailor",
];
/// Transitive verbs taking animate and inanimate objects: (past, base).
const VERBS: [(&str, &str); 8] = [
    ("saw", "see"),
    ("found", "find"),
    ("liked", "like"),
    ("remembered", "remember"),
    ("noticed", "notice"),
    ("described", "describe"),
    ("praised", "praise"),
    ("mentioned", "mention"),
];
/// Verbs of the extra embedded clause: (past, base).
const SAYING: [(&str, &str); 3] = [("said", "say"), ("thought", "think"), ("claimed", "claim")];
/// Heads for relative clauses, clefts and topicalisation.
const ANIMATE_HEADS: [&str; 6] = ["man", "woman", "boy", "girl", "student", "guest"];
const INANIMATE_HEADS: [&str; 6] = ["book", "car", "letter", "song", "picture", "cake"];

/// The words of one item; a pair is the item with and without a gap.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Item {
    /// One of [`CONSTRUCTIONS`].
    pub construction: &'static str,
    /// Whether the displaced object is animate (`who`, ` him`) or not (`what`, ` it`).
    pub animate: bool,
    /// Whether an extra clause (`the doctor said`) sits between filler and gap.
    pub embedded: bool,
    noun: &'static str,
    verb: (&'static str, &'static str),
    head: &'static str,
    embed: Option<(&'static str, (&'static str, &'static str))>,
}

/// One side of a pair: its text, spans and continuation.
#[derive(Debug, Clone, PartialEq)]
pub struct Side {
    /// The sentence prefix.
    pub text: String,
    /// Named character spans.
    pub spans: Vec<(&'static str, usize, usize)>,
    /// What comes next on this side.
    pub continuation: &'static str,
}

impl Item {
    /// The text of the side without a gap: items that share it (animate and inanimate versions
    /// of some constructions) must fall on the same side of a split.
    pub fn group(&self) -> String {
        format!("{}|{}", self.construction, self.side(false).text)
    }

    /// An identifier of the item (both of its sides).
    pub fn key(&self) -> String {
        let e = self.embed.map_or(String::new(), |(n, v)| format!("+{n}:{}", v.0));
        format!(
            "{}|{}|{}|{}|{}|{}{e}",
            self.construction, self.animate, self.noun, self.verb.0, self.head, self.embedded
        )
    }

    /// The side with the filler–gap dependency (`gap = true`) or without it.
    pub fn side(&self, gap: bool) -> Side {
        let a = self.animate;
        let wh = if a { "who" } else { "what" };
        let object = if a { " him" } else { " it" };
        let comp = if a { "who" } else { "that" };
        // (prefix before the filler, filler, gap continuation, non-gap filler, whether the final
        // verb takes its base form after `did`)
        let (prefix, filler_gap, close, filler_plain, did) = match self.construction {
            "matrix_wh" => ("", format!("{} did", capital(wh)), "?", "Did".to_string(), true),
            "embedded_wh_know" => ("I know ", wh.to_string(), ".", "that".to_string(), false),
            "embedded_wh_wonder" => ("I wonder ", wh.to_string(), ".", "whether".to_string(), false),
            "relative_clause" => ("", comp.to_string(), " was", "is here and".to_string(), false),
            "cleft" => ("It was ", format!("the {} {comp}", self.head), ".", "clear that".to_string(), false),
            "pseudo_cleft" => ("", capital(wh), " was", "Yesterday".to_string(), false),
            "topicalization" => ("", format!("That {},", self.head), ".", "Yesterday,".to_string(), false),
            other => unreachable!("unknown construction {other}"),
        };
        let prefix =
            if self.construction == "relative_clause" { format!("The {} ", self.head) } else { prefix.to_string() };
        let filler = if gap { filler_gap } else { filler_plain };
        let mut text = prefix;
        let mut spans = Vec::new();
        let mut push = |text: &mut String, name: &'static str, word: &str| {
            if !text.is_empty() && !text.ends_with(' ') {
                text.push(' ');
            }
            let start = text.chars().count();
            text.push_str(word);
            spans.push((name, start, text.chars().count()));
        };
        push(&mut text, "filler", &filler);
        let mut verb_form = if did { self.verb.1 } else { self.verb.0 };
        if let Some((noun_e, saying)) = self.embed {
            push(&mut text, "article_e", "the");
            push(&mut text, "noun_e", noun_e);
            push(&mut text, "verb_e", if did { saying.1 } else { saying.0 });
            verb_form = self.verb.0;
        }
        push(&mut text, "article", "the");
        push(&mut text, "noun", self.noun);
        push(&mut text, "verb", verb_form);
        Side { text, spans, continuation: if gap { close } else { object } }
    }

    /// The names of the spans, in order (the positions a sweep can intervene at).
    pub fn span_names(&self) -> Vec<&'static str> {
        self.side(true).spans.iter().map(|s| s.0).collect()
    }

    /// The pair with base `gap_in_base` and source the other side, intervening at span
    /// `position`, as a line of the pair format.
    pub fn pair_json(&self, gap_in_base: bool, position: &str) -> Value {
        self.pair_json_at(gap_in_base, &[position])
    }

    /// The same with several positions (one per named span).
    pub fn pair_json_at(&self, gap_in_base: bool, positions: &[&str]) -> Value {
        let (base, source) = (self.side(gap_in_base), self.side(!gap_in_base));
        let spans = |s: &Side| {
            s.spans.iter().map(|(n, a, b)| (n.to_string(), json!([a, b]))).collect::<serde_json::Map<_, _>>()
        };
        json!({
            "base": base.text, "spans": spans(&base),
            "sources": [source.text], "source_spans": [spans(&source)],
            "positions": positions.iter().map(|p| json!({"span": p})).collect::<Vec<_>>(),
            "base_label": base.continuation, "label": source.continuation,
            "meta": {
                "construction": self.construction, "animate": self.animate, "embedded": self.embedded,
                "item": self.key(), "direction": if gap_in_base { "gap_to_plain" } else { "plain_to_gap" },
            },
        })
    }

    /// The same pair as an [`Example`].
    pub fn pair(&self, gap_in_base: bool, position: &str) -> Example {
        self.example_at(gap_in_base, &[position])
    }

    /// The pair with base `gap_in_base`, intervening at each named span of `positions`, built
    /// directly (the example [`Item::pair_json_at`]'s line parses to).
    pub fn example_at(&self, gap_in_base: bool, positions: &[&str]) -> Example {
        let (base, source) = (self.side(gap_in_base), self.side(!gap_in_base));
        let text = |s: &Side| Source::Text {
            text: s.text.clone(),
            spans: s.spans.iter().map(|(n, a, b)| (n.to_string(), (*a, *b))).collect(),
        };
        let base_positions: Vec<Position> = positions.iter().map(|p| Position::Span(p.to_string())).collect();
        let meta = json!({
            "construction": self.construction, "animate": self.animate, "embedded": self.embedded,
            "item": self.key(), "direction": if gap_in_base { "gap_to_plain" } else { "plain_to_gap" },
        });
        Example::Pair {
            base: text(&base),
            sources: vec![text(&source)],
            source_positions: vec![base_positions.clone()],
            base_positions,
            base_label: Some(Label::Text(base.continuation.to_string())),
            label: Label::Text(source.continuation.to_string()),
            meta: meta.as_object().cloned().unwrap_or_default(),
        }
    }
}

fn capital(w: &str) -> String {
    let mut c = w.chars();
    c.next().map_or(String::new(), |f| f.to_uppercase().collect::<String>() + c.as_str())
}

/// Every distinct item of the lexicon for `construction` (animate and inanimate, single and
/// embedded), in a fixed order; the caller shuffles and samples.
pub fn items(construction: &'static str) -> Vec<Item> {
    let mut out = Vec::new();
    for animate in [true, false] {
        let heads: &[&'static str] = if animate { &ANIMATE_HEADS } else { &INANIMATE_HEADS };
        for embedded in [false, true] {
            for (i, &noun) in AGENTS.iter().enumerate() {
                for (j, &verb) in VERBS.iter().enumerate() {
                    let head = heads[(i + j) % heads.len()];
                    let embed =
                        embedded.then(|| (AGENTS[(i + j + 1) % AGENTS.len()], SAYING[(i + 2 * j) % SAYING.len()]));
                    out.push(Item { construction, animate, embedded, noun, verb, head, embed });
                }
            }
        }
    }
    out
}

/// The first token of each continuation must differ between the two sides, or the p(label) >
/// p(base label) metric is meaningless; returns the offending continuations for `first_token`.
pub fn check_continuations(mut first_token: impl FnMut(&str) -> Option<u32>) -> Result<(), String> {
    for c in CONSTRUCTIONS {
        for item in items(c).into_iter().take(4) {
            let (g, p) = (item.side(true).continuation, item.side(false).continuation);
            let (a, b) = (first_token(g), first_token(p));
            if a.is_none() || a == b {
                return Err(format!(
                    "{c}: continuations {g:?} and {p:?} start with the same token ({a:?}) for this tokenizer"
                ));
            }
        }
    }
    Ok(())
}
