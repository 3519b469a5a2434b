//! Template suites in CausalGym's format (Arora, Jurafsky & Potts, ACL 2024): a JSON object of
//! tasks, each a set of templates whose `{variable}` slots are filled from word lists, with one
//! variable (`label`) whose class decides how the sentence goes on. From a task come balanced
//! base/source pairs that differ only in that variable's class (all other fillers equal), in both
//! directions, labelled with each class's continuation, with a named character span for every
//! slot (the regions a sweep intervenes at), split into train and test by filler combination.
//!
//! ```json
//! {"agreement_subject": {
//!    "templates": ["The {subject} near the {noun} {adverb}"],
//!    "label": "subject",
//!    "labels": {"singular": ["is"], "plural": ["are"]},
//!    "variables": {"subject": {"singular": ["cat"], "plural": ["cats"]},
//!                  "noun": ["door", "tables"], "adverb": ["often", "always"]},
//!    "result_prepend_space": true}}
//! ```

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};

use ferrovene_models::rng::Rng;
use serde_json::{Map, Value, json};

use crate::error::{DataError, Result};
use crate::format::{Example, Label, Position, Source};
use read::read_task;
pub use task::{Fillers, LabelVars, RESERVED_REGIONS, Task};
use task::{Piece, other_slots, pieces};

mod read;
mod task;

/// A suite file: tasks by name, in the file's order of names.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    /// The file.
    pub path: PathBuf,
    /// Tasks by name.
    pub tasks: BTreeMap<String, Task>,
}

/// Most pairs (training and test together) one task may ask for: more is not a sweep anyone
/// runs, and would be allocated before the first pair is drawn.
pub const MAX_PAIRS_PER_TASK: usize = 1_000_000;

/// Reads and checks a suite file: every slot names a variable, the label variable is in every
/// template with fillers for each class of `labels`, and every list has words.
pub fn read_suite(path: &Path) -> Result<Suite> {
    let file_err = |reason: String| DataError::File { path: path.to_path_buf(), reason };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(format!("cannot read the suite: {e}")))?;
    let not_a_suite = |e: serde_json::Error| {
        file_err(format!("not a suite (a JSON object of tasks in CausalGym's template format): {e}"))
    };
    let Value::Object(raw) = crate::strict_json::parse(&text).map_err(not_a_suite)? else {
        return Err(file_err("not a suite: a JSON object of tasks in CausalGym's template format".into()));
    };
    let mut tasks: BTreeMap<String, Task> = BTreeMap::new();
    for (name, value) in raw {
        tasks.insert(name.clone(), read_task(&name, value).map_err(file_err)?);
    }
    if tasks.is_empty() {
        return Err(file_err("the suite has no tasks".into()));
    }
    for (name, task) in &tasks {
        crate::names::check_file_name(name).map_err(|why| file_err(format!("task name {name:?}: {why}")))?;
        task.check().map_err(|reason| file_err(format!("task `{name}`: {reason}")))?;
    }
    if let Some((a, b)) = crate::names::case_collision(tasks.keys().map(String::as_str)) {
        return Err(file_err(format!(
            "tasks `{a}` and `{b}` differ only in case: their folders would be one on macOS and Windows; rename one"
        )));
    }
    Ok(Suite { path: path.to_path_buf(), tasks })
}

/// One filler combination: a template and a word for every variable (each label variable's word
/// for each class, in the order of `label`), and which continuation alternative is scored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Combination {
    template: usize,
    words: Vec<(String, usize)>,
    label_words: Vec<[usize; 2]>,
    continuation: usize,
}

/// Draws `count` distinct combinations (seeded), or says how many the task has. A combination
/// holds words only for the slots its template has, so distinct combinations are distinct pairs
/// of sentences.
fn combinations(name: &str, task: &Task, count: usize, seed: u64) -> std::result::Result<Vec<Combination>, String> {
    let label_lists = task.label_list_lengths();
    let slots: Vec<Vec<(&String, usize)>> = task.templates.iter().map(|t| other_slots(task, t)).collect();
    let alternatives = task.labels.values().map(Vec::len).min().unwrap_or(1);
    let total = task.combination_count();
    if (count as f64) > total {
        return Err(format!(
            "task `{name}` has {total} filler combinations, fewer than the {count} needed; add fillers or ask for fewer pairs"
        ));
    }
    let mut rng = Rng::new(seed);
    let mut pick = |n: usize| (rng.next_u64() % n as u64) as usize;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(count.min(1 << 16));
    let mut tries = 0usize;
    while out.len() < count {
        tries += 1;
        if tries > count * 1000 + 10_000 {
            return Err(format!(
                "task `{name}`: drew only {} distinct filler combinations of the {count} needed",
                out.len()
            ));
        }
        let template = pick(task.templates.len());
        let c = Combination {
            template,
            words: {
                let mut heads: Vec<(&str, usize)> = Vec::new();
                slots[template]
                    .iter()
                    .map(|(n, len)| {
                        let i = match n.split_once('.') {
                            Some((h, _)) => match heads.iter().find(|(k, _)| *k == h) {
                                Some((_, i)) => *i,
                                None => {
                                    let i = pick(*len);
                                    heads.push((h, i));
                                    i
                                }
                            },
                            None => pick(*len),
                        };
                        ((*n).clone(), i)
                    })
                    .collect()
            },
            label_words: label_lists.iter().map(|[a, b]| [pick(*a), pick(*b)]).collect(),
            continuation: pick(alternatives),
        };
        if seen.insert(c.clone()) {
            out.push(c);
        }
    }
    Ok(out)
}

/// The text of `template` filled with `words`, and each slot's character span (a slot used twice
/// names its second span `name_2`).
fn fill(template: &str, words: &BTreeMap<&str, &str>) -> (String, BTreeMap<String, (usize, usize)>) {
    let mut text = String::new();
    let mut spans = BTreeMap::new();
    for p in pieces(template).unwrap_or_default() {
        match p {
            Piece::Text(t) => text.push_str(&t),
            Piece::Slot(s) => {
                let start = text.chars().count();
                text.push_str(words[s.as_str()]);
                let mut key = s.clone();
                let mut n = 2;
                while spans.contains_key(&key) {
                    key = format!("{s}_{n}");
                    n += 1;
                }
                spans.insert(key, (start, text.chars().count()));
            }
        }
    }
    (text, spans)
}

/// The two pairs of a combination: class 0's sentence as the base with class 1's as the source,
/// and the other way round.
fn pairs_of(name: &str, task: &Task, c: &Combination) -> [Example; 2] {
    let classes = task.classes();
    let side = |k: usize| -> Source {
        let mut words: BTreeMap<&str, &str> = BTreeMap::new();
        for (var, i) in &c.words {
            if let Fillers::List(l) = &task.variables[var] {
                words.insert(var, &l[*i]);
            }
        }
        for (var, picked) in task.label.names().iter().zip(&c.label_words) {
            if let Fillers::ByClass(by) = &task.variables[var] {
                words.insert(var, &by[classes[k]][picked[k]]);
            }
        }
        let (text, spans) = fill(&task.templates[c.template], &words);
        Source::Text { text, spans }
    };
    let example = |base: usize| {
        let source = 1 - base;
        // Where the pair's own positions point: the first label variable with a word in every
        // sentence, else the last token (a sweep sets its regions itself).
        let at = match task.label.names().iter().find(|v| task.blank_slot(v).is_none()) {
            Some(v) => Position::Span(v.clone()),
            None => Position::Last,
        };
        let mut meta = Map::new();
        meta.insert("task".into(), json!(name));
        meta.insert("template".into(), json!(c.template));
        meta.insert("base_class".into(), json!(classes[base]));
        meta.insert("combination".into(), json!(combination_key(c)));
        Example::Pair {
            base: side(base),
            sources: vec![side(source)],
            base_positions: vec![at.clone()],
            source_positions: vec![vec![at]],
            base_label: Some(Label::Text(task.continuation(classes[base], c.continuation))),
            label: Label::Text(task.continuation(classes[source], c.continuation)),
            meta,
        }
    };
    [example(0), example(1)]
}

/// A combination as text, for the pairs' metadata (pairs of one combination share it).
fn combination_key(c: &Combination) -> String {
    let words: Vec<String> = c.words.iter().map(|(n, i)| format!("{n}={i}")).collect();
    let label: Vec<String> = c.label_words.iter().map(|[a, b]| format!("{a}/{b}")).collect();
    format!("t{};{};label={};c{}", c.template, words.join(","), label.join(","), c.continuation)
}

/// A task's train and test pairs: `train` and `test` pairs (each even: both directions of every
/// combination), from distinct filler combinations, so that no test sentence pair was trained on.
pub struct Split {
    /// Training pairs.
    pub train: Vec<Example>,
    /// Test pairs.
    pub test: Vec<Example>,
}

/// Generates the train and test pairs of task `name` (seeded).
pub fn split(suite: &Suite, name: &str, train: usize, test: usize, seed: u64) -> Result<Split> {
    let err = |reason: String| DataError::File { path: suite.path.clone(), reason };
    let task = suite.tasks.get(name).ok_or_else(|| {
        err(format!("no task `{name}` (tasks: {})", suite.tasks.keys().cloned().collect::<Vec<_>>().join(", ")))
    })?;
    if train.saturating_add(test) > MAX_PAIRS_PER_TASK {
        return Err(err(format!(
            "task `{name}`: {train} training and {test} test pairs asked, more than the {MAX_PAIRS_PER_TASK} a task may have; ask for fewer"
        )));
    }
    let (n_train, n_test) = (train.div_ceil(2), test.div_ceil(2));
    let combos = combinations(name, task, n_train + n_test, seed).map_err(err)?;
    let expand = |cs: &[Combination]| -> Vec<Example> { cs.iter().flat_map(|c| pairs_of(name, task, c)).collect() };
    Ok(Split { train: expand(&combos[..n_train]), test: expand(&combos[n_train..]) })
}

/// The same pairs with the two classes' continuations replaced by two unrelated words, `words[k]`
/// for class `k` (a control task in the sense of Hewitt & Liang 2019: what a method scores here it
/// would score without the variable). Words are used as given (` dog`, with its space).
pub fn control(pairs: &[Example], task: &Task, words: [&str; 2]) -> Vec<Example> {
    let classes = task.classes();
    pairs
        .iter()
        .map(|ex| match ex {
            Example::Pair { base, sources, base_positions, source_positions, meta, .. } => {
                let base_class = meta.get("base_class").and_then(Value::as_str);
                let k = classes.iter().position(|c| Some(*c) == base_class).unwrap_or(0);
                Example::Pair {
                    base: base.clone(),
                    sources: sources.clone(),
                    base_positions: base_positions.clone(),
                    source_positions: source_positions.clone(),
                    base_label: Some(Label::Text(words[k].to_string())),
                    label: Label::Text(words[1 - k].to_string()),
                    meta: meta.clone(),
                }
            }
            other => other.clone(),
        })
        .collect()
}

/// The meta value every pair of a task carries under `task` (for grouping results).
pub fn task_of(example: &Example) -> Option<&str> {
    example.meta().get("task").and_then(Value::as_str)
}
