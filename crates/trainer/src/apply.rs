//! `trainer apply`: an exported intervention on a prompt — the model's next-token prediction
//! before and after, or text generated (greedy or sampled, see [`crate::generate`]) without and
//! with the intervention active.

use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::backend::Backend;
use burn::tensor::activation::softmax;
use ferrovene_interventions::{export, Intervention};
use ferrovene_models::{gather_positions, load, run_to, Input, Site, Transformer};
use serde_json::json;

use crate::das::int2;
use crate::device::OnBackend;
use crate::generate::{generate, next_logits, Decoding, Steer};

/// What to apply, from the command line.
pub struct Apply {
    /// The export.
    pub intervention: PathBuf,
    /// The prompt (the base).
    pub prompt: String,
    /// The source text, for interventions that read one (DAS).
    pub source: Option<String>,
    /// Token positions to intervene on (see [`resolve_positions`]); none: the export's own rule
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
}

/// Resolves position specs against a sequence of `len` tokens: `last`, `all`, a token index
/// (negative counts from the end), or pyreft's `f<k>` / `l<k>` (the first / last k tokens),
/// joinable with `+` as in `f5+l5`. Positions come out in order, each once.
pub fn resolve_positions(specs: &[String], len: usize, what: &str) -> Result<Vec<usize>> {
    let mut out = Vec::new();
    for spec in specs {
        for s in spec.split('+').map(str::trim) {
            let count = |k: &str| -> Result<usize> {
                let k: usize = k.parse().map_err(|_| anyhow!("--positions `{s}` for the {what}: `f` and `l` take a token count, as in f5 or l5"))?;
                if k == 0 || k > len {
                    bail!("--positions `{s}` asks for {k} tokens of the {what}, which has {len}");
                }
                Ok(k)
            };
            if let Some(k) = s.strip_prefix('f').filter(|k| !k.is_empty()) {
                out.extend(0..count(k)?);
                continue;
            }
            if let Some(k) = s.strip_prefix('l').filter(|k| !k.is_empty() && *k != "ast") {
                out.extend(len - count(k)?..len);
                continue;
            }
            if s == "all" {
                out.extend(0..len);
                continue;
            }
            let i: i64 = if s == "last" {
                len as i64 - 1
            } else {
                s.parse().map_err(|_| anyhow!("--positions `{s}` for the {what}: write `last`, `all`, a token index (negative counts from the end), or f<k>/l<k> (first/last k tokens)"))?
            };
            let i = if i < 0 { len as i64 + i } else { i };
            if i < 0 || i >= len as i64 {
                bail!("--positions `{s}` is outside the {what}, which has {len} tokens");
            }
            out.push(i as usize);
        }
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

impl OnBackend for Apply {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let (mut iv, config) = export::load::<B>(&self.intervention, &device)?;
        match (&mut iv, self.scale) {
            (Intervention::Steering(s), Some(alpha)) => s.alpha = alpha,
            (_, Some(_)) => bail!("--scale applies to steering vectors, not to a {} intervention", iv.kind()),
            _ => {}
        }
        let spec = self.model.clone().unwrap_or_else(|| config.model.id.clone());
        let loaded = load::<B>(&spec, &device).with_context(|| format!("loading model `{spec}` (the export's model; --model overrides)"))?;
        let model = &loaded.model;
        let sites = model.sites();
        config.check_target(&self.intervention, &export::Target { arch: model.arch(), hidden_size: model.width(), sites: &sites })?;
        let [site_name] = config.placement.sites.as_slice() else {
            bail!("{}: apply handles exports placed at one site (this one has {})", self.intervention.display(), config.placement.sites.len());
        };
        let site: Site = site_name.parse()?;
        let info = model.site_info(site)?;
        let tok = loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{spec}` has no tokenizer"))?;
        let text = if self.chat { crate::reft_memorise::chat_prompt(&self.prompt) } else { self.prompt.clone() };
        let ids = tok.encode(&text)?;
        if ids.is_empty() {
            bail!("the prompt {:?} tokenizes to nothing", self.prompt);
        }
        let (specs, positions) = match &self.positions {
            Some(p) => (p.clone(), resolve_positions(p, ids.len(), "prompt")?),
            None => {
                let own = vec![config.placement.positions.clone()];
                match resolve_positions(&own, ids.len(), "prompt") {
                    Ok(p) => (own, p),
                    Err(_) => (vec!["last".to_string()], vec![ids.len() - 1]),
                }
            }
        };

        if let Intervention::Probe(p) = &iv {
            let acts = run_to(model, &Input::<B>::from_ids(&[ids.clone()], &device), site)?.activation;
            let logits = p.logits(gather_positions(acts, int2::<B>(&[positions.clone()], &device)));
            let probs: Vec<f32> = softmax(logits, 2).into_data().convert::<f32>().to_vec().map_err(|e| anyhow!("{e:?}"))?;
            let c = p.weight.val().dims()[0];
            for (j, pos) in positions.iter().enumerate() {
                let row = &probs[j * c..(j + 1) * c];
                println!("position {pos}: class probabilities {}", row.iter().enumerate().map(|(k, p)| format!("{k}: {p:.3}")).collect::<Vec<_>>().join(", "));
            }
            return Ok(());
        }

        // The source's vectors, computed once.
        let source = match (&self.source, iv.needs_source()) {
            (Some(text), true) => {
                let sids = tok.encode(text)?;
                let sp = resolve_positions(self.source_positions.as_ref().unwrap_or(&specs), sids.len(), "source")?;
                if sp.len() != positions.len() {
                    bail!("{} source positions for {} prompt positions; give as many of each", sp.len(), positions.len());
                }
                let acts = run_to(model, &Input::<B>::from_ids(&[sids], &device), site)?.activation;
                Some(gather_positions(acts, int2::<B>(&[sp], &device)))
            }
            (None, true) => bail!("a {} intervention reads a source: give --source TEXT", iv.kind()),
            (Some(_), false) => bail!("a {} intervention reads no source; drop --source", iv.kind()),
            (None, false) => None,
        };
        if self.every_token && source.is_some() {
            bail!("--every-token needs an intervention without a source (ReFT, steering)");
        }

        let steer = Steer { intervention: &iv, site: info, positions: positions.clone(), source: source.clone(), dims: config.placement.dims.clone(), every_token: self.every_token };
        if let Some(decoding) = self.generate {
            let without = generate(model, &ids, None, &decoding, tok.eos_id, &device)?;
            let with = generate(model, &ids, Some(&steer), &decoding, tok.eos_id, &device)?;
            let outputs = [tok.decode(&without)?, tok.decode(&with)?];
            if self.json {
                println!("{}", serde_json::to_string_pretty(&json!({"prompt": self.prompt, "without": outputs[0], "with": outputs[1], "kind": iv.kind(), "site": site_name}))?);
            } else {
                println!("{} ({}) at {site_name} · {spec}", self.intervention.display(), iv.kind());
                println!("prompt:  {:?}", self.prompt);
                println!("without: {:?}", outputs[0]);
                println!("with:    {:?}", outputs[1]);
            }
            return Ok(());
        }

        let before = next_logits(model, &ids, None, None, &device)?;
        let after = next_logits(model, &ids, None, Some((&steer, positions.clone())), &device)?;
        let probs = |l: &[f32]| -> Vec<f32> {
            let m = l.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            let z: f32 = l.iter().map(|x| (x - m).exp()).sum();
            l.iter().map(|x| (x - m).exp() / z).collect()
        };
        let (pb, pa) = (probs(&before), probs(&after));
        let top = |p: &[f32]| -> Vec<usize> {
            let mut o: Vec<usize> = (0..p.len()).collect();
            o.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
            o.truncate(self.top);
            o
        };
        let row = |id: usize| -> Result<serde_json::Value> { Ok(json!({"id": id, "token": tok.decode(&[id as u32])?, "p_before": pb[id], "p_after": pa[id]})) };
        let (tb, ta) = (top(&pb), top(&pa));
        if self.json {
            let out = json!({
                "prompt": self.prompt, "source": self.source, "positions": positions, "kind": iv.kind(), "site": site_name,
                "before": tb.iter().map(|&i| row(i)).collect::<Result<Vec<_>>>()?,
                "after": ta.iter().map(|&i| row(i)).collect::<Result<Vec<_>>>()?,
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("{} ({}) at {site_name}, positions {positions:?} · {spec}", self.intervention.display(), iv.kind());
            println!("{:>4}  {:<20} {:>8}   {:<20} {:>8}", "rank", "before", "p", "after", "p");
            for r in 0..tb.len().max(ta.len()) {
                let cell = |v: &[usize], p: &[f32]| v.get(r).map(|&i| (format!("{:?}", tok.decode(&[i as u32]).unwrap_or_default()), p[i]));
                let (b, a) = (cell(&tb, &pb), cell(&ta, &pa));
                println!(
                    "{:>4}  {:<20} {:>8}   {:<20} {:>8}",
                    r + 1,
                    b.as_ref().map_or(String::new(), |x| x.0.clone()),
                    b.map_or(String::new(), |x| format!("{:.4}", x.1)),
                    a.as_ref().map_or(String::new(), |x| x.0.clone()),
                    a.map_or(String::new(), |x| format!("{:.4}", x.1)),
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::resolve_positions;

    fn r(specs: &[&str], len: usize) -> Result<Vec<usize>, String> {
        resolve_positions(&specs.iter().map(|s| s.to_string()).collect::<Vec<_>>(), len, "prompt").map_err(|e| e.to_string())
    }

    #[test]
    fn position_rules_resolve_like_pyreft() {
        assert_eq!(r(&["last"], 5).unwrap(), vec![4]);
        assert_eq!(r(&["0", "-2"], 5).unwrap(), vec![0, 3]);
        assert_eq!(r(&["f2+l2"], 10).unwrap(), vec![0, 1, 8, 9]);
        assert_eq!(r(&["f3+l3"], 4).unwrap(), vec![0, 1, 2, 3], "overlapping rules give each position once");
        assert_eq!(r(&["all"], 3).unwrap(), vec![0, 1, 2]);
        assert!(r(&["f6"], 5).unwrap_err().contains("asks for 6 tokens"));
        assert!(r(&["7"], 5).unwrap_err().contains("outside the prompt"));
        assert!(r(&["middle"], 5).unwrap_err().contains("f<k>/l<k>"));
    }
}
