//! `trainer export X.safetensors --to pyvene DIR` (or `--to pyreft`): our export written as the
//! folder pyvene's `IntervenableModel.save` (pyreft's `ReftModel.save`) writes, for
//! `IntervenableModel.load(DIR, model)` / `ReftModel.load(DIR, model)`
//! ([`ferrovene_interventions::pyvene_save`]).

use std::path::PathBuf;

use anyhow::{Result, bail};
use ferrovene_interventions::pyvene_save::write_folder;
use ferrovene_interventions::{Placed, export};

/// Which library's folder to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// pyvene's `IntervenableModel.load`.
    Pyvene,
    /// pyreft's `ReftModel.load` (LoReFT).
    Pyreft,
}

/// What to export, from the command line.
pub struct Export {
    /// Our export.
    pub intervention: PathBuf,
    /// pyvene or pyreft.
    pub to: Flavour,
    /// The folder to write.
    pub dir: PathBuf,
    /// Write into a folder that already has files.
    pub force: bool,
}

impl Export {
    /// Writes the folder.
    pub fn run(self) -> Result<()> {
        if self.dir.exists() && std::fs::read_dir(&self.dir)?.next().is_some() && !self.force {
            bail!("{} is not empty; choose another folder or pass --force", self.dir.display());
        }
        let device = Default::default();
        let (set, config) = export::load_set::<ferrovene_models::Cpu>(&self.intervention, &device)?;
        let reft = set.members.iter().any(|m| m.kind() == "loreft");
        match (self.to, reft) {
            (Flavour::Pyvene, true) => bail!(
                "{} holds LoReFT, which pyvene loads only through pyreft: use --to pyreft",
                self.intervention.display()
            ),
            (Flavour::Pyreft, false) => bail!(
                "{} holds {} interventions, which pyreft does not define: use --to pyvene",
                self.intervention.display(),
                set.kind()
            ),
            _ => {}
        }
        let width = config.placement.site_width;
        let widths = |site| {
            set.layout
                .slots
                .iter()
                .find(|s| s.site == site)
                .and_then(|s| set.members[s.member].width())
                .unwrap_or(width)
        };
        let keys = write_folder(&set, &widths, &self.dir)?;
        println!("{} → {} ({})", self.intervention.display(), self.dir.display(), keys.join(", "));
        match self.to {
            Flavour::Pyvene => println!(
                "load it with: pyvene.IntervenableModel.load(\"{}\", model)  (model: the {} model it was trained on, `{}`)",
                self.dir.display(),
                config.model.arch,
                config.model.id
            ),
            Flavour::Pyreft => println!(
                "load it with: pyreft.ReftModel.load(\"{}\", model), then .to(torch.float32) on each intervention (pyreft rebuilds LoReFT in bfloat16)",
                self.dir.display()
            ),
        }
        Ok(())
    }
}
