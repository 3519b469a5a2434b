//! `Pairs`: examples in ferrovene's pair format (counterfactual pairs for DAS, prompts and
//! targets for ReFT, texts and classes for probes), checked as the command line checks a pair
//! file, with errors that name the record and the field.

use std::path::{Path, PathBuf};

use ferrovene_data::format::{OnError, load_jsonl, parse_line};
use pyo3::prelude::*;

use crate::errors::invalid;

/// Checked examples: their JSON lines, or the file they came from.
#[pyclass(module = "ferrovene._ferrovene")]
#[derive(Clone)]
pub struct Pairs {
    /// One JSON object per example.
    lines: Vec<String>,
    /// The JSONL file they were read from, if any (a recipe reads it as it is).
    path: Option<PathBuf>,
    /// `pair`, `prompt` or `text`.
    #[pyo3(get)]
    kind: String,
}

impl Pairs {
    /// The examples of `obj`: a native `Pairs`, or the package's `ferrovene.Pairs` around one.
    pub fn of(obj: &Bound<'_, PyAny>) -> PyResult<Pairs> {
        if let Ok(p) = obj.extract::<PyRef<'_, Pairs>>() {
            return Ok(p.clone());
        }
        let native = obj.getattr("_native").ok();
        match native.as_ref().and_then(|n| n.extract::<PyRef<'_, Pairs>>().ok()) {
            Some(p) => Ok(p.clone()),
            None => Err(pyo3::exceptions::PyTypeError::new_err(format!(
                "pairs: a ferrovene.Pairs (Pairs.from_records or Pairs.from_jsonl), not {}",
                obj.get_type().name().map_or_else(|_| "?".into(), |n| n.to_string())
            ))),
        }
    }

    /// A pair file for a recipe: the file they came from, or `dir/pairs-<hash>.jsonl` written now.
    pub fn file_in(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        if let Some(p) = &self.path {
            return Ok(p.clone());
        }
        let text = self.lines.join("\n") + "\n";
        let path = dir.join(format!("pairs-{}.jsonl", ferrovene_trainer::run_dir::fnv1a(text.as_bytes())));
        std::fs::create_dir_all(dir)?;
        std::fs::write(&path, text).map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        Ok(path)
    }

    /// The kind every example shares, or an error naming the first that differs.
    fn one_kind(kinds: impl Iterator<Item = (String, &'static str)>) -> anyhow::Result<String> {
        let mut first: Option<&'static str> = None;
        for (what, kind) in kinds {
            match first {
                None => first = Some(kind),
                Some(k) if k != kind => anyhow::bail!(
                    "{what} is a {kind} example but the first is a {k}: one set of examples holds one kind \
                     (pairs for DAS, prompts for ReFT, texts for probes)"
                ),
                Some(_) => {}
            }
        }
        first.map(str::to_string).ok_or_else(|| anyhow::anyhow!("no examples"))
    }
}

#[pymethods]
impl Pairs {
    /// Examples from JSON lines (the Python package passes each record through `json.dumps`);
    /// a bad one raises `ValueError` naming its index (from 0) and the field.
    #[staticmethod]
    fn _from_lines(lines: Vec<String>) -> PyResult<Pairs> {
        let mut kinds = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let ex = parse_line(line).map_err(|why| invalid(anyhow::anyhow!("record {i}: {why}")))?;
            kinds.push((format!("record {i}"), ex.kind()));
        }
        let kind = Pairs::one_kind(kinds.into_iter()).map_err(invalid)?;
        Ok(Pairs { lines, path: None, kind })
    }

    /// Examples from a JSONL file; a bad line raises `ValueError` naming the file and line.
    #[staticmethod]
    fn from_jsonl(path: PathBuf) -> PyResult<Pairs> {
        let loaded = load_jsonl(&path, OnError::Stop).map_err(|e| invalid(e.into()))?;
        let kinds = loaded.examples.iter().map(|(n, ex)| (format!("{}:{n}", path.display()), ex.kind()));
        let kind = Pairs::one_kind(kinds).map_err(invalid)?;
        let text = std::fs::read_to_string(&path).map_err(|e| invalid(e.into()))?;
        let lines = text.lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect();
        Ok(Pairs { lines, path: Some(path), kind })
    }

    /// The examples as JSON lines.
    fn lines(&self) -> Vec<String> {
        self.lines.clone()
    }

    fn __len__(&self) -> usize {
        self.lines.len()
    }

    fn __repr__(&self) -> String {
        match &self.path {
            Some(p) => format!("Pairs({} {} examples from {})", self.lines.len(), self.kind, p.display()),
            None => format!("Pairs({} {} examples)", self.lines.len(), self.kind),
        }
    }
}
