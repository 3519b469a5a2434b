//! `trainer sweep <suite recipe> --dry-run`: every asked task's pairs generated as the sweep
//! would generate them, and a table of what each task would run (pair counts, filler
//! combinations, label variables, swept regions, slots left out and why), without a model.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Result, bail};
use ferrovene_data::suite::{self as suites};

use super::recipe::{SuiteRecipe, blank_slots, check_regions, select_tasks, task_regions};

/// The dry run's table, or an error naming every task whose pairs cannot be generated.
pub fn dry_run(r: &SuiteRecipe) -> Result<String> {
    let suite = suites::read_suite(Path::new(&r.suite))?;
    let tasks = select_tasks(&suite, &r.tasks)?;
    check_regions(&tasks, &r.regions)?;
    let mut out = String::new();
    writeln!(out, "{}: {} of its {} tasks; per task:", suite.path.display(), tasks.len(), suite.tasks.len())?;
    let (mut failed, mut sites) = (Vec::new(), 0usize);
    for (name, task) in &tasks {
        let regions = task_regions(task, &r.regions)?;
        let made = suites::split(&suite, name, r.train_pairs, r.test_pairs, r.seed);
        let label = task.label.names().join(" + ");
        match made {
            Ok(split) => {
                writeln!(
                    out,
                    "  {name}: {} train + {} test pairs of {} filler combinations ({} template{}); label {label} ({}); regions {}",
                    split.train.len(),
                    split.test.len(),
                    task.combination_count(),
                    task.templates.len(),
                    if task.templates.len() == 1 { "" } else { "s" },
                    task.classes().join(" vs "),
                    if regions.is_empty() { "none asked".to_string() } else { regions.join(", ") },
                )?;
                sites += regions.len();
            }
            Err(e) => {
                writeln!(out, "  {name}: cannot generate its pairs: {e}")?;
                failed.push(name.to_string());
            }
        }
        for note in &task.notes {
            writeln!(out, "    note: {note}")?;
        }
        for why in blank_slots(task) {
            writeln!(out, "    not swept: {why} (some sentences have no token there)")?;
        }
    }
    writeln!(
        out,
        "prefix {:?}{}; sources read at {:?} token indices",
        r.prefix,
        if r.prefix == super::recipe::CAUSALGYM_PREFIX { " (<|endoftext|> where the vocabulary has it)" } else { "" },
        r.source_index
    )?;
    writeln!(
        out,
        "{} tasks; {sites} regions × {} layers; methods {}; nothing trained (--dry-run)",
        tasks.len(),
        match &r.layers {
            crate::recipe::Layers::List(l) => l.len().to_string(),
            crate::recipe::Layers::All(_) => "all".to_string(),
        },
        r.methods.join(", ")
    )?;
    if !failed.is_empty() {
        print!("{out}");
        bail!("{}: the pairs of {} cannot be generated (above)", suite.path.display(), failed.join(", "));
    }
    Ok(out)
}
