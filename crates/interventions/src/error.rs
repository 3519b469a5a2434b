//! Errors of the interventions crate: each names the file, site, tensor or parameter at fault.

use std::path::PathBuf;

/// What can go wrong building, applying, saving or loading an intervention.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum InterventionError {
    /// A source-reading intervention was applied without a source.
    #[error(
        "intervention `{kind}` reads a source activation, but none was given (sourceless kinds: addition of a fixed vector, zero, mean, noise, collect, the ReFT family, probe, steering)"
    )]
    MissingSource { kind: String },
    /// A parameter value is out of range or inconsistent.
    #[error("intervention `{kind}`: parameter `{parameter}`: {reason}")]
    BadParameter { kind: String, parameter: String, reason: String },
    /// An export does not fit the model it is loaded into.
    #[error("{path}: this export does not fit the target: {reason}")]
    Mismatch { path: PathBuf, reason: String },
    /// An export file is unreadable or damaged.
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },
    /// The model refused a site (unknown, or outside it).
    #[error(transparent)]
    Model(#[from] ferrovene_models::ModelError),
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, InterventionError>;
