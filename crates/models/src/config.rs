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

/// The dimensions every decoder's GGUF metadata gives, under `{arch}.` keys as llama.cpp writes
/// them (`general.architecture` names the arch).
#[derive(Debug, Clone, PartialEq)]
pub struct GgufDims {
    /// `general.architecture`.
    pub arch: String,
    /// `embedding_length`.
    pub hidden_size: usize,
    /// `attention.head_count`.
    pub num_heads: usize,
    /// `attention.head_count_kv` (default: the head count).
    pub num_kv_heads: usize,
    /// `attention.key_length` (default: hidden / heads).
    pub head_dim: usize,
    /// `block_count`.
    pub num_layers: usize,
    /// `feed_forward_length`.
    pub intermediate_size: usize,
    /// `vocab_size`, else the tokenizer's token count.
    pub vocab_size: usize,
    /// `attention.layer_norm_rms_epsilon`.
    pub rms_norm_eps: f64,
    /// `rope.freq_base` (default 10 000).
    pub rope_theta: f64,
    /// `attention.sliding_window`, where present and not 0.
    pub sliding_window: Option<usize>,
}

impl GgufDims {
    /// Reads the dimensions, checking that the heads fit together.
    pub fn read(file: &crate::weights::gguf::GgufFile) -> Result<Self> {
        let arch = file.meta_str("general.architecture")?.to_string();
        let key = |k: &str| format!("{arch}.{k}");
        let opt_u64 = |k: &str| file.metadata.get(&key(k)).and_then(|v| v.as_u64());
        let hidden_size = file.meta_u64(&key("embedding_length"))? as usize;
        let num_heads = file.meta_u64(&key("attention.head_count"))? as usize;
        let num_kv_heads = opt_u64("attention.head_count_kv").map_or(num_heads, |v| v as usize);
        let head_dim = opt_u64("attention.key_length").map(|v| v as usize);
        check_heads(file.path(), hidden_size, num_heads, num_kv_heads, head_dim.is_some())?;
        let vocab_size = match opt_u64("vocab_size") {
            Some(v) => v as usize,
            None => file.meta_strings("tokenizer.ggml.tokens")?.len(),
        };
        Ok(GgufDims {
            hidden_size,
            num_heads,
            num_kv_heads,
            head_dim: head_dim.unwrap_or(hidden_size / num_heads),
            num_layers: file.meta_u64(&key("block_count"))? as usize,
            intermediate_size: file.meta_u64(&key("feed_forward_length"))? as usize,
            vocab_size,
            rms_norm_eps: file.meta_f64(&key("attention.layer_norm_rms_epsilon"))?,
            rope_theta: file.metadata.get(&key("rope.freq_base")).and_then(|v| v.as_f64()).unwrap_or(10_000.0),
            sliding_window: opt_u64("attention.sliding_window").filter(|&w| w > 0).map(|w| w as usize),
            arch,
        })
    }

    /// `{arch}.{k}` as a float, if present.
    pub fn opt_f64(&self, file: &crate::weights::gguf::GgufFile, k: &str) -> Option<f64> {
        file.metadata.get(&format!("{}.{k}", self.arch)).and_then(|v| v.as_f64())
    }
}
