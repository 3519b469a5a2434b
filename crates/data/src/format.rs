//! The JSONL pair format: one example a line. See `datasets/README.md` for the full description.
//!
//! ```text
//! {"base": "The capital of France is", "sources": ["The capital of Italy is"],
//!  "positions": [{"span": "country"}], "spans": {"country": [15, 21]},
//!  "source_spans": [{"country": [15, 20]}],
//!  "base_label": " Paris", "label": " Rome", "meta": {"template": "capital"}}
//! {"prompt": "GO->", "target": " a passage to memorise", "positions": ["last"]}
//! {"text": "I loved this movie", "class": 1, "positions": ["last"]}
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use crate::error::{DataError, Result};

/// Where to intervene, before tokenisation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Position {
    /// A token index; negative counts from the end (`-1` is the last token).
    Index(i64),
    /// The last token.
    Last,
    /// The last token of a named span (a template variable) of this input.
    Span(String),
    /// The last token of a character span `[start, end)` of this input's text.
    Chars(usize, usize),
}

/// One input: text with optional named character spans, or token ids.
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    /// Text, with named spans `[start, end)` in characters.
    Text {
        /// The text.
        text: String,
        /// Named spans (template variables).
        spans: BTreeMap<String, (usize, usize)>,
    },
    /// Token ids, already tokenised.
    Ids(Vec<u32>),
}

/// What is scored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Label {
    /// A continuation whose first token is scored.
    Text(String),
    /// A class index (probes).
    Class(usize),
}

/// One example.
#[derive(Debug, Clone, PartialEq)]
pub enum Example {
    /// A counterfactual pair: a base and one or more sources.
    Pair {
        /// The base input.
        base: Source,
        /// The source inputs.
        sources: Vec<Source>,
        /// Positions in the base.
        base_positions: Vec<Position>,
        /// Positions in each source (the base's rule when not given).
        source_positions: Vec<Vec<Position>>,
        /// What the base run should predict, if given (for controls and the p(cf) > p(base) variant).
        base_label: Option<Label>,
        /// What the intervened run should predict.
        label: Label,
        /// Free metadata (construction, template, variable …).
        meta: Map<String, Value>,
    },
    /// A prompt and the text it should be followed by (ReFT).
    Prompt {
        /// The prompt.
        prompt: Source,
        /// The target continuation.
        target: String,
        /// Positions in the prompt.
        positions: Vec<Position>,
        /// Free metadata.
        meta: Map<String, Value>,
    },
    /// A text and its class (probes).
    Text {
        /// The text.
        text: Source,
        /// Its class.
        class: usize,
        /// Positions read.
        positions: Vec<Position>,
        /// Free metadata.
        meta: Map<String, Value>,
    },
}

impl Example {
    /// The free metadata.
    pub fn meta(&self) -> &Map<String, Value> {
        match self {
            Example::Pair { meta, .. } | Example::Prompt { meta, .. } | Example::Text { meta, .. } => meta,
        }
    }

    /// `pair`, `prompt` or `text`: which kind of line it is, for messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Example::Pair { .. } => "pair",
            Example::Prompt { .. } => "prompt",
            Example::Text { .. } => "text",
        }
    }
}

/// What to do with a bad line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnError {
    /// Stop at the first bad line with its error.
    #[default]
    Stop,
    /// Skip bad lines; they are counted and their reasons kept.
    Skip,
}

/// The examples of a file, with their line numbers, and the lines skipped.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// The file.
    pub path: PathBuf,
    /// `(line, example)`.
    pub examples: Vec<(usize, Example)>,
    /// `(line, reason)` of skipped lines.
    pub skipped: Vec<(usize, String)>,
}

impl Loaded {
    /// A one-paragraph summary of what was skipped (count and the first reasons), if anything was.
    pub fn skipped_summary(&self) -> Option<String> {
        if self.skipped.is_empty() {
            return None;
        }
        let first: Vec<String> = self.skipped.iter().take(3).map(|(l, r)| format!("line {l}: {r}")).collect();
        Some(format!(
            "{}: skipped {} bad line(s); first: {}",
            self.path.display(),
            self.skipped.len(),
            first.join("; ")
        ))
    }
}

/// Reads and validates a JSONL file (format, fields, position rules). Positions past the end
/// and empty labels are found at tokenisation ([`crate::tokenize()`]), which names the line too.
pub fn load_jsonl(path: &Path, on_error: OnError) -> Result<Loaded> {
    let bytes = std::fs::read(path)
        .map_err(|e| DataError::File { path: path.to_path_buf(), reason: format!("cannot read: {e}") })?;
    let text = utf8(path, &bytes)?;
    parse_jsonl(path, text, on_error)
}

/// The text of a file's bytes without a leading UTF-8 byte-order mark, or an error naming the
/// line of the first byte that is not UTF-8.
pub fn utf8<'a>(path: &Path, bytes: &'a [u8]) -> Result<&'a str> {
    let bytes = bytes.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(bytes);
    std::str::from_utf8(bytes).map_err(|e| {
        let at = e.valid_up_to();
        let line = 1 + bytes[..at].iter().filter(|&&b| b == b'\n').count();
        DataError::Line {
            path: path.to_path_buf(),
            line,
            reason: format!("not UTF-8 text (byte {at} of the file): save it as UTF-8"),
        }
    })
}

/// Longest line read: a longer one is refused before parsing (no model reads a text that long,
/// and tokenising it could take minutes and gigabytes).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// [`load_jsonl`] on text already read from `path` (for callers that also hash or copy it);
/// errors name `path` and the line.
///
/// ```
/// use std::path::Path;
/// use ferrovene_data::{Example, OnError, format::parse_jsonl};
///
/// let text = r#"{"base": "The capital of France is", "sources": ["The capital of Italy is"], "positions": [4], "label": " Rome"}
/// {"base": "The capital of Spain is", "sources": ["The capital of Japan is"], "positions": [4], "label": " Tokyo", "colour": 3}"#;
/// // The second line has a key the format does not know: with OnError::Skip it is left out and counted.
/// let loaded = parse_jsonl(Path::new("pairs.jsonl"), text, OnError::Skip)?;
/// assert_eq!(loaded.examples.len(), 1);
/// assert!(matches!(loaded.examples[0].1, Example::Pair { .. }));
/// assert_eq!(loaded.skipped.len(), 1);
/// assert!(parse_jsonl(Path::new("pairs.jsonl"), text, OnError::Stop).unwrap_err().to_string().contains("pairs.jsonl:2"));
/// # Ok::<(), ferrovene_data::DataError>(())
/// ```
pub fn parse_jsonl(path: &Path, text: &str, on_error: OnError) -> Result<Loaded> {
    let mut loaded = Loaded { path: path.to_path_buf(), examples: Vec::new(), skipped: Vec::new() };
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.trim().is_empty() {
            continue;
        }
        let parsed = if line.len() > MAX_LINE_BYTES {
            Err(format!(
                "the line is {} bytes; lines over {} MiB are refused (no model reads a text that long)",
                line.len(),
                MAX_LINE_BYTES >> 20
            ))
        } else {
            parse_line(line.strip_prefix('\u{feff}').unwrap_or(line))
        };
        match parsed {
            Ok(ex) => loaded.examples.push((n, ex)),
            Err(reason) => match on_error {
                OnError::Stop => return Err(DataError::Line { path: path.to_path_buf(), line: n, reason }),
                OnError::Skip => loaded.skipped.push((n, reason)),
            },
        }
    }
    if loaded.examples.is_empty() {
        let reason = if loaded.skipped.is_empty() {
            "empty file: no examples (one JSON object per line)".to_string()
        } else {
            format!(
                "no valid examples: all {} line(s) were bad; first: line {}: {}",
                loaded.skipped.len(),
                loaded.skipped[0].0,
                loaded.skipped[0].1
            )
        };
        return Err(DataError::File { path: path.to_path_buf(), reason });
    }
    Ok(loaded)
}

const PAIR_KEYS: &[&str] = &[
    "base",
    "base_ids",
    "spans",
    "sources",
    "source_ids",
    "source_spans",
    "positions",
    "source_positions",
    "base_label",
    "label",
    "base_class",
    "class",
    "meta",
];
const PROMPT_KEYS: &[&str] = &["prompt", "spans", "target", "positions", "meta"];
const TEXT_KEYS: &[&str] = &["text", "spans", "class", "positions", "meta"];

/// One line to an example, or why not.
pub fn parse_line(line: &str) -> std::result::Result<Example, String> {
    let value: Value = crate::strict_json::parse(line).map_err(|e| format!("malformed JSON: {e}"))?;
    let obj = value.as_object().ok_or("each line must be a JSON object")?;
    let (kind, allowed) = if obj.contains_key("base") || obj.contains_key("base_ids") {
        ("pair", PAIR_KEYS)
    } else if obj.contains_key("prompt") {
        ("prompt", PROMPT_KEYS)
    } else if obj.contains_key("text") {
        ("text", TEXT_KEYS)
    } else {
        return Err("cannot tell the kind of example: a line needs `base` (or `base_ids`) for a pair, `prompt` for ReFT, or `text` for a probe".into());
    };
    if let Some(k) = obj.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("unknown field `{k}` in a {kind} line (allowed: {})", allowed.join(", ")));
    }
    let meta = match obj.get("meta") {
        None => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err("`meta` must be an object".into()),
    };
    let positions = |key: &str| -> std::result::Result<Vec<Position>, String> {
        match obj.get(key) {
            None => Ok(vec![Position::Last]),
            Some(v) => positions_of(v).map_err(|e| format!("`{key}`: {e}")),
        }
    };
    match kind {
        "pair" => {
            let base = source(obj.get("base"), obj.get("base_ids"), obj.get("spans"), "base")?;
            let sources = sources_of(obj)?;
            let base_positions = positions("positions")?;
            let source_positions = match obj.get("source_positions") {
                None => vec![base_positions.clone(); sources.len()],
                Some(Value::Array(rows)) => {
                    if rows.len() != sources.len() {
                        return Err(format!(
                            "`source_positions` has {} entries for {} sources",
                            rows.len(),
                            sources.len()
                        ));
                    }
                    rows.iter()
                        .map(|r| positions_of(r).map_err(|e| format!("`source_positions`: {e}")))
                        .collect::<std::result::Result<_, _>>()?
                }
                Some(_) => return Err("`source_positions` must be a list (one position list per source)".into()),
            };
            if source_positions.iter().any(|p| p.len() != base_positions.len()) {
                return Err("each source needs as many positions as the base".into());
            }
            let label = label_of(obj, "label", "class")?
                .ok_or("missing field `label` (the counterfactual continuation) or `class`")?;
            let base_label = label_of(obj, "base_label", "base_class")?;
            Ok(Example::Pair { base, sources, base_positions, source_positions, base_label, label, meta })
        }
        "prompt" => Ok(Example::Prompt {
            prompt: source(obj.get("prompt"), None, obj.get("spans"), "prompt")?,
            target: match obj.get("target") {
                Some(Value::String(s)) if !s.is_empty() => s.clone(),
                Some(_) => return Err("`target` must be a non-empty string".into()),
                None => return Err("missing field `target` (the text the prompt should be followed by)".into()),
            },
            positions: positions("positions")?,
            meta,
        }),
        _ => Ok(Example::Text {
            text: source(obj.get("text"), None, obj.get("spans"), "text")?,
            class: match obj.get("class") {
                Some(v) => v.as_u64().ok_or("`class` must be a non-negative integer")? as usize,
                None => return Err("missing field `class` (the probe's label)".into()),
            },
            positions: positions("positions")?,
            meta,
        }),
    }
}

fn source(
    text: Option<&Value>,
    ids: Option<&Value>,
    spans: Option<&Value>,
    what: &str,
) -> std::result::Result<Source, String> {
    match (text, ids) {
        (Some(_), Some(_)) => Err(format!("give either `{what}` or `{what}_ids`, not both")),
        (Some(Value::String(t)), None) => Ok(Source::Text { text: t.clone(), spans: spans_of(spans, t)? }),
        (Some(_), None) => Err(format!("`{what}` must be a string")),
        (None, Some(v)) => Ok(Source::Ids(ids_of(v).map_err(|e| format!("`{what}_ids`: {e}"))?)),
        (None, None) => Err(format!("missing field `{what}`")),
    }
}

fn sources_of(obj: &Map<String, Value>) -> std::result::Result<Vec<Source>, String> {
    let spans: Vec<Option<&Value>> = match obj.get("source_spans") {
        None => vec![],
        Some(Value::Array(a)) => a.iter().map(Some).collect(),
        Some(_) => return Err("`source_spans` must be a list (one span object per source)".into()),
    };
    let out: Vec<Source> = match (obj.get("sources"), obj.get("source_ids")) {
        (Some(_), Some(_)) => return Err("give either `sources` or `source_ids`, not both".into()),
        (Some(Value::Array(a)), None) => a
            .iter()
            .enumerate()
            .map(|(i, v)| source(Some(v), None, spans.get(i).copied().flatten(), &format!("sources[{i}]")))
            .collect::<std::result::Result<_, _>>()?,
        (None, Some(Value::Array(a))) => a
            .iter()
            .enumerate()
            .map(|(i, v)| ids_of(v).map(Source::Ids).map_err(|e| format!("`source_ids[{i}]`: {e}")))
            .collect::<std::result::Result<_, _>>()?,
        (None, None) => return Err("missing field `sources` (a list of source texts) or `source_ids`".into()),
        _ => return Err("`sources` / `source_ids` must be a list".into()),
    };
    if out.is_empty() {
        return Err("`sources` is empty: a pair needs at least one source".into());
    }
    if !spans.is_empty() && spans.len() != out.len() {
        return Err(format!("`source_spans` has {} entries for {} sources", spans.len(), out.len()));
    }
    Ok(out)
}

fn ids_of(v: &Value) -> std::result::Result<Vec<u32>, String> {
    let a = v.as_array().ok_or("must be a list of token ids")?;
    if a.is_empty() {
        return Err("is empty".into());
    }
    a.iter()
        .map(|x| {
            x.as_u64()
                .filter(|&i| i <= u32::MAX as u64)
                .map(|i| i as u32)
                .ok_or_else(|| format!("`{x}` is not a token id"))
        })
        .collect()
}

fn spans_of(v: Option<&Value>, text: &str) -> std::result::Result<BTreeMap<String, (usize, usize)>, String> {
    let Some(v) = v else { return Ok(BTreeMap::new()) };
    let obj = v.as_object().ok_or("`spans` must be an object {name: [start, end]}")?;
    let chars = text.chars().count();
    obj.iter()
        .map(|(k, s)| {
            let (a, b) = pair_of(s).map_err(|e| format!("span `{k}`: {e}"))?;
            if a >= b || b > chars {
                return Err(format!("span `{k}` [{a}, {b}) is not inside the text ({chars} characters)"));
            }
            Ok((k.clone(), (a, b)))
        })
        .collect()
}

fn pair_of(v: &Value) -> std::result::Result<(usize, usize), String> {
    match v.as_array().map(|a| a.as_slice()) {
        Some([a, b]) => match (a.as_u64(), b.as_u64()) {
            (Some(a), Some(b)) => Ok((a as usize, b as usize)),
            _ => Err("must be two non-negative integers [start, end]".into()),
        },
        _ => Err("must be [start, end]".into()),
    }
}

fn positions_of(v: &Value) -> std::result::Result<Vec<Position>, String> {
    let one = |p: &Value| -> std::result::Result<Position, String> {
        match p {
            Value::String(s) if s == "last" => Ok(Position::Last),
            Value::Number(n) => n.as_i64().map(Position::Index).ok_or_else(|| format!("`{n}` is not an integer index")),
            Value::Object(o) if o.len() == 1 && o.contains_key("span") => o["span"]
                .as_str()
                .map(|s| Position::Span(s.to_string()))
                .ok_or_else(|| "`span` must name a span".to_string()),
            Value::Object(o) if o.len() == 1 && o.contains_key("chars") => {
                let (a, b) = pair_of(&o["chars"])?;
                if a >= b {
                    return Err(format!("character span [{a}, {b}) is empty"));
                }
                Ok(Position::Chars(a, b))
            }
            other => Err(format!(
                "`{other}` is not a position (use an index, \"last\", {{\"span\": NAME}} or {{\"chars\": [START, END]}})"
            )),
        }
    };
    match v {
        Value::Array(a) if !a.is_empty() => a.iter().map(one).collect(),
        Value::Array(_) => Err("is empty".into()),
        single => Ok(vec![one(single)?]),
    }
}

fn label_of(obj: &Map<String, Value>, text_key: &str, class_key: &str) -> std::result::Result<Option<Label>, String> {
    match (obj.get(text_key), obj.get(class_key)) {
        (Some(_), Some(_)) => Err(format!("give either `{text_key}` or `{class_key}`, not both")),
        (Some(Value::String(s)), None) => Ok(Some(Label::Text(s.clone()))),
        (Some(_), None) => Err(format!("`{text_key}` must be a string (a continuation)")),
        (None, Some(v)) => v
            .as_u64()
            .map(|c| Some(Label::Class(c as usize)))
            .ok_or_else(|| format!("`{class_key}` must be a non-negative integer")),
        (None, None) => Ok(None),
    }
}
