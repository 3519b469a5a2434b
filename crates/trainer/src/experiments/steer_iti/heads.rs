//! Reading and steering attention heads: each head's output at a text's last token, the σ-scaled
//! direction of a shift, and the probability of the true answer with shifts added.

use std::collections::BTreeMap;

use anyhow::{Context, Result, anyhow};
use burn::tensor::activation::softmax;
use burn::tensor::backend::Backend;
use burn::tensor::{Tensor, TensorData};
use ferrovene_models::{Capture, Component, FnHook, Input, NoHooks, Site, Transformer, forward};

/// `[layer][text][width]` head outputs at each text's last token.
pub fn head_outputs<B: Backend, M: Transformer<B>>(
    model: &M,
    rows: &[Vec<u32>],
    pad_id: u32,
    device: &B::Device,
) -> Result<Vec<Vec<Vec<f32>>>> {
    let layers = model.n_layers();
    let sites: Vec<Site> = (0..layers).map(|l| Site::new(l, Component::HeadAttentionValueOutput)).collect();
    let mut out: Vec<Vec<Vec<f32>>> = vec![Vec::new(); layers];
    for chunk in rows.chunks(32) {
        let input = Input::<B>::padded(chunk, pad_id, true, device);
        let seq = input.dims()[1];
        let mut cap = Capture::new(sites.clone());
        forward(model, &input, &mut cap);
        for (l, site) in sites.iter().enumerate() {
            let h = cap.get(*site).context("every layer's heads are captured")?;
            let [b, _, w] = h.dims();
            let last: Vec<f32> =
                h.slice([0..b, seq - 1..seq]).into_data().convert::<f32>().to_vec().map_err(|e| anyhow!("{e:?}"))?;
            out[l].extend(last.chunks(w).map(<[f32]>::to_vec));
        }
    }
    Ok(out)
}

/// `σ·θ̂` for one head: `θ̂` the unit direction, `σ` the standard deviation of the projections
/// of `all` onto it.
pub fn scaled_direction(direction: &[f64], all: &[&[f32]]) -> Vec<f32> {
    let norm = direction.iter().map(|x| x * x).sum::<f64>().sqrt().max(1e-12);
    let unit: Vec<f64> = direction.iter().map(|x| x / norm).collect();
    let proj: Vec<f64> = all.iter().map(|x| x.iter().zip(&unit).map(|(a, b)| *a as f64 * b).sum()).collect();
    let m = proj.iter().sum::<f64>() / proj.len().max(1) as f64;
    let sigma = (proj.iter().map(|p| (p - m).powi(2)).sum::<f64>() / proj.len().max(1) as f64).sqrt();
    unit.iter().map(|u| (u * sigma) as f32).collect()
}

/// Per prompt, the probability of the true answer's first token and `p(true) / (p(true) +
/// p(false))`, with `shifts` (per layer, `[width]`, scaled by `alpha`) added at the last position.
pub fn true_answer_probability<B: Backend, M: Transformer<B>>(
    model: &M,
    prompts: &[(Vec<u32>, u32, u32)],
    shifts: &BTreeMap<usize, Vec<f32>>,
    alpha: f64,
    pad_id: u32,
    device: &B::Device,
) -> Result<Vec<(f64, f64)>> {
    let vectors: BTreeMap<Site, Tensor<B, 3>> = shifts
        .iter()
        .map(|(&l, v)| {
            (
                Site::new(l, Component::HeadAttentionValueOutput),
                Tensor::<B, 1>::from_data(TensorData::new(v.clone(), [v.len()]), device).reshape([1, 1, v.len()])
                    * alpha,
            )
        })
        .collect();
    let mut out = Vec::with_capacity(prompts.len());
    for chunk in prompts.chunks(32) {
        let rows: Vec<Vec<u32>> = chunk.iter().map(|(ids, _, _)| ids.clone()).collect();
        let input = Input::<B>::padded(&rows, pad_id, true, device);
        let [b, seq] = input.dims();
        let hidden = if alpha == 0.0 || vectors.is_empty() {
            forward(model, &input, &mut NoHooks)
        } else {
            // At the last position only: the token whose next-token prediction is the answer,
            // as ITI shifts each generated token.
            let mut add = FnHook::new(vectors.keys().copied(), |site, h: Tensor<B, 3>| {
                let [_, seq, width] = h.dims();
                let before = Tensor::<B, 3>::zeros([1, seq - 1, width], &h.device());
                h + Tensor::cat(vec![before, vectors[&site].clone()], 1)
            });
            forward(model, &input, &mut add)
        };
        let logits = model
            .head(hidden.slice([0..b, seq - 1..seq]))
            .ok_or_else(|| anyhow!("steer-iti needs a language model"))?;
        let probs: Vec<f32> = softmax(logits, 2).into_data().convert::<f32>().to_vec().map_err(|e| anyhow!("{e:?}"))?;
        let v = probs.len() / b;
        for (r, (_, t, f)) in chunk.iter().enumerate() {
            let (pt, pf) = (probs[r * v + *t as usize] as f64, probs[r * v + *f as usize] as f64);
            out.push((pt, pt / (pt + pf).max(1e-30)));
        }
    }
    Ok(out)
}
