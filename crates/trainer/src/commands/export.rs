//! `trainer export X.safetensors --to pyvene DIR` (or `--to pyreft`): our export written as the
//! folder pyvene's `IntervenableModel.save` (pyreft's `ReftModel.save`) writes, for
//! `IntervenableModel.load(DIR, model)` / `ReftModel.load(DIR, model)`
//! ([`ferrovene_interventions::pyvene_save`]).

use std::path::PathBuf;

use anyhow::{Result, bail};
use ferrovene_interventions::pyvene_save::write_folder;
use ferrovene_interventions::{Intervention, Placed, export};

/// Which library's folder to write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Flavour {
    /// pyvene's `IntervenableModel.load`.
    Pyvene,
    /// pyreft's `ReftModel.load` (the ReFT families).
    Pyreft,
}

/// How to load a pyreft folder so that it gives our numbers: pyreft 0.1.0 rebuilds
/// `learned_source` and `proj_layer` in bfloat16, and cannot rebuild NoReFT or NoDiReFT from
/// `config.json` at all (their constructor needs `add_bias`).
fn pyreft_hint(dir: &std::path::Path, kind: &str) -> String {
    let reload = format!(
        "for key, iv in m.interventions.items(): iv.float(); iv.load_state_dict(torch.load(f\"{}/intkey_{{key}}.bin\", weights_only=True))",
        dir.display()
    );
    match kind {
        "noreft" | "nodireft" => {
            let class = if kind == "noreft" { "NoreftIntervention" } else { "NodireftIntervention" };
            format!(
                "pyreft.ReftModel.load cannot rebuild {kind} (KeyError: 'add_bias', on pyreft's own folders too). Build it, then load the weights:\n  m = pyreft.get_reft_model(model, pyreft.ReftConfig(representations=[{{\"layer\": L, \"component\": C, \"low_rank_dimension\": k, \"intervention\": pyreft.{class}(embed_dim=d, low_rank_dimension=k, add_bias=True, dtype=torch.float32)}}]))\n  {reload}\n(L, C, k, d: as in {}/config.json)",
                dir.display()
            )
        }
        _ => format!(
            "load it with: m = pyreft.ReftModel.load(\"{}\", model); pyreft rebuilds the learned projection in bfloat16, so for our numbers then:\n  {reload}",
            dir.display()
        ),
    }
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
        let reft = set.members.iter().find(|m| matches!(m, Intervention::Reft(_))).map(|m| m.kind());
        match (self.to, reft) {
            (Flavour::Pyvene, Some(kind)) => bail!(
                "{} holds {kind}, which pyvene loads only through pyreft: use --to pyreft",
                self.intervention.display()
            ),
            (Flavour::Pyreft, None) => bail!(
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
            Flavour::Pyreft => println!("{}", pyreft_hint(&self.dir, reft.unwrap_or_default())),
        }
        Ok(())
    }
}
