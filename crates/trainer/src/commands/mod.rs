//! The binary's subcommands, each generic over the backend where it runs a model
//! ([`crate::device::OnBackend`]). Recipes are reached only through
//! [`crate::experiments::Recipe`], never a kind's own module.

pub mod apply;
pub mod eval;
pub mod export;
pub mod import;
pub mod merge;
pub mod predict;
pub mod recipe_run;
pub mod run;
pub mod sae;
pub mod steer;
pub mod sweep;
pub mod sweep_devices;

use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use ferrovene_models::hub::{HubConfig, HubId, fetch_files};

/// `trainer list`: every recipe with its description (or why it does not parse).
pub fn list() -> Result<()> {
    for (name, desc) in crate::experiments::list(&crate::recipe::recipes_dir())? {
        match desc {
            Ok(d) => println!("{name:<28} {d}"),
            Err(e) => println!("{name:<28} (invalid: {e:#})"),
        }
    }
    Ok(())
}

/// An intervention given on the command line: a local file, or `org/name[@revision][:file]` on
/// the Hugging Face hub (`file` defaults to `intervention.safetensors`), fetched into the hub
/// cache (HF_ENDPOINT, HF_HOME, HF_HUB_OFFLINE and FERROVENE_HUB_TIMEOUT honoured).
pub fn intervention_path(spec: &Path) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let text = spec.to_string_lossy();
    let (repo, file) = match text.split_once(':') {
        Some((r, f)) => (r, f),
        None => (text.as_ref(), "intervention.safetensors"),
    };
    let id = HubId::parse(repo)
        .ok_or_else(|| anyhow!("{text}: no such file, and not a hub id (`org/name[@revision][:file]`)"))?;
    let dir = fetch_files(&id, &HubConfig::from_env(), file, |_| Ok(Vec::new()))?;
    Ok(dir.join(file))
}

/// The files of a pyvene or pyreft folder after its `config.json`: `intkey_<key>.bin` for each
/// of its `sorted_keys`.
pub fn pyvene_files(config: &Path) -> std::result::Result<Vec<String>, String> {
    let text = std::fs::read_to_string(config).map_err(|e| format!("{}: {e}", config.display()))?;
    let cfg: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: not JSON: {e}", config.display()))?;
    let keys = cfg
        .get("sorted_keys")
        .and_then(|k| k.as_array())
        .ok_or_else(|| format!("{}: no `sorted_keys`: not a folder pyvene or pyreft saved", config.display()))?;
    keys.iter()
        .map(|k| {
            k.as_str()
                .map(|k| format!("intkey_{k}.bin"))
                .ok_or_else(|| format!("{}: a key is not a string", config.display()))
        })
        .collect()
}

/// A pyvene or pyreft folder given on the command line: a local folder, or `org/name[@revision]`
/// on the hub (its `config.json` and the `intkey_*.bin` files it names, fetched into the cache).
pub fn pyvene_folder(spec: &Path) -> Result<PathBuf> {
    if spec.exists() {
        return Ok(spec.to_path_buf());
    }
    let text = spec.to_string_lossy();
    let id = HubId::parse(&text)
        .ok_or_else(|| anyhow!("{text}: no such folder, and not a hub id (`org/name[@revision]`)"))?;
    Ok(fetch_files(&id, &HubConfig::from_env(), "config.json", pyvene_files)?)
}
