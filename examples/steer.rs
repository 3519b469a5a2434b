//! A steering vector applied during generation: the difference of the mean activations at
//! `12.block_output` (each text's last token) between texts about weddings and texts about
//! other things, added with scale α at every token while the embedded model continues a prompt.
//! Prints the greedy continuation without the vector and with it.
//!
//! `cargo run --release --example steer [-- α]` (α defaults to 0.5: at 0.5 the continuation turns to marriage; above 2 it breaks down)

use anyhow::{Context, Result, anyhow};
use ferrovene_interventions::Intervention;
use ferrovene_interventions::steering::Steering;
use ferrovene_models::registry::DEFAULT_MODEL;
use ferrovene_models::{Component, Cpu, Site, Transformer, load};
use ferrovene_trainer::commands::steer::last_token_activations;
use ferrovene_trainer::generate::{Decoding, Steer, generate};

/// The default scale of the vector.
const ALPHA: f64 = 0.5;

const WEDDINGS: [&str; 6] = [
    "The bride and groom exchanged their wedding vows",
    "Guests threw rice as the newlyweds left the church",
    "She tried on her wedding dress before the ceremony",
    "The wedding cake had five tiers and white roses",
    "He proposed, and they set the date for the wedding",
    "The best man gave a toast at the reception",
];
const OTHER: [&str; 6] = [
    "The train left the station ten minutes late",
    "He fixed the leaking pipe under the kitchen sink",
    "The committee reviewed the quarterly budget",
    "Rain fell on the empty parking lot all night",
    "She sorted the files on her desk by date",
    "The engine needs new spark plugs and oil",
];

fn main() -> Result<()> {
    let alpha: f64 = match std::env::args().nth(1) {
        Some(a) => a.parse().with_context(|| format!("α: {a:?} is not a number"))?,
        None => ALPHA,
    };
    let device = Default::default();
    let loaded = load::<Cpu>(DEFAULT_MODEL, &device).context("the embedded model: run scripts/fetch-fixtures")?;
    let (model, tokenizer) = (&loaded.model, loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("no tokenizer"))?);
    let site = Site::new(12, Component::BlockOutput);
    let texts = |t: &[&str]| t.iter().map(|s| s.to_string()).collect::<Vec<_>>();

    // v = mean(weddings) − mean(other) at the site, applied as b + α·v.
    let positive = last_token_activations(model, tokenizer, &texts(&WEDDINGS), site, "weddings", &device)?;
    let negative = last_token_activations(model, tokenizer, &texts(&OTHER), site, "other", &device)?;
    let steering = Intervention::Steering(Steering::mean_difference(positive, negative, alpha));

    let prompt = tokenizer.encode("I went up to the house and")?;
    let decoding = Decoding::greedy(20);
    let steer = Steer {
        intervention: &steering,
        site: model.site_info(site)?,
        positions: (0..prompt.len()).collect(),
        sources: Vec::new(),
        dims: Vec::new(),
        every_token: true,
    };
    let eos = tokenizer.eos_id;
    let plain = generate(model, &prompt, None, &decoding, eos, &device)?;
    let steered = generate(model, &prompt, Some(&steer), &decoding, eos, &device)?;
    println!("prompt:            {:?}", tokenizer.decode(&prompt)?);
    println!("without steering:  {:?}", tokenizer.decode(&plain)?);
    println!("with α = {alpha} at {site}: {:?}", tokenizer.decode(&steered)?);
    Ok(())
}
