//! `Intervention`: a trained intervention (or set of them) as ferrovene exports it, loaded back,
//! saved, and read as numpy arrays.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use ferrovene_interventions::InterventionSet;
use ferrovene_interventions::export::{ExportConfig, load_set, save_set};
use ferrovene_models::Cpu;
use numpy::{PyArray1, PyArrayMethods};
use pyo3::prelude::*;
use pyo3::types::PyDict;

use crate::errors::{failed, invalid};

/// An exported intervention, loaded on the CPU.
#[pyclass(module = "ferrovene._ferrovene")]
pub struct Intervention {
    set: Mutex<InterventionSet<Cpu>>,
    config: ExportConfig,
    /// The file it was loaded from or last saved to.
    #[pyo3(get)]
    path: PathBuf,
}

impl Intervention {
    /// Loads the export at `path`.
    pub fn open(path: &Path) -> anyhow::Result<Intervention> {
        let (set, config) = load_set::<Cpu>(path, &Default::default())?;
        Ok(Intervention { set: Mutex::new(set), config, path: path.to_path_buf() })
    }
}

/// Every tensor of a safetensors file, as f32 values with their shapes, by name.
fn tensors(path: &Path) -> anyhow::Result<BTreeMap<String, (Vec<f32>, Vec<usize>)>> {
    let bytes = std::fs::read(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let mut out = BTreeMap::new();
    for (name, view) in st.tensors() {
        let values: Vec<f32> = match view.dtype() {
            safetensors::Dtype::F32 => {
                view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
            }
            other => anyhow::bail!("{}: tensor `{name}` is {other:?}; exports keep f32", path.display()),
        };
        out.insert(name, (values, view.shape().to_vec()));
    }
    Ok(out)
}

#[pymethods]
impl Intervention {
    /// Loads an export (`intervention.safetensors` of a run, or one `trainer import` made from a
    /// pyvene or pyreft folder).
    #[staticmethod]
    fn load(py: Python<'_>, path: PathBuf) -> PyResult<Intervention> {
        py.detach(|| Intervention::open(&path)).map_err(|e| invalid(e.context(format!("loading {}", path.display()))))
    }

    /// Writes the intervention to `path` (safetensors with its config), and reads from there on.
    fn save(&mut self, py: Python<'_>, path: PathBuf) -> PyResult<()> {
        let (set, config) = (&self.set, self.config.clone());
        py.detach(|| -> anyhow::Result<PathBuf> {
            let set = set.lock().map_err(|_| anyhow::anyhow!("the intervention's lock is poisoned"))?;
            Ok(save_set(&set, config, &path)?)
        })
        .map_err(|e| failed(e.context(format!("saving to {}", path.display()))))?;
        self.path = path;
        Ok(())
    }

    /// The parameters, as the export names them, each a float32 numpy array.
    fn parameters<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let all = py.detach(|| tensors(&self.path)).map_err(failed)?;
        let out = PyDict::new(py);
        for (name, (values, shape)) in all {
            out.set_item(name, PyArray1::from_vec(py, values).reshape(shape)?)?;
        }
        Ok(out)
    }

    /// What it is: kind, sites and metrics as the export records them (its JSON config).
    fn config<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        let text = serde_json::to_string(&self.config).map_err(|e| failed(e.into()))?;
        py.import("json")?.call_method1("loads", (text,))
    }

    fn __repr__(&self) -> String {
        let n = self.set.lock().map(|s| s.members.len()).unwrap_or(0);
        format!("Intervention({} member(s) from {})", n, self.path.display())
    }
}
