//! Reading and checking one task of a suite: its known fields each checked alone (so that an
//! error names the field), descriptive strings kept, fillers listed twice kept once, and the
//! rules a task must follow before pairs are drawn from it.

use std::collections::{BTreeMap, HashSet};

use serde::Deserialize;
use serde_json::{Map, Value};

use super::task::{Fillers, LabelVars, Piece, RESERVED_REGIONS, Task, pieces};

/// The fields a task has, with what each holds (for errors that name the field).
const TASK_FIELDS: [(&str, &str); 6] = [
    ("templates", "a list of template strings"),
    ("label", "the name of the label variable, or a list of variables that decide it jointly"),
    ("labels", "an object of class → list of continuations"),
    ("variables", "an object of variable → list of fillers (or, for the label variable, class → list)"),
    ("result_prepend_space", "true or false"),
    ("description", "a string"),
];

/// Reads one task, naming the field at fault: its known fields each checked alone, any other
/// field kept when it is a string (descriptive, as CausalGym's `source`) and refused otherwise.
pub(super) fn read_task(name: &str, value: Value) -> std::result::Result<Task, String> {
    let Value::Object(fields) = value else { return Err(format!("task `{name}` is not an object of fields")) };
    let mut known = Map::new();
    let mut about = BTreeMap::new();
    for (field, v) in fields {
        if let Some((_, what)) = TASK_FIELDS.iter().find(|(f, _)| *f == field) {
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
    task.notes = task.keep_fillers_once();
    Ok(task)
}

/// Every field of a task optional, each checked for its type alone.
#[derive(Deserialize)]
#[allow(dead_code)]
struct PartialTask {
    templates: Option<Vec<String>>,
    label: Option<LabelVars>,
    labels: Option<BTreeMap<String, Vec<String>>>,
    variables: Option<BTreeMap<String, Fillers>>,
    result_prepend_space: Option<bool>,
    description: Option<String>,
}

impl Task {
    /// What is wrong with the task, if anything.
    pub(super) fn check(&self) -> std::result::Result<(), String> {
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
        let label_vars = self.label.names();
        if label_vars.is_empty() {
            return Err("label: an empty list; name the variable (or variables) whose class decides the label".into());
        }
        if let Some(twice) = label_vars.iter().enumerate().find(|(i, v)| label_vars[..*i].contains(v)).map(|(_, v)| v) {
            return Err(format!("label: lists `{twice}` twice"));
        }
        for var in label_vars {
            match self.variables.get(var) {
                None => return Err(format!("the label variable `{var}` is not in `variables`")),
                Some(Fillers::List(_)) => {
                    return Err(format!(
                        "the label variable `{var}` needs fillers by class ({})",
                        self.classes().join(", ")
                    ));
                }
                Some(Fillers::ByClass(by)) => {
                    if by.keys().ne(self.labels.keys()) {
                        return Err(format!(
                            "`variables.{var}` has classes {:?} but `labels` has {:?}",
                            by.keys().collect::<Vec<_>>(),
                            self.classes()
                        ));
                    }
                }
            }
        }
        for (name, fillers) in &self.variables {
            let lists: Vec<&Vec<String>> = match fillers {
                Fillers::List(l) => vec![l],
                Fillers::ByClass(_) if !self.label.contains(name) => {
                    return Err(format!(
                        "`variables.{name}` has fillers by class, which only the label variable{} {} may",
                        if label_vars.len() > 1 { "s" } else { "" },
                        label_vars.iter().map(|v| format!("`{v}`")).collect::<Vec<_>>().join(", ")
                    ));
                }
                Fillers::ByClass(by) => by.values().collect(),
            };
            if lists.iter().any(|l| l.is_empty()) {
                return Err(format!("`variables.{name}` has an empty list of fillers"));
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
            if !slots.iter().any(|s| self.label.contains(s)) {
                return Err(format!(
                    "template `{template}` has no slot of the label variable{} ({}): its pairs would not differ",
                    if label_vars.len() > 1 { "s" } else { "" },
                    label_vars.iter().map(|v| format!("`{{{v}}}`")).collect::<Vec<_>>().join(", ")
                ));
            }
        }
        Ok(())
    }

    /// Drops the second and later copies of a filler within one list, and says which. Dotted
    /// variables are left as they are: one index picks a word from each variable of a head, so a
    /// word may recur with different partners.
    fn keep_fillers_once(&mut self) -> Vec<String> {
        let mut notes = Vec::new();
        for (name, fillers) in self.variables.iter_mut().filter(|(n, _)| !n.contains('.')) {
            let lists: Vec<(String, &mut Vec<String>)> = match fillers {
                Fillers::List(l) => vec![(format!("variables.{name}"), l)],
                Fillers::ByClass(by) => by.iter_mut().map(|(c, l)| (format!("variables.{name}.{c}"), l)).collect(),
            };
            for (field, list) in lists {
                let mut seen = HashSet::new();
                let mut twice: Vec<String> = Vec::new();
                list.retain(|w| {
                    let first = seen.insert(w.clone());
                    if !first && !twice.contains(&format!("{w:?}")) {
                        twice.push(format!("{w:?}"));
                    }
                    first
                });
                if !twice.is_empty() {
                    notes.push(format!("`{field}` lists {} more than once: kept once", twice.join(", ")));
                }
            }
        }
        notes
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
}
