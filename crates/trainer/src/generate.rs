//! Text generation with an intervention active: greedy or sampled decoding, with a KV cache (each
//! step feeds only the newest token) or without (each step runs the whole sequence again).
//!
//! The intervention acts at the prompt positions it was trained for and, when `every_token` is
//! set, at each generated token as well. With the cache, the prompt positions are intervened once,
//! when the prompt is read, and their changed keys and values stay in the cache; without it they
//! are intervened again at every step. Both give the same tokens (tested).

use anyhow::{Result, anyhow, bail};
use burn::tensor::Tensor;
use burn::tensor::backend::Backend;
use ferrovene_interventions::{Composition, Intervene, Placed};
use ferrovene_models::rng::Rng;
use ferrovene_models::{Input, KvCache, NoHooks, Site, SiteInfo, Transformer, forward};

use crate::batch::int2;

/// How the next token is chosen.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Choice {
    /// The most probable token.
    Greedy,
    /// A draw from the softmax at `temperature`, restricted to the smallest set of most probable
    /// tokens whose probability reaches `top_p` (nucleus sampling), from a seeded generator.
    Sample {
        /// Divides the logits; below 1 sharpens, above 1 flattens.
        temperature: f64,
        /// Nucleus mass in (0, 1]; 1 keeps every token.
        top_p: f64,
        /// Seed of the draws: the same seed gives the same text.
        seed: u64,
    },
}

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Decoding {
    /// At most this many new tokens (fewer if the model emits its end-of-sequence token).
    pub max_new: usize,
    /// Greedy or sampled.
    pub choice: Choice,
    /// Keep keys and values of earlier positions (fast) rather than recomputing them.
    pub cache: bool,
}

impl Decoding {
    /// Greedy decoding with a KV cache.
    pub fn greedy(max_new: usize) -> Self {
        Decoding { max_new, choice: Choice::Greedy, cache: true }
    }

    /// Checks the sampling parameters.
    pub fn check(&self) -> Result<()> {
        if let Choice::Sample { temperature, top_p, .. } = self.choice {
            if !(temperature > 0.0 && temperature.is_finite()) {
                bail!("--temperature {temperature}: give a positive number (1 = the model's own distribution)");
            }
            if !(top_p > 0.0 && top_p <= 1.0) {
                bail!("--top-p {top_p}: give a share in (0, 1] (1 = no nucleus cut)");
            }
        }
        Ok(())
    }
}

/// An intervention (or a set of them at several sites) as it acts during generation.
pub struct Steer<'a, B: Backend> {
    /// The intervention, or a set placed at its own sites.
    pub intervention: &'a dyn Placed<B>,
    /// The site a lone intervention is placed at (a set's slots name their own).
    pub site: SiteInfo,
    /// Prompt positions it acts on.
    pub positions: Vec<usize>,
    /// `[1, positions, width]` source vectors at each site, for kinds that read a source.
    pub sources: Vec<(Site, Tensor<B, 3>)>,
    /// The subspace it acts on (all dims when empty).
    pub dims: Vec<usize>,
    /// Also act at every generated token.
    pub every_token: bool,
}

/// Next-token logits after `feed` (continuing `cache` if given), with `steer` at `at` (positions
/// in `feed`).
pub fn next_logits<B: Backend, M: Transformer<B> + ?Sized>(
    model: &M,
    feed: &[u32],
    cache: Option<&KvCache<B>>,
    steer: Option<(&Steer<B>, Vec<usize>)>,
    device: &B::Device,
) -> Result<Vec<f32>> {
    let mut input = Input::<B>::from_ids(&[feed.to_vec()], device);
    if let Some(c) = cache {
        input = input.continuing(c);
    }
    let hidden = match steer {
        Some((s, at)) if !at.is_empty() => {
            // Sources read at the prompt positions go only with those positions.
            let sources: &[(Site, Tensor<B, 3>)] = if at.len() == s.positions.len() { &s.sources } else { &[] };
            let info = |site: Site| -> ferrovene_interventions::Result<SiteInfo> {
                if site == s.site.site { Ok(s.site) } else { Ok(model.site_info(site)?) }
            };
            let placements =
                s.intervention.placements(s.site.site, &info, &int2::<B>(&[at], device), sources, &s.dims)?;
            forward(model, &input, &mut Intervene::new(placements, Composition::Parallel))
        }
        _ => forward(model, &input, &mut NoHooks),
    };
    let n = feed.len();
    let logits = model.head(hidden.slice([0..1, n - 1..n])).ok_or_else(|| {
        anyhow!("generation needs a language model; this {} model has no next-token head", model.arch())
    })?;
    logits.into_data().convert::<f32>().to_vec().map_err(|e| anyhow!("reading logits: {e:?}"))
}

/// The index of the largest value.
pub fn argmax(values: &[f32]) -> u32 {
    values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i as u32)
}

/// The indices of the `k` largest values, largest first (ties in index order).
pub fn top_k(values: &[f32], k: usize) -> Vec<usize> {
    let mut o: Vec<usize> = (0..values.len()).collect();
    o.sort_by(|&a, &b| values[b].total_cmp(&values[a]));
    o.truncate(k);
    o
}

/// A token drawn from `softmax(logits / temperature)` cut to its `top_p` nucleus.
fn sample(logits: &[f32], temperature: f64, top_p: f64, rng: &mut Rng) -> u32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let weights: Vec<f64> = logits.iter().map(|&l| ((l as f64 - max) / temperature).exp()).collect();
    let total: f64 = weights.iter().sum();
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let mut kept = 0.0;
    let mut nucleus = Vec::new();
    for &i in &order {
        nucleus.push(i);
        kept += weights[i] / total;
        if kept >= top_p {
            break;
        }
    }
    let mass: f64 = nucleus.iter().map(|&i| weights[i]).sum();
    let mut u = rng.uniform() * mass;
    for &i in &nucleus {
        u -= weights[i];
        if u < 0.0 {
            return i as u32;
        }
    }
    *nucleus.last().unwrap_or(&0) as u32
}

/// The tokens generated after `prompt` (without it), stopping early at `eos`.
pub fn generate<B: Backend, M: Transformer<B> + ?Sized>(
    model: &M,
    prompt: &[u32],
    steer: Option<&Steer<B>>,
    decoding: &Decoding,
    eos: Option<u32>,
    device: &B::Device,
) -> Result<Vec<u32>> {
    decoding.check()?;
    if prompt.is_empty() {
        bail!("generation needs a prompt of at least one token");
    }
    if let Some(max) = model.max_positions().filter(|&m| prompt.len() + decoding.max_new > m) {
        bail!(
            "the prompt ({} tokens) and {} new tokens are more than the {max} positions the model reads; generate at most {} tokens",
            prompt.len(),
            decoding.max_new,
            max.saturating_sub(prompt.len())
        );
    }
    if let Some(s) = steer {
        if let Some(&p) = s.positions.iter().find(|&&p| p >= prompt.len()) {
            bail!("intervention position {p} is outside the prompt, which has {} tokens", prompt.len());
        }
        if s.every_token && s.intervention.needs_source() {
            bail!(
                "a {} intervention reads a source, so it cannot act at generated tokens (drop --every-token)",
                s.intervention.kind()
            );
        }
        if s.every_token && s.intervention.per_position() {
            bail!(
                "this set acts with separate parameters at each of its trained positions (share = \"none\"), so it has none for generated tokens (drop --every-token, or train it with share = \"positions\")"
            );
        }
    }
    let mut rng = match decoding.choice {
        Choice::Sample { seed, .. } => Some(Rng::new(seed)),
        Choice::Greedy => None,
    };
    let cache = decoding.cache.then(KvCache::<B>::new);
    let mut seq = prompt.to_vec();
    for step in 0..decoding.max_new {
        let every = steer.is_some_and(|s| s.every_token);
        let prompt_positions = || steer.map_or(Vec::new(), |s| s.positions.clone());
        let (feed, at): (&[u32], Vec<usize>) = match &cache {
            // With the cache: the prompt once, then each new token alone (at position 0 of its feed).
            Some(_) if step == 0 => (&seq, prompt_positions()),
            Some(_) => (&seq[seq.len() - 1..], if every { vec![0] } else { Vec::new() }),
            // Without: the whole sequence, intervened at the prompt positions and the generated ones.
            None => {
                let mut at = prompt_positions();
                if every {
                    at.extend(prompt.len()..seq.len());
                }
                (&seq, at)
            }
        };
        let logits = next_logits(model, feed, cache.as_ref(), steer.map(|s| (s, at)), device)?;
        let token = match (decoding.choice, rng.as_mut()) {
            (Choice::Sample { temperature, top_p, .. }, Some(rng)) => sample(&logits, temperature, top_p, rng),
            _ => argmax(&logits),
        };
        if eos == Some(token) {
            break;
        }
        seq.push(token);
    }
    Ok(seq.split_off(prompt.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nucleus_of_a_peaked_distribution_is_its_top_token() {
        let mut rng = Rng::new(1);
        let logits = [0.0, 10.0, 0.0, 0.0];
        for _ in 0..50 {
            assert_eq!(sample(&logits, 1.0, 0.9, &mut rng), 1);
        }
    }

    #[test]
    fn sampling_follows_the_softmax() {
        // logits ln 1, ln 3 → probabilities 0.25, 0.75.
        let mut rng = Rng::new(7);
        let logits = [0.0, 3f32.ln()];
        let n = 20_000;
        let ones = (0..n).filter(|_| sample(&logits, 1.0, 1.0, &mut rng) == 1).count();
        let share = ones as f64 / n as f64;
        assert!((share - 0.75).abs() < 0.015, "share of token 1 = {share}");
        // Temperature 2 flattens to √1 : √3 → 0.366 / 0.634.
        let ones = (0..n).filter(|_| sample(&logits, 2.0, 1.0, &mut rng) == 1).count();
        let share = ones as f64 / n as f64;
        assert!((share - 3f64.sqrt() / (1.0 + 3f64.sqrt())).abs() < 0.015, "share at T=2 = {share}");
    }
}
