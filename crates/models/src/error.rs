//! The one error type of the models crate: every variant names the file, tensor or site at fault.

use std::path::PathBuf;

/// What can go wrong while loading or running a model. Field names say what they hold (the
/// file, the tensor, what was found and what was expected), so they carry no docs of their own.
#[allow(missing_docs)]
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A file is not what its name or header promises (truncated, corrupt, wrong format).
    #[error("{path}: {reason}")]
    Corrupt { path: PathBuf, reason: String },

    /// `config.json` (or GGUF metadata) is missing a field or has a bad value.
    #[error("{path}: bad config: {reason}")]
    Config { path: PathBuf, reason: String },

    /// The checkpoint's architecture is not one ferrovene implements.
    #[error("{path}: unknown architecture `{found}`; supported: {supported}")]
    UnknownArchitecture { path: PathBuf, found: String, supported: String },

    /// A tensor the architecture needs is not in the weight files.
    #[error("{path}: missing tensor `{tensor}` (is this checkpoint the architecture its config says?)")]
    MissingTensor { path: PathBuf, tensor: String },

    /// A tensor has a different shape from what the config implies.
    #[error("{path}: tensor `{tensor}` has shape {found:?}, expected {expected:?} from the config")]
    WrongShape { path: PathBuf, tensor: String, found: Vec<usize>, expected: Vec<usize> },

    /// A tensor is stored in a type ferrovene cannot convert to f32.
    #[error("{path}: tensor `{tensor}` has unsupported type {dtype}; supported: {supported}")]
    UnsupportedDtype { path: PathBuf, tensor: String, dtype: String, supported: String },

    /// A site that the model does not have was asked for.
    #[error("no site `{site}` in this {arch} model; valid sites: {valid}")]
    UnknownSite { site: String, arch: String, valid: String },

    /// An activation handed back at a site has the wrong shape.
    #[error("activation for site `{site}` has shape {found:?}, expected {expected:?}")]
    ActivationShape { site: String, found: Vec<usize>, expected: Vec<usize> },

    /// The tokenizer could not be built or used.
    #[error("{path}: tokenizer: {reason}")]
    Tokenizer { path: PathBuf, reason: String },

    /// A model could not be fetched from the hub (or the offline cache lacks it).
    #[error("hub model `{repo}`: {reason}")]
    Hub { repo: String, reason: String },

    /// A model name or path that resolves to nothing.
    #[error("cannot resolve model `{spec}`: {reason}")]
    Resolve { spec: String, reason: String },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, ModelError>;

impl ModelError {
    /// Wraps an I/O error with the path it happened on.
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        ModelError::Io { path: path.into(), source }
    }
    /// A corrupt-file error with its reason.
    pub fn corrupt(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ModelError::Corrupt { path: path.into(), reason: reason.into() }
    }
    /// A bad-config error with its reason.
    pub fn config(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        ModelError::Config { path: path.into(), reason: reason.into() }
    }
}
