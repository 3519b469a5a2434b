//! `load_model` and `Model`: a frozen model with its tokenizer, for predictions and the names of
//! its sites (the trainings load their own copy from the model's spec).

use std::sync::Mutex;

use ferrovene_models::{Cpu, LoadedModel, Transformer};
use ferrovene_trainer::commands::predict::next_tokens;
use ferrovene_trainer::device::load_model as load_on;
use pyo3::prelude::*;
use pyo3::types::PyDict;

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

    /// Runs `f` on the loaded model with the GIL released.
    fn with<T: Send>(
        &self,
        py: Python<'_>,
        f: impl FnOnce(&LoadedModel<Cpu>) -> anyhow::Result<T> + Send,
    ) -> PyResult<T> {
        py.detach(|| {
            let loaded = self.loaded.lock().map_err(|_| anyhow::anyhow!("the model's lock is poisoned"))?;
            f(&loaded)
        })
        .map_err(failed)
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
