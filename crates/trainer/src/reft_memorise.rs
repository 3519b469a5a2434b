//! `reft-memorise`: pyreft's "power of ReFT" demos. A low-rank ReFT intervention at one site,
//! at a few prompt positions, trained with the language-model loss until greedy decoding
//! reproduces every target exactly; then checked by generating (with a KV cache) and exported.
//!
//! Two recipes use it: `reft-memorise` (rank-1 LoReFT at the last token of `GO->` recalls a
//! passage) and `reft-instruct-emoji` (LoReFT at the first and last k tokens of chat-formatted
//! instructions learns to answer in emoji, judged on held-out instructions).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use burn::module::{AutodiffModule, Module};
use burn::tensor::backend::{AutodiffBackend, Backend};
use ferrovene_data::{TokenizedExample, TokenizedInput};
use ferrovene_interventions::activation::Activation;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::reft::{ReftFamily, ReftIntervention};
use ferrovene_interventions::Intervention;
use ferrovene_models::rng::Rng;
use ferrovene_models::{load, Site, TextTokenizer, Transformer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::apply::resolve_positions;
use crate::fit::{fit, FitConfig, FitIo, Objective};
use crate::generate::{generate, Decoding, Steer};
use crate::lineplot::{LinePlot, Series};
use crate::reft::{self, PromptBatch, ReftObjective};
use crate::schedule::Decay;

/// The recipe's kind.
pub const KIND: &str = "reft-memorise";

/// One prompt and the text it must be followed by.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Taught {
    /// The prompt (an instruction when `chat_template` is on).
    pub prompt: String,
    /// Its target continuation.
    pub target: String,
}

/// How held-out generations are judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Judge {
    /// At least half of the answer's visible characters are emoji.
    Emoji,
}

impl Judge {
    /// Whether `answer` shows the taught habit.
    pub fn accepts(self, answer: &str) -> bool {
        match self {
            Judge::Emoji => emoji_share(answer) >= 0.5,
        }
    }
}

/// Share of the visible (non-space) characters of `text` that are emoji or pictographs.
pub fn emoji_share(text: &str) -> f32 {
    let visible: Vec<char> = text.chars().filter(|c| !c.is_whitespace() && *c != '\u{fe0f}' && *c != '\u{200d}').collect();
    if visible.is_empty() {
        return 0.0;
    }
    let emoji = |c: char| matches!(c as u32, 0x1F000..=0x1FAFF | 0x2600..=0x27BF | 0x2B00..=0x2BFF | 0x2300..=0x23FF);
    visible.iter().filter(|&&c| emoji(c)).count() as f32 / visible.len() as f32
}

fn loreft() -> ReftFamily {
    ReftFamily::LoReft
}

fn default_generate() -> usize {
    40
}

/// The recipe (`recipes/reft-memorise.toml`, `recipes/reft-instruct-emoji.toml`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReftMemoriseRecipe {
    /// One line for `trainer list`.
    pub description: String,
    /// `reft-memorise`.
    pub kind: String,
    /// Model spec.
    pub model: String,
    /// Site, `LAYER.COMPONENT`.
    pub site: String,
    /// ReFT family (`loreft` by default).
    #[serde(default = "loreft")]
    pub family: ReftFamily,
    /// Rank of the intervention's subspace.
    pub rank: usize,
    /// Prompt positions: `last`, token indices, or `f<k>+l<k>` (first and last k tokens).
    pub positions: String,
    /// Wrap each prompt in the model's chat template (ChatML, with SmolLM2's default system
    /// message) and end each target with the end-of-turn token.
    #[serde(default)]
    pub chat_template: bool,
    /// What is taught.
    pub examples: Vec<Taught>,
    /// Prompts never trained on, answered by generation and judged.
    #[serde(default)]
    pub held_out: Vec<String>,
    /// How held-out answers are judged (none: they are only shown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub judge: Option<Judge>,
    /// Tokens generated for each held-out prompt.
    #[serde(default = "default_generate")]
    pub generate: usize,
    /// Adam learning rate (constant).
    pub lr: f64,
    /// Most optimizer steps (each on every example).
    pub max_steps: usize,
    /// Check exact recall every this many steps; training stops at the first exact check.
    pub check_every: usize,
    /// Seed of the initialisation.
    pub seed: u64,
}

impl ReftMemoriseRecipe {
    /// Parses and checks a recipe.
    pub fn from_toml(text: &str) -> Result<Self> {
        let r: Self = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        r.check()?;
        Ok(r)
    }

    fn check(&self) -> Result<()> {
        if self.kind != KIND {
            bail!("kind `{}` is not `{KIND}`", self.kind);
        }
        if self.examples.is_empty() {
            bail!("`examples` is empty: give at least one {{ prompt = \"…\", target = \"…\" }}");
        }
        if self.rank == 0 || self.max_steps == 0 || self.check_every == 0 {
            bail!("`rank`, `max_steps` and `check_every` must be at least 1");
        }
        if self.judge.is_some() && self.held_out.is_empty() {
            bail!("`judge` is set but `held_out` is empty: give held-out prompts to judge");
        }
        self.site.parse::<Site>().map_err(|e| anyhow!("`site`: {e}"))?;
        Ok(())
    }

    /// The recipe with `key=value` overrides (TOML values) applied.
    pub fn with_overrides(self, sets: &[String]) -> Result<Self> {
        let r: Self = crate::recipe::apply_overrides(&self, sets, None, Self::from_toml)?;
        Ok(r)
    }
}

/// SmolLM2-Instruct's chat template (ChatML with its default system message) for one user turn,
/// ready for the assistant's answer.
pub fn chat_prompt(instruction: &str) -> String {
    format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n<|im_start|>user\n{instruction}<|im_end|>\n<|im_start|>assistant\n"
    )
}

/// The ids of a prompt as the recipe feeds it, and the positions its rule picks there.
fn prompt_input(r: &ReftMemoriseRecipe, tok: &TextTokenizer, prompt: &str) -> Result<TokenizedInput> {
    let text = if r.chat_template { chat_prompt(prompt) } else { prompt.to_string() };
    let ids = tok.encode(&text)?;
    if ids.is_empty() {
        bail!("prompt {prompt:?} tokenises to nothing");
    }
    let positions = resolve_positions(std::slice::from_ref(&r.positions), ids.len(), &format!("prompt {prompt:?}"))?;
    Ok(TokenizedInput { ids, positions })
}

/// Stops training at the first validation with every example recalled exactly.
struct UntilRecall<'a, B: Backend, M: Transformer<B>>(ReftObjective<'a, B, M>);

impl<B: AutodiffBackend, M: Transformer<B>> Objective<B> for UntilRecall<'_, B, M> {
    fn batches(&self) -> usize {
        self.0.batches()
    }
    fn loss(&self, iv: &Intervention<B>, index: usize) -> Result<burn::tensor::Tensor<B, 1>> {
        self.0.loss(iv, index)
    }
    fn validate(&self, iv: &Intervention<B>) -> Result<Option<(f32, f32)>> {
        self.0.validate(iv)
    }
    fn reached(&self, exact: f32) -> bool {
        exact >= 1.0
    }
}

/// What one prompt generated.
#[derive(Debug, Clone, Serialize)]
pub struct Generated {
    /// The prompt (before any template).
    pub prompt: String,
    /// Without the intervention.
    pub without: String,
    /// With it.
    pub with: String,
    /// Whether `with` is the target exactly (taught prompts) or passes the judge (held-out).
    pub ok: Option<bool>,
}

/// Runs the recipe: trains to exact recall, checks recall by generation, judges held-out
/// prompts, exports the intervention; returns the run folder.
pub fn run<B: AutodiffBackend>(name: &str, r: &ReftMemoriseRecipe, out_root: &Path, show: bool, device: &B::Device) -> Result<PathBuf>
where
    Intervention<B>: AutodiffModule<B, InnerModule = Intervention<B::InnerBackend>>,
{
    let started = std::time::Instant::now();
    let dir = crate::run::start_run(out_root, name, r)?;
    let loaded = load::<B>(&r.model, device).with_context(|| format!("loading model `{}`", r.model))?;
    let (model, tok) = (&loaded.model, loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", r.model))?);
    let site: Site = r.site.parse()?;
    let info = model.site_info(site)?;
    let end_of_turn = if r.chat_template {
        match tok.encode_plain("<|im_end|>")?.as_slice() {
            [id] => Some(*id),
            _ => bail!("chat_template: model `{}` has no single `<|im_end|>` token, so its chat template is not ChatML; set chat_template = false", r.model),
        }
    } else {
        None
    };

    // The taught examples: prompts with their positions, and target ids.
    let mut taught_inputs: Vec<(TokenizedInput, Vec<u32>)> = Vec::new();
    for (i, ex) in r.examples.iter().enumerate() {
        let prompt = prompt_input(r, tok, &ex.prompt)?;
        let mut target = tok.encode_plain(&ex.target)?;
        target.extend(end_of_turn);
        if target.is_empty() {
            bail!("example {i}: the target {:?} tokenises to nothing", ex.target);
        }
        taught_inputs.push((prompt, target));
    }
    let counts: Vec<usize> = taught_inputs.iter().map(|(p, _)| p.positions.len()).collect();
    if counts.iter().any(|&c| c != counts[0]) {
        bail!("`positions = \"{}\"` gives {counts:?} positions across the examples; every prompt needs as many (make the prompts longer than 2k tokens for f<k>+l<k>)", r.positions);
    }
    let target_tokens: Vec<usize> = taught_inputs.iter().map(|(_, t)| t.len()).collect();
    let examples: Vec<TokenizedExample> =
        taught_inputs.iter().map(|(prompt, target)| TokenizedExample::Prompt { prompt: prompt.clone(), target: target.clone() }).collect();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    let batches: Vec<PromptBatch<B>> = reft::prepare(model, site, &refs, tok.pad_id, refs.len(), device)?;
    let before = reft::evaluate(model, &batches, None)?;

    let iv = Intervention::Reft(ReftIntervention::new(r.family, info.width, r.rank, Activation::Identity, 0.0, &mut Rng::new(r.seed), device));
    let trainable = iv.num_params();
    let model_params = model.parameter_count();
    let cfg = FitConfig {
        epochs: r.max_steps, lr: r.lr, warmup: 0.0, decay: Decay::Constant, weight_decay: 0.0, grad_clip: None, accumulate: 1,
        temperature: None, eval_every: r.check_every, early_stopping: None, checkpoint_every: 0, seed: r.seed,
    };
    let objective = UntilRecall(ReftObjective { model, train: &batches, validation: &batches });
    let fitted = fit(&objective, iv, &cfg, FitIo { progress: show, ..FitIo::default() })?;
    let steps_to_recall = (fitted.outcome == crate::fit::Outcome::Reached).then_some(fitted.state.step);
    let after = reft::evaluate(model, &batches, Some(&fitted.intervention))?;

    // Recall checked by generation (KV cache, greedy, without autodiff), as a user would see it.
    let (inner, iv) = (model.valid(), fitted.intervention.valid());
    let run_prompt = |prompt: &TokenizedInput, max_new: usize| -> Result<(String, String, Vec<u32>)> {
        let steer = Steer { intervention: &iv, site: info, positions: prompt.positions.clone(), source: None, dims: vec![], every_token: false };
        let decoding = Decoding::greedy(max_new);
        let eos = if r.chat_template { end_of_turn } else { tok.eos_id };
        let without = generate(&inner, &prompt.ids, None, &decoding, eos, device)?;
        let with = generate(&inner, &prompt.ids, Some(&steer), &decoding, eos, device)?;
        Ok((tok.decode(&without)?, tok.decode(&with)?, with))
    };
    let mut taught = Vec::new();
    for (ex, (prompt, target)) in r.examples.iter().zip(&taught_inputs) {
        let (without, with, ids) = run_prompt(prompt, target.len())?;
        let expected: Vec<u32> = target.iter().copied().filter(|t| Some(*t) != end_of_turn).collect();
        taught.push(Generated { prompt: ex.prompt.clone(), without, with, ok: Some(ids == expected) });
    }
    let mut held = Vec::new();
    for prompt in &r.held_out {
        let (without, with, _) = run_prompt(&prompt_input(r, tok, prompt)?, r.generate)?;
        let ok = r.judge.map(|j| j.accepts(&with));
        held.push(Generated { prompt: prompt.clone(), without, with, ok });
    }
    let recalled = taught.iter().filter(|g| g.ok == Some(true)).count();
    let judged_with = r.judge.map(|_| held.iter().filter(|g| g.ok == Some(true)).count());
    let judged_without = r.judge.map(|j| held.iter().filter(|g| j.accepts(&g.without)).count());

    // Export, plot, report.
    let config = ExportConfig {
        format: 0, kind: String::new(), width: 0, hyper: Default::default(),
        placement: PlacementConfig { sites: vec![r.site.clone()], positions: r.positions.clone(), site_width: info.width, dims: vec![], composition: Default::default() },
        model: ModelConfig { id: r.model.clone(), revision: loaded.revision.clone(), arch: model.arch().into(), hidden_size: model.width() },
        training: json!({"recipe": name, "chat_template": r.chat_template, "prompts": r.examples.iter().map(|e| &e.prompt).collect::<Vec<_>>()}),
    };
    let export_path = export::save(&fitted.intervention, config, &dir.join("intervention.safetensors"))?;
    let steps: Vec<f64> = (1..=fitted.state.losses.len()).map(|s| s as f64).collect();
    LinePlot {
        title: &format!("{name}: language-model loss on the targets"),
        axes: ("optimizer step", "loss (nats per target token)"),
        series: vec![Series { name: "training loss".into(), points: steps.iter().copied().zip(fitted.state.losses.iter().map(|&l| l as f64)).collect() }],
    }
    .write(&dir.join("loss"))?;
    let share = trainable as f64 / model_params as f64;
    let report = json!({
        "recipe": name, "config": r,
        "trainable_parameters": trainable, "model_parameters": model_params, "trainable_share": share,
        "steps_to_exact_recall": steps_to_recall, "steps_run": fitted.state.step,
        "recall": {"before": before, "after": after},
        "target_tokens": target_tokens,
        "taught": taught, "recalled_by_generation": recalled,
        "held_out": held, "held_out_judged": {"judge": r.judge, "with": judged_with, "without": judged_without},
        "history": fitted.state.history.iter().map(|e| json!({"step": e.step, "loss": e.loss, "exact": e.accuracy})).collect::<Vec<_>>(),
        "timings_s": {"total": started.elapsed().as_secs_f64()},
        "model": {"spec": r.model, "path": loaded.path, "revision": loaded.revision},
    });
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;

    let mut out = String::new();
    let _ = writeln!(out, "{name}: {} rank {} at {} ({}), positions {}", r.family_name(), r.rank, r.site, r.model, r.positions);
    let _ = writeln!(out, "trainable parameters: {trainable} ({:.5}% of the model's {model_params})", share * 100.0);
    match steps_to_recall {
        Some(s) => {
            let _ = writeln!(out, "exact recall after {s} steps (checked every {}); loss {:.4} → {:.4}", r.check_every, before.loss, after.loss);
        }
        None => {
            let _ = writeln!(out, "no exact recall within {} steps (token accuracy {:.3}); raise max_steps or lr", r.max_steps, after.token_accuracy);
        }
    }
    let _ = writeln!(out, "recalled by greedy generation: {recalled}/{} ({} target tokens in all)", taught.len(), target_tokens.iter().sum::<usize>());
    for g in taught.iter().take(3) {
        let _ = writeln!(out, "  {:?}\n    without: {:?}\n    with:    {:?}", g.prompt, g.without, g.with);
    }
    if !held.is_empty() {
        match (judged_with, judged_without) {
            (Some(w), Some(wo)) => {
                let _ = writeln!(out, "held-out prompts judged {:?}: {w}/{} with the intervention, {wo}/{} without", r.judge.unwrap_or(Judge::Emoji), held.len(), held.len());
            }
            _ => {
                let _ = writeln!(out, "held-out prompts:");
            }
        }
        for g in &held {
            let _ = writeln!(out, "  {:?}\n    without: {:?}\n    with:    {:?}", g.prompt, g.without, g.with);
        }
    }
    print!("{out}");
    println!("export: {}", export_path.display());
    println!("run folder: {} ({:.0} s)", dir.display(), started.elapsed().as_secs_f64());
    Ok(dir)
}

impl ReftMemoriseRecipe {
    fn family_name(&self) -> String {
        serde_json::to_value(self.family).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_share_counts_visible_characters() {
        assert_eq!(emoji_share("🍳🥓☕"), 1.0);
        assert_eq!(emoji_share("I like 🍕"), 1.0 / 6.0);
        assert!(Judge::Emoji.accepts("☀️ 😎"));
        assert!(!Judge::Emoji.accepts("Sunny and warm."));
        assert_eq!(emoji_share("   "), 0.0);
    }
}
