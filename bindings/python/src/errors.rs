//! ferrovene's errors as Python exceptions: the whole chain of context in the message (so it
//! names the file, record, field or argument), `ValueError` for what the caller gave,
//! `RuntimeError` for what went wrong while running.

use pyo3::PyErr;
use pyo3::exceptions::{PyRuntimeError, PyValueError};

/// `e` with its context chain, as a `ValueError` (the input was wrong).
pub fn invalid(e: anyhow::Error) -> PyErr {
    PyValueError::new_err(format!("{e:#}"))
}

/// `e` with its context chain, as a `RuntimeError` (running failed).
pub fn failed(e: anyhow::Error) -> PyErr {
    PyRuntimeError::new_err(format!("{e:#}"))
}
