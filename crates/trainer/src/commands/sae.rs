//! Published SAEs on the command line: `trainer apply --intervention SAE --latents 10,42`
//! (interchange the latents from `--source`, or clamp them with `--clamp V`), and `trainer sae`
//! (what an SAE is, how well it reconstructs a prompt, and with `--features` the most active
//! latents at each position). SAE files are read by
//! [`ferrovene_interventions::sae_formats`]: SAELens folders, Gemma Scope's `params.npz`, or a
//! safetensors file of the same five tensors.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::Backend;
use clap::Args;
use ferrovene_interventions::export::{ExportConfig, METADATA_KEY, ModelConfig, PlacementConfig};
use ferrovene_interventions::sae::{Sae, SaeActivation};
use ferrovene_interventions::sae_formats::{LoadedSae, load_sae};
use ferrovene_interventions::{Intervention, InterventionSet};
use ferrovene_models::{Input, LoadedModel, Site, SiteInfo, Transformer, run_to};
use serde_json::json;

use crate::device::{OnBackend, load_model};

/// `trainer apply`'s options for SAE files (refused for other exports).
#[derive(Debug, Clone, Default, Args)]
pub struct SaeOptions {
    /// SAE files: the latents to interchange from --source (or to clamp with --clamp),
    /// comma-separated; default: all of them.
    #[arg(long, value_delimiter = ',')]
    pub latents: Option<Vec<usize>>,
    /// SAE files: set the chosen latents to this value (0 ablates them) instead of reading a
    /// source.
    #[arg(long, allow_hyphen_values = true)]
    pub clamp: Option<f64>,
    /// SAE files: the site the SAE reads, when its file names none or one under another name
    /// (e.g. 12.block_output).
    #[arg(long)]
    pub site: Option<Site>,
}

impl SaeOptions {
    /// Whether any SAE option was given.
    pub fn any(&self) -> bool {
        self.latents.is_some() || self.clamp.is_some() || self.site.is_some()
    }
}

/// Whether `path` is an SAE file rather than a ferrovene export: a folder, a `.npz`, or a
/// safetensors file without ferrovene's config in its metadata.
pub fn is_sae(path: &Path) -> Result<bool> {
    if path.is_dir() || path.extension().is_some_and(|e| e == "npz") {
        return Ok(true);
    }
    if path.extension().is_none_or(|e| e != "safetensors") {
        return Ok(false);
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| anyhow!("{}: not a valid safetensors file: {e}", path.display()))?;
    Ok(meta.metadata().as_ref().is_none_or(|m| !m.contains_key(METADATA_KEY)))
}

/// The SAE at `path` and the site it reads (`--site`, else its own), checked against the model.
fn sae_at<B: Backend>(
    path: &Path,
    site: Option<Site>,
    model: &impl Transformer<B>,
    device: &B::Device,
) -> Result<(LoadedSae<B>, SiteInfo)> {
    let loaded = load_sae::<B>(path, device)?;
    let site = match (site, &loaded.site) {
        (Some(s), _) => s,
        (None, Ok(s)) => *s,
        (None, Err(why)) => bail!("{}: which site does this SAE read? {why}", path.display()),
    };
    let info = model.site_info(site).with_context(|| format!("{}: the SAE's site {site}", path.display()))?;
    let (d, _) = loaded.sae.dims();
    if d != info.width {
        bail!(
            "{}: the SAE reads {d}-wide activations, but {site} of this model is {} wide: it was trained on another model or site (give the model with --model, the site with --site)",
            path.display(),
            info.width
        );
    }
    Ok((loaded, info))
}

/// The SAE at `path` as a one-member intervention set at its site, acting on the chosen
/// latents, with a config that `trainer apply` reads as it reads an export's.
pub fn as_set<B: Backend>(
    path: &Path,
    options: &SaeOptions,
    loaded_model: &LoadedModel<B>,
    device: &B::Device,
) -> Result<(InterventionSet<B>, ExportConfig)> {
    let (loaded, info) = sae_at(path, options.site, &loaded_model.model, device)?;
    let sae = loaded.sae.acting_on(options.latents.clone().unwrap_or_default(), options.clamp)?;
    let placement = PlacementConfig {
        sites: vec![info.site.to_string()],
        positions: "last".into(),
        site_width: info.width,
        ..Default::default()
    };
    let config = ExportConfig::new(placement, ModelConfig::of(loaded_model), json!({"sae": loaded.format}));
    Ok((InterventionSet::single(Intervention::Sae(sae), info.site), config))
}

/// `trainer sae`: an SAE on a prompt.
pub struct SaeCommand {
    /// The SAE (folder or file).
    pub sae: PathBuf,
    /// The model.
    pub model: String,
    /// The prompt.
    pub prompt: String,
    /// The site, when the SAE's file names none.
    pub site: Option<Site>,
    /// Show the most active latents at each position.
    pub features: bool,
    /// How many latents per position.
    pub top: usize,
    /// Print JSON.
    pub json: bool,
}

/// `(latent, activation)` of the `top` largest activations of one position, largest first
/// (zeros left out).
fn top_latents(z: &[f32], top: usize) -> Vec<(usize, f32)> {
    crate::generate::top_k(z, top).into_iter().filter(|&j| z[j] > 0.0).map(|j| (j, z[j])).collect()
}

fn activation_name(a: SaeActivation) -> String {
    match a {
        SaeActivation::Relu => "ReLU".into(),
        SaeActivation::JumpRelu => "JumpReLU".into(),
        SaeActivation::TopK(k) => format!("TopK (k = {k})"),
    }
}

impl OnBackend for SaeCommand {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let loaded =
            load_model::<B>(&self.model, &device).with_context(|| format!("loading model `{}`", self.model))?;
        let tok = loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", self.model))?;
        let (sae, info) = sae_at::<B>(&self.sae, self.site, &loaded.model, &device)?;
        let ids = tok.encode(&self.prompt)?;
        if ids.is_empty() {
            bail!("the prompt {:?} tokenizes to nothing", self.prompt);
        }
        let acts =
            run_to(&loaded.model, &Input::<B>::from_ids(std::slice::from_ref(&ids), &device), info.site)?.activation;
        let s: &Sae<B> = &sae.sae;
        let (d, m) = s.dims();
        let z: Vec<f32> = s.encode(acts.clone()).into_data().convert::<f32>().to_vec().map_err(|e| anyhow!("{e:?}"))?;
        let x: Vec<f32> = acts.clone().into_data().convert::<f32>().to_vec().map_err(|e| anyhow!("{e:?}"))?;
        let r: Vec<f32> = s.reconstruct(acts).into_data().convert::<f32>().to_vec().map_err(|e| anyhow!("{e:?}"))?;
        // Per position: active latents, and ‖x − x̂‖² / ‖x − mean‖² (the variance left unexplained).
        let mut rows = Vec::new();
        for (p, &id) in ids.iter().enumerate() {
            let (zp, xp, rp) = (&z[p * m..(p + 1) * m], &x[p * d..(p + 1) * d], &r[p * d..(p + 1) * d]);
            let mean = xp.iter().sum::<f32>() / d as f32;
            let err: f32 = xp.iter().zip(rp).map(|(a, b)| (a - b) * (a - b)).sum();
            let var: f32 = xp.iter().map(|a| (a - mean) * (a - mean)).sum();
            rows.push(json!({
                "position": p, "token": tok.decode(&[id])?,
                "active": zp.iter().filter(|v| **v > 0.0).count(),
                "unexplained_variance": err / var.max(f32::MIN_POSITIVE),
                "top": top_latents(zp, self.top).into_iter().map(|(j, v)| json!({"latent": j, "activation": v})).collect::<Vec<_>>(),
            }));
        }
        if self.json {
            let out = json!({
                "sae": self.sae, "format": sae.format, "hook_name": sae.hook_name, "site": info.site.to_string(),
                "d": d, "latents": m, "activation": activation_name(s.activation), "model": loaded.spec,
                "positions": rows,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
            return Ok(());
        }
        println!(
            "{} ({}{}): {} SAE of {m} latents on {d}-wide {} · {}",
            self.sae.display(),
            sae.format,
            sae.hook_name.as_ref().map_or(String::new(), |h| format!(", {h}")),
            activation_name(s.activation),
            info.site,
            loaded.spec
        );
        println!(
            "{:>4}  {:<14} {:>7} {:>11}  {}",
            "pos",
            "token",
            "active",
            "unexplained",
            if self.features { "top latents (activation)" } else { "" }
        );
        for row in &rows {
            let top = if self.features {
                row["top"]
                    .as_array()
                    .map(|t| {
                        t.iter()
                            .map(|e| format!("{} ({:.3})", e["latent"], e["activation"].as_f64().unwrap_or(0.0)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default()
            } else {
                String::new()
            };
            println!(
                "{:>4}  {:<14} {:>7} {:>11.4}  {top}",
                row["position"],
                format!("{:?}", row["token"].as_str().unwrap_or("")),
                row["active"],
                row["unexplained_variance"].as_f64().unwrap_or(0.0)
            );
        }
        if !self.features {
            println!("(--features lists each position's most active latents)");
        }
        Ok(())
    }
}
