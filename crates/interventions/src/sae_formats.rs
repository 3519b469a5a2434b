//! Sparse autoencoders as people publish them, read into [`Sae`]:
//!
//! - **Gemma Scope**: `params.npz` (numpy's zip of `.npy` arrays) with `W_enc` `[d, m]`, `b_enc`
//!   `[m]`, `W_dec` `[m, d]`, `b_dec` `[d]` and `threshold` `[m]`; JumpReLU, no input bias, no
//!   normalisation. The hub layout (`gemma-scope-2b-pt-res/layer_12/width_16k/…/params.npz`)
//!   names the site: `-res` the residual stream after block 12, `-mlp` its MLP output, `-att`
//!   its attention heads before the output projection.
//! - **SAELens**: a folder with `cfg.json` and `sae_weights.safetensors` (`W_enc`, `b_enc`,
//!   `W_dec`, `b_dec`, and `threshold` or `log_threshold` for JumpReLU; F32, F16 or BF16).
//!   `architecture` `standard`, `jumprelu` or `topk` (with `k`; SAELens 5 wrote
//!   `activation_fn_str = "topk"` and `activation_fn_kwargs.k` instead), `apply_b_dec_to_input`,
//!   `normalize_activations`, and `hook_name` (top level, or under `meta`/`metadata` since
//!   SAELens 6), a TransformerLens hook mapped to our sites by [`hook_site`].
//! - **Gemma-Scope-style safetensors**: the five tensors of `params.npz` in one safetensors file.

use std::path::{Path, PathBuf};

use burn::module::Param;
use burn::tensor::{Tensor, TensorData, backend::Backend};
use ferrovene_models::{Component, Site};
use serde_json::Value;

use crate::error::{InterventionError, Result};
use crate::sae::{Sae, SaeActivation, SaeNorm};

/// An SAE read from a published file, with where it was trained to read.
pub struct LoadedSae<B: Backend> {
    /// The SAE (frozen; no latents chosen yet).
    pub sae: Sae<B>,
    /// The site its config (or its hub path) names, or why there is none (no hook named, or a
    /// hook with no site here, listing those there are).
    pub site: std::result::Result<Site, String>,
    /// The hook name as the file gives it (SAELens), for messages.
    pub hook_name: Option<String>,
    /// `Gemma Scope`, `SAELens` or `safetensors`.
    pub format: &'static str,
}

/// TransformerLens hook names and the sites they are (`{L}` a layer).
pub const HOOKS: [(&str, Component); 11] = [
    ("blocks.{L}.hook_resid_pre", Component::BlockInput),
    ("blocks.{L}.hook_resid_post", Component::BlockOutput),
    ("blocks.{L}.hook_attn_out", Component::AttentionOutput),
    ("blocks.{L}.hook_mlp_out", Component::MlpOutput),
    ("blocks.{L}.attn.hook_z", Component::AttentionValueOutput),
    ("blocks.{L}.attn.hook_q", Component::QueryOutput),
    ("blocks.{L}.attn.hook_k", Component::KeyOutput),
    ("blocks.{L}.attn.hook_v", Component::ValueOutput),
    ("blocks.{L}.mlp.hook_post", Component::MlpActivation),
    ("blocks.{L}.ln1.hook_normalized", Component::AttentionInput),
    ("blocks.{L}.ln2.hook_normalized", Component::MlpInput),
];

/// The site a TransformerLens hook name is (`blocks.12.hook_resid_post` → `12.block_output`);
/// the error lists every hook this reads and its site.
pub fn hook_site(hook: &str) -> std::result::Result<Site, String> {
    let parsed = hook.strip_prefix("blocks.").and_then(|rest| {
        let (layer, tail) = rest.split_once('.')?;
        let layer: usize = layer.parse().ok()?;
        let component = HOOKS.iter().find(|(pattern, _)| pattern.strip_prefix("blocks.{L}.") == Some(tail))?.1;
        Some(Site::new(layer, component))
    });
    parsed.ok_or_else(|| {
        format!(
            "hook `{hook}` is not one of ours: the hooks read are {}; give the site yourself (--site) if it is one under another name",
            HOOKS.iter().map(|(p, c)| format!("`{p}` → L.{c}")).collect::<Vec<_>>().join(", ")
        )
    })
}

/// The site of a Gemma Scope SAE from its hub path: `layer_N` and the release's `-res`, `-mlp`
/// or `-att` suffix.
pub fn gemma_scope_site(path: &Path) -> Option<Site> {
    let parts: Vec<String> = path.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    let layer = parts.iter().find_map(|p| p.strip_prefix("layer_")?.parse::<usize>().ok())?;
    let component = parts.iter().find_map(|p| {
        let p = p.to_lowercase();
        if p.contains("gemma-scope") || p.contains("gemma_scope") {
            [
                ("-res", Component::BlockOutput),
                ("-mlp", Component::MlpOutput),
                ("-att", Component::AttentionValueOutput),
            ]
            .into_iter()
            .find(|(suffix, _)| p.contains(suffix))
            .map(|(_, c)| c)
        } else {
            None
        }
    })?;
    Some(Site::new(layer, component))
}

/// The site a Gemma Scope path names, or why it names none.
fn path_site(path: &Path) -> std::result::Result<Site, String> {
    gemma_scope_site(path).ok_or_else(|| {
        "its path does not name a site (Gemma Scope's hub layout does: `gemma-scope-…-res/layer_12/…`); give the site with --site".to_string()
    })
}

/// Reads an SAE from `path`: a SAELens folder (`cfg.json`), a folder with `params.npz`, a
/// `.npz` file (Gemma Scope), or a `.safetensors` file of Gemma Scope's five tensors.
pub fn load_sae<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedSae<B>> {
    let corrupt = |reason: String| InterventionError::Corrupt { path: path.to_path_buf(), reason };
    if path.is_dir() {
        if path.join("cfg.json").exists() {
            return saelens(path, device);
        }
        if path.join("params.npz").exists() {
            return gemma_scope(&path.join("params.npz"), device);
        }
        return Err(corrupt(
            "not an SAE folder: it has neither SAELens' cfg.json (with sae_weights.safetensors) nor Gemma Scope's params.npz".into(),
        ));
    }
    match path.extension().and_then(|e| e.to_str()) {
        Some("npz") => gemma_scope(path, device),
        Some("safetensors") => {
            let tensors = read_safetensors(path)?;
            let sae = jumprelu_from(path, &tensors, device)?;
            Ok(LoadedSae { sae, site: path_site(path), hook_name: None, format: "safetensors" })
        }
        _ => Err(corrupt(
            "not a known SAE format: give a SAELens folder (cfg.json + sae_weights.safetensors), Gemma Scope's params.npz, or a safetensors file of W_enc, b_enc, W_dec, b_dec, threshold".into(),
        )),
    }
}

/// Named tensors as `(f32 values, shape)`.
type Named = Vec<(String, Vec<f32>, Vec<usize>)>;

fn read_safetensors(path: &Path) -> Result<Named> {
    let corrupt = |reason: String| InterventionError::Corrupt { path: path.to_path_buf(), reason };
    let bytes = std::fs::read(path).map_err(|e| InterventionError::Io { path: path.to_path_buf(), source: e })?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| corrupt(format!("not a valid safetensors file: {e}")))?;
    st.tensors()
        .into_iter()
        .map(|(name, view)| {
            let values = ferrovene_models::weights::f32_of(view.dtype(), view.data()).ok_or_else(|| {
                corrupt(format!("tensor `{name}` is {:?}; SAE weights are read as F32, F16 or BF16", view.dtype()))
            })?;
            Ok((name, values, view.shape().to_vec()))
        })
        .collect()
}

fn read_npz(path: &Path) -> Result<Named> {
    let corrupt = |reason: String| InterventionError::Corrupt { path: path.to_path_buf(), reason };
    let mut npz = npyz::npz::NpzArchive::open(path).map_err(|e| corrupt(format!("not a numpy .npz archive: {e}")))?;
    let names: Vec<String> = npz.array_names().map(str::to_string).collect();
    let mut out = Vec::new();
    for name in names {
        let array = npz
            .by_name(&name)
            .map_err(|e| corrupt(format!("array `{name}`: {e}")))?
            .ok_or_else(|| corrupt(format!("array `{name}` is listed but missing")))?;
        if array.order() != npyz::Order::C {
            return Err(corrupt(format!("array `{name}` is in Fortran order; save it C-ordered (numpy's default)")));
        }
        let shape: Vec<usize> = array.shape().iter().map(|&s| s as usize).collect();
        let descr = array.dtype().descr();
        let values: Vec<f32> = match descr.trim_matches('\'').trim_start_matches(['<', '>', '|', '=']) {
            "f4" => array.into_vec::<f32>(),
            "f8" => array.into_vec::<f64>().map(|v| v.into_iter().map(|x| x as f32).collect()),
            other => {
                return Err(corrupt(format!(
                    "array `{name}` has dtype `{other}`; SAE weights are read as float32 or float64"
                )));
            }
        }
        .map_err(|e| corrupt(format!("array `{name}`: {e}")))?;
        out.push((name, values, shape));
    }
    Ok(out)
}

/// Gemma Scope's `params.npz`.
fn gemma_scope<B: Backend>(path: &Path, device: &B::Device) -> Result<LoadedSae<B>> {
    let tensors = read_npz(path)?;
    let sae = jumprelu_from(path, &tensors, device)?;
    Ok(LoadedSae { sae, site: path_site(path), hook_name: None, format: "Gemma Scope" })
}

/// The weights every SAE has, checked against each other: `(W_enc, b_enc, W_dec, b_dec, d, m)`.
struct Weights {
    w_enc: Vec<f32>,
    b_enc: Vec<f32>,
    w_dec: Vec<f32>,
    b_dec: Vec<f32>,
    d: usize,
    m: usize,
}

fn take(tensors: &Named, name: &str) -> Option<(Vec<f32>, Vec<usize>)> {
    tensors.iter().find(|(n, _, _)| n == name).map(|(_, v, s)| (v.clone(), s.clone()))
}

fn weights(path: &Path, tensors: &Named) -> Result<Weights> {
    let corrupt = |reason: String| InterventionError::Corrupt { path: path.to_path_buf(), reason };
    let have = || tensors.iter().map(|(n, _, _)| n.as_str()).collect::<Vec<_>>().join(", ");
    let need = |name: &str| -> Result<(Vec<f32>, Vec<usize>)> {
        take(tensors, name).ok_or_else(|| corrupt(format!("missing SAE tensor `{name}` (the file has: {})", have())))
    };
    let (w_enc, s) = need("W_enc")?;
    let [d, m] = <[usize; 2]>::try_from(s.as_slice())
        .map_err(|_| corrupt(format!("`W_enc` has shape {s:?}, expected [d_in, d_sae]")))?;
    let shaped = |name: &str, shape: Vec<usize>| -> Result<Vec<f32>> {
        let (v, s) = need(name)?;
        if s != shape {
            return Err(corrupt(format!(
                "SAE tensor `{name}` has shape {s:?}, expected {shape:?} (from W_enc [{d}, {m}])"
            )));
        }
        Ok(v)
    };
    Ok(Weights {
        b_enc: shaped("b_enc", vec![m])?,
        w_dec: shaped("W_dec", vec![m, d])?,
        b_dec: shaped("b_dec", vec![d])?,
        w_enc,
        d,
        m,
    })
}

fn frozen1<B: Backend>(v: Vec<f32>, device: &B::Device) -> Param<Tensor<B, 1>> {
    let n = v.len();
    Param::from_tensor(Tensor::from_data(TensorData::new(v, [n]), device)).set_require_grad(false)
}

fn frozen2<B: Backend>(v: Vec<f32>, shape: [usize; 2], device: &B::Device) -> Param<Tensor<B, 2>> {
    Param::from_tensor(Tensor::from_data(TensorData::new(v, shape), device)).set_require_grad(false)
}

/// An SAE of `activation` from checked weights (no latents chosen).
fn sae_of<B: Backend>(
    w: Weights,
    threshold: Option<Vec<f32>>,
    activation: SaeActivation,
    input_bias: bool,
    normalize: SaeNorm,
    device: &B::Device,
) -> Sae<B> {
    Sae {
        w_enc: frozen2(w.w_enc, [w.d, w.m], device),
        b_enc: frozen1(w.b_enc, device),
        w_dec: frozen2(w.w_dec, [w.m, w.d], device),
        b_dec: frozen1(w.b_dec, device),
        threshold: threshold.map(|t| frozen1(t, device)),
        activation,
        input_bias,
        normalize,
        latents: Vec::new(),
        clamp: None,
    }
}

/// A JumpReLU SAE of Gemma Scope's five tensors.
fn jumprelu_from<B: Backend>(path: &Path, tensors: &Named, device: &B::Device) -> Result<Sae<B>> {
    let w = weights(path, tensors)?;
    let threshold = match take(tensors, "threshold") {
        Some((t, s)) if s == [w.m] => t,
        Some((_, s)) => {
            return Err(InterventionError::Corrupt {
                path: path.to_path_buf(),
                reason: format!("SAE tensor `threshold` has shape {s:?}, expected [{}]", w.m),
            });
        }
        None => {
            return Err(InterventionError::Corrupt {
                path: path.to_path_buf(),
                reason: "missing SAE tensor `threshold` (a Gemma Scope SAE is JumpReLU: W_enc, b_enc, W_dec, b_dec, threshold)".into(),
            });
        }
    };
    Ok(sae_of(w, Some(threshold), SaeActivation::JumpRelu, false, SaeNorm::None, device))
}

/// A string field of `cfg`, at the top level or under `meta`/`metadata` (SAELens 6).
fn cfg_str<'a>(cfg: &'a Value, key: &str) -> Option<&'a str> {
    cfg.get(key)
        .or_else(|| cfg.get("meta").and_then(|m| m.get(key)))
        .or_else(|| cfg.get("metadata").and_then(|m| m.get(key)))
        .and_then(Value::as_str)
}

/// A SAELens folder.
fn saelens<B: Backend>(dir: &Path, device: &B::Device) -> Result<LoadedSae<B>> {
    let cfg_path = dir.join("cfg.json");
    let bad_cfg = |reason: String| InterventionError::Corrupt { path: cfg_path.clone(), reason };
    let text =
        std::fs::read_to_string(&cfg_path).map_err(|e| InterventionError::Io { path: cfg_path.clone(), source: e })?;
    let cfg: Value = serde_json::from_str(&text).map_err(|e| bad_cfg(format!("not JSON: {e}")))?;
    let weights_path: PathBuf = dir.join("sae_weights.safetensors");
    if !weights_path.exists() {
        return Err(InterventionError::Corrupt {
            path: dir.to_path_buf(),
            reason: "a SAELens folder holds sae_weights.safetensors beside cfg.json; it is missing".into(),
        });
    }
    let tensors = read_safetensors(&weights_path)?;
    let w = weights(&weights_path, &tensors)?;
    for (key, value) in [("d_in", w.d), ("d_sae", w.m)] {
        if let Some(n) = cfg.get(key).and_then(Value::as_u64)
            && n as usize != value
        {
            return Err(bad_cfg(format!("`{key}` is {n} but the weights give {value}")));
        }
    }
    if cfg
        .get("hook_head_index")
        .or_else(|| cfg.get("meta").and_then(|m| m.get("hook_head_index")))
        .is_some_and(|v| !v.is_null())
    {
        return Err(bad_cfg("`hook_head_index` is set: an SAE of one attention head is not read here".into()));
    }
    if cfg.get("finetuning_scaling_factor").and_then(Value::as_bool) == Some(true) {
        return Err(bad_cfg(
            "`finetuning_scaling_factor` is true: SAEs with a finetuning scale are not read here".into(),
        ));
    }
    let architecture = cfg_str(&cfg, "architecture").unwrap_or("standard");
    let legacy_topk = cfg_str(&cfg, "activation_fn_str").or_else(|| cfg_str(&cfg, "activation_fn")) == Some("topk");
    let k = || -> Result<usize> {
        cfg.get("k")
            .or_else(|| cfg.get("activation_fn_kwargs").and_then(|a| a.get("k")))
            .and_then(Value::as_u64)
            .map(|k| k as usize)
            .ok_or_else(|| bad_cfg("a TopK SAE needs `k` (or `activation_fn_kwargs.k`)".into()))
    };
    let (activation, threshold) = match architecture {
        "standard" if legacy_topk => (SaeActivation::TopK(k()?), None),
        "standard" => (SaeActivation::Relu, None),
        "topk" => (SaeActivation::TopK(k()?), None),
        "jumprelu" => {
            let threshold = match (take(&tensors, "threshold"), take(&tensors, "log_threshold")) {
                (Some((t, _)), _) => t,
                (None, Some((log_t, _))) => log_t.into_iter().map(f32::exp).collect(),
                (None, None) => {
                    return Err(InterventionError::Corrupt {
                        path: weights_path.clone(),
                        reason: "a JumpReLU SAE needs `threshold` (or `log_threshold`)".into(),
                    });
                }
            };
            if threshold.len() != w.m {
                return Err(InterventionError::Corrupt {
                    path: weights_path.clone(),
                    reason: format!("the threshold has {} values for {} latents", threshold.len(), w.m),
                });
            }
            (SaeActivation::JumpRelu, Some(threshold))
        }
        other => {
            return Err(bad_cfg(format!("architecture `{other}` is not read here (standard, jumprelu and topk are)")));
        }
    };
    let normalize = cfg_str(&cfg, "normalize_activations").unwrap_or("none");
    let normalize = SaeNorm::from_name(normalize).ok_or_else(|| {
        bad_cfg(format!(
            "`normalize_activations` is `{normalize}`; SAELens' values are none, expected_average_only_in, constant_norm_rescale, layer_norm"
        ))
    })?;
    let input_bias = cfg.get("apply_b_dec_to_input").and_then(Value::as_bool).unwrap_or(true);
    let hook_name = cfg_str(&cfg, "hook_name").map(str::to_string);
    let site = match &hook_name {
        Some(h) => hook_site(h).map_err(|e| format!("{}: `hook_name`: {e}", cfg_path.display())),
        None => Err(format!("{} names no `hook_name`; give the site with --site", cfg_path.display())),
    };
    let sae = sae_of(w, threshold, activation, input_bias, normalize, device);
    Ok(LoadedSae { sae, site, hook_name, format: "SAELens" })
}
