//! `load_model` and `Model`: a frozen model with its tokenizer on a device, kept in memory for
//! as long as the `Model` lives, so that the trainings, applications and evaluations given it
//! use this copy instead of loading their own ([`ferrovene_trainer::resident`]).

use std::any::Any;
use std::sync::Mutex;

use burn::tensor::backend::Backend;
use ferrovene_data::positions::resolve as resolve_positions;
use ferrovene_models::{Input, LoadedModel, Site, TextTokenizer, Transformer, gather_positions, run_to};
use ferrovene_trainer::batch::int2;
use ferrovene_trainer::commands::predict::{Prediction, next_tokens};
use ferrovene_trainer::device::{
    Compute, DeviceSpec, OnBackend, Precision, available, dispatch, load_model as load_on,
};
use ferrovene_trainer::resident::{Kept, keep};
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use pyo3::types::PyList;

use crate::errors::{failed, invalid};

/// A frozen model and its tokenizer, on a device.
#[pyclass(module = "ferrovene._ferrovene")]
pub struct Model {
    /// The model on its backend (a [`Held`] of that backend), behind a lock so that work on it
    /// can run with the GIL released.
    held: Mutex<Box<dyn Any + Send>>,
    /// Device and precision it was loaded with; every call on it dispatches to them.
    compute: Compute,
    /// Its tokenizer, if it has one.
    tokenizer: Option<TextTokenizer>,
    /// Every site's name.
    site_names: Vec<String>,
    /// Number of blocks.
    #[pyo3(get)]
    n_layers: usize,
    /// Width of the residual stream.
    #[pyo3(get)]
    width: usize,
    /// What it was loaded from.
    #[pyo3(get)]
    spec: String,
}

/// One backend's model, its device, and the handle that keeps it for the loads that follow.
struct Held<B: Backend> {
    loaded: LoadedModel<B>,
    device: B::Device,
    _kept: Kept,
}

/// The precision named by `dtype` (None: the device's default).
pub fn precision(dtype: Option<&str>) -> PyResult<Option<Precision>> {
    match dtype {
        None => Ok(None),
        Some("f32") => Ok(Some(Precision::F32)),
        Some("bf16") => Ok(Some(Precision::Bf16)),
        Some("f16") => Ok(Some(Precision::F16)),
        Some(other) => Err(invalid(anyhow::anyhow!(
            "dtype={other:?}: give \"f32\", \"bf16\" or \"f16\" (or None for the device's default: f32 on the CPU, \
             f16 on a GPU that has it)"
        ))),
    }
}

/// The compute settings for `device` and `dtype`, checked against what this build has.
pub fn compute(device: &str, dtype: Option<&str>) -> PyResult<Compute> {
    let spec: DeviceSpec = device.parse().map_err(|e: String| invalid(anyhow::anyhow!("device={device:?}: {e}")))?;
    let kind = spec.to_string();
    let kind = kind.split(':').next().unwrap_or("cpu");
    if !available().contains(&kind) {
        return Err(invalid(anyhow::anyhow!(
            "device={device:?}: this build of the Python package has no {kind} support (it has: {}); \
             build it with MATURIN_PEP517_ARGS=\"--features {kind}\" pip install ./bindings/python",
            available().join(", ")
        )));
    }
    Ok(Compute { device: spec, dtype: precision(dtype)? })
}

/// Loading a model on the dispatched backend, kept there for the loads that follow.
struct Load {
    spec: String,
}

/// What [`Load`] gives: the model behind `Any`, and what Python reads of it without a backend.
struct Loaded {
    held: Box<dyn Any + Send>,
    tokenizer: Option<TextTokenizer>,
    site_names: Vec<String>,
    n_layers: usize,
    width: usize,
    dtype: Precision,
}

impl OnBackend for Load {
    type Output = Loaded;

    fn run<B: Backend>(self, device: B::Device) -> anyhow::Result<Loaded> {
        let loaded = load_on::<B>(&self.spec, &device)?;
        let dtype = match ferrovene_models::precision::frozen_dtype() {
            burn::tensor::FloatDType::BF16 => Precision::Bf16,
            burn::tensor::FloatDType::F16 => Precision::F16,
            _ => Precision::F32,
        };
        let kept = keep(&loaded, &device);
        Ok(Loaded {
            tokenizer: loaded.tokenizer.clone(),
            site_names: loaded.model.sites().iter().map(|s| s.site.to_string()).collect(),
            n_layers: loaded.model.n_layers(),
            width: loaded.model.width(),
            dtype,
            held: Box::new(Held::<B> { loaded, device, _kept: kept }),
        })
    }
}

/// Work on a loaded model, written once for every backend.
trait ModelWork: Send {
    /// What it gives.
    type Output: Send;
    /// Does it with the model on backend `B`.
    fn run<B: Backend>(self, loaded: &LoadedModel<B>, device: &B::Device) -> anyhow::Result<Self::Output>;
}

/// [`ModelWork`] on a `Model`'s held model, dispatched to the backend it was loaded on.
struct OnHeld<'a, W> {
    held: &'a Mutex<Box<dyn Any + Send>>,
    work: W,
}

impl<W: ModelWork> OnBackend for OnHeld<'_, W> {
    type Output = W::Output;

    fn run<B: Backend>(self, _device: B::Device) -> anyhow::Result<W::Output> {
        let held = self.held.lock().map_err(|_| anyhow::anyhow!("the model's lock is poisoned"))?;
        let held = held
            .downcast_ref::<Held<B>>()
            .ok_or_else(|| anyhow::anyhow!("the model is not on the backend this call dispatched to"))?;
        self.work.run(&held.loaded, &held.device)
    }
}

/// Loads a model: a registry name (`smollm2-135m`), a Hugging Face folder, a GGUF file or a hub
/// id `org/name[@revision]`, on `device` in `dtype` (None: the device's default).
#[pyfunction]
#[pyo3(signature = (spec, device = "cpu", dtype = None))]
pub fn load_model(py: Python<'_>, spec: String, device: &str, dtype: Option<&str>) -> PyResult<Model> {
    let asked = compute(device, dtype)?;
    let job = Load { spec: spec.clone() };
    let loaded = py
        .detach(|| dispatch(asked, job))
        .map_err(|e| invalid(e.context(format!("loading model `{spec}` on {device}"))))?;
    Ok(Model {
        held: Mutex::new(loaded.held),
        compute: Compute { device: asked.device, dtype: Some(loaded.dtype) },
        tokenizer: loaded.tokenizer,
        site_names: loaded.site_names,
        n_layers: loaded.n_layers,
        width: loaded.width,
        spec,
    })
}

impl Model {
    /// What it was loaded from (the spec a training or an application loads, and finds kept).
    pub fn spec_name(&self) -> &str {
        &self.spec
    }

    /// The device and precision it was loaded with; `dtype` overrides the precision.
    pub fn compute_with(&self, dtype: Option<&str>) -> PyResult<Compute> {
        Ok(Compute { device: self.compute.device, dtype: precision(dtype)?.or(self.compute.dtype) })
    }

    /// Runs `work` on the loaded model with the GIL released; its errors become `error`'s.
    fn with<W: ModelWork>(&self, py: Python<'_>, work: W, error: fn(anyhow::Error) -> PyErr) -> PyResult<W::Output> {
        let job = OnHeld { held: &self.held, work };
        let compute = self.compute;
        py.detach(|| dispatch(compute, job)).map_err(error)
    }
}

/// `Model.predict`'s work.
struct PredictWork {
    text: String,
    top: usize,
}

impl ModelWork for PredictWork {
    type Output = Prediction;

    fn run<B: Backend>(self, loaded: &LoadedModel<B>, device: &B::Device) -> anyhow::Result<Prediction> {
        next_tokens(loaded, &self.text, self.top, device)
    }
}

/// `Model.activations`' work: per site, every input's values at its positions, and `(k, width)`.
struct ActivationsWork {
    given: Vec<Result<String, Vec<u32>>>,
    sites: Vec<Site>,
    positions: Vec<String>,
    spec: String,
}

impl ModelWork for ActivationsWork {
    type Output = (Option<(usize, usize)>, Vec<Vec<f32>>);

    fn run<B: Backend>(self, m: &LoadedModel<B>, device: &B::Device) -> anyhow::Result<Self::Output> {
        let (spec, positions) = (&self.spec, &self.positions);
        let tok = m.tokenizer.as_ref();
        let mut per_site: Vec<Vec<f32>> = vec![Vec::new(); self.sites.len()];
        let mut k_width = None;
        for (i, g) in self.given.iter().enumerate() {
            let ids = match g {
                Ok(text) => tok
                    .ok_or_else(|| anyhow::anyhow!("model `{spec}` has no tokenizer: give token ids"))?
                    .encode(text)?,
                Err(ids) => ids.clone(),
            };
            let at = resolve_positions(positions, ids.len(), &format!("inputs[{i}]"))?;
            let input = Input::<B>::from_ids(std::slice::from_ref(&ids), device);
            for (s, site) in self.sites.iter().enumerate() {
                let acts = run_to(&m.model, &input, *site)?.activation;
                let picked = gather_positions(acts, int2::<B>(std::slice::from_ref(&at), device));
                let [_, k, width] = picked.dims();
                match k_width {
                    None => k_width = Some((k, width)),
                    Some((k0, _)) if k0 != k => anyhow::bail!(
                        "inputs[{i}] gives {k} positions and inputs[0] {k0}: every input must give as many (positions={positions:?})"
                    ),
                    Some(_) => {}
                }
                per_site[s]
                    .extend(picked.into_data().convert::<f32>().to_vec::<f32>().map_err(|e| anyhow::anyhow!("{e:?}"))?);
            }
        }
        Ok((k_width, per_site))
    }
}

#[pymethods]
impl Model {
    /// The token ids of `text` (as the trainings tokenise it).
    fn tokenize(&self, text: String) -> PyResult<Vec<u32>> {
        let tok = self
            .tokenizer
            .as_ref()
            .ok_or_else(|| invalid(anyhow::anyhow!("model `{}` has no tokenizer", self.spec)))?;
        tok.encode(&text).map_err(|e| failed(e.into()))
    }

    /// The `top` most likely next tokens after `text`: a list of dicts with `id`, `token`, `p`
    /// and `logit`, most likely first (what `trainer predict --json` lists under `top`).
    #[pyo3(signature = (text, top = 5))]
    fn predict<'py>(&self, py: Python<'py>, text: String, top: usize) -> PyResult<Vec<Bound<'py, PyDict>>> {
        let prediction = self.with(py, PredictWork { text, top }, failed)?;
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
        // What fails here is what was asked for (texts, ids, sites, positions): ValueError.
        let work = ActivationsWork { given, sites: parsed, positions, spec: self.spec.clone() };
        let (shape, values) = self.with(py, work, invalid)?;
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

    /// The device it is on (`"cpu"`, `"cuda:0"`, …).
    #[getter]
    fn device(&self) -> String {
        self.compute.device.to_string()
    }

    /// The precision of its weights (`"f32"`, `"bf16"`, `"f16"`).
    #[getter]
    fn dtype(&self) -> &'static str {
        self.compute.dtype.map_or("f32", Precision::name)
    }

    /// Every site of the model (`"6.block_output"`, …), embeddings first, then layer by layer.
    fn sites(&self) -> Vec<String> {
        self.site_names.clone()
    }

    fn __repr__(&self) -> String {
        format!("Model({:?}, device={:?}, dtype={:?})", self.spec, self.device(), self.dtype())
    }
}
