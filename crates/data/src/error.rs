//! Errors that name the file and line at fault, and what would fix them.

use std::path::PathBuf;

/// A problem with a pair file.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// A line is bad.
    #[error("{}:{line}: {reason}", path.display())]
    Line {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// The whole file is bad (unreadable, empty, or every line skipped).
    #[error("{}: {reason}", path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

/// Shorthand for results of this crate.
pub type Result<T> = std::result::Result<T, DataError>;
