//! `trainer import DIR --model M --out X.safetensors`: a folder that pyvene or pyreft saved
//! ([`ferrovene_interventions::pyvene`]) written as our export, checked against the model it
//! will be applied to, so that `trainer eval` and `trainer apply` take it.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use burn::tensor::backend::Backend;
use ferrovene_interventions::Placed;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::pyvene::read_folder;
use ferrovene_models::Transformer;
use serde_json::json;

use crate::device::{OnBackend, load_model};

/// What to import, from the command line.
pub struct Import {
    /// The folder pyvene's `IntervenableModel.save` or pyreft's `ReftModel.save` wrote.
    pub folder: PathBuf,
    /// The model the interventions were trained on (registry name, folder, .gguf, hub id).
    pub model: String,
    /// Where to write the export.
    pub out: PathBuf,
    /// Replace an existing file at `out`.
    pub force: bool,
}

impl OnBackend for Import {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        if self.out.exists() && !self.force {
            bail!("{} exists; choose another --out or pass --force to replace it", self.out.display());
        }
        let dir = super::pyvene_folder(&self.folder)?;
        let folder = read_folder::<B>(&dir, &device)?;
        if folder.mode != "parallel" {
            eprintln!(
                "note: pyvene ran these interventions in `{}` mode; ferrovene applies a set in parallel (each reads the unmodified activation)",
                folder.mode
            );
        }
        let loaded =
            load_model::<B>(&self.model, &device).with_context(|| format!("loading model `{}`", self.model))?;
        let sites = folder.set.sites();
        let width = loaded.model.site_info(sites[0])?.width;
        let placement = PlacementConfig {
            sites: sites.iter().map(ToString::to_string).collect(),
            positions: "given when applied (pyvene keeps no positions)".into(),
            site_width: width,
            ..Default::default()
        };
        let training = json!({"imported_from": self.folder, "pyvene_keys": folder.keys, "classes": folder.classes});
        let mut config = ExportConfig::new(placement, ModelConfig::of(&loaded), training);
        if !folder.set.layout.is_plain() {
            config.set = Some(export::SetConfig { members: Vec::new(), slots: Vec::new(), share: Default::default() });
        }
        let model_sites = loaded.model.sites();
        let target =
            export::Target { arch: loaded.model.arch(), hidden_size: loaded.model.width(), sites: &model_sites };
        for (slot, iv) in folder.set.layout.slots.iter().map(|s| (s, &folder.set.members[s.member])) {
            let info = loaded
                .model
                .site_info(slot.site)
                .with_context(|| format!("{}: {}", self.folder.display(), slot.name()))?;
            if let Some(w) = iv.width().filter(|w| *w != info.width) {
                bail!(
                    "{}: the intervention at {} acts on {w} dims, but that site of `{}` is {} wide: was it saved for another model?",
                    self.folder.display(),
                    slot.site,
                    self.model,
                    info.width
                );
            }
        }
        let path = export::save_set(&folder.set, config, &self.out)?;
        // What was written loads back and fits the model.
        let (_, written) = export::load_set::<B>(&path, &device)?;
        written.check_target(&path, &target)?;
        println!(
            "{}: {} ({}) at {} → {}",
            self.folder.display(),
            folder.classes.join(", "),
            folder.set.kind(),
            sites.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "),
            path.display()
        );
        Ok(())
    }
}
