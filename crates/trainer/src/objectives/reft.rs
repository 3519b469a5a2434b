//! ReFT training: an intervention at prompt positions, trained with the language-model loss on
//! the target tokens that follow the prompt (pyreft's objective).
//!
//! Each batch runs the frozen model once on prompt + target up to the site (with several sites,
//! the one before them all); every step then intervenes on that cached activation, goes on from
//! the site (the later sites' placements acting as hooks), and applies the output head only at
//! the positions that predict a target token.

use anyhow::{Context, Result, bail};
use burn::tensor::activation::log_softmax;
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::{Int, Tensor, TensorData};
use ferrovene_data::batch::{PaddingSide, pad};
use ferrovene_data::{TokenizedExample, TokenizedInput};
use ferrovene_interventions::{Composition, Intervene, Placed, checkpoint_site};
use ferrovene_models::{Checkpoint, Site, Transformer, gather_positions, resume, run_to};

use crate::batch::{input_of, int2};
use crate::fit::Objective;

/// One batch of prompts with targets, with the frozen model's run up to the site.
pub struct PromptBatch<B: Backend> {
    /// Prompt + target, run up to the site.
    pub checkpoint: Checkpoint<B>,
    /// `[batch, k]` intervention positions (in the padded sequence).
    pub positions: Tensor<B, 2, Int>,
    /// `[batch, t]` positions whose next-token prediction is a target token.
    pub target_positions: Tensor<B, 2, Int>,
    /// `[batch][t]` the target tokens (rows shorter than `t` are padded in the tensors only).
    pub targets: Vec<Vec<u32>>,
}

/// Prepares batches of prompt/target examples for `site`.
pub fn prepare<B: Backend, M: Transformer<B>>(
    model: &M,
    site: Site,
    examples: &[&TokenizedExample],
    pad_id: u32,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<PromptBatch<B>>> {
    prepare_at(model, &[site], examples, pad_id, batch_size, device)
}

/// Prepares batches of prompt/target examples for interventions at every site of `sites` at
/// once: the frozen run stops at the site before them all.
pub fn prepare_at<B: Backend, M: Transformer<B>>(
    model: &M,
    sites: &[Site],
    examples: &[&TokenizedExample],
    pad_id: u32,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<PromptBatch<B>>> {
    for &s in sites {
        model.site_info(s)?;
    }
    let site = checkpoint_site(sites).context("ReFT needs at least one site")?;
    let side = PaddingSide::for_model(model.causal());
    let mut out = Vec::new();
    for chunk in examples.chunks(batch_size.max(1)) {
        let mut rows = Vec::new();
        let mut targets = Vec::new();
        let mut k = None;
        for ex in chunk {
            let TokenizedExample::Prompt { prompt, target } = ex else {
                bail!("ReFT needs prompt/target examples, got another kind")
            };
            if prompt.positions.is_empty() {
                bail!("a ReFT example gives no positions to intervene on (add \"positions\": [\"last\"])");
            }
            if *k.get_or_insert(prompt.positions.len()) != prompt.positions.len() {
                bail!(
                    "every example of a batch must give the same number of positions ({} vs {})",
                    k.unwrap_or(0),
                    prompt.positions.len()
                );
            }
            // Prompt + target as one sequence; the scored positions ride along as extra positions
            // so that padding shifts them with the rest.
            let p = prompt.ids.len();
            let mut ids = prompt.ids.clone();
            ids.extend(target);
            let mut positions = prompt.positions.clone();
            positions.extend((0..target.len()).map(|j| p - 1 + j));
            rows.push(TokenizedInput { ids, positions });
            targets.push(target.clone());
        }
        let k = k.unwrap_or(0);
        let refs: Vec<&TokenizedInput> = rows.iter().collect();
        let padded = pad(&refs, pad_id, side);
        let t = targets.iter().map(Vec::len).max().unwrap_or(0);
        let iv_positions: Vec<Vec<usize>> = padded.positions.iter().map(|p| p[..k].to_vec()).collect();
        let scored: Vec<Vec<usize>> = padded
            .positions
            .iter()
            .map(|p| {
                let mut s = p[k..].to_vec();
                let last = *s.last().unwrap_or(&0);
                s.resize(t, last);
                s
            })
            .collect();
        let input = input_of::<B>(&padded.ids, &padded.mask, device);
        out.push(PromptBatch {
            checkpoint: run_to(model, &input, site).context("running prompts and targets to the site")?,
            positions: int2::<B>(&iv_positions, device),
            target_positions: int2::<B>(&scored, device),
            targets,
        });
    }
    Ok(out)
}

/// Log-probabilities `[batch, t, vocab]` of the next token at the scored positions.
pub fn log_probs<B: Backend, M: Transformer<B>>(
    model: &M,
    batch: &PromptBatch<B>,
    iv: Option<&dyn Placed<B>>,
) -> Result<Tensor<B, 3>> {
    let site = batch.checkpoint.site;
    let placements = match iv {
        None => Vec::new(),
        Some(iv) => iv.placements(site, &|s| Ok(model.site_info(s)?), &batch.positions, &[], &[])?,
    };
    // The placements at the checkpoint's site act on its activation, the others as hooks.
    let mut hooks = Intervene::new(placements, Composition::Parallel);
    let act = hooks.apply_at(site, batch.checkpoint.activation.clone());
    let hidden = resume(model, &batch.checkpoint, act, &mut hooks)?;
    let at = gather_positions(hidden, batch.target_positions.clone());
    Ok(log_softmax(model.head(at).context("ReFT's language-model loss needs a language model")?, 2))
}

/// `[batch, t]` one-hot-ready target ids and `[batch, t]` weights (1 for real targets).
fn targets_and_weights<B: Backend>(batch: &PromptBatch<B>, device: &B::Device) -> (Tensor<B, 2, Int>, Tensor<B, 2>) {
    let n = batch.targets.len();
    let t = batch.targets.iter().map(Vec::len).max().unwrap_or(0);
    let mut ids = vec![0i64; n * t];
    let mut w = vec![0f32; n * t];
    for (r, row) in batch.targets.iter().enumerate() {
        for (j, &id) in row.iter().enumerate() {
            ids[r * t + j] = id as i64;
            w[r * t + j] = 1.0;
        }
    }
    (Tensor::from_data(TensorData::new(ids, [n, t]), device), Tensor::from_data(TensorData::new(w, [n, t]), device))
}

/// Mean negative log-likelihood of the target tokens (the language-model loss).
pub fn loss<B: Backend, M: Transformer<B>>(
    model: &M,
    batch: &PromptBatch<B>,
    iv: Option<&dyn Placed<B>>,
) -> Result<Tensor<B, 1>> {
    let lp = log_probs(model, batch, iv)?;
    let (ids, w) = targets_and_weights(batch, &lp.device());
    let picked: Tensor<B, 2> = lp.gather(2, ids.unsqueeze_dim(2)).squeeze_dim(2);
    let count = w.clone().sum();
    Ok(-(picked * w).sum() / count)
}

/// How well the targets are predicted.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct RecallMetrics {
    /// Share of target tokens that are the argmax given the true prefix.
    pub token_accuracy: f32,
    /// Share of examples whose every target token is the argmax: greedy decoding reproduces the
    /// target exactly.
    pub exact: f32,
    /// Mean negative log-likelihood per target token.
    pub loss: f32,
    /// Number of examples.
    pub n: usize,
}

/// Token accuracy, exact recall and loss with `iv`, or without any intervention.
pub fn evaluate<B: Backend, M: Transformer<B>>(
    model: &M,
    batches: &[PromptBatch<B>],
    iv: Option<&dyn Placed<B>>,
) -> Result<RecallMetrics> {
    let (mut hits, mut tokens, mut exact, mut n, mut nll) = (0usize, 0usize, 0usize, 0usize, 0f64);
    for batch in batches {
        let lp = log_probs(model, batch, iv)?;
        let [_, t, v] = lp.dims();
        let values: Vec<f32> = lp
            .into_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| anyhow::anyhow!("reading log-probabilities: {e:?}"))?;
        for (r, row) in batch.targets.iter().enumerate() {
            let mut all = true;
            for (j, &id) in row.iter().enumerate() {
                let dist = &values[(r * t + j) * v..(r * t + j + 1) * v];
                let argmax = dist.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
                let hit = argmax == id as usize;
                hits += hit as usize;
                all &= hit;
                nll -= dist[id as usize] as f64;
                tokens += 1;
            }
            exact += all as usize;
            n += 1;
        }
    }
    Ok(RecallMetrics {
        token_accuracy: hits as f32 / tokens.max(1) as f32,
        exact: exact as f32 / n.max(1) as f32,
        loss: (nll / tokens.max(1) as f64) as f32,
        n,
    })
}

/// ReFT as a training objective: language-model loss on the targets; validation reports the loss
/// and the exact-recall share.
pub struct ReftObjective<'a, B: Backend, M: Transformer<B>> {
    /// The frozen model.
    pub model: &'a M,
    /// Training batches.
    pub train: &'a [PromptBatch<B>],
    /// Validation batches (may be empty).
    pub validation: &'a [PromptBatch<B>],
}

impl<B: AutodiffBackend, M: Transformer<B>, P: Placed<B>> Objective<B, P> for ReftObjective<'_, B, M> {
    fn batches(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, iv: &P, index: usize) -> Result<Tensor<B, 1>> {
        loss(self.model, &self.train[index], Some(iv))
    }

    fn validate(&self, iv: &P) -> Result<Option<(f32, f32)>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        let m = evaluate(self.model, self.validation, Some(iv))?;
        Ok(Some((m.loss, m.exact)))
    }
}
