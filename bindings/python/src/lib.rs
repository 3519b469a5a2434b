//! `ferrovene._ferrovene`: ferrovene's library as a Python module (pyo3). The Python package
//! `ferrovene` (python/ferrovene) re-exports it with docstrings, keyword defaults and progress
//! bars; this crate does the work and keeps Python's rules: errors become Python exceptions that
//! name the record, field or argument at fault, long work releases the GIL, and Ctrl-C during
//! training stops the run after a checkpoint, as the command line does.

mod errors;
mod intervention;
mod model;
mod pairs;
mod run;

use pyo3::prelude::*;

/// The native module.
#[pymodule]
fn _ferrovene(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<model::Model>()?;
    m.add_class::<pairs::Pairs>()?;
    m.add_class::<intervention::Intervention>()?;
    m.add_class::<run::Report>()?;
    m.add_function(wrap_pyfunction!(model::load_model, m)?)?;
    m.add_function(wrap_pyfunction!(run::run_recipe, m)?)?;
    m.add_function(wrap_pyfunction!(run::train, m)?)?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    Ok(())
}
