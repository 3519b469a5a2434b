//! One file per architecture, each a config struct plus plain forward code.

pub mod llama;
