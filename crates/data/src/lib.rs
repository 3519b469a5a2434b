//! Counterfactual pairs and their sourceless kin, as JSONL files: the format (see
//! `datasets/README.md`), validation with errors that name the file and line, and tokenisation
//! that turns position rules and spans into token indices.

#![warn(missing_docs)]

pub mod batch;
pub mod error;
pub mod filler_gap;
pub mod format;
pub mod names;
pub mod positions;
pub mod strict_json;
pub mod suite;
pub mod tokenize;

pub use error::{DataError, Result};
pub use format::{Example, Label, Loaded, OnError, Position, Source, load_jsonl};
pub use tokenize::{LabelId, TokenizedExample, TokenizedInput, tokenize};
