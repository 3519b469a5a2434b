//! `trainer apply`: an exported intervention on a prompt — the model's next-token prediction
//! before and after, or text generated (greedy or sampled, see [`crate::generate`]) without and
//! with the intervention active.

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::Tensor;
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use ferrovene_data::positions::resolve as resolve_positions;
use ferrovene_interventions::export::{self, ExportConfig};
use ferrovene_interventions::probe::LinearProbe;
use ferrovene_interventions::{Intervention, InterventionSet, Placed};
use ferrovene_models::{Input, LoadedModel, Site, SiteInfo, Transformer, gather_positions, run_to};
use serde_json::json;

use super::sae::{self, SaeOptions};
use crate::batch::int2;
use crate::device::{OnBackend, load_model};
use crate::generate::{Decoding, Steer, generate, next_logits, top_k};

/// What to apply, from the command line.
pub struct Apply {
    /// The export.
    pub intervention: PathBuf,
    /// The prompt (the base).
    pub prompt: String,
    /// The source text, for interventions that read one (DAS).
    pub source: Option<String>,
    /// Token positions to intervene on (see `ferrovene_data::positions`); none: the export's own rule
    /// when it is one of those (`last`, `f3+l3`, …), else `last`.
    pub positions: Option<Vec<String>>,
    /// Wrap the prompt in SmolLM2-Instruct's chat template (ChatML), as chat-trained ReFT expects.
    pub chat: bool,
    /// Positions in the source (default: the same rule as `positions`).
    pub source_positions: Option<Vec<String>>,
    /// The model (default: the export's).
    pub model: Option<String>,
    /// Generate text (how many tokens, how they are chosen, with or without a KV cache) instead
    /// of showing the next-token distribution.
    pub generate: Option<Decoding>,
    /// Also intervene at every generated token (steering), not only at the prompt positions.
    pub every_token: bool,
    /// Candidates shown.
    pub top: usize,
    /// For steering vectors: the scale α (overrides the export's).
    pub scale: Option<f64>,
    /// Print JSON.
    pub json: bool,
    /// For SAE files: latents, clamping, site.
    pub sae: SaeOptions,
}

/// The export, the model and the prompt, resolved.
struct Prepared<B: Backend> {
    iv: InterventionSet<B>,
    config: ExportConfig,
    loaded: LoadedModel<B>,
    spec: String,
    site_name: String,
    info: SiteInfo,
    ids: Vec<u32>,
    /// The position rules used (as given, the export's, or `last`).
    specs: Vec<String>,
    positions: Vec<usize>,
}

impl Apply {
    /// The intervention (an export, or an SAE file as a one-member set), its config, and the
    /// model it is applied to, checked to fit.
    fn load<B: Backend>(
        &self,
        device: &B::Device,
    ) -> Result<(InterventionSet<B>, ExportConfig, LoadedModel<B>, String)> {
        if sae::is_sae(&self.intervention)? {
            let spec = self.model.clone().ok_or_else(|| {
                anyhow!(
                    "{} is an SAE, whose file does not say which of our models it reads: give --model (and --site if its file names no site)",
                    self.intervention.display()
                )
            })?;
            let loaded = load_model::<B>(&spec, device).with_context(|| format!("loading model `{spec}`"))?;
            let (iv, config) = sae::as_set(&self.intervention, &self.sae, &loaded, device)?;
            return Ok((iv, config, loaded, spec));
        }
        if self.sae.any() {
            bail!(
                "--latents, --clamp and --site are for SAE files (a SAELens folder, Gemma Scope's params.npz, …); {} is a ferrovene export",
                self.intervention.display()
            );
        }
        let (iv, config) = export::load_set::<B>(&self.intervention, device)?;
        let spec = self.model.clone().unwrap_or_else(|| config.model.id.clone());
        let loaded = load_model::<B>(&spec, device)
            .with_context(|| format!("loading model `{spec}` (the export's model; --model overrides)"))?;
        let sites = loaded.model.sites();
        config.check_target(
            &self.intervention,
            &export::Target { arch: loaded.model.arch(), hidden_size: loaded.model.width(), sites: &sites },
        )?;
        Ok((iv, config, loaded, spec))
    }

    /// Loads the export and its model, checks they fit, tokenises the prompt and resolves the
    /// positions.
    fn prepare<B: Backend>(&self, device: &B::Device) -> Result<Prepared<B>> {
        if let Some(alpha) = self.scale.filter(|a| !a.is_finite()) {
            bail!("--scale must be a finite number, not {alpha}");
        }
        let (mut iv, config, loaded, spec) = self.load(device)?;
        if let Some(alpha) = self.scale {
            for member in &mut iv.members {
                match member {
                    Intervention::Steering(s) => s.alpha = alpha,
                    other => bail!("--scale applies to steering vectors, not to a {} intervention", other.kind()),
                }
            }
        }
        let site_name = iv.sites().iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
        let info = loaded.model.site_info(iv.sites()[0])?;
        let tok = loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{spec}` has no tokenizer"))?;
        let text = if self.chat { ferrovene_models::tokenizer::chat_prompt(&self.prompt) } else { self.prompt.clone() };
        let ids = tok.encode(&text)?;
        if ids.is_empty() {
            bail!("the prompt {:?} tokenizes to nothing", self.prompt);
        }
        let (specs, positions) = match &self.positions {
            Some(p) => (p.clone(), resolve_positions(p, ids.len(), "prompt (--positions)")?),
            None => {
                let own = vec![config.placement.positions.clone()];
                match resolve_positions(&own, ids.len(), "prompt (the export's positions)") {
                    Ok(p) => (own, p),
                    // A named span exists only in the pair file the export was trained on.
                    Err(_) if own[0].starts_with("span:") => bail!(
                        "{} was trained at positions `{}`, the span `{}` of its training pairs, which a plain prompt does not have: give the token positions to intervene at with --positions (e.g. --positions 4, or --positions last)",
                        self.intervention.display(),
                        own[0],
                        own[0].trim_start_matches("span:")
                    ),
                    Err(_) => {
                        if own[0] != "every token" {
                            eprintln!(
                                "note: the export's positions ({}) do not apply to a prompt; intervening at the last token (choose with --positions)",
                                own[0]
                            );
                        }
                        (vec!["last".to_string()], vec![ids.len() - 1])
                    }
                }
            }
        };
        if iv.layout.positions_needed() > 0 && iv.layout.positions_needed() != positions.len() {
            bail!(
                "{} acts with its own parameters at each of {} positions per prompt (it was trained with share = \"none\"), but the positions given pick {}: give as many with --positions (e.g. the rule it was trained with, `{}`)",
                self.intervention.display(),
                iv.layout.positions_needed(),
                positions.len(),
                config.placement.positions
            );
        }
        Ok(Prepared { iv, config, loaded, spec, site_name, info, ids, specs, positions })
    }

    /// A probe's class probabilities at each position.
    fn show_probe<B: Backend>(&self, p: &Prepared<B>, probe: &LinearProbe<B>, device: &B::Device) -> Result<Shown> {
        let acts = run_to(&p.loaded.model, &Input::<B>::from_ids(std::slice::from_ref(&p.ids), device), p.info.site)?
            .activation;
        let logits = probe.logits(gather_positions(acts, int2::<B>(std::slice::from_ref(&p.positions), device)));
        let probs: Vec<f32> = softmax(logits, 2).into_data().convert::<f32>().to_vec().map_err(|e| anyhow!("{e:?}"))?;
        let c = probe.weight.val().dims()[0];
        let mut text = String::new();
        let mut rows = Vec::new();
        for (j, pos) in p.positions.iter().enumerate() {
            let row = &probs[j * c..(j + 1) * c];
            let _ = writeln!(
                text,
                "position {pos}: class probabilities {}",
                row.iter().enumerate().map(|(k, p)| format!("{k}: {p:.3}")).collect::<Vec<_>>().join(", ")
            );
            rows.push(row.to_vec());
        }
        let json = json!({"prompt": self.prompt, "positions": p.positions, "kind": p.iv.kind(), "site": p.site_name, "class_probabilities": rows});
        Ok(Shown { json, text })
    }

    /// The source's vectors at its positions at each site, for interventions that read one
    /// (computed once).
    fn source<B: Backend>(&self, p: &Prepared<B>, device: &B::Device) -> Result<Vec<(Site, Tensor<B, 3>)>> {
        let tok = p.loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", p.spec))?;
        let source = match (&self.source, p.iv.needs_source()) {
            (Some(text), true) => {
                let sids = tok.encode(text)?;
                let sp = resolve_positions(
                    self.source_positions.as_ref().unwrap_or(&p.specs),
                    sids.len(),
                    if self.source_positions.is_some() {
                        "source (--source-positions)"
                    } else {
                        "source (the prompt's positions)"
                    },
                )?;
                if sp.len() != p.positions.len() {
                    bail!(
                        "{} source positions for {} prompt positions; give as many of each",
                        sp.len(),
                        p.positions.len()
                    );
                }
                let input = Input::<B>::from_ids(&[sids], device);
                p.iv.sites()
                    .into_iter()
                    .map(|site| {
                        let acts = run_to(&p.loaded.model, &input, site)?.activation;
                        Ok((site, gather_positions(acts, int2::<B>(std::slice::from_ref(&sp), device))))
                    })
                    .collect::<Result<Vec<_>>>()?
            }
            (None, true) => bail!("a {} intervention reads a source: give --source TEXT", p.iv.kind()),
            (Some(_), false) => bail!("a {} intervention reads no source; drop --source", p.iv.kind()),
            (None, false) => Vec::new(),
        };
        if self.every_token && !source.is_empty() {
            bail!("--every-token needs an intervention without a source (ReFT, steering)");
        }
        Ok(source)
    }

    /// Generated text without and with the intervention.
    fn show_generation<B: Backend>(
        &self,
        p: &Prepared<B>,
        steer: &Steer<'_, B>,
        decoding: &Decoding,
        device: &B::Device,
    ) -> Result<Shown> {
        let tok = p.loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", p.spec))?;
        let without = generate(&p.loaded.model, &p.ids, None, decoding, tok.eos_id, device)?;
        let with = generate(&p.loaded.model, &p.ids, Some(steer), decoding, tok.eos_id, device)?;
        let outputs = [tok.decode(&without)?, tok.decode(&with)?];
        let json = json!({"prompt": self.prompt, "without": outputs[0], "with": outputs[1], "kind": p.iv.kind(), "site": p.site_name});
        let text = format!(
            "{} ({}) at {} · {}\nprompt:  {:?}\nwithout: {:?}\nwith:    {:?}\n",
            self.intervention.display(),
            p.iv.kind(),
            p.site_name,
            p.spec,
            self.prompt,
            outputs[0],
            outputs[1]
        );
        Ok(Shown { json, text })
    }

    /// The top next tokens before and after, as JSON or a table.
    fn show_next_tokens<B: Backend>(&self, p: &Prepared<B>, steer: &Steer<'_, B>, device: &B::Device) -> Result<Shown> {
        let tok = p.loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", p.spec))?;
        let before = next_logits(&p.loaded.model, &p.ids, None, None, device)?;
        let after = next_logits(&p.loaded.model, &p.ids, None, Some((steer, p.positions.clone())), device)?;
        if after.iter().any(|x| !x.is_finite()) {
            bail!(
                "with this intervention{} the model's outputs are not finite numbers: the scale is too large for this model; try a smaller --scale",
                self.scale.map_or(String::new(), |a| format!(" at --scale {a}"))
            );
        }
        let (pb, pa) = (softmax_of(&before), softmax_of(&after));
        // Only when the intervention flattened it: a model whose own prediction is flat (a tiny
        // random checkpoint) says nothing about the scale.
        let flat = |p: &[f32]| p.iter().copied().fold(0.0, f32::max) < 2.0 / p.len().max(1) as f32;
        if flat(&pa) && !flat(&pb) {
            eprintln!(
                "warning: with this intervention{} the next-token distribution is about uniform: the added vector swamps the activations; try a smaller --scale",
                self.scale.map_or(String::new(), |a| format!(" at --scale {a}"))
            );
        }
        let (tb, ta) = (top_k(&pb, self.top), top_k(&pa, self.top));
        let row = |id: usize| -> Result<serde_json::Value> {
            Ok(json!({"id": id, "token": tok.decode(&[id as u32])?, "p_before": pb[id], "p_after": pa[id]}))
        };
        let json = json!({
            "prompt": self.prompt, "source": self.source, "positions": p.positions, "kind": p.iv.kind(), "site": p.site_name,
            "before": tb.iter().map(|&i| row(i)).collect::<Result<Vec<_>>>()?,
            "after": ta.iter().map(|&i| row(i)).collect::<Result<Vec<_>>>()?,
        });
        let mut text = String::new();
        let _ = writeln!(
            text,
            "{} ({}) at {}, positions {:?} · {}",
            self.intervention.display(),
            p.iv.kind(),
            p.site_name,
            p.positions,
            p.spec
        );
        let _ = writeln!(text, "{:>4}  {:<20} {:>8}   {:<20} {:>8}", "rank", "before", "p", "after", "p");
        let cell = |v: &[usize], probs: &[f32], r: usize| -> (String, String) {
            v.get(r).map_or((String::new(), String::new()), |&i| {
                (format!("{:?}", tok.decode(&[i as u32]).unwrap_or_default()), format!("{:.4}", probs[i]))
            })
        };
        for r in 0..tb.len().max(ta.len()) {
            let ((bt, bp), (at, ap)) = (cell(&tb, &pb, r), cell(&ta, &pa, r));
            let _ = writeln!(text, "{:>4}  {bt:<20} {bp:>8}   {at:<20} {ap:>8}", r + 1);
        }
        Ok(Shown { json, text })
    }
}

/// What `trainer apply` shows: its `--json` output and its text.
pub struct Shown {
    /// What `--json` prints.
    pub json: serde_json::Value,
    /// What it prints otherwise.
    pub text: String,
}

/// Probabilities from logits.
fn softmax_of(l: &[f32]) -> Vec<f32> {
    let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let z: f32 = l.iter().map(|x| (x - m).exp()).sum();
    l.iter().map(|x| (x - m).exp() / z).collect()
}

impl OnBackend for Apply {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let json = self.json;
        let shown = self.show::<B>(device)?;
        if json {
            println!("{}", serde_json::to_string_pretty(&shown.json)?);
        } else {
            print!("{}", shown.text);
        }
        Ok(())
    }
}

impl Apply {
    /// Applies the export (a hub id `org/name[@rev][:file]` is fetched into the cache first):
    /// the next tokens before and after, the generations without and with, or a probe's class
    /// probabilities.
    pub fn show<B: Backend>(self, device: B::Device) -> Result<Shown> {
        let this = Apply { intervention: super::intervention_path(&self.intervention)?, ..self };
        let p = this.prepare::<B>(&device)?;
        if let [Intervention::Probe(probe)] = p.iv.members.as_slice() {
            return this.show_probe(&p, probe, &device);
        }
        let source = this.source(&p, &device)?;
        let steer = Steer {
            intervention: &p.iv as &dyn Placed<B>,
            site: p.info,
            positions: p.positions.clone(),
            sources: source,
            dims: p.config.placement.dims.clone(),
            every_token: this.every_token,
        };
        match &this.generate {
            Some(decoding) => this.show_generation(&p, &steer, decoding, &device),
            None => this.show_next_tokens(&p, &steer, &device),
        }
    }
}
