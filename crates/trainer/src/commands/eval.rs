//! `trainer eval`: an exported intervention on a pair file — IIA and p(label) > p(base label),
//! each beside the no-intervention control, overall and per value of a metadata field.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::Backend;
use ferrovene_data::{OnError, TokenizedExample, load_jsonl, tokenize};
use ferrovene_interventions::{Intervention, InterventionSet, Placed, export};
use ferrovene_models::{TextTokenizer, Transformer};
use serde_json::json;

use crate::device::{OnBackend, load_model};
use crate::objectives::das::{Metrics, evaluate, prepare_at};

/// What to evaluate, from the command line.
pub struct Eval {
    /// The export.
    pub intervention: PathBuf,
    /// The pair file.
    pub pairs: PathBuf,
    /// Model spec; the export's own model id when absent.
    pub model: Option<String>,
    /// A metadata field to break the results down by.
    pub by: Option<String>,
    /// Batch size.
    pub batch_size: usize,
    /// Skip bad lines instead of stopping.
    pub skip_bad: bool,
    /// Print JSON.
    pub json: bool,
}

/// One row of results.
struct Row {
    group: String,
    with: Metrics,
    without: Metrics,
    random: Option<Metrics>,
}

/// The pooled metrics of several groups (weighted by their sizes).
fn total(ms: &[Metrics]) -> Metrics {
    let n: usize = ms.iter().map(|m| m.n).sum();
    let mean = |f: &dyn Fn(&Metrics) -> f32| ms.iter().map(|m| f(m) * m.n as f32).sum::<f32>() / n.max(1) as f32;
    Metrics {
        iia: mean(&|m| m.iia),
        label_beats_base: ms
            .iter()
            .all(|m| m.label_beats_base.is_some())
            .then(|| mean(&|m| m.label_beats_base.unwrap_or(0.0))),
        base_label_accuracy: ms
            .iter()
            .all(|m| m.base_label_accuracy.is_some())
            .then(|| mean(&|m| m.base_label_accuracy.unwrap_or(0.0))),
        mean_log_odds: ms.iter().all(|m| m.mean_log_odds.is_some()).then(|| mean(&|m| m.mean_log_odds.unwrap_or(0.0))),
        loss: mean(&|m| m.loss),
        n,
    }
}

/// One row as JSON.
fn row_json(r: &Row) -> serde_json::Value {
    json!({
        "group": r.group, "n": r.with.n,
        "iia": r.with.iia, "iia_no_intervention": r.without.iia,
        "label_beats_base": r.with.label_beats_base, "label_beats_base_no_intervention": r.without.label_beats_base,
        "iia_random_rotation": r.random.map(|m| m.iia),
        "label_beats_base_random_rotation": r.random.and_then(|m| m.label_beats_base),
        "base_label_accuracy_no_intervention": r.without.base_label_accuracy,
        "mean_log_odds": r.with.mean_log_odds, "mean_log_odds_no_intervention": r.without.mean_log_odds,
        "mean_log_odds_random_rotation": r.random.and_then(|m| m.mean_log_odds),
    })
}

/// The rows as a table.
fn table(rows: &[&Row]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "controls: (none) = no intervention, (rand R) = the same intervention with a random rotation; base acc = the model's accuracy on the base labels"
    );
    let _ = writeln!(
        out,
        "{:<20} {:>5}  {:>6} {:>7} {:>8}  {:>7} {:>7} {:>8}  {:>8} {:>7} {:>8}  {:>8}",
        "group",
        "n",
        "IIA",
        "(none)",
        "(rand R)",
        "p>base",
        "(none)",
        "(rand R)",
        "log-odds",
        "(none)",
        "(rand R)",
        "base acc"
    );
    let f = |v: Option<f32>| v.map_or("-".to_string(), |x| format!("{x:.3}"));
    for r in rows {
        let _ = writeln!(
            out,
            "{:<20} {:>5}  {:>6.3} {:>7.3} {:>8}  {:>7} {:>7} {:>8}  {:>8} {:>7} {:>8}  {:>8}",
            r.group,
            r.with.n,
            r.with.iia,
            r.without.iia,
            f(r.random.map(|m| m.iia)),
            f(r.with.label_beats_base),
            f(r.without.label_beats_base),
            f(r.random.and_then(|m| m.label_beats_base)),
            f(r.with.mean_log_odds),
            f(r.without.mean_log_odds),
            f(r.random.and_then(|m| m.mean_log_odds)),
            f(r.without.base_label_accuracy)
        );
    }
    out
}

impl Eval {
    /// The pair file's examples, tokenised, grouped by the `--by` field (one group without it).
    fn groups(&self, tok: &TextTokenizer) -> Result<(BTreeMap<String, Vec<TokenizedExample>>, usize)> {
        let on_error = if self.skip_bad { OnError::Skip } else { OnError::Stop };
        let file = load_jsonl(&self.pairs, on_error)?;
        if let Some(summary) = file.skipped_summary() {
            eprintln!("{summary}");
        }
        let mut groups: BTreeMap<String, Vec<TokenizedExample>> = BTreeMap::new();
        let mut skipped = file.skipped.len();
        for (line, ex) in &file.examples {
            let key = match &self.by {
                None => "all".to_string(),
                Some(field) => match ex.meta().get(field) {
                    Some(serde_json::Value::String(s)) => s.clone(),
                    Some(v) => v.to_string(),
                    None => format!("(no {field})"),
                },
            };
            // Lines that parse but do not fit the model (token ids past its vocabulary, texts
            // past its positions) are bad lines too: skipped with --skip-bad.
            match tokenize(ex, tok, &file.path, *line) {
                Ok(t) => groups.entry(key).or_default().push(t),
                Err(e) if self.skip_bad => {
                    eprintln!("skipped: {e}");
                    skipped += 1;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Ok((groups, skipped))
    }

    /// Per group: the intervention, no intervention, and a random rotation (seed 0); and all of
    /// them pooled.
    fn rows<B: Backend, M: Transformer<B>>(
        &self,
        model: &M,
        tok: &TextTokenizer,
        iv: &InterventionSet<B>,
        dims: &[usize],
        groups: &BTreeMap<String, Vec<TokenizedExample>>,
        device: &B::Device,
    ) -> Result<(Vec<Row>, Row)> {
        let random_iv = iv.with_random_rotation(&mut ferrovene_models::rng::Rng::new(0));
        let mut rows = Vec::new();
        let bar = crate::events::progress(groups.values().map(Vec::len).sum(), "evaluating");
        for (group, examples) in groups {
            let refs: Vec<&TokenizedExample> = examples.iter().collect();
            let mut batches = prepare_at(model, &iv.sites(), &refs, tok.pad_id, self.batch_size, device)?;
            for b in &mut batches {
                b.dims = dims.to_vec();
            }
            let with = evaluate(model, &batches, Some(iv as &dyn Placed<B>))?;
            let without = evaluate(model, &batches, None)?;
            let random =
                random_iv.as_ref().map(|r| evaluate(model, &batches, Some(r as &dyn Placed<B>))).transpose()?;
            rows.push(Row { group: group.clone(), with, without, random });
            bar.inc(examples.len() as u64);
        }
        bar.finish_and_clear();
        let all = |f: fn(&Row) -> Option<Metrics>| rows.iter().filter_map(f).collect::<Vec<_>>();
        let overall = Row {
            group: "all".into(),
            with: total(&all(|r| Some(r.with))),
            without: total(&all(|r| Some(r.without))),
            random: random_iv.as_ref().map(|_| total(&all(|r| r.random))),
        };
        Ok((rows, overall))
    }
}

impl OnBackend for Eval {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let json = self.json;
        let (report, table) = self.evaluate::<B>(device)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&report)?);
        } else {
            print!("{table}");
        }
        Ok(())
    }
}

impl Eval {
    /// Evaluates the export (a hub id `org/name[@rev][:file]` is fetched into the cache first):
    /// what `--json` prints, and the table printed otherwise.
    pub fn evaluate<B: Backend>(self, device: B::Device) -> Result<(serde_json::Value, String)> {
        let this = Eval { intervention: super::intervention_path(&self.intervention)?, ..self };
        this.evaluate_local::<B>(device)
    }

    /// [`Eval::evaluate`] of a local export.
    fn evaluate_local<B: Backend>(self, device: B::Device) -> Result<(serde_json::Value, String)> {
        // The export says which model and site; it is checked against that model once loaded.
        let (iv, config) = export::load_set::<B>(&self.intervention, &device)?;
        if iv.members.iter().any(|m| matches!(m, Intervention::Probe(_))) {
            bail!(
                "{}: a probe reads its site and changes nothing, so an interchange accuracy on pairs would measure no intervention at all (it would print 0); a probe's held-out accuracy is in its run's report.json, and `trainer apply` shows its prediction on a prompt",
                self.intervention.display()
            );
        }
        let spec = self.model.clone().unwrap_or_else(|| config.model.id.clone());
        let loaded = load_model::<B>(&spec, &device)
            .with_context(|| format!("loading model `{spec}` (the export's model; --model overrides)"))?;
        let model = &loaded.model;
        let sites = model.sites();
        config.check_target(
            &self.intervention,
            &export::Target { arch: model.arch(), hidden_size: model.width(), sites: &sites },
        )?;
        let site_name = &iv.sites().iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let tok = loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{spec}` has no tokenizer"))?;
        let (groups, skipped) = self.groups(tok)?;
        let (rows, overall) = self.rows(model, tok, &iv, &config.placement.dims, &groups, &device)?;
        let report = json!({
            "intervention": self.intervention, "kind": config.kind, "site": site_name, "model": spec,
            "pairs": self.pairs, "skipped_lines": skipped,
            "overall": row_json(&overall),
            "by": self.by, "groups": if self.by.is_some() { rows.iter().map(row_json).collect::<Vec<_>>() } else { vec![] },
        });
        let shown: Vec<&Row> =
            if self.by.is_some() { rows.iter().chain(std::iter::once(&overall)).collect() } else { vec![&overall] };
        let header = format!(
            "{} ({}) at {site_name} on {} · model {spec}\n",
            self.intervention.display(),
            config.kind,
            self.pairs.display()
        );
        Ok((report, header + &table(&shown)))
    }
}
