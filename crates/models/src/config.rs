//! Reading Hugging Face `config.json` files: typed fields with errors that name the file and key.

use std::path::Path;

use serde_json::Value;

use crate::error::{ModelError, Result};
use crate::layers::RopeScaling;

/// A parsed `config.json` with typed accessors.
pub struct HfConfig<'a> {
    /// The file, for messages.
    pub path: &'a Path,
    /// The JSON object.
    pub json: &'a Value,
}

impl<'a> HfConfig<'a> {
    /// An unsigned integer field.
    pub fn usize(&self, key: &str) -> Result<usize> {
        self.opt_usize(key)?.ok_or_else(|| ModelError::config(self.path, format!("missing `{key}`")))
    }
    /// An optional unsigned integer field (absent or null → None).
    pub fn opt_usize(&self, key: &str) -> Result<Option<usize>> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_u64().map(|x| Some(x as usize)).ok_or_else(|| {
                ModelError::config(self.path, format!("`{key}` should be a non-negative integer, found {v}"))
            }),
        }
    }
    /// A float field with a default.
    pub fn f64_or(&self, key: &str, default: f64) -> Result<f64> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_f64()
                .ok_or_else(|| ModelError::config(self.path, format!("`{key}` should be a number, found {v}"))),
        }
    }
    /// A bool field with a default.
    pub fn bool_or(&self, key: &str, default: bool) -> Result<bool> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| ModelError::config(self.path, format!("`{key}` should be true or false, found {v}"))),
        }
    }
    /// A string field with a default.
    pub fn str_or(&self, key: &str, default: &'a str) -> Result<&'a str> {
        match self.json.get(key) {
            None | Some(Value::Null) => Ok(default),
            Some(v) => v
                .as_str()
                .ok_or_else(|| ModelError::config(self.path, format!("`{key}` should be a string, found {v}"))),
        }
    }

    /// `rope_scaling` (`linear` or `llama3`; absent or null means none).
    pub fn rope_scaling(&self) -> Result<Option<RopeScaling>> {
        let Some(v) = self.json.get("rope_scaling").filter(|v| !v.is_null()) else { return Ok(None) };
        let kind = v.get("rope_type").or_else(|| v.get("type")).and_then(Value::as_str).unwrap_or("");
        let num = |k: &str| {
            v.get(k)
                .and_then(Value::as_f64)
                .ok_or_else(|| ModelError::config(self.path, format!("rope_scaling.{k} missing or not a number")))
        };
        match kind {
            "default" => Ok(None),
            "linear" => Ok(Some(RopeScaling::Linear { factor: num("factor")? })),
            "llama3" => Ok(Some(RopeScaling::Llama3 {
                factor: num("factor")?,
                low_freq_factor: num("low_freq_factor")?,
                high_freq_factor: num("high_freq_factor")?,
                original_max_position_embeddings: num("original_max_position_embeddings")?,
            })),
            other => Err(ModelError::config(
                self.path,
                format!("rope_scaling type `{other}` is not supported (supported: linear, llama3)"),
            )),
        }
    }
}

/// Which layers attend through a sliding window, and how wide, from a `config.json`.
#[derive(Debug, Clone, Copy)]
pub enum WindowLayers {
    /// Every layer, when `sliding_window` is set (Mistral, Phi-3).
    All,
    /// Layers from `max_window_layers` on, when `use_sliding_window` is true (Qwen 2 and 3).
    FromMaxWindowLayers,
    /// Every other layer, starting with layer 0 (Gemma 2).
    EveryOther,
    /// All but every `sliding_window_pattern`-th layer (Gemma 3; default pattern 6).
    AllButEveryNth,
}

impl<'a> HfConfig<'a> {
    /// The sliding window of each of `layers` layers (`None`: full attention). `layer_types`
    /// (`"sliding_attention"` / `"full_attention"`, written by transformers ≥ 4.53) decides where
    /// present; otherwise `default`, the rule the model's own transformers class applies.
    pub fn layer_windows(&self, layers: usize, default: WindowLayers) -> Result<Vec<Option<usize>>> {
        let window = self.opt_usize("sliding_window")?;
        if matches!(default, WindowLayers::FromMaxWindowLayers) && !self.bool_or("use_sliding_window", false)? {
            return Ok(vec![None; layers]);
        }
        let Some(window) = window else { return Ok(vec![None; layers]) };
        if window == 0 {
            return Err(ModelError::config(self.path, "`sliding_window` must be positive"));
        }
        if let Some(types) = self.json.get("layer_types").filter(|v| !v.is_null()) {
            let types = types.as_array().filter(|t| t.len() == layers).ok_or_else(|| {
                ModelError::config(
                    self.path,
                    format!("`layer_types` should be a list of {layers} strings, one per layer"),
                )
            })?;
            return types
                .iter()
                .enumerate()
                .map(|(l, t)| match t.as_str() {
                    Some("sliding_attention") => Ok(Some(window)),
                    Some("full_attention") => Ok(None),
                    _ => Err(ModelError::config(
                        self.path,
                        format!("`layer_types[{l}]` is {t}; expected \"sliding_attention\" or \"full_attention\""),
                    )),
                })
                .collect();
        }
        let sliding: Box<dyn Fn(usize) -> bool> = match default {
            WindowLayers::All => Box::new(|_| true),
            WindowLayers::FromMaxWindowLayers => {
                let from = self.opt_usize("max_window_layers")?.unwrap_or(0);
                Box::new(move |l| l >= from)
            }
            WindowLayers::EveryOther => Box::new(|l| l % 2 == 0),
            WindowLayers::AllButEveryNth => {
                let n = match self.opt_usize("sliding_window_pattern")? {
                    Some(n) => n,
                    None => self.opt_usize("_sliding_window_pattern")?.unwrap_or(6),
                };
                Box::new(move |l| n == 0 || !(l + 1).is_multiple_of(n))
            }
        };
        Ok((0..layers).map(|l| sliding(l).then_some(window)).collect())
    }
}

/// Checks that attention dimensions fit together (so that no later division or reshape fails):
/// `heads > 0`, `kv_heads` divides `heads`, and, where the head width is derived, `heads`
/// divides `hidden`.
pub fn check_heads(path: &Path, hidden: usize, heads: usize, kv_heads: usize, head_dim_given: bool) -> Result<()> {
    if heads == 0 || kv_heads == 0 {
        return Err(ModelError::config(
            path,
            format!("attention heads must be positive (heads {heads}, kv heads {kv_heads})"),
        ));
    }
    if !heads.is_multiple_of(kv_heads) {
        return Err(ModelError::config(
            path,
            format!("{heads} attention heads cannot be shared by {kv_heads} key/value heads"),
        ));
    }
    if !head_dim_given && !hidden.is_multiple_of(heads) {
        return Err(ModelError::config(
            path,
            format!("hidden size {hidden} is not divisible by {heads} attention heads"),
        ));
    }
    Ok(())
}
