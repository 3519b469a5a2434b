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
use serde::Deserialize;
use serde_json::{Map, Value, json};

use crate::error::{DataError, Result};
use crate::format::{Example, Label, Position, Source};

/// The fillers of one variable: one list, or (for the label variable) a list per class.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Fillers {
    /// Words any pair may use on both sides.
    List(Vec<String>),
    /// Words by class of the label variable.
    ByClass(BTreeMap<String, Vec<String>>),
}

/// One task of a suite file. Besides the fields below, a task may carry descriptive strings of
/// its own (CausalGym's `source`, a URL on every task of its `syntaxgym.json`): they are kept in
/// [`Task::about`] and go into the report.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Task {
    /// Sentences with `{variable}` slots (names may contain dots).
    pub templates: Vec<String>,
    /// The variable whose class decides the continuation.
    pub label: String,
    /// Class → continuations (the first token of each is scored).
    pub labels: BTreeMap<String, Vec<String>>,
    /// Variable → fillers.
    pub variables: BTreeMap<String, Fillers>,
    /// Put a space before every continuation (CausalGym's convention for word continuations).
    #[serde(default)]
    pub result_prepend_space: bool,
    /// One line saying what the task tests (ours; CausalGym's files have none).
    #[serde(default)]
    pub description: Option<String>,
    /// Descriptive string fields other than the above (CausalGym's `source`), by name.
    #[serde(skip)]
    pub about: BTreeMap<String, String>,
}

/// The fields a task has, with what each holds (for errors that name the field).
const TASK_FIELDS: [(&str, &str); 6] = [
    ("templates", "a list of template strings"),
    ("label", "the name of the label variable"),
    ("labels", "an object of class → list of continuations"),
    ("variables", "an object of variable → list of fillers (or, for the label variable, class → list)"),
    ("result_prepend_space", "true or false"),
    ("description", "a string"),
];

/// Reads one task, naming the field at fault: its known fields each checked alone, any other
/// field kept when it is a string (descriptive, as CausalGym's `source`) and refused otherwise.
fn read_task(name: &str, value: Value) -> std::result::Result<Task, String> {
    let Value::Object(fields) = value else { return Err(format!("task `{name}` is not an object of fields")) };
    let mut known = Map::new();
    let mut about = BTreeMap::new();
    for (field, v) in fields {
        if let Some((_, what)) = TASK_FIELDS.iter().find(|(f, _)| *f == field) {
            if field == "label" && v.is_array() {
                return Err(format!(
                    "task `{name}`: label: a list of variables ({v}), which decide the label jointly in CausalGym, is not read yet; a task here has one label variable"
                ));
            }
            // Each field alone, so that a wrong type names it.
            let probe = Value::Object(Map::from_iter([(field.clone(), v.clone())]));
            let check: std::result::Result<PartialTask, _> = serde_json::from_value(probe);
            check.map_err(|e| format!("task `{name}`: {field}: {e} (expected {what})"))?;
            known.insert(field, v);
        } else if field == "label_prepend_space" {
            // Older CausalGym files: how label fillers were counted in tokens; nothing to do here.
        } else {
            match v {
                Value::String(text) => {
                    about.insert(field, text);
                }
                other => {
                    return Err(format!(
                        "task `{name}`: unknown field `{field}` ({other}); a task has {}, and may carry descriptive strings (such as CausalGym's `source`)",
                        TASK_FIELDS.iter().map(|(f, _)| format!("`{f}`")).collect::<Vec<_>>().join(", ")
                    ));
                }
            }
        }
    }
    let mut task: Task = serde_json::from_value(Value::Object(known)).map_err(|e| format!("task `{name}`: {e}"))?;
    task.about = about;
    Ok(task)
}

/// Every field of a task optional, each checked for its type alone.
#[derive(Deserialize)]
#[allow(dead_code)]
struct PartialTask {
    templates: Option<Vec<String>>,
    label: Option<String>,
    labels: Option<BTreeMap<String, Vec<String>>>,
    variables: Option<BTreeMap<String, Fillers>>,
    result_prepend_space: Option<bool>,
    description: Option<String>,
}

/// A suite file: tasks by name, in the file's order of names.
#[derive(Debug, Clone, PartialEq)]
pub struct Suite {
    /// The file.
    pub path: PathBuf,
    /// Tasks by name.
    pub tasks: BTreeMap<String, Task>,
}

/// Region names a sweep gives a meaning of its own (`label`: the label variable's slot; `last`:
/// the last token; `all`: every region); no variable may take one.
pub const RESERVED_REGIONS: [&str; 3] = ["label", "last", "all"];

/// Most pairs (training and test together) one task may ask for: more is not a sweep anyone
/// runs, and would be allocated before the first pair is drawn.
pub const MAX_PAIRS_PER_TASK: usize = 1_000_000;

/// A template cut at its slots: literal text and variable names, alternating.
#[derive(Debug, Clone, PartialEq)]
enum Piece {
    Text(String),
    Slot(String),
}

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

/// Cuts a template into text and slots; `{` without a closing `}` is an error.
fn pieces(template: &str) -> std::result::Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close =
            rest[open..].find('}').ok_or_else(|| format!("template `{template}` has a `{{` without a closing `}}`"))?
                + open;
        let name = &rest[open + 1..close];
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || c == '_' || c == '.') {
            return Err(format!(
                "template `{template}`: `{{{name}}}` is not a variable name (letters, digits, `_` and `.`)"
            ));
        }
        if open > 0 {
            out.push(Piece::Text(rest[..open].to_string()));
        }
        out.push(Piece::Slot(name.to_string()));
        rest = &rest[close + 1..];
    }
    if !rest.is_empty() {
        out.push(Piece::Text(rest.to_string()));
    }
    Ok(out)
}

impl Task {
    /// The label variable's classes, in order (exactly two).
    pub fn classes(&self) -> Vec<&str> {
        self.labels.keys().map(String::as_str).collect()
    }

    /// What is wrong with the task, if anything.
    fn check(&self) -> std::result::Result<(), String> {
        if self.templates.is_empty() {
            return Err("no templates".into());
        }
        if let Some(v) = self.variables.keys().find(|v| RESERVED_REGIONS.contains(&v.as_str())) {
            return Err(format!(
                "variable `{v}`: `label`, `last` and `all` are the region names a sweep reserves (the label variable's slot, the last token, every region), so a slot of that name could never be intervened on; rename the variable"
            ));
        }
        if self.labels.len() != 2 {
            return Err(format!(
                "`labels` has {} classes ({}); a task contrasts exactly two",
                self.labels.len(),
                self.classes().join(", ")
            ));
        }
        if let Some((class, _)) =
            self.labels.iter().find(|(_, c)| c.is_empty() || c.iter().any(|s| s.trim().is_empty()))
        {
            return Err(format!("`labels.{class}` needs at least one non-empty continuation"));
        }
        match self.variables.get(&self.label) {
            None => return Err(format!("the label variable `{}` is not in `variables`", self.label)),
            Some(Fillers::List(_)) => {
                return Err(format!(
                    "the label variable `{}` needs fillers by class ({})",
                    self.label,
                    self.classes().join(", ")
                ));
            }
            Some(Fillers::ByClass(by)) => {
                if by.keys().ne(self.labels.keys()) {
                    return Err(format!(
                        "`variables.{}` has classes {:?} but `labels` has {:?}",
                        self.label,
                        by.keys().collect::<Vec<_>>(),
                        self.classes()
                    ));
                }
            }
        }
        for (name, fillers) in &self.variables {
            let lists: Vec<&Vec<String>> = match fillers {
                Fillers::List(l) => vec![l],
                Fillers::ByClass(_) if name != &self.label => {
                    return Err(format!(
                        "`variables.{name}` has fillers by class, which only the label variable `{}` may",
                        self.label
                    ));
                }
                Fillers::ByClass(by) => by.values().collect(),
            };
            if lists.iter().any(|l| l.is_empty()) {
                return Err(format!("`variables.{name}` has an empty list of fillers"));
            }
            if name == &self.label
                && let Some(empty) = lists.iter().flat_map(|l| l.iter()).find(|w| w.trim().is_empty())
            {
                return Err(format!(
                    "the label variable `{name}` has the empty filler {empty:?}: its slot would cover no token, so there would be nothing to intervene on; give it a word"
                ));
            }
            // Dotted variables of one head are picked together (CausalGym's `clause.verb` with
            // `clause.np2`): a word may recur in one of them with different partners.
            for l in lists.iter().filter(|_| !name.contains('.')) {
                let mut seen = HashSet::new();
                if let Some(twice) = l.iter().find(|w| !seen.insert(w.as_str())) {
                    return Err(format!(
                        "`variables.{name}` lists {twice:?} twice: two combinations would make the same sentences, on both sides of the train/test split; remove one"
                    ));
                }
            }
        }
        self.check_dotted_heads()?;
        for template in &self.templates {
            let slots: Vec<String> = pieces(template)?
                .into_iter()
                .filter_map(|p| if let Piece::Slot(s) = p { Some(s) } else { None })
                .collect();
            if let Some(missing) = slots.iter().find(|s| !self.variables.contains_key(*s)) {
                return Err(format!("template `{template}` uses `{{{missing}}}`, which is not in `variables`"));
            }
            if !slots.contains(&self.label) {
                return Err(format!(
                    "template `{template}` has no `{{{}}}` slot: its pairs would not differ",
                    self.label
                ));
            }
        }
        Ok(())
    }

    /// Dotted variables of one head (`clause.verb`, `clause.np2`) are picked with one index, so
    /// their lists must be as long.
    fn check_dotted_heads(&self) -> std::result::Result<(), String> {
        for (name, fillers) in &self.variables {
            let (Some((head, _)), Fillers::List(l)) = (name.split_once('.'), fillers) else { continue };
            if let Some((other, Fillers::List(m))) = self.variables.iter().find(|(o, f)| {
                o.split_once('.').is_some_and(|(h, _)| h == head) && matches!(f, Fillers::List(m) if m.len() != l.len())
            }) {
                return Err(format!(
                    "variables: `{name}` and `{other}` share the head `{head}`, so one choice picks both (as CausalGym does); they need as many fillers ({} and {})",
                    l.len(),
                    m.len()
                ));
            }
        }
        Ok(())
    }

    /// The continuation as scored: with a leading space when `result_prepend_space`.
    fn continuation(&self, class: &str, index: usize) -> String {
        let list = &self.labels[class];
        let c = &list[index % list.len()];
        if self.result_prepend_space && !c.starts_with(' ') { format!(" {c}") } else { c.clone() }
    }

    /// Every slot name of every template (the regions), in first-seen order.
    pub fn regions(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for t in &self.templates {
            for p in pieces(t).unwrap_or_default() {
                if let Piece::Slot(s) = p
                    && !out.contains(&s)
                {
                    out.push(s);
                }
            }
        }
        out
    }

    /// Checks that the two classes' continuations start with different tokens (else the
    /// intervened prediction cannot tell them apart): `first_token` gives a continuation's first
    /// token id, or `None` when it has none.
    pub fn check_continuations(
        &self,
        mut first_token: impl FnMut(&str) -> Option<u32>,
    ) -> std::result::Result<(), String> {
        let mut firsts: Vec<(String, String, u32)> = Vec::new();
        for class in self.classes() {
            for i in 0..self.labels[class].len() {
                let c = self.continuation(class, i);
                let id =
                    first_token(&c).ok_or_else(|| format!("the continuation {c:?} of class `{class}` has no token"))?;
                if let Some((other, oc, _)) = firsts.iter().find(|(k, _, t)| k != class && *t == id) {
                    return Err(format!(
                        "the continuations {c:?} (class `{class}`) and {oc:?} (class `{other}`) start with the same token ({id}): the model's prediction cannot tell the classes apart; change one of them"
                    ));
                }
                firsts.push((class.to_string(), c, id));
            }
        }
        Ok(())
    }
}

/// One filler combination: a template and a word for every variable (the label variable's word
/// for each class), and which continuation alternative is scored.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Combination {
    template: usize,
    words: Vec<(String, usize)>,
    label_words: [usize; 2],
    continuation: usize,
}

/// The variables other than the label one that `template` uses, with their list lengths.
fn other_slots<'t>(task: &'t Task, template: &str) -> Vec<(&'t String, usize)> {
    let used: Vec<String> = pieces(template)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| if let Piece::Slot(s) = p { Some(s) } else { None })
        .collect();
    task.variables
        .iter()
        .filter(|(n, _)| **n != task.label && used.contains(n))
        .map(|(n, f)| (n, if let Fillers::List(l) = f { l.len() } else { 1 }))
        .collect()
}

/// Draws `count` distinct combinations (seeded), or says how many the task has. A combination
/// holds words only for the slots its template has, so distinct combinations are distinct pairs
/// of sentences.
fn combinations(name: &str, task: &Task, count: usize, seed: u64) -> std::result::Result<Vec<Combination>, String> {
    let Fillers::ByClass(by_class) = &task.variables[&task.label] else { unreachable!("checked by read_suite") };
    let classes = task.classes();
    let slots: Vec<Vec<(&String, usize)>> = task.templates.iter().map(|t| other_slots(task, t)).collect();
    let alternatives = task.labels.values().map(Vec::len).min().unwrap_or(1);
    // Dotted variables of one head count once: one choice picks them all.
    let per_template = |s: &Vec<(&String, usize)>| {
        let mut heads: Vec<&str> = Vec::new();
        s.iter()
            .filter(|(n, _)| match n.split_once('.') {
                Some((h, _)) if heads.contains(&h) => false,
                Some((h, _)) => {
                    heads.push(h);
                    true
                }
                None => true,
            })
            .map(|(_, n)| *n as f64)
            .product::<f64>()
    };
    let total: f64 = slots.iter().map(per_template).sum::<f64>()
        * classes.iter().map(|c| by_class[*c].len() as f64).product::<f64>()
        * alternatives as f64;
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
            label_words: [pick(by_class[classes[0]].len()), pick(by_class[classes[1]].len())],
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
    let Fillers::ByClass(by_class) = &task.variables[&task.label] else { unreachable!("checked by read_suite") };
    let side = |k: usize| -> Source {
        let mut words: BTreeMap<&str, &str> = BTreeMap::new();
        for (var, i) in &c.words {
            if let Fillers::List(l) = &task.variables[var] {
                words.insert(var, &l[*i]);
            }
        }
        words.insert(&task.label, &by_class[classes[k]][c.label_words[k]]);
        let (text, spans) = fill(&task.templates[c.template], &words);
        Source::Text { text, spans }
    };
    let example = |base: usize| {
        let source = 1 - base;
        let mut meta = Map::new();
        meta.insert("task".into(), json!(name));
        meta.insert("template".into(), json!(c.template));
        meta.insert("base_class".into(), json!(classes[base]));
        meta.insert("combination".into(), json!(combination_key(c)));
        Example::Pair {
            base: side(base),
            sources: vec![side(source)],
            base_positions: vec![Position::Span(task.label.clone())],
            source_positions: vec![vec![Position::Span(task.label.clone())]],
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
    format!("t{};{};label={}/{};c{}", c.template, words.join(","), c.label_words[0], c.label_words[1], c.continuation)
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
