//! The embedded model's next-token distribution: loads SmolLM2-135M (the default model, from
//! the fixtures that `scripts/fetch-fixtures` downloads), runs one forward pass over a prompt and
//! prints the five most likely next tokens with their probabilities.
//!
//! `cargo run --release --example predict [-- "The capital of France is"]`

use anyhow::{Context, Result, anyhow};
use burn::tensor::activation::softmax;
use ferrovene_models::registry::DEFAULT_MODEL;
use ferrovene_models::{Cpu, Input, NoHooks, Transformer, forward, load};

fn main() -> Result<()> {
    let prompt = std::env::args().nth(1).unwrap_or_else(|| "The capital of France is".to_string());
    let device = Default::default();
    let loaded = load::<Cpu>(DEFAULT_MODEL, &device).context("the embedded model: run scripts/fetch-fixtures")?;
    let tokenizer = loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("{DEFAULT_MODEL} has no tokenizer"))?;
    let ids = tokenizer.encode(&prompt)?;
    anyhow::ensure!(!ids.is_empty(), "the prompt {prompt:?} tokenises to nothing");

    // The last position's hidden state through the model's head: logits over the vocabulary.
    let hidden = forward(&loaded.model, &Input::<Cpu>::from_ids(std::slice::from_ref(&ids), &device), &mut NoHooks);
    let last = hidden.slice([0..1, ids.len() - 1..ids.len()]);
    let logits = loaded.model.head(last).ok_or_else(|| anyhow!("an encoder has no next-token head"))?;
    let vocab = logits.dims()[2];
    let probabilities: Vec<f32> =
        softmax(logits.reshape([vocab]), 0).into_data().to_vec().map_err(|e| anyhow!("reading: {e:?}"))?;

    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| probabilities[b].total_cmp(&probabilities[a]));
    println!("{DEFAULT_MODEL}, {} prompt tokens: {prompt:?} →", ids.len());
    for &id in &order[..5] {
        println!("  {:>6.3}  {:?}", probabilities[id], tokenizer.decode(&[id as u32])?);
    }
    Ok(())
}
