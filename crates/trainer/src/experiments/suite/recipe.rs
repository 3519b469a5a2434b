//! The `suite` recipe (`recipes/syntax-suites.toml`): which template suite, tasks, methods,
//! layers and regions a benchmark sweep covers, with CausalGym's training defaults.

use anyhow::{Result, bail};
use ferrovene_data::suite::{Suite, Task};
use ferrovene_interventions::directions;
use serde::{Deserialize, Serialize};

use crate::recipe::Layers;

/// Every method name `methods` takes: DAS, the whole vector interchanged (`vanilla`, pyvene's
/// `VanillaIntervention`: an upper bound for any one direction), then the fitted directions in
/// CausalGym's order.
pub const METHODS: [&str; 8] = ["das", "vanilla", "probe", "mean", "pca", "kmeans", "lda", "random"];

pub use crate::experiments::prefix::CAUSALGYM_PREFIX;

/// Where a pair's source is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceIndex {
    /// At the source's own token of the region (the default: the same word on both sides).
    #[default]
    Own,
    /// At the base's token index, as CausalGym's code reads it (to reproduce its published
    /// tables); where base and source tokenise differently this is another word of the source,
    /// and where the base's index is past the source's end, the source's last token (CausalGym
    /// reads a padding position there). The fitted directions then read the base at the source's
    /// token index, as CausalGym's collection does.
    Base,
}

/// The region of the last token (where the continuation is predicted).
pub const LAST: &str = "last";

/// The recipe. Unknown keys are errors.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SuiteRecipe {
    /// One line for `trainer list`.
    pub description: String,
    /// Model spec.
    pub model: String,
    /// The suite file (CausalGym's template format), relative to the working directory.
    pub suite: String,
    /// Tasks of the suite to run: a list of names, or `"all"`.
    pub tasks: Names,
    /// Methods: names from `das`, `probe`, `mean`, `pca`, `kmeans`, `lda`, `random`.
    pub methods: Vec<String>,
    /// Layers swept (`block_output` of each): a list, or `"all"`.
    pub layers: Layers,
    /// Regions swept in each task: `label` (the label variable's slot), `last` (the last token),
    /// slot names, or `"all"` (`last` and every slot all of a task's templates have at or after
    /// the label variable's: before it, base and source read the same words).
    pub regions: Names,
    /// Training pairs per task (CausalGym: 400); the directions are fitted on their bases.
    pub train_pairs: usize,
    /// Test pairs per task (CausalGym: 100), from filler combinations no training pair has.
    pub test_pairs: usize,
    /// DAS pairs per batch (CausalGym: 4).
    pub batch_size: usize,
    /// DAS epochs over the training pairs (CausalGym: 1, i.e. 100 steps of 4).
    pub epochs: usize,
    /// DAS peak learning rate (CausalGym: 5e-3).
    pub lr: f64,
    /// Share of DAS steps of linear warmup, then linear decay.
    pub warmup: f64,
    /// The control task's two continuations (Hewitt & Liang): they replace the classes' labels,
    /// class by class in the order of `labels`; as scored, so with their leading space.
    pub control: [String; 2],
    /// Seed of the splits, the DAS initialisations, the random directions and the batch order.
    pub seed: u64,
    /// What goes before every sentence: `"causalgym"` (the default: `<|endoftext|>` where the
    /// vocabulary has it, as CausalGym's code prepends it; a label at the first word is otherwise
    /// the model's attention sink), `""` for nothing, or any text (its tokens are prepended).
    #[serde(default = "causalgym_prefix")]
    pub prefix: String,
    /// Where the source is read: `"own"` (its own token of the region, the default) or `"base"`
    /// (the base's token index, CausalGym's reading).
    #[serde(default)]
    pub source_index: SourceIndex,
    /// Run the frozen model once per batch for every site, method and the control task (the
    /// default); `false` runs it again for every site and method, only to measure what sharing
    /// saves.
    #[serde(default = "yes")]
    pub share_frozen: bool,
    /// Run only this shard's task layers (`I/N`; `trainer sweep --shard`, or a job array's
    /// index); `trainer merge` joins the shards.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<crate::shard::Shard>,
}

fn yes() -> bool {
    true
}

fn causalgym_prefix() -> String {
    CAUSALGYM_PREFIX.to_string()
}

/// A list of names, or `"all"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Names {
    /// These names.
    List(Vec<String>),
    /// `"all"`.
    All(String),
}

impl Names {
    /// The names, or `None` for `"all"`; errors on an empty list or another word.
    pub fn list(&self, key: &str) -> Result<Option<&[String]>> {
        match self {
            Names::List(v) if v.is_empty() => bail!("`{key}` is empty: give names or \"all\""),
            Names::List(v) => Ok(Some(v)),
            Names::All(w) if w == "all" => Ok(None),
            Names::All(w) => bail!("`{key}` is a list of names or \"all\", not {w:?}"),
        }
    }
}

impl SuiteRecipe {
    /// Checks the values that need neither the model nor the suite file.
    pub fn check(&self) -> Result<()> {
        self.layers.check()?;
        self.tasks.list("tasks")?;
        self.regions.list("regions")?;
        for (key, names) in [("tasks", &self.tasks), ("regions", &self.regions)] {
            if let Some(d) = names.list(key)?.and_then(crate::recipe::first_duplicate) {
                bail!("`{key}` lists `{d}` twice: each is swept once");
            }
        }
        if let Some(d) = crate::recipe::first_duplicate(&self.methods) {
            bail!("`methods` lists `{d}` twice: each is run once");
        }
        if self.methods.is_empty() {
            bail!("`methods` is empty: give some of {}", METHODS.join(", "));
        }
        if let Some(m) = self.methods.iter().find(|m| !METHODS.contains(&m.as_str())) {
            bail!("method `{m}` is not one of {}", METHODS.join(", "));
        }
        if self.train_pairs < 4 || self.test_pairs < 2 {
            bail!(
                "`train_pairs` must be at least 4 and `test_pairs` at least 2 (both even: each combination gives a pair in each direction)"
            );
        }
        if self.train_pairs.saturating_add(self.test_pairs) > ferrovene_data::suite::MAX_PAIRS_PER_TASK {
            bail!(
                "`train_pairs` + `test_pairs` = {} pairs per task, more than the {} a task may have",
                self.train_pairs as u128 + self.test_pairs as u128,
                ferrovene_data::suite::MAX_PAIRS_PER_TASK
            );
        }
        if self.batch_size == 0 || self.epochs == 0 {
            bail!("`batch_size` and `epochs` must be at least 1");
        }
        if self.control.iter().any(|w| w.trim().is_empty()) || self.control[0] == self.control[1] {
            bail!("`control` needs two different non-empty words, e.g. [\" dog\", \" give\"]");
        }
        if !(0.0..1.0).contains(&self.warmup) {
            bail!("`warmup` is a share of the steps, in [0, 1)");
        }
        crate::divergence::check_rate("lr", self.lr)
    }

    /// The fitted (non-DAS) methods asked for, in CausalGym's order.
    pub fn fitted_methods(&self) -> Vec<directions::Method> {
        directions::Method::ALL.into_iter().filter(|m| self.methods.iter().any(|n| n == m.name())).collect()
    }

    /// Whether DAS is among the methods.
    pub fn has_das(&self) -> bool {
        self.methods.iter().any(|m| m == "das")
    }

    /// Whether the whole-vector interchange is among the methods.
    pub fn has_vanilla(&self) -> bool {
        self.methods.iter().any(|m| m == "vanilla")
    }
}

/// The slots every template of `task` has from the (first) label variable's slot on, in
/// first-seen order, less those with a blank filler ([`Task::blank_slot`]): the regions a pair
/// always has and where base and source can differ (before the label variable a causal model
/// reads the same words on both sides, so an interchange there changes nothing and the classes
/// cannot be told apart).
pub fn common_slots(task: &Task) -> Vec<String> {
    let first_label = |t: &str| task.label.names().iter().filter_map(|v| t.find(&format!("{{{v}}}"))).min();
    let from_label = |slot: &str| {
        task.templates.iter().all(|t| match (t.find(&format!("{{{slot}}}")), first_label(t)) {
            (Some(at), Some(label)) => at >= label,
            _ => false,
        })
    };
    task.regions().into_iter().filter(|r| from_label(r) && task.blank_slot(r).is_none()).collect()
}

/// Why each slot of `task` with a blank filler is never swept (some sentences have no token
/// there; [`common_slots`] leaves them out), for the dry run and the report.
pub fn blank_slots(task: &Task) -> Vec<String> {
    task.regions().into_iter().filter_map(|r| task.blank_slot(&r)).collect()
}

/// The tasks `names` picks from the suite, in the suite's order; unknown names are errors that
/// list the suite's tasks.
pub fn select_tasks<'s>(suite: &'s Suite, names: &Names) -> Result<Vec<(&'s String, &'s Task)>> {
    let Some(asked) = names.list("tasks")?.filter(|a| !a.iter().any(|x| x == "all")) else {
        return Ok(suite.tasks.iter().collect());
    };
    if let Some(bad) = asked.iter().find(|a| !suite.tasks.contains_key(*a)) {
        bail!("no task `{bad}` in {} ({})", suite.path.display(), close_names(bad, suite.tasks.keys()));
    }
    Ok(suite.tasks.iter().filter(|(n, _)| asked.contains(n)).collect())
}

/// At most 20 of `names`, those closest to `asked` first (sharing its longest prefix, then
/// containing it), for an error about an unknown name; says how many there are in all.
fn close_names<'a>(asked: &str, names: impl ExactSizeIterator<Item = &'a String>) -> String {
    const SHOWN: usize = 20;
    let total = names.len();
    let shared = |n: &str| n.chars().zip(asked.chars()).take_while(|(a, b)| a == b).count();
    let mut ranked: Vec<&String> = names.collect();
    ranked.sort_by_key(|n| (std::cmp::Reverse((shared(n), n.contains(asked) || asked.contains(n.as_str()))), n.len()));
    let shown: Vec<&str> = ranked.iter().take(SHOWN).map(|s| s.as_str()).collect();
    if total <= SHOWN {
        format!("tasks: {}", shown.join(", "))
    } else {
        format!("the closest of its {total} tasks: {}, …", shown.join(", "))
    }
}

/// The regions of `task` that `regions` selects (`label` names the label variable's slot), in
/// the task's order with `last` at the end; empty when it selects none (slots other tasks have).
pub fn task_regions(task: &Task, regions: &Names) -> Result<Vec<String>> {
    let mut every = common_slots(task);
    every.push(LAST.to_string());
    let Some(asked) = regions.list("regions")?.filter(|a| !a.iter().any(|x| x == "all")) else { return Ok(every) };
    let wanted = |r: &String| asked.iter().any(|a| a == r || (a == "label" && task.label.contains(r)));
    Ok(every.into_iter().filter(wanted).collect())
}

/// Checks that every asked region is `label`, `last`, or a slot of some task.
pub fn check_regions(tasks: &[(&String, &Task)], regions: &Names) -> Result<()> {
    let Some(asked) = regions.list("regions")? else { return Ok(()) };
    for a in asked {
        if a == "all" || a == "label" || a == LAST || tasks.iter().any(|(_, t)| common_slots(t).contains(a)) {
            continue;
        }
        let mut known: Vec<String> = tasks.iter().flat_map(|(_, t)| common_slots(t)).collect();
        known.sort();
        known.dedup();
        bail!(
            "region `{a}` is in none of the tasks run (at or after their label variable's slot, in every template); regions are `label`, `last`, \"all\" or a slot: {}",
            known.join(", ")
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(templates: &[&str]) -> Task {
        serde_json::from_value(serde_json::json!({
            "templates": templates, "label": "verb",
            "labels": {"a": ["x"], "b": ["y"]},
            "variables": {"verb": {"a": ["ran"], "b": ["sat"]}, "agent": ["cat"], "object": ["mat"], "place": ["hall"]}
        }))
        .unwrap()
    }

    #[test]
    fn regions_start_at_the_label_and_need_every_template() {
        let t = task(&["The {agent} {verb} the {object} in the {place}", "A {agent} {verb} by the {object}"]);
        // `agent` precedes the label variable; `place` is missing from the second template.
        assert_eq!(common_slots(&t), vec!["verb", "object"]);
        let names = |v: &[&str]| Names::List(v.iter().map(|s| s.to_string()).collect());
        assert_eq!(task_regions(&t, &Names::All("all".into())).unwrap(), vec!["verb", "object", "last"]);
        assert_eq!(
            task_regions(&t, &names(&["all"])).unwrap(),
            vec!["verb", "object", "last"],
            "--full sends [\"all\"]"
        );
        assert_eq!(task_regions(&t, &names(&["last", "label"])).unwrap(), vec!["verb", "last"], "in the task's order");
        assert_eq!(task_regions(&t, &names(&["object"])).unwrap(), vec!["object"]);
        let name = "t".to_string();
        let e = check_regions(&[(&name, &t)], &names(&["agent"])).unwrap_err().to_string();
        assert!(e.contains("region `agent`") && e.contains("object, verb"), "{e}");
        assert!(task_regions(&t, &Names::All("every".into())).is_err());
        assert!(task_regions(&t, &names(&[])).is_err());
    }
}
