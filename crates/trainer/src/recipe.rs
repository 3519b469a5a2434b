//! Recipes: TOML files in `recipes/` that say what to train (schema in `recipes/README.md`), and
//! running one: train, evaluate on held-out pairs with controls, and leave an export, a report
//! and the recipe as run in `runs/<recipe>/<timestamp>/`.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use burn::tensor::backend::AutodiffBackend;
use ferrovene_data::batch::split_by_group;
use ferrovene_data::{load_jsonl, tokenize, OnError, TokenizedExample};
use ferrovene_interventions::das::DasLowRank;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::{Intervention, Orthogonal};
use ferrovene_models::rng::Rng;
use ferrovene_models::{load, Site, Transformer};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::das::{evaluate, prepare, train, TrainConfig};

/// A recipe. Unknown keys are errors that name them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    /// One line for `trainer list`.
    pub description: String,
    /// What to train; `das` (low-rank DAS at one site) is the one kind so far.
    pub kind: String,
    /// Model spec (registry name, folder, .gguf, hub id).
    pub model: String,
    /// Pair file (JSONL), relative to the working directory.
    pub pairs: PathBuf,
    /// Site, `LAYER.COMPONENT`.
    pub site: String,
    /// Rank of the DAS rotation.
    pub rank: usize,
    /// Pairs per batch.
    pub batch_size: usize,
    /// Passes over the training pairs.
    pub epochs: usize,
    /// Peak learning rate (AdamW).
    pub lr: f64,
    /// Share of steps for the linear warmup (then linear decay).
    pub warmup: f64,
    /// AdamW weight decay.
    pub weight_decay: f64,
    /// Seed of the initialisation and the split.
    pub seed: u64,
    /// Share of pairs held out for evaluation.
    pub dev_fraction: f64,
    /// Metadata field whose values never straddle the split (e.g. `base`, `template`).
    pub split_by: String,
}

impl Recipe {
    /// Reads a recipe file; errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading recipe {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("recipe {}", path.display()))
    }

    /// Parses a recipe.
    pub fn from_toml(text: &str) -> Result<Self> {
        let recipe: Recipe = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
        if recipe.kind != "das" {
            bail!("kind `{}` is not supported yet (supported: das)", recipe.kind);
        }
        Ok(recipe)
    }

    /// Applies `key=value` overrides (values in TOML syntax: `lr=0.05`, `site="8.block_output"`;
    /// a bare word is taken as a string).
    pub fn with_overrides(&self, sets: &[String]) -> Result<Self> {
        let mut table = toml::Table::try_from(self).map_err(|e| anyhow!("{e}"))?;
        for set in sets {
            let (key, value) = set.split_once('=').ok_or_else(|| anyhow!("--set `{set}`: write it as key=value"))?;
            let key = key.trim();
            if !table.contains_key(key) {
                bail!("--set `{set}`: unknown recipe key `{key}` (keys: {})", table.keys().cloned().collect::<Vec<_>>().join(", "));
            }
            let parsed: toml::Value = toml::from_str::<toml::Table>(&format!("v = {}", value.trim()))
                .ok()
                .and_then(|t| t.get("v").cloned())
                .unwrap_or_else(|| toml::Value::String(value.trim().to_string()));
            table.insert(key.to_string(), parsed);
        }
        Self::from_toml(&toml::to_string(&table)?)
    }
}

/// Where recipes live: `$FERROVENE_RECIPES`, else `recipes/` in the working directory.
pub fn recipes_dir() -> PathBuf {
    std::env::var_os("FERROVENE_RECIPES").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("recipes"))
}

/// The recipes in `dir`, with their descriptions, sorted by name.
pub fn list(dir: &Path) -> Result<Vec<(String, Result<String>)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing recipes in {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            let name = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            out.push((name, Recipe::from_file(&path).map(|r| r.description)));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Finds a recipe by name (in [`recipes_dir`]) or path.
pub fn find(name: &str) -> Result<PathBuf> {
    let as_path = PathBuf::from(name);
    if as_path.extension().is_some_and(|e| e == "toml") && as_path.exists() {
        return Ok(as_path);
    }
    let dir = recipes_dir();
    let path = dir.join(format!("{name}.toml"));
    if path.exists() {
        return Ok(path);
    }
    let known: Vec<String> = list(&dir).map(|l| l.into_iter().map(|(n, _)| n).collect()).unwrap_or_default();
    bail!("no recipe `{name}` in {} (recipes: {}); `trainer list` describes them", dir.display(), if known.is_empty() { "none".into() } else { known.join(", ") })
}

/// FNV-1a of a file's bytes, as hex: the data hash in reports.
fn file_hash(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let h = bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ *b as u64).wrapping_mul(0x100_0000_01b3));
    Ok(format!("{h:016x}"))
}

/// `YYYYMMDD-HHMMSS` (UTC) for run folders.
pub fn timestamp() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // civil-from-days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!("{y:04}{m:02}{d:02}-{:02}{:02}{:02}", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Runs a recipe on backend `B`; returns the run folder.
pub fn run<B: AutodiffBackend>(name: &str, recipe: &Recipe, out_root: &Path, device: &B::Device) -> Result<PathBuf> {
    let started = Instant::now();
    let site: Site = recipe.site.parse()?;
    let loaded = load::<B>(&recipe.model, device).with_context(|| format!("loading model `{}`", recipe.model))?;
    let model = &loaded.model;
    let info = model.site_info(site)?;
    let tok = loaded.tokenizer.as_ref().ok_or_else(|| anyhow!("model `{}` has no tokenizer", recipe.model))?;
    let file = load_jsonl(&recipe.pairs, OnError::Stop)?;
    let examples: Vec<TokenizedExample> = file.examples.iter().map(|(l, e)| tokenize(e, tok, &file.path, *l)).collect::<std::result::Result<_, _>>()?;
    let groups: Vec<String> = file
        .examples
        .iter()
        .map(|(l, e)| {
            e.meta().get(&recipe.split_by).map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_string)).ok_or_else(|| {
                anyhow!("{}:{l}: no metadata field `{}` (the recipe's split_by)", file.path.display(), recipe.split_by)
            })
        })
        .collect::<Result<_>>()?;
    let (train_idx, dev_idx) = split_by_group(&groups, recipe.dev_fraction, recipe.seed);
    if train_idx.is_empty() || dev_idx.is_empty() {
        bail!("the split left {} training and {} held-out pairs; adjust dev_fraction or split_by", train_idx.len(), dev_idx.len());
    }
    let pick = |idx: &[usize]| idx.iter().map(|&i| &examples[i]).collect::<Vec<_>>();
    let train_batches = prepare(model, site, &pick(&train_idx), tok.pad_id, recipe.batch_size, device)?;
    let dev_batches = prepare(model, site, &pick(&dev_idx), tok.pad_id, recipe.batch_size, device)?;
    let prepared = started.elapsed().as_secs_f64();

    let mut rng = Rng::new(recipe.seed);
    let iv = Intervention::DasLowRank(DasLowRank { rotation: Orthogonal::random(recipe.rank, info.width, &mut rng, device) });
    let cfg = TrainConfig { epochs: recipe.epochs, lr: recipe.lr, warmup: recipe.warmup, weight_decay: recipe.weight_decay };
    let (iv, losses) = train(model, &train_batches, iv, cfg)?;
    let trained = started.elapsed().as_secs_f64();

    let with = evaluate(model, &dev_batches, Some(&iv))?;
    let none = evaluate(model, &dev_batches, None)?;
    let random = evaluate(model, &dev_batches, Some(&iv.with_random_rotation(&mut Rng::new(recipe.seed ^ 1)).expect("DAS has a rotation")))?;

    let dir = out_root.join(name).join(timestamp());
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let metrics = |m: &crate::das::Metrics| json!({"iia": m.iia, "label_beats_base": m.label_beats_base, "base_label_accuracy": m.base_label_accuracy, "n": m.n});
    let report = json!({
        "recipe": name, "config": recipe, "seed": recipe.seed,
        "data": {"pairs": recipe.pairs, "hash_fnv1a64": file_hash(&recipe.pairs)?, "train": train_idx.len(), "dev": dev_idx.len()},
        "metrics": {"dev": metrics(&with), "controls": {"no_intervention": metrics(&none), "random_rotation": metrics(&random)}},
        "loss": {"first": losses.first(), "last": losses.last(), "steps": losses.len()},
        "timings_s": {"prepare": prepared, "train": trained - prepared, "total": started.elapsed().as_secs_f64()},
        "machine": {"os": std::env::consts::OS, "arch": std::env::consts::ARCH, "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)},
        "versions": {"ferrovene": env!("CARGO_PKG_VERSION"), "burn": "0.21.0"},
        "model": {"spec": recipe.model, "path": loaded.path, "revision": loaded.revision},
    });
    let config = ExportConfig {
        format: 0, kind: String::new(), width: 0, hyper: Default::default(),
        placement: PlacementConfig { sites: vec![recipe.site.clone()], positions: "from the pair file".into(), site_width: info.width, dims: vec![], composition: Default::default() },
        model: ModelConfig { id: recipe.model.clone(), revision: loaded.revision.clone(), arch: model.arch().into(), hidden_size: model.width() },
        training: report["metrics"].clone(),
    };
    export::save(&iv, config, &dir.join("intervention.safetensors"))?;
    std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(&report)?)?;
    std::fs::write(dir.join("recipe.toml"), toml::to_string(recipe)?)?;
    // The held-out pairs, as they were in the pair file, so `trainer eval` can reproduce the numbers.
    let source_text = std::fs::read_to_string(&recipe.pairs)?;
    let source_lines: Vec<&str> = source_text.lines().collect();
    let dev_lines: Vec<&str> = dev_idx.iter().map(|&i| source_lines[file.examples[i].0 - 1]).collect();
    std::fs::write(dir.join("dev.jsonl"), dev_lines.join("\n") + "\n")?;
    println!("{name}: dev IIA {:.3} (no intervention {:.3}, random rotation {:.3}) on {} held-out pairs; p(label) > p(base) {}",
        with.iia, none.iia, random.iia, with.n, with.label_beats_base.map_or("-".into(), |v| format!("{v:.3}")));
    println!("run folder: {}", dir.display());
    Ok(dir)
}
