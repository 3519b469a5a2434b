//! `load_model` and `Model`: a frozen model with its tokenizer, for predictions and the names of
//! its sites (the trainings load their own copy from the model's spec).

use std::sync::Mutex;

use ferrovene_data::positions::resolve as resolve_positions;
use ferrovene_models::{Cpu, Input, LoadedModel, Site, Transformer, gather_positions, run_to};
use ferrovene_trainer::batch::int2;
use ferrovene_trainer::commands::predict::next_tokens;
use ferrovene_trainer::device::load_model as load_on;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::types::PyList;

use crate::errors::{failed, invalid};

/// A frozen model and its tokenizer, on the CPU.
#[pyclass(module = "ferrovene._ferrovene")]
pub struct Model {
    /// Behind a lock so that work on it can run with the GIL released.
    loaded: Mutex<LoadedModel<Cpu>>,
    /// What it was loaded from.
    #[pyo3(get)]
    spec: String,
    /// The device it is on.
    #[pyo3(get)]
    device: String,
}

/// The device a binding call computes on; only the CPU in this build.
pub fn cpu_only(device: &str) -> PyResult<()> {
    if device.eq_ignore_ascii_case("cpu") {
        Ok(())
    } else {
        Err(invalid(anyhow::anyhow!(
            "device={device:?}: this build of the Python package computes on the CPU only; give device=\"cpu\" \
             (GPU runs: the command line, built with --features cuda or wgpu)"
        )))
    }
}

/// Loads a model: a registry name (`smollm2-135m`), a Hugging Face folder, a GGUF file or a hub
/// id `org/name[@revision]`.
#[pyfunction]
#[pyo3(signature = (spec, device = "cpu", dtype = "f32"))]
pub fn load_model(py: Python<'_>, spec: String, device: &str, dtype: &str) -> PyResult<Model> {
    cpu_only(device)?;
    if dtype != "f32" {
        return Err(invalid(anyhow::anyhow!("dtype={dtype:?}: models load in f32 here; give dtype=\"f32\"")));
    }
    let loaded = py
        .detach(|| load_on::<Cpu>(&spec, &Default::default()))
        .map_err(|e| invalid(e.context(format!("loading model `{spec}`"))))?;
    Ok(Model { loaded: Mutex::new(loaded), spec, device: device.to_string() })
}

impl Model {
    /// What it was loaded from (a trainings loads its own copy from it).
    pub fn spec_name(&self) -> &str {
        &self.spec
    }

    /// The device it is on.
    pub fn device_name(&self) -> &str {
        &self.device
    }

    /// Runs `f` on the loaded model with the GIL released; its errors are `RuntimeError`s.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&LoadedModel<Cpu>) -> anyhow::Result<T> + Send,
    ) -> PyResult<T> {
        self.with_errors(py, f, failed)
    }

    /// Runs `f` on the loaded model with the GIL released; its errors become `error`'s.
    fn with_errors<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&LoadedModel<Cpu>) -> anyhow::Result<T> + Send,
        error: fn(anyhow::Error) -> PyErr,
    ) -> PyResult<T> {
        py.detach(|| {
            let loaded = self.loaded.lock().map_err(|_| anyhow::anyhow!("the model's lock is poisoned"))?;
            f(&loaded)
        })
        .map_err(error)
    }
}

#[pymethods]
impl Model {
    /// The token ids of `text` (as the trainings tokenise it).
    fn tokenize(&self, py: Python<'_>, text: String) -> PyResult<Vec<u32>> {
        let spec = self.spec.clone();
        self.with(py, move |m| {
            let tok = m.tokenizer.as_ref().ok_or_else(|| anyhow::anyhow!("model `{spec}` has no tokenizer"))?;
            Ok(tok.encode(&text)?)
        })
    }

    /// The `top` most likely next tokens after `text`: a list of dicts with `id`, `token`, `p`
    /// and `logit`, most likely first (what `trainer predict --json` lists under `top`).
    #[pyo3(signature = (text, top = 5))]
    fn predict<'py>(&self, py: Python<'py>, text: String, top: usize) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let prediction = self.with(py, move |m| next_tokens(m, &text, top, &Default::default()))?;
        prediction
            .top
            .iter()
            .map(|c| {
                let d = PyDict::new(py);
                d.set_item("id", c.id)?;
                d.set_item("token", &c.token)?;
                d.set_item("p", c.p)?;
                d.set_item("logit", c.logit)?;
                Ok(d)
            })
            .collect()
    }

    /// The activations at `sites` (one name, or a list) of each input (a text, or a list of
    /// token ids) at `positions` (rules of the pair format: `"last"`, `"f3+l3"`, indices; every
    /// input must give as many): a float32 array `[inputs, positions, width]` for one site, or
    /// a dict of them by site.
    #[pyo3(signature = (inputs, sites, positions = vec!["last".to_string()]))]
    fn activations<'py>(
        &self,
        py: Python<'py>,
        inputs: &Bound<'py, PyAny>,
        sites: &Bound<'py, PyAny>,
        positions: Vec<String>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let one_site = sites.extract::<String>().ok();
        let names: Vec<String> = match &one_site {
            Some(s) => vec![s.clone()],
            None => sites.extract().map_err(|_| invalid(anyhow::anyhow!("sites: a site name or a list of them")))?,
        };
        let parsed = names
            .iter()
            .map(|n| n.parse::<Site>().map_err(|e| invalid(anyhow::anyhow!("site {n:?}: {e}"))))
            .collect::<PyResult<Vec<_>>>()?;
        let list = inputs
            .cast::<PyList>()
            .map_err(|_| invalid(anyhow::anyhow!("inputs: a list of texts or of token-id lists")))?;
        let mut given: Vec<Result<String, Vec<u32>>> = Vec::with_capacity(list.len());
        for (i, item) in list.iter().enumerate() {
            match item.extract::<String>() {
                Ok(text) => given.push(Ok(text)),
                Err(_) => given.push(Err(item
                    .extract::<Vec<u32>>()
                    .map_err(|_| invalid(anyhow::anyhow!("inputs[{i}]: a text or a list of token ids")))?)),
            }
        }
        let spec = self.spec.clone();
        // What fails here is what was asked for (texts, ids, sites, positions): ValueError.
        let (shape, values) = self.with_errors(py, move |m| {
            let device = Default::default();
            let tok = m.tokenizer.as_ref();
            let mut per_site: Vec<Vec<f32>> = vec![Vec::new(); parsed.len()];
            let mut k_width = None;
            for (i, g) in given.iter().enumerate() {
                let ids = match g {
                    Ok(text) => tok.ok_or_else(|| anyhow::anyhow!("model `{spec}` has no tokenizer: give token ids"))?.encode(text)?,
                    Err(ids) => ids.clone(),
                };
                let at = resolve_positions(&positions, ids.len(), &format!("inputs[{i}]"))?;
                let input = Input::<Cpu>::from_ids(std::slice::from_ref(&ids), &device);
                for (s, site) in parsed.iter().enumerate() {
                    let acts = run_to(&m.model, &input, *site)?.activation;
                    let picked = gather_positions(acts, int2::<Cpu>(std::slice::from_ref(&at), &device));
                    let [_, k, width] = picked.dims();
                    match k_width {
                        None => k_width = Some((k, width)),
                        Some((k0, _)) if k0 != k => anyhow::bail!(
                            "inputs[{i}] gives {k} positions and inputs[0] {k0}: every input must give as many (positions={positions:?})"
                        ),
                        Some(_) => {}
                    }
                    per_site[s].extend(picked.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?);
                }
            }
            Ok((k_width, per_site))
        }, invalid)?;
        let (k, _) = shape.unwrap_or((0, 0));
        let arrays = values
            .into_iter()
            .map(|v| {
                let width = v.len().checked_div(list.len() * k).unwrap_or(0);
                PyArray1::from_vec(py, v).reshape([list.len(), k, width]).map(Bound::into_any)
            })
            .collect::<PyResult<Vec<_>>>()?;
        if one_site.is_some() {
            return arrays.into_iter().next().ok_or_else(|| invalid(anyhow::anyhow!("no site")));
        }
        let out = PyDict::new(py);
        for (name, a) in names.iter().zip(arrays) {
            out.set_item(name, a)?;
        }
        Ok(out.into_any())
    }

    /// Every site of the model (`"6.block_output"`, …), embeddings first, then layer by layer.
    fn sites(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        self.with(py, |m| Ok(m.model.sites().iter().map(|s| s.site.to_string()).collect()))
    }

    /// Number of blocks.
    #[getter]
    fn n_layers(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |m| Ok(m.model.n_layers()))
    }

    /// Width of the residual stream.
    #[getter]
    fn width(&self, py: Python<'_>) -> PyResult<usize> {
        self.with(py, |m| Ok(m.model.width()))
    }

    fn __repr__(&self) -> String {
        format!("Model({:?}, device={:?})", self.spec, self.device)
    }
}
