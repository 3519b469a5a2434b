//! One task of a template suite: its fields, its template pieces and slots, and what can be
//! counted from it before any pair is drawn (classes, regions, filler combinations).

use std::collections::BTreeMap;

use serde::Deserialize;

/// The fillers of one variable: one list, or (for the label variable) a list per class.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum Fillers {
    /// Words any pair may use on both sides.
    List(Vec<String>),
    /// Words by class of the label variable.
    ByClass(BTreeMap<String, Vec<String>>),
}

/// The label variable(s) of a task: one name, or (CausalGym's `gss_subord*` tasks) a list of
/// variables that decide the label jointly: each takes the base's class on the base side and the
/// source's class on the source side, as CausalGym's `Dataset.sample_pair` fills them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
pub enum LabelVars {
    /// One variable.
    One(String),
    /// Several variables, together.
    Joint(Vec<String>),
}

impl LabelVars {
    /// The variables, in the file's order.
    pub fn names(&self) -> &[String] {
        match self {
            LabelVars::One(v) => std::slice::from_ref(v),
            LabelVars::Joint(v) => v,
        }
    }

    /// Whether `var` is one of them.
    pub fn contains(&self, var: &str) -> bool {
        self.names().iter().any(|v| v == var)
    }
}

/// One task of a suite file. Besides the fields below, a task may carry descriptive strings of
/// its own (CausalGym's `source`, a URL on every task of its `syntaxgym.json`): they are kept in
/// [`Task::about`] and go into the report.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Task {
    /// Sentences with `{variable}` slots (names may contain `.`, `_` and `-`).
    pub templates: Vec<String>,
    /// The variable (or variables, jointly) whose class decides the continuation.
    pub label: LabelVars,
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
    /// What reading the task changed, for the dry run and the report: a filler listed twice in
    /// one list is kept once (CausalGym's `syntaxgym.json` has such lists; two equal
    /// combinations would put the same sentences on both sides of the train/test split).
    #[serde(skip)]
    pub notes: Vec<String>,
}

/// Region names a sweep gives a meaning of its own (`label`: the label variable's slot; `last`:
/// the last token; `all`: every region); no variable may take one.
pub const RESERVED_REGIONS: [&str; 3] = ["label", "last", "all"];

/// A template cut at its slots: literal text and variable names, alternating.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Piece {
    Text(String),
    Slot(String),
}

/// Cuts a template into text and slots; `{` without a closing `}` is an error.
pub(super) fn pieces(template: &str) -> std::result::Result<Vec<Piece>, String> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let close =
            rest[open..].find('}').ok_or_else(|| format!("template `{template}` has a `{{` without a closing `}}`"))?
                + open;
        let name = &rest[open + 1..close];
        if name.is_empty() || !name.chars().all(|c| c.is_alphanumeric() || "_.-".contains(c)) {
            return Err(format!(
                "template `{template}`: `{{{name}}}` is not a variable name (letters, digits, `_`, `-` and `.`)"
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

    /// The continuation as scored: with a leading space when `result_prepend_space`.
    pub(super) fn continuation(&self, class: &str, index: usize) -> String {
        let list = &self.labels[class];
        let c = &list[index % list.len()];
        if self.result_prepend_space && !c.starts_with(' ') { format!(" {c}") } else { c.clone() }
    }

    /// Per label variable (in the order of `label`), how many fillers each class has.
    pub(super) fn label_list_lengths(&self) -> Vec<[usize; 2]> {
        let classes = self.classes();
        self.label
            .names()
            .iter()
            .map(|v| match &self.variables[v] {
                Fillers::ByClass(by) => [by[classes[0]].len(), by[classes[1]].len()],
                Fillers::List(_) => unreachable!("checked by read_suite"),
            })
            .collect()
    }

    /// How many distinct filler combinations (each gives two pairs, one in each direction) the
    /// task has: per template the product of its other variables' list lengths (dotted variables
    /// of one head counted once), times each label variable's words per class, times the
    /// continuation alternatives.
    pub fn combination_count(&self) -> f64 {
        // Dotted variables of one head count once: one choice picks them all.
        let per_template = |t: &String| {
            let mut heads: Vec<&str> = Vec::new();
            other_slots(self, t)
                .into_iter()
                .filter(|(n, _)| match n.split_once('.') {
                    Some((h, _)) if heads.contains(&h) => false,
                    Some((h, _)) => {
                        heads.push(h);
                        true
                    }
                    None => true,
                })
                .map(|(_, n)| n as f64)
                .product::<f64>()
        };
        let alternatives = self.labels.values().map(Vec::len).min().unwrap_or(1);
        self.templates.iter().map(per_template).sum::<f64>()
            * self.label_list_lengths().iter().map(|[a, b]| (*a * *b) as f64).product::<f64>()
            * alternatives as f64
    }

    /// Why `var`'s slot cannot be intervened on, when one of its fillers is blank (CausalGym's
    /// `""` for one class of a label variable, as `gss_subord`'s `subordinator`): some sentences
    /// have no token there. `None` when every filler has a word.
    pub fn blank_slot(&self, var: &str) -> Option<String> {
        match self.variables.get(var)? {
            Fillers::List(l) => l.iter().any(|w| w.trim().is_empty()).then(|| format!("`{var}` has a blank filler")),
            Fillers::ByClass(by) => by
                .iter()
                .find(|(_, l)| l.iter().any(|w| w.trim().is_empty()))
                .map(|(class, _)| format!("`{var}` has a blank filler in class `{class}`")),
        }
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

/// The variables other than the label one that `template` uses, with their list lengths.
pub(super) fn other_slots<'t>(task: &'t Task, template: &str) -> Vec<(&'t String, usize)> {
    let used: Vec<String> = pieces(template)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| if let Piece::Slot(s) = p { Some(s) } else { None })
        .collect();
    task.variables
        .iter()
        .filter(|(n, _)| !task.label.contains(n) && used.contains(n))
        .map(|(n, f)| (n, if let Fillers::List(l) = f { l.len() } else { 1 }))
        .collect()
}
