//! One file per architecture, each a config struct plus plain forward code.

pub mod attention;
pub mod bert;
pub(crate) mod common;
pub mod gemma;
pub mod gpt2;
pub mod gpt_neox;
pub mod llama;
pub mod mlp;
pub mod olmo2;
