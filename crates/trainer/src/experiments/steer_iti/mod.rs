//! `steer-iti`: Inference-Time Intervention (Li et al. 2023, arXiv 2306.03341) on templated
//! true/false statements.
//!
//! 1. Statements from templates — capitals, one-digit arithmetic, category membership — each fact
//!    once with its true answer and once with a false one; facts split into train, validation and
//!    held-out.
//! 2. A logistic-regression probe per attention head on `head_attention_value_output` (the head's
//!    output before the output projection) at the last token of a run of true or of false
//!    statements; heads ranked by probe accuracy on validation facts. Where the run ends is the
//!    recipe's [`ProbeAt`]: by default with the next fact's prompt, so the probe reads the
//!    position that predicts an answer — the position the shift is later added at — after true or
//!    after false statements; or with the fact's own statement, the paper's position.
//! 3. For the top K heads, the mass-mean shift: `θ = mean(true) − mean(false)` per head,
//!    normalised, scaled by the standard deviation `σ` of the activations along it. The
//!    intervention adds `α·σ·θ̂` to those heads at every position.
//! 4. The effect of α on the probability of the true answer after held-out prompts (the statement
//!    without its answer), beside the same heads shifted along random directions (same σ rule).

mod facts;
mod heads;
mod recipe;
mod report;
mod stages;

use std::path::PathBuf;

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use ferrovene_models::{Component, Site, Transformer};

pub use facts::{Fact, facts, probed_texts};
pub use heads::scaled_direction;
pub use recipe::{ProbeAt, SteerItiRecipe};
pub use stages::{AlphaPoint, Curve, FactSplit, Probes, TopicPoint};

use crate::device::load_model;
use crate::events::progress_if;
use crate::experiments::experiment::{Experiment, RunContext, RunEnd};
use crate::run_dir::RunDir;

impl Experiment for SteerItiRecipe {
    fn description(&self) -> String {
        self.description.clone()
    }

    fn check(&self) -> Result<()> {
        let r = self;
        if !(r.held_out_fraction > 0.0
            && r.validation_fraction > 0.0
            && r.held_out_fraction + r.validation_fraction < 0.9)
        {
            bail!(
                "`held_out_fraction` and `validation_fraction` must be positive and leave at least 10% of the facts for training"
            );
        }
        if r.probe_at == ProbeAt::NextPrompt && r.context_statements == 0 {
            bail!(
                "`probe_at = \"next-prompt\"` labels each prompt by the statements before it: set `context_statements` to 1 or more"
            );
        }
        if r.top_k == 0 || r.alphas.is_empty() || r.contexts_per_fact == 0 {
            bail!("`top_k`, `contexts_per_fact` and `alphas` must be non-zero / non-empty");
        }
        if !(r.probe_c > 0.0 && r.probe_c.is_finite()) {
            bail!(
                "`probe_c` = {}: the probes' inverse regularisation must be a positive number (1 is scikit-learn's default)",
                r.probe_c
            );
        }
        Ok(())
    }

    fn run<B: AutodiffBackend>(&self, ctx: &RunContext<'_>, device: &B::Device) -> Result<RunEnd> {
        // Nothing is trained by gradient: the forward passes need no autodiff.
        run::<B::InnerBackend>(ctx, self, device).map(RunEnd::Done)
    }
}

/// Runs the recipe: probes per head, heatmap, top-K mass-mean shift, α curve with its random
/// control, exports; returns the run folder.
pub fn run<B: Backend>(ctx: &RunContext<'_>, r: &SteerItiRecipe, device: &B::Device) -> Result<PathBuf> {
    let loaded = load_model::<B>(&r.model, device).with_context(|| format!("loading model `{}`", r.model))?;
    let (model, tok) =
        (&loaded.model, loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", r.model))?);
    let info = model.site_info(Site::new(0, Component::HeadAttentionValueOutput))?;
    if r.top_k > info.heads * model.n_layers() {
        bail!("`top_k = {}` is more than the model's {} heads", r.top_k, info.heads * model.n_layers());
    }
    let split = stages::split_facts(r)?;
    let dir = RunDir::create(ctx.out_root, ctx.name, ctx.as_run)?;
    let bar = progress_if(ctx.progress, 3, "reading head outputs, probing, steering");
    let probes = stages::probe_heads(r, model, tok, &split, device)?;
    bar.inc(2);
    let (iti, controls) = stages::shifts(r, &probes, info.width);
    let curve = stages::alpha_curve(r, model, tok, &split, (&iti, &controls), device)?;
    bar.inc(1);
    bar.finish_and_clear();
    let found = report::Found {
        name: ctx.name,
        r,
        split: &split,
        probes: &probes,
        iti: &iti,
        curve: &curve,
        layers: model.n_layers(),
    };
    found.write(&dir, &loaded, info.width, device)?;
    print!("{}", found.summary());
    println!("run folder: {} ({:.0} s)", dir.path().display(), dir.elapsed());
    Ok(dir.path().to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiments::Recipe;
    use ferrovene_models::rng::Rng;

    #[test]
    fn facts_have_distinct_true_and_false_answers() {
        let f = facts(1);
        assert_eq!(f.len(), 44 + 36 + 36 + 36);
        assert!(f.iter().all(|x| x.truth != x.falsehood));
        assert_eq!(f, facts(1), "the same seed gives the same facts");
    }

    fn recipe() -> SteerItiRecipe {
        match Recipe::from_file(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../recipes/steer-iti.toml"
        )))
        .unwrap()
        {
            Recipe::SteerIti(r) => r,
            other => panic!("a steer-iti recipe: {other:?}"),
        }
    }

    #[test]
    fn probed_texts_pair_one_context_as_true_and_as_false_from_the_pool_only() {
        let all = facts(1);
        let r = recipe();
        let (ids, pool): (Vec<usize>, Vec<usize>) = ((0..4).collect(), (4..60).collect());
        let texts = probed_texts(&all, &ids, &pool, &r, &mut Rng::new(5));
        assert_eq!(texts.len(), ids.len() * r.contexts_per_fact * 2);
        for (k, pair) in texts.chunks(2).enumerate() {
            let fact = &all[ids[k / r.contexts_per_fact]];
            let [(t, true), (f, false)] = pair else { panic!("true then false: {pair:?}") };
            assert!(t.ends_with(&fact.prompt) && f.ends_with(&fact.prompt), "{t:?} / {f:?}");
            // The same context facts, each with its true answer in one text and its false one in
            // the other; none of them is outside the pool (held-out answers never reach probes).
            let (ts, fs): (Vec<&str>, Vec<&str>) = (t.split(". ").collect(), f.split(". ").collect());
            assert_eq!(ts.len(), r.context_statements + 1);
            for (a, b) in ts.iter().zip(&fs).take(r.context_statements) {
                let j = pool
                    .iter()
                    .copied()
                    .find(|&j| a.starts_with(&all[j].prompt))
                    .unwrap_or_else(|| panic!("{a:?} is not a pool fact"));
                assert_eq!(*a, format!("{}{}", all[j].prompt, all[j].truth));
                assert_eq!(*b, format!("{}{}", all[j].prompt, all[j].falsehood));
            }
        }
        let statement =
            SteerItiRecipe { probe_at: ProbeAt::Statement, context_statements: 0, contexts_per_fact: 1, ..r.clone() };
        let texts = probed_texts(&all, &ids, &pool, &statement, &mut Rng::new(5));
        assert_eq!(texts[0], (format!("{}{}", all[0].prompt, all[0].truth), true));
        assert_eq!(texts[1], (format!("{}{}", all[0].prompt, all[0].falsehood), false));
        let err = format!("{:#}", Recipe::SteerIti(r).with_overrides(&["context_statements=0".into()]).unwrap_err());
        assert!(err.contains("set `context_statements` to 1 or more"), "{err}");
    }

    #[test]
    fn scaled_direction_has_the_spread_of_the_projections() {
        let acts: Vec<Vec<f32>> = vec![vec![1.0, 0.0], vec![-1.0, 0.0], vec![3.0, 5.0], vec![-3.0, -5.0]];
        let refs: Vec<&[f32]> = acts.iter().map(Vec::as_slice).collect();
        let v = scaled_direction(&[2.0, 0.0], &refs);
        // Projections on x: 1, −1, 3, −3 → σ = √5.
        assert!((v[0] - 5f32.sqrt()).abs() < 1e-5 && v[1] == 0.0, "{v:?}");
    }
}
