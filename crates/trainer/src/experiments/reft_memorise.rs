//! `reft-memorise`: pyreft's "power of ReFT" demos. A low-rank ReFT intervention at one site,
//! at a few prompt positions, trained with the language-model loss until greedy decoding
//! reproduces every target exactly; then checked by generating (with a KV cache) and exported.
//!
//! Two recipes use it: `reft-memorise` (rank-1 LoReFT at the last token of `GO->` recalls a
//! passage) and `reft-instruct-emoji` (LoReFT at the first and last k tokens of chat-formatted
//! instructions learns to answer in emoji, judged on held-out instructions).

use std::fmt::Write as _;
use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use burn::module::AutodiffModule;
use burn::tensor::backend::{AutodiffBackend, Backend};
use ferrovene_data::positions::resolve as resolve_positions;
use ferrovene_data::{TokenizedExample, TokenizedInput};
use ferrovene_interventions::activation::Activation;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::reft::{ReftFamily, ReftIntervention};
use ferrovene_interventions::{Intervention, InterventionSet, Layout, Placed, Share};
use ferrovene_models::rng::Rng;
use ferrovene_models::tokenizer::chat_prompt;
use ferrovene_models::{AnyModel, LoadedModel, Site, SiteInfo, TextTokenizer, Transformer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::device::load_frozen;
use crate::experiments::experiment::{Experiment, RunContext, RunEnd};
use crate::fit::{FitConfig, FitIo, Fitted, Objective, fit};
use crate::generate::{Decoding, Steer, generate};
use crate::objectives::reft::{self, PromptBatch, RecallMetrics, ReftObjective};
use crate::plot::{LinePlot, Series};
use crate::recipe::SiteKeys;
use crate::replicas::{DataParallel, Replica, batch_sizes, split_batches};
use crate::run_dir::RunDir;

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
    let visible: Vec<char> =
        text.chars().filter(|c| !c.is_whitespace() && *c != '\u{fe0f}' && *c != '\u{200d}').collect();
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
    /// Model spec.
    pub model: String,
    /// Site, `LAYER.COMPONENT` (or `sites`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<Site>,
    /// Several sites, trained jointly (pyreft's LoReFT at several layers).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sites: Option<Vec<Site>>,
    /// Which placements share parameters: `none` (one set per site and position, the default),
    /// `positions` (one per site, pyreft's `share_weights`), `all` (one everywhere).
    #[serde(default)]
    pub share: Share,
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

impl Experiment for ReftMemoriseRecipe {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn check(&self) -> Result<()> {
        if self.examples.is_empty() {
            bail!("`examples` is empty: give at least one {{ prompt = \"…\", target = \"…\" }}");
        }
        if self.rank == 0 || self.max_steps == 0 || self.check_every == 0 {
            bail!("`rank`, `max_steps` and `check_every` must be at least 1");
        }
        SiteKeys { site: self.site, sites: self.sites.as_deref() }.list()?;
        if self.judge.is_some() && self.held_out.is_empty() {
            bail!("`judge` is set but `held_out` is empty: give held-out prompts to judge");
        }
        crate::divergence::check_rate("lr", self.lr)
    }

    fn run<B: AutodiffBackend>(&self, ctx: &RunContext<'_>, device: &B::Device) -> Result<RunEnd> {
        run::<B>(ctx, self, std::slice::from_ref(device)).map(RunEnd::Done)
    }

    fn data_parallel(&self) -> bool {
        true
    }

    fn run_shared<B: AutodiffBackend>(&self, ctx: &RunContext<'_>, devices: &[B::Device]) -> Result<RunEnd> {
        run::<B>(ctx, self, devices).map(RunEnd::Done)
    }
}

/// The ids of a prompt as the recipe feeds it, and the positions its rule picks there.
fn prompt_input(r: &ReftMemoriseRecipe, tok: &TextTokenizer, prompt: &str) -> Result<TokenizedInput> {
    let text = if r.chat_template { chat_prompt(prompt) } else { prompt.to_string() };
    let ids = tok.encode(&text)?;
    if ids.is_empty() {
        bail!("prompt {prompt:?} tokenises to nothing");
    }
    let positions = resolve_positions(
        std::slice::from_ref(&r.positions),
        ids.len(),
        &format!("prompt {prompt:?} (the recipe's `positions`)"),
    )?;
    Ok(TokenizedInput { ids, positions })
}

/// Stops training at the first validation with every example recalled exactly.
struct UntilRecall<'a, B: Backend, M: Transformer<B>>(ReftObjective<'a, B, M>);

impl<B: AutodiffBackend, M: Transformer<B>> Objective<B, InterventionSet<B>> for UntilRecall<'_, B, M> {
    fn batches(&self) -> usize {
        Objective::<B, InterventionSet<B>>::batches(&self.0)
    }
    fn loss(&self, iv: &InterventionSet<B>, index: usize) -> Result<burn::tensor::Tensor<B, 1>> {
        self.0.loss(iv, index)
    }
    fn validate(&self, iv: &InterventionSet<B>) -> Result<Option<(f32, f32)>> {
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

/// The end-of-turn token that closes chat-template targets (none without the template).
fn end_of_turn(r: &ReftMemoriseRecipe, tok: &TextTokenizer) -> Result<Option<u32>> {
    if !r.chat_template {
        return Ok(None);
    }
    match tok.encode_plain("<|im_end|>")?.as_slice() {
        [id] => Ok(Some(*id)),
        _ => bail!(
            "chat_template: model `{}` has no single `<|im_end|>` token, so its chat template is not ChatML; set chat_template = false",
            r.model
        ),
    }
}

/// The taught examples: prompts with their positions, and target ids.
fn taught_inputs(
    r: &ReftMemoriseRecipe,
    tok: &TextTokenizer,
    end_of_turn: Option<u32>,
) -> Result<Vec<(TokenizedInput, Vec<u32>)>> {
    let mut taught = Vec::new();
    for (i, ex) in r.examples.iter().enumerate() {
        let prompt = prompt_input(r, tok, &ex.prompt)?;
        let mut target = tok.encode_plain(&ex.target)?;
        target.extend(end_of_turn);
        if target.is_empty() {
            bail!("example {i}: the target {:?} tokenises to nothing", ex.target);
        }
        taught.push((prompt, target));
    }
    let counts: Vec<usize> = taught.iter().map(|(p, _)| p.positions.len()).collect();
    if counts.iter().any(|&c| c != counts[0]) {
        bail!(
            "`positions = \"{}\"` gives {counts:?} positions across the examples; every prompt needs as many (make the prompts longer than 2k tokens for f<k>+l<k>)",
            r.positions
        );
    }
    Ok(taught)
}

/// The trained interventions with recall before and after.
struct Memorised<B: AutodiffBackend> {
    fitted: Fitted<InterventionSet<B>>,
    steps_to_recall: Option<usize>,
    before: RecallMetrics,
    after: RecallMetrics,
    trainable: usize,
}

/// Trains on every example at once until every target is recalled exactly (or `max_steps`);
/// with several `replicas` (`--devices`: each device with its copy of the model), each device
/// takes its part of the batch ([`crate::replicas`]).
#[allow(clippy::too_many_arguments)]
fn memorise<B: AutodiffBackend, M: Transformer<B>>(
    ctx: &RunContext<'_>,
    r: &ReftMemoriseRecipe,
    model: &M,
    pad_id: u32,
    sites: &[SiteInfo],
    taught: &[(TokenizedInput, Vec<u32>)],
    device: &B::Device,
    replicas: &[(B::Device, &M)],
) -> Result<Memorised<B>> {
    let examples: Vec<TokenizedExample> = taught
        .iter()
        .map(|(prompt, target)| TokenizedExample::Prompt { prompt: prompt.clone(), target: target.clone() })
        .collect();
    let refs: Vec<&TokenizedExample> = examples.iter().collect();
    let site_list: Vec<Site> = sites.iter().map(|s| s.site).collect();
    let batches: Vec<PromptBatch<B>> = reft::prepare_at(model, &site_list, &refs, pad_id, refs.len(), device)?;
    let before = reft::evaluate(model, &batches, None)?;
    // `taught_inputs` checked that every prompt gives as many positions.
    let k = taught.first().map_or(1, |(p, _)| p.positions.len());
    let layout = Layout::new(&site_list, k, r.share)?;
    let mut rng = Rng::new(r.seed);
    let iv = InterventionSet::init(layout, |site| -> Result<_> {
        let width = sites.iter().find(|s| s.site == site).context("a slot's site is the recipe's")?.width;
        Ok(Intervention::Reft(ReftIntervention::new(
            r.family,
            width,
            r.rank,
            Activation::Identity,
            0.0,
            &mut rng,
            device,
        )))
    })?;
    let trainable = iv.members.iter().map(Intervention::trainable_params).sum();
    let cfg = FitConfig { eval_every: r.check_every, ..FitConfig::constant(r.max_steps, r.lr, r.seed, true) };
    let objective = UntilRecall(ReftObjective { model, train: &batches, validation: &batches });
    let io = FitIo { progress: ctx.progress, ..FitIo::default() };
    let fitted = if replicas.len() > 1 {
        // One batch of every example, cut into one part per device.
        let split = split_batches(refs.len(), refs.len(), replicas.len())?;
        let lists = split
            .parts
            .iter()
            .zip(replicas)
            .map(|(part, (d, m))| {
                let ex: Vec<&TokenizedExample> = part.iter().map(|&i| refs[i]).collect();
                reft::prepare_at(*m, &site_list, &ex, pad_id, ex.len(), d)
            })
            .collect::<Result<Vec<_>>>()?;
        let parts: Vec<ReftObjective<'_, B, M>> = lists
            .iter()
            .zip(replicas)
            .map(|(l, (_, m))| ReftObjective { model: *m, train: l, validation: &[] })
            .collect();
        let shared = parts
            .iter()
            .zip(replicas)
            .zip(&split.sizes)
            .map(|((o, (d, _)), sizes)| Replica { device: d.clone(), objective: o, sizes: sizes.clone() })
            .collect();
        fit(&DataParallel::new(shared, &objective, batch_sizes(refs.len(), refs.len()))?, iv, &cfg, io)?
    } else {
        fit(&objective, iv, &cfg, io)?
    };
    let steps_to_recall = (fitted.outcome == crate::fit::Outcome::Reached).then_some(fitted.state.step);
    let after = reft::evaluate(model, &batches, Some(&fitted.module as &dyn Placed<B>))?;
    Ok(Memorised { fitted, steps_to_recall, before, after, trainable })
}

/// Generations without and with the intervention: the taught prompts (recalled exactly?) and the
/// held-out ones (judged), greedy with a KV cache and without autodiff, as a user would see them.
fn generations<B: AutodiffBackend>(
    r: &ReftMemoriseRecipe,
    model: &AnyModel<B>,
    tok: &TextTokenizer,
    info: SiteInfo,
    iv: &InterventionSet<B>,
    taught: &[(TokenizedInput, Vec<u32>)],
    end_of_turn: Option<u32>,
    device: &B::Device,
) -> Result<(Vec<Generated>, Vec<Generated>)> {
    let (inner, iv) = (model.valid(), iv.valid());
    let run_prompt = |prompt: &TokenizedInput, max_new: usize| -> Result<(String, String, Vec<u32>)> {
        let steer = Steer {
            intervention: &iv,
            site: info,
            positions: prompt.positions.clone(),
            sources: Vec::new(),
            dims: vec![],
            every_token: false,
        };
        let decoding = Decoding::greedy(max_new);
        let eos = if r.chat_template { end_of_turn } else { tok.eos_id };
        let without = generate(&inner, &prompt.ids, None, &decoding, eos, device)?;
        let with = generate(&inner, &prompt.ids, Some(&steer), &decoding, eos, device)?;
        Ok((tok.decode(&without)?, tok.decode(&with)?, with))
    };
    let mut recalled = Vec::new();
    for (ex, (prompt, target)) in r.examples.iter().zip(taught) {
        let (without, with, ids) = run_prompt(prompt, target.len())?;
        let expected: Vec<u32> = target.iter().copied().filter(|t| Some(*t) != end_of_turn).collect();
        recalled.push(Generated { prompt: ex.prompt.clone(), without, with, ok: Some(ids == expected) });
    }
    let mut held = Vec::new();
    for prompt in &r.held_out {
        let (without, with, _) = run_prompt(&prompt_input(r, tok, prompt)?, r.generate)?;
        let ok = r.judge.map(|j| j.accepts(&with));
        held.push(Generated { prompt: prompt.clone(), without, with, ok });
    }
    Ok((recalled, held))
}

/// Everything the run found, from which the report, the plot and the console summary are made.
struct Outcome<'a, B: AutodiffBackend> {
    name: &'a str,
    r: &'a ReftMemoriseRecipe,
    m: Memorised<B>,
    target_tokens: Vec<usize>,
    model_params: usize,
    taught: Vec<Generated>,
    held: Vec<Generated>,
}

impl<B: AutodiffBackend> Outcome<'_, B> {
    fn recalled(&self) -> usize {
        self.taught.iter().filter(|g| g.ok == Some(true)).count()
    }

    fn judged(&self) -> (Option<usize>, Option<usize>) {
        let with = self.r.judge.map(|_| self.held.iter().filter(|g| g.ok == Some(true)).count());
        let without = self.r.judge.map(|j| self.held.iter().filter(|g| j.accepts(&g.without)).count());
        (with, without)
    }

    fn report(&self, loaded_path: &std::path::Path, revision: &Option<String>) -> serde_json::Value {
        let (r, m) = (self.r, &self.m);
        let (with, without) = self.judged();
        json!({
            "recipe": self.name,
            "trainable_parameters": m.trainable, "model_parameters": self.model_params, "trainable_share": m.trainable as f64 / self.model_params as f64,
            "steps_to_exact_recall": m.steps_to_recall, "steps_run": m.fitted.state.step,
            "recall": {"before": m.before, "after": m.after},
            "target_tokens": self.target_tokens,
            "taught": self.taught, "recalled_by_generation": self.recalled(),
            "held_out": self.held, "held_out_judged": {"judge": r.judge, "with": with, "without": without},
            "history": m.fitted.state.history.iter().map(|e| json!({"step": e.step, "loss": e.loss, "exact": e.accuracy})).collect::<Vec<_>>(),
            "model": {"spec": r.model, "path": loaded_path, "revision": revision},
        })
    }

    fn summary(&self) -> String {
        let (r, m, name) = (self.r, &self.m, self.name);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{name}: {} rank {} at {} ({}), positions {}",
            r.family_name(),
            r.rank,
            SiteKeys { site: r.site, sites: r.sites.as_deref() }
                .list()
                .map_or_else(|_| "?".into(), |v| v.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")),
            r.model,
            r.positions
        );
        let _ = writeln!(
            out,
            "trainable parameters: {} ({:.5}% of the model's {})",
            m.trainable,
            m.trainable as f64 / self.model_params as f64 * 100.0,
            self.model_params
        );
        let _ = match m.steps_to_recall {
            Some(s) => writeln!(
                out,
                "exact recall after {s} steps (checked every {}); loss {:.4} → {:.4}",
                r.check_every, m.before.loss, m.after.loss
            ),
            None => writeln!(
                out,
                "no exact recall within {} steps (token accuracy {:.3}); raise max_steps or lr",
                r.max_steps, m.after.token_accuracy
            ),
        };
        let _ = writeln!(
            out,
            "recalled by greedy generation: {}/{} ({} target tokens in all)",
            self.recalled(),
            self.taught.len(),
            self.target_tokens.iter().sum::<usize>()
        );
        for g in self.taught.iter().take(3) {
            let _ = writeln!(out, "  {:?}\n    without: {:?}\n    with:    {:?}", g.prompt, g.without, g.with);
        }
        if !self.held.is_empty() {
            let _ = match self.judged() {
                (Some(w), Some(wo)) => writeln!(
                    out,
                    "held-out prompts judged {:?}: {w}/{} with the intervention, {wo}/{} without",
                    r.judge.unwrap_or(Judge::Emoji),
                    self.held.len(),
                    self.held.len()
                ),
                _ => writeln!(out, "held-out prompts:"),
            };
            for g in &self.held {
                let _ = writeln!(out, "  {:?}\n    without: {:?}\n    with:    {:?}", g.prompt, g.without, g.with);
            }
        }
        out
    }
}

/// The export, the loss plot and the report.
fn write_outputs<B: AutodiffBackend>(
    dir: &RunDir,
    loaded: &LoadedModel<B>,
    o: &Outcome<'_, B>,
    width: usize,
) -> Result<PathBuf> {
    let (r, name, fitted) = (o.r, o.name, &o.m.fitted);
    let placement =
        PlacementConfig { sites: Vec::new(), positions: r.positions.clone(), site_width: width, ..Default::default() };
    let training = json!({"recipe": name, "chat_template": r.chat_template, "prompts": r.examples.iter().map(|e| &e.prompt).collect::<Vec<_>>()});
    let mut config = ExportConfig::new(placement, ModelConfig::of(loaded), training);
    config.set = crate::experiments::pairs::set_config(r.share);
    let export_path = export::save_set(&fitted.module, config, &dir.join("intervention.safetensors"))?;
    LinePlot {
        title: &format!("{name}: language-model loss on the targets"),
        axes: ("optimizer step", "loss (nats per target token)"),
        series: vec![Series {
            name: "training loss".into(),
            points: fitted.state.losses.iter().enumerate().map(|(i, &l)| ((i + 1) as f64, l as f64)).collect(),
        }],
    }
    .write(&dir.join("loss"))?;
    dir.write_report(o.report(&loaded.path, &loaded.revision))?;
    Ok(export_path)
}

/// Runs the recipe: trains to exact recall, checks recall by generation, judges held-out
/// prompts, exports the intervention; returns the run folder.
pub fn run<B: AutodiffBackend>(ctx: &RunContext<'_>, r: &ReftMemoriseRecipe, devices: &[B::Device]) -> Result<PathBuf> {
    let device = devices.first().ok_or_else(|| anyhow!("no device to run on"))?;
    let loaded = load_frozen::<B>(&r.model, device).with_context(|| format!("loading model `{}`", r.model))?;
    let copies = crate::replicas::model_copies::<B>(&r.model, devices)?;
    let replicas = crate::replicas::replica_models(devices, &loaded.model, &copies);
    let (model, tok) =
        (&loaded.model, loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", r.model))?);
    let keys = SiteKeys { site: r.site, sites: r.sites.as_deref() };
    let infos = keys
        .list()?
        .into_iter()
        .map(|s| {
            let info = model.site_info(s).with_context(|| format!("the recipe's {}", keys.describe()))?;
            crate::divergence::check_rank(r.rank, info.width, &format_args!("site {s}"))?;
            Ok(info)
        })
        .collect::<Result<Vec<_>>>()?;
    let info = infos[0];
    let end_of_turn = end_of_turn(r, tok)?;
    let taught = taught_inputs(r, tok, end_of_turn)?;
    let dir = RunDir::create(ctx.out_root, ctx.name, ctx.as_run)?;
    let m = memorise(ctx, r, model, tok.pad_id, &infos, &taught, device, &replicas)?;
    let (recalled, held) = generations(r, model, tok, info, &m.fitted.module, &taught, end_of_turn, device)?;
    let target_tokens = taught.iter().map(|(_, t)| t.len()).collect();
    let outcome =
        Outcome { name: ctx.name, r, m, target_tokens, model_params: model.parameter_count(), taught: recalled, held };
    let export_path = write_outputs(&dir, &loaded, &outcome, info.width)?;
    print!("{}", outcome.summary());
    println!("export: {}", export_path.display());
    println!("run folder: {} ({:.0} s)", dir.path().display(), dir.elapsed());
    Ok(dir.path().to_path_buf())
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
