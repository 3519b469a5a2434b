//! Probe training: a linear classifier on the frozen model's activations at one site and one
//! position, trained with cross-entropy on the classes of labelled texts.
//!
//! The activations never change, so they are computed once ([`features`]) and every epoch only
//! trains the probe on them.

use anyhow::{Context, Result, anyhow, bail};
use burn::tensor::backend::{AutodiffBackend, Backend};
use burn::tensor::loss::cross_entropy_with_logits;
use burn::tensor::{Int, Tensor, TensorData};
use ferrovene_data::batch::{PaddingSide, pad};
use ferrovene_data::{TokenizedExample, TokenizedInput};
use ferrovene_interventions::Intervention;
use ferrovene_models::{Site, Transformer, gather_positions, run_to};

use crate::batch::{input_of, int2};
use crate::fit::Objective;

/// One batch of labelled activations.
pub struct FeatureBatch<B: Backend> {
    /// `[batch, 1, width]` the activation at the example's position.
    pub features: Tensor<B, 3>,
    /// `[batch]` classes.
    pub classes: Vec<usize>,
}

/// Runs the frozen model on labelled texts up to `site` and keeps the activation at each
/// example's (single) position.
pub fn features<B: Backend, M: Transformer<B>>(
    model: &M,
    site: Site,
    examples: &[&TokenizedExample],
    pad_id: u32,
    batch_size: usize,
    device: &B::Device,
) -> Result<Vec<FeatureBatch<B>>> {
    model.site_info(site)?;
    let side = PaddingSide::for_model(model.causal());
    let mut out = Vec::new();
    for chunk in examples.chunks(batch_size.max(1)) {
        let mut texts = Vec::new();
        let mut classes = Vec::new();
        for ex in chunk {
            let TokenizedExample::Text { text, class } = ex else {
                bail!("probes need text/class examples, got another kind")
            };
            if text.positions.len() != 1 {
                bail!(
                    "a probe reads one position per text; this example gives {} (write \"positions\": [\"last\"] or one index)",
                    text.positions.len()
                );
            }
            // A causal model's activation at the position does not depend on later tokens.
            let end = if model.causal() { text.positions[0] + 1 } else { text.ids.len() };
            texts.push(TokenizedInput { ids: text.ids[..end].to_vec(), positions: text.positions.clone() });
            classes.push(*class);
        }
        let refs: Vec<&TokenizedInput> = texts.iter().collect();
        let padded = pad(&refs, pad_id, side);
        let input = input_of::<B>(&padded.ids, &padded.mask, device);
        let acts = run_to(model, &input, site).context("running the texts to the site")?.activation;
        out.push(FeatureBatch { features: gather_positions(acts, int2::<B>(&padded.positions, device)), classes });
    }
    Ok(out)
}

/// The number of classes the examples use (the largest class + 1).
pub fn class_count(examples: &[&TokenizedExample]) -> usize {
    examples
        .iter()
        .filter_map(|e| if let TokenizedExample::Text { class, .. } = e { Some(class + 1) } else { None })
        .max()
        .unwrap_or(0)
}

fn logits<B: Backend>(iv: &Intervention<B>, batch: &FeatureBatch<B>) -> Result<Tensor<B, 2>> {
    let Intervention::Probe(p) = iv else {
        return Err(anyhow!("probe training needs a linear probe, not {}", iv.kind()));
    };
    let l = p.logits(batch.features.clone());
    let [n, _, c] = l.dims();
    Ok(l.reshape([n, c]))
}

/// Cross-entropy of the classes (mean over the batch).
pub fn loss<B: Backend>(iv: &Intervention<B>, batch: &FeatureBatch<B>) -> Result<Tensor<B, 1>> {
    let l = logits(iv, batch)?;
    let [n, c] = l.dims();
    if let Some(&bad) = batch.classes.iter().find(|&&k| k >= c) {
        bail!("class {bad} is out of range for a probe with {c} classes");
    }
    let classes = Tensor::<B, 1, Int>::from_data(
        TensorData::new(batch.classes.iter().map(|&k| k as i64).collect::<Vec<_>>(), [n]),
        &l.device(),
    );
    Ok(cross_entropy_with_logits(l, classes.one_hot::<2>(c).float()))
}

/// `(accuracy, mean loss)` of the probe on the batches.
pub fn evaluate<B: Backend>(iv: &Intervention<B>, batches: &[FeatureBatch<B>]) -> Result<(f32, f32)> {
    let (mut hits, mut n, mut nll) = (0usize, 0usize, 0f64);
    for batch in batches {
        let l = logits(iv, batch)?;
        let c = l.dims()[1];
        let values: Vec<f32> =
            l.into_data().convert::<f32>().to_vec().map_err(|e| anyhow!("reading probe logits: {e:?}"))?;
        for (r, &k) in batch.classes.iter().enumerate() {
            let row = &values[r * c..(r + 1) * c];
            let argmax = row.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i);
            let max = row[argmax] as f64;
            let log_z = max + row.iter().map(|&x| (x as f64 - max).exp()).sum::<f64>().ln();
            nll += log_z - row.get(k).copied().unwrap_or(f32::NEG_INFINITY) as f64;
            hits += (argmax == k) as usize;
            n += 1;
        }
    }
    Ok((hits as f32 / n.max(1) as f32, (nll / n.max(1) as f64) as f32))
}

/// The share of the most frequent class: the accuracy of always guessing it (a probe's floor).
pub fn majority_share<B: Backend>(batches: &[FeatureBatch<B>]) -> f32 {
    let mut counts = std::collections::BTreeMap::new();
    let mut n = 0;
    for b in batches {
        for &k in &b.classes {
            *counts.entry(k).or_insert(0usize) += 1;
            n += 1;
        }
    }
    counts.values().max().copied().unwrap_or(0) as f32 / n.max(1) as f32
}

/// A probe as a training objective.
pub struct ProbeObjective<'a, B: Backend> {
    /// Training batches.
    pub train: &'a [FeatureBatch<B>],
    /// Validation batches (may be empty).
    pub validation: &'a [FeatureBatch<B>],
}

impl<B: AutodiffBackend> Objective<B> for ProbeObjective<'_, B> {
    fn batches(&self) -> usize {
        self.train.len()
    }

    fn loss(&self, iv: &Intervention<B>, index: usize) -> Result<Tensor<B, 1>> {
        loss(iv, &self.train[index])
    }

    fn validate(&self, iv: &Intervention<B>) -> Result<Option<(f32, f32)>> {
        if self.validation.is_empty() {
            return Ok(None);
        }
        let (acc, loss) = evaluate(iv, self.validation)?;
        Ok(Some((loss, acc)))
    }
}

/// Held-out accuracy of an L2-regularised logistic regression at inverse regularisation `c`
/// ([`ferrovene_interventions::logistic`], fitted to convergence) on features standardised by the
/// training set's means and deviations: the probe trainer for many small probes at once (one per
/// attention head in `steer-iti`), faster there than [`ProbeObjective`] through [`crate::fit`]
/// (`cargo bench -p trainer --bench probe_trainers`).
pub fn logistic_regression_accuracy(
    train: &[&[f32]],
    train_y: &[bool],
    test: &[&[f32]],
    test_y: &[bool],
    c: f64,
) -> Result<f32> {
    let d = train.first().map_or(0, |x| x.len());
    let n = train.len() as f64;
    let mean: Vec<f64> = (0..d).map(|j| train.iter().map(|x| x[j] as f64).sum::<f64>() / n).collect();
    let std: Vec<f64> = (0..d)
        .map(|j| (train.iter().map(|x| (x[j] as f64 - mean[j]).powi(2)).sum::<f64>() / n).sqrt().max(1e-6))
        .collect();
    let z = |x: &[f32]| -> Vec<f64> { (0..d).map(|j| (x[j] as f64 - mean[j]) / std[j]).collect() };
    let (xs, ts): (Vec<Vec<f64>>, Vec<Vec<f64>>) =
        (train.iter().map(|x| z(x)).collect(), test.iter().map(|x| z(x)).collect());
    let model = ferrovene_interventions::logistic::fit(&xs, train_y, c).map_err(|e| anyhow!("a head's probe: {e}"))?;
    let hits = ts.iter().zip(test_y).filter(|(x, y)| (model.score(x) > 0.0) == **y).count();
    Ok(hits as f32 / test.len().max(1) as f32)
}

#[cfg(test)]
mod tests {
    use super::logistic_regression_accuracy as probe_accuracy;
    use ferrovene_models::rng::Rng;

    #[test]
    fn probe_separates_a_planted_direction_and_not_noise() {
        let mut rng = Rng::new(3);
        let sample = |rng: &mut Rng, shift: f32| -> Vec<f32> {
            (0..8).map(|j| rng.normal() as f32 + if j == 2 { shift } else { 0.0 }).collect()
        };
        let make = |rng: &mut Rng, n: usize, shift: f32| -> (Vec<Vec<f32>>, Vec<bool>) {
            (0..n).map(|i| (sample(rng, if i % 2 == 0 { shift } else { -shift }), i % 2 == 0)).unzip()
        };
        let (tr, ty) = make(&mut rng, 200, 2.0);
        let (te, ey) = make(&mut rng, 200, 2.0);
        let refs = |v: &[Vec<f32>]| -> Vec<Vec<f32>> { v.to_vec() };
        let (tr, te) = (refs(&tr), refs(&te));
        let tr_r: Vec<&[f32]> = tr.iter().map(Vec::as_slice).collect();
        let te_r: Vec<&[f32]> = te.iter().map(Vec::as_slice).collect();
        assert!(probe_accuracy(&tr_r, &ty, &te_r, &ey, 1.0).unwrap() > 0.95);
        let (nt, ny) = make(&mut rng, 200, 0.0);
        let (ne, nyy) = make(&mut rng, 200, 0.0);
        let nt_r: Vec<&[f32]> = nt.iter().map(Vec::as_slice).collect();
        let ne_r: Vec<&[f32]> = ne.iter().map(Vec::as_slice).collect();
        let chance = probe_accuracy(&nt_r, &ny, &ne_r, &nyy, 1.0).unwrap();
        assert!((chance - 0.5).abs() < 0.12, "noise gives {chance}");
    }
}
