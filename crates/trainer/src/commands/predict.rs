//! `trainer predict`: the model's next-token distribution after a prompt.

use anyhow::{Context, Result, anyhow};
use burn::tensor::{activation::softmax, backend::Backend};
use ferrovene_models::{Input, LoadedModel, NoHooks, Transformer, forward};
use serde_json::json;

use crate::device::{OnBackend, load_model};

/// What to predict, from the command line.
pub struct Predict {
    /// Model spec (registry name, path, or hub id).
    pub model: String,
    /// The prompt.
    pub prompt: String,
    /// How many of the most likely next tokens to show.
    pub top: usize,
    /// Print JSON instead of a table.
    pub json: bool,
}

/// One candidate next token.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Its id.
    pub id: usize,
    /// Its text.
    pub token: String,
    /// Its probability.
    pub p: f32,
    /// Its logit.
    pub logit: f32,
}

/// A model's next-token distribution after a prompt: the prompt's ids and the most likely tokens.
#[derive(Debug, Clone, PartialEq)]
pub struct Prediction {
    /// The prompt's token ids.
    pub ids: Vec<u32>,
    /// The `top` most likely next tokens, most likely first.
    pub top: Vec<Candidate>,
}

/// The `top` most likely next tokens of `loaded` after `prompt` (what `trainer predict` shows,
/// and the Python package's `Model.predict`).
pub fn next_tokens<B: Backend>(
    loaded: &LoadedModel<B>,
    prompt: &str,
    top: usize,
    device: &B::Device,
) -> Result<Prediction> {
    let tok = loaded
        .tokenizer
        .as_ref()
        .ok_or_else(|| anyhow!("model `{}` has no tokenizer (no tokenizer.json)", loaded.spec))?;
    let ids = tok.encode(prompt)?;
    if ids.is_empty() {
        return Err(anyhow!("the prompt {prompt:?} tokenizes to nothing; give some text"));
    }
    let input = Input::<B>::from_ids(std::slice::from_ref(&ids), device);
    let hidden = forward(&loaded.model, &input, &mut NoHooks);
    let seq = ids.len();
    let last = hidden.slice([0..1, seq - 1..seq]);
    let logits = loaded.model.head(last).ok_or_else(|| {
        anyhow!("model `{}` ({}) is an encoder: it has no next-token head", loaded.spec, loaded.model.arch())
    })?;
    let logits: Vec<f32> = logits.into_data().to_vec::<f32>().map_err(|e| anyhow!("reading logits: {e:?}"))?;
    let probs: Vec<f32> = softmax(burn::tensor::Tensor::<B, 1>::from_floats(logits.as_slice(), device), 0)
        .into_data()
        .to_vec::<f32>()
        .map_err(|e| anyhow!("reading probabilities: {e:?}"))?;
    let top = crate::generate::top_k(&logits, top)
        .into_iter()
        .map(|id| Ok(Candidate { id, token: tok.decode(&[id as u32])?, p: probs[id], logit: logits[id] }))
        .collect::<Result<_>>()?;
    Ok(Prediction { ids, top })
}

impl OnBackend for Predict {
    type Output = ();

    fn run<B: Backend>(self, device: B::Device) -> Result<()> {
        let loaded =
            load_model::<B>(&self.model, &device).with_context(|| format!("loading model `{}`", self.model))?;
        let Prediction { ids, top } = next_tokens(&loaded, &self.prompt, self.top, &device)?;
        if self.json {
            let out = json!({
                "model": loaded.spec,
                "path": loaded.path,
                "prompt": self.prompt,
                "ids": ids,
                "top": top.iter().map(|c| json!({"id": c.id, "token": c.token, "p": c.p, "logit": c.logit})).collect::<Vec<_>>(),
            });
            println!("{}", serde_json::to_string_pretty(&out)?);
        } else {
            println!("{} · {} prompt tokens · next token:", loaded.spec, ids.len());
            println!("{:>4}  {:>7}  {:>8}  {:>8}  token", "rank", "id", "p", "logit");
            for (rank, c) in top.iter().enumerate() {
                println!("{:>4}  {:>7}  {:>8.5}  {:>8.3}  {:?}", rank + 1, c.id, c.p, c.logit, c.token);
            }
        }
        Ok(())
    }
}
