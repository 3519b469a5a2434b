//! `trainer steer`: a steering vector from two sets of texts — the difference of the mean
//! activations at `L.block_output` at each text's last token — exported like any intervention,
//! to be applied with a scale (`trainer apply --every-token --scale α`).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::Backend;
use burn::tensor::{ElementConversion, Tensor};
use ferrovene_data::TokenizedInput;
use ferrovene_data::batch::{PaddingSide, pad};
use ferrovene_interventions::Intervention;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::steering::Steering;
use ferrovene_models::{Component, Site, TextTokenizer, Transformer, gather_positions, run_to};

use crate::batch::{input_of, int2};
use crate::device::{OnBackend, load_model};

/// What to build, from the command line.
pub struct Steer {
    /// Model spec.
    pub model: String,
    /// Texts showing the behaviour to add (one per line, or JSONL with a `text` field).
    pub positive: PathBuf,
    /// Texts showing its opposite.
    pub negative: PathBuf,
    /// Layer whose `block_output` is read and steered.
    pub layer: usize,
    /// α stored in the export (`trainer apply --scale` overrides it).
    pub scale: f64,
    /// Where the export goes.
    pub out: PathBuf,
    /// Replace `out` if it exists.
    pub force: bool,
}

/// Reads texts: one per line, or JSON objects with a `text` field (strict JSON, as pair files:
/// a key given twice is an error); blank lines skipped. Errors name the file and line.
pub fn read_texts(path: &Path) -> Result<Vec<String>> {
    let content = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('{') {
            let v: serde_json::Value = ferrovene_data::strict_json::parse(line)
                .map_err(|e| anyhow!("{}:{}: not valid JSON: {e}", path.display(), i + 1))?;
            let t = v
                .get("text")
                .and_then(|t| t.as_str())
                .ok_or_else(|| anyhow!("{}:{}: a JSON line needs a `text` string", path.display(), i + 1))?;
            if t.trim().is_empty() {
                bail!("{}:{}: `text` is empty: every text needs a last token to read", path.display(), i + 1);
            }
            out.push(t.to_string());
        } else {
            out.push(line.to_string());
        }
    }
    if out.is_empty() {
        bail!("{}: no texts (one per line, or JSONL with `text`)", path.display());
    }
    Ok(out)
}

/// `[n, width]`: each text's activation at `site` at its last token, in batches of 16, with a
/// progress bar (`what` names the texts) where the output is a terminal.
pub fn last_token_activations<B: Backend, M: Transformer<B>>(
    model: &M,
    tok: &TextTokenizer,
    texts: &[String],
    site: Site,
    what: &str,
    device: &B::Device,
) -> Result<Tensor<B, 2>> {
    let mut rows = Vec::new();
    let bar = crate::events::progress(texts.len(), what);
    for chunk in texts.chunks(16) {
        let inputs: Vec<TokenizedInput> = chunk
            .iter()
            .map(|t| {
                let ids = tok.encode(t)?;
                if ids.is_empty() {
                    bail!("the text {t:?} tokenises to nothing");
                }
                Ok(TokenizedInput { positions: vec![ids.len() - 1], ids })
            })
            .collect::<Result<_>>()?;
        let refs: Vec<&TokenizedInput> = inputs.iter().collect();
        let p = pad(&refs, tok.pad_id, PaddingSide::for_model(model.causal()));
        let acts = run_to(model, &input_of::<B>(&p.ids, &p.mask, device), site)?.activation;
        let v = gather_positions(acts, int2::<B>(&p.positions, device));
        let [n, _, d] = v.dims();
        rows.push(v.reshape([n, d]));
        bar.inc(chunk.len() as u64);
    }
    bar.finish_and_clear();
    Ok(Tensor::cat(rows, 0))
}

impl OnBackend for Steer {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        if self.out.exists() && !self.force {
            bail!("{} exists; choose another --out, or pass --force to replace it", self.out.display());
        }
        let loaded =
            load_model::<B>(&self.model, &device).with_context(|| format!("loading model `{}`", self.model))?;
        let (model, tok) = (
            &loaded.model,
            loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", self.model))?,
        );
        let site = Site::new(self.layer, Component::BlockOutput);
        model.site_info(site)?;
        let (pos, neg) = (read_texts(&self.positive)?, read_texts(&self.negative)?);
        let steering = Steering::mean_difference(
            last_token_activations(model, tok, &pos, site, "positive", &device)?,
            last_token_activations(model, tok, &neg, site, "negative", &device)?,
            self.scale,
        );
        let norm: f32 = steering.vector.val().powf_scalar(2.0).sum().sqrt().into_scalar().elem();
        if norm <= 0.0 || !norm.is_finite() {
            bail!(
                "the positive texts ({}) and the negative texts ({}) give the same mean activation at {site} (the vector's norm is {norm}): a steering vector from them would do nothing; give texts that differ in the behaviour",
                self.positive.display(),
                self.negative.display()
            );
        }
        let placement = PlacementConfig {
            sites: vec![site.to_string()],
            positions: "every token".into(),
            site_width: model.width(),
            ..Default::default()
        };
        let training = serde_json::json!({"positive": self.positive, "negative": self.negative, "n_positive": pos.len(), "n_negative": neg.len(), "norm": norm});
        let config = ExportConfig::new(placement, ModelConfig::of(&loaded), training);
        if let Some(parent) = self.out.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
        }
        export::save(&Intervention::Steering(steering), config, &self.out)?;
        println!(
            "steering vector at {site}: mean difference of {} positive and {} negative texts, norm {norm:.3}, scale {}; written to {}\n\
             apply it: trainer apply --intervention {} --prompt \"...\" --generate 20 --every-token --scale {}",
            pos.len(),
            neg.len(),
            self.scale,
            self.out.display(),
            self.out.display(),
            self.scale
        );
        Ok(())
    }
}
