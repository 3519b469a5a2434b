//! What a suite sweep leaves: one row per task × site × method (CSV and JSON), per task a
//! heatmap of each method's log odds-ratio and IIA over layers × regions, and the summary per
//! method (mean over tasks of the best site's numbers and of the layer-averaged ones, with
//! selectivity), printed and in the report.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::site::{MethodScore, Score};
use crate::plot::Heatmap;
use crate::run_dir::RunDir;

/// One method at one site of one task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The task.
    pub task: String,
    /// The layer (`block_output`).
    pub layer: usize,
    /// The region.
    pub region: String,
    /// The method and its scores.
    #[serde(flatten)]
    pub score: MethodScore,
}

/// Every row as CSV (quoted where a name needs it), with selectivity (task − control) columns.
pub fn csv(rows: &[Row]) -> Result<String> {
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "task",
        "method",
        "layer",
        "region",
        "iia",
        "odds",
        "control_iia",
        "control_odds",
        "selectivity_iia",
        "selectivity_odds",
    ])?;
    for r in rows {
        let (t, c, s) = (r.score.task, r.score.control, r.score.selectivity());
        let numbers = [t.iia, t.odds, c.iia, c.odds, s.iia, s.odds].map(|x| x.to_string());
        w.write_record(
            [r.task.clone(), r.score.method.clone(), r.layer.to_string(), r.region.clone()].iter().chain(&numbers),
        )?;
    }
    Ok(String::from_utf8(w.into_inner().map_err(|e| anyhow::anyhow!("writing the CSV: {e}"))?)?)
}

/// A task's heatmaps: for each method, `<method>_odds` (log odds-ratio, coloured on the task's
/// largest value so that methods compare by colour) and `<method>_iia`, layers × regions.
pub fn heatmaps(dir: &RunDir, task: &str, layers: &[usize], regions: &[String], rows: &[Row]) -> Result<()> {
    let mine: Vec<&Row> = rows.iter().filter(|r| r.task == task).collect();
    let methods: Vec<String> = ordered(mine.iter().map(|r| r.score.method.clone()));
    let top = mine.iter().map(|r| r.score.task.odds).fold(1e-3, f32::max);
    for m in &methods {
        let grid = |f: &dyn Fn(&Score) -> f32| -> Vec<Vec<Option<f32>>> {
            layers
                .iter()
                .map(|&l| {
                    regions
                        .iter()
                        .map(|g| {
                            mine.iter()
                                .find(|r| r.layer == l && &r.region == g && &r.score.method == m)
                                .map(|r| f(&r.score.task))
                        })
                        .collect()
                })
                .collect()
        };
        let labels = (layers.iter().map(|l| l.to_string()).collect::<Vec<_>>(), regions.to_vec());
        ferrovene_data::names::check_file_name(task).map_err(|why| anyhow::anyhow!("task name {task:?}: {why}"))?;
        let path = dir.subfolder(Path::new("tasks").join(task))?;
        Heatmap {
            title: &format!("{task}: {m}, log odds-ratio (nats)"),
            rows: labels.0.clone(),
            columns: labels.1.clone(),
            values: grid(&|s| s.odds),
            scale: top,
            axes: ("layer", "region"),
        }
        .write(&path.join(format!("{m}_odds")))?;
        Heatmap {
            title: &format!("{task}: {m}, IIA (p(source label) > p(base label))"),
            rows: labels.0,
            columns: labels.1,
            values: grid(&|s| s.iia),
            scale: 1.0,
            axes: ("layer", "region"),
        }
        .write(&path.join(format!("{m}_iia")))?;
    }
    Ok(())
}

/// Names in first-seen order, each once.
fn ordered(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Four numbers of a site or an average: task scores and selectivity.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize)]
pub struct Numbers {
    /// Log odds-ratio on the task.
    pub odds: f32,
    /// IIA on the task.
    pub iia: f32,
    /// Odds-ratio selectivity (task − control).
    pub selectivity_odds: f32,
    /// IIA selectivity.
    pub selectivity_iia: f32,
}

impl Numbers {
    fn of(s: &MethodScore) -> Self {
        let sel = s.selectivity();
        Numbers { odds: s.task.odds, iia: s.task.iia, selectivity_odds: sel.odds, selectivity_iia: sel.iia }
    }

    fn mean(all: &[Numbers]) -> Self {
        let n = all.len().max(1) as f32;
        let sum = |f: fn(&Numbers) -> f32| all.iter().map(f).sum::<f32>() / n;
        Numbers {
            odds: sum(|x| x.odds),
            iia: sum(|x| x.iia),
            selectivity_odds: sum(|x| x.selectivity_odds),
            selectivity_iia: sum(|x| x.selectivity_iia),
        }
    }
}

/// One method over the tasks.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    /// The method.
    pub method: String,
    /// Tasks averaged.
    pub tasks: usize,
    /// Mean over tasks of the best site's numbers (the site with the highest odds-ratio).
    pub best_site: Numbers,
    /// Mean over tasks of the layer average of each layer's best region.
    pub layer_averaged: Numbers,
}

/// The summary of every method, in the rows' order of methods.
pub fn summarize(rows: &[Row]) -> Vec<Summary> {
    let methods = ordered(rows.iter().map(|r| r.score.method.clone()));
    let tasks = ordered(rows.iter().map(|r| r.task.clone()));
    methods
        .into_iter()
        .map(|m| {
            let (mut best, mut averaged) = (Vec::new(), Vec::new());
            for t in &tasks {
                let mine: Vec<&Row> = rows.iter().filter(|r| &r.task == t && r.score.method == m).collect();
                let best_of = |rs: &[&Row]| {
                    rs.iter()
                        .max_by(|a, b| a.score.task.odds.total_cmp(&b.score.task.odds))
                        .map(|r| Numbers::of(&r.score))
                };
                let Some(b) = best_of(&mine) else { continue };
                best.push(b);
                let layers: BTreeSet<usize> = mine.iter().map(|r| r.layer).collect();
                let per_layer: Vec<Numbers> = layers
                    .iter()
                    .filter_map(|l| best_of(&mine.iter().copied().filter(|r| r.layer == *l).collect::<Vec<_>>()))
                    .collect();
                averaged.push(Numbers::mean(&per_layer));
            }
            Summary {
                method: m,
                tasks: best.len(),
                best_site: Numbers::mean(&best),
                layer_averaged: Numbers::mean(&averaged),
            }
        })
        .collect()
}

/// The summary as a text table (the IIA's selectivity is in the CSV and the report: a control
/// word the model prefers anyway makes the control's IIA high without any intervention, so only
/// the odds-ratio, which subtracts the plain run, compares across methods).
pub fn table(name: &str, summaries: &[Summary]) -> String {
    let mut out = format!(
        "{name}: per method, mean over tasks; odds = log odds-ratio (nats), sel. = odds − control task's odds (selectivity)\n"
    );
    let _ = writeln!(out, "{:<8} {:>5}  {:^26}  {:^26}", "", "", "best site", "layer-averaged");
    let _ = writeln!(
        out,
        "{:<8} {:>5}  {:>8} {:>7} {:>9}  {:>8} {:>7} {:>9}",
        "method", "tasks", "odds", "IIA", "sel.", "odds", "IIA", "sel."
    );
    for s in summaries {
        let (b, a) = (s.best_site, s.layer_averaged);
        let _ = writeln!(
            out,
            "{:<8} {:>5}  {:>8.2} {:>7.2} {:>9.2}  {:>8.2} {:>7.2} {:>9.2}",
            s.method, s.tasks, b.odds, b.iia, b.selectivity_odds, a.odds, a.iia, a.selectivity_odds
        );
    }
    out.push_str("(best site: the layer × region with the highest odds-ratio per task; layer-averaged: each layer's best region, averaged over layers)\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_commas_and_quotes_survive_the_csv() {
        let score = |iia, odds| Score { iia, odds };
        let row = Row {
            task: "a,b\"c".into(),
            layer: 4,
            region: "x, y".into(),
            score: MethodScore { method: "mean".into(), task: score(0.5, 1.25), control: score(0.25, -0.5) },
        };
        let text = csv(&[row]).unwrap();
        let mut reader = csv::Reader::from_reader(text.as_bytes());
        let records: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
        assert_eq!(records.len(), 1);
        let r = &records[0];
        assert_eq!((&r[0], &r[1], &r[2], &r[3]), ("a,b\"c", "mean", "4", "x, y"));
        assert_eq!((&r[4], &r[8]), ("0.5", "0.25"), "iia and its selectivity");
    }
}
