//! Recipe files: where they are, reading them as TOML tables, `--set key=value` overrides on
//! those tables, and the value types several recipe kinds share ([`Layers`]). What each kind's
//! keys mean is [`crate::experiments::Recipe`]; the schema is in `recipes/README.md`.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use anyhow::{Context, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

/// Where recipes live: `$FERROVENE_RECIPES`, else `recipes/` in the working directory.
pub fn recipes_dir() -> PathBuf {
    std::env::var_os("FERROVENE_RECIPES").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("recipes"))
}

/// The recipe files in `dir` as `(name, path)`, sorted by name.
pub fn files(dir: &Path) -> Result<Vec<(String, PathBuf)>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing recipes in {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "toml") {
            out.push((stem(&path), path));
        }
    }
    out.sort();
    Ok(out)
}

/// A recipe's name: its file name without `.toml`.
pub fn stem(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default()
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
    let known: Vec<String> = files(&dir).map(|l| l.into_iter().map(|(n, _)| n).collect()).unwrap_or_default();
    bail!(
        "no recipe `{name}` in {} (recipes: {}); `trainer list` describes them",
        dir.display(),
        if known.is_empty() { "none".into() } else { known.join(", ") }
    )
}

/// A recipe file as a TOML table (before it is checked against its kind).
pub fn read_table(path: &Path) -> Result<toml::Table> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading recipe {}", path.display()))?;
    toml::from_str(&text).map_err(|e| anyhow!("recipe {}: {e}", path.display()))
}

/// One `--set key=value`: the value in TOML syntax (`0.05`, `"8.block_output"`, `[0, 6]`,
/// `{patience = 3}`); a bare word is taken as a string.
#[derive(Debug, Clone, PartialEq)]
pub struct Override {
    /// The recipe key.
    pub key: String,
    /// Its new value.
    pub value: toml::Value,
    /// How the user wrote it, for errors: `--set key=value`, or the flag (`--layers 4,4`).
    pub typed: String,
}

impl Override {
    /// An override from a key and a value built in code (`--seed`, `--layers`, …); errors show
    /// it as `--set key=value` unless [`Override::typed_as`] says otherwise.
    pub fn new(key: &str, value: impl Into<toml::Value>) -> Self {
        let value = value.into();
        Override { typed: format!("--set {key}={value}"), key: key.to_string(), value }
    }

    /// The same override, shown in errors as the user typed it (e.g. `--layers 4,4`).
    pub fn typed_as(self, typed: impl Into<String>) -> Self {
        Override { typed: typed.into(), ..self }
    }
}

impl FromStr for Override {
    type Err = anyhow::Error;

    fn from_str(set: &str) -> Result<Self> {
        let (key, value) = set.split_once('=').ok_or_else(|| anyhow!("--set `{set}`: write it as key=value"))?;
        let value = value.trim();
        let value = value.parse::<toml::Value>().unwrap_or_else(|_| toml::Value::String(value.to_string()));
        Ok(Override { key: key.trim().to_string(), value, typed: format!("--set {set}") })
    }
}

/// Applies overrides to a recipe's table. Keys the kind does not know are refused when the table
/// is read as a recipe, naming the key and the kind's keys.
pub fn apply(table: &mut toml::Table, overrides: &[Override]) {
    for o in overrides {
        table.insert(o.key.clone(), o.value.clone());
    }
}

/// Which layers a sweep or a per-layer experiment covers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Layers {
    /// These layers.
    List(Vec<usize>),
    /// `"all"`: every layer of the model.
    All(String),
}

/// The first name `names` lists twice, if any (a sweep axis runs each value once).
pub fn first_duplicate(names: &[String]) -> Option<&String> {
    names.iter().enumerate().find(|(i, n)| names[..*i].contains(n)).map(|(_, n)| n)
}

impl Layers {
    /// Checks the value without a model: a non-empty list, or the word `"all"`.
    pub fn check(&self) -> Result<()> {
        match self {
            Layers::List(v) if v.is_empty() => bail!("`layers` is empty"),
            Layers::List(v) => match v.iter().enumerate().find(|(i, l)| v[..*i].contains(l)) {
                Some((_, l)) => bail!("`layers` lists layer {l} twice: each layer is swept once"),
                None => Ok(()),
            },
            Layers::All(w) if w == "all" => Ok(()),
            Layers::All(w) => bail!("`layers` is a list of layers or \"all\", not {w:?}"),
        }
    }

    /// The layers for a model with `n` of them.
    pub fn resolve(&self, n: usize) -> Result<Vec<usize>> {
        match self {
            Layers::List(v) => {
                if let Some(&bad) = v.iter().find(|&&l| l >= n) {
                    bail!("layer {bad} does not exist: the model has {n} layers, 0 to {} (inclusive)", n - 1);
                }
                Ok(v.clone())
            }
            Layers::All(w) if w == "all" => Ok((0..n).collect()),
            Layers::All(w) => bail!("`layers` is a list of layers or \"all\", not {w:?}"),
        }
    }
}

/// Where a recipe's interventions go, as its keys say: `site = "…"` (one site) or
/// `sites = ["…", …]` (several, trained jointly). Recipes keep the keys as their own fields
/// (their tables refuse unknown keys, which serde's `flatten` would not) and read them here.
#[derive(Debug, Clone, Copy)]
pub struct SiteKeys<'a> {
    /// One site, `LAYER.COMPONENT`.
    pub site: Option<ferrovene_models::Site>,
    /// Several sites at once, in the order their parameters are drawn.
    pub sites: Option<&'a [ferrovene_models::Site]>,
}

impl SiteKeys<'_> {
    /// The sites, in order: exactly one of `site` and `sites`, each site once.
    pub fn list(&self) -> Result<Vec<ferrovene_models::Site>> {
        let sites = match (&self.site, &self.sites) {
            (Some(s), None) => vec![*s],
            (None, Some([])) => {
                bail!("`sites` is empty: list at least one site, e.g. [\"6.block_output\"]")
            }
            (None, Some(v)) => v.to_vec(),
            (Some(_), Some(_)) => bail!("give `site` (one) or `sites` (several), not both"),
            (None, None) => bail!("the recipe needs `site = \"LAYER.COMPONENT\"` or `sites = [\"…\", …]`"),
        };
        if let Some((i, s)) = sites.iter().enumerate().find(|(i, s)| sites[..*i].contains(s)) {
            bail!(
                "`sites` lists {s} twice (entries {} and {i}): each site once",
                sites[..i].iter().position(|x| x == s).unwrap_or(0)
            );
        }
        Ok(sites)
    }

    /// The sites as the recipe wrote them, for messages: `site = "…"` or `sites = […]`.
    pub fn describe(&self) -> String {
        match (&self.site, &self.sites) {
            (Some(s), _) => format!("`site = \"{s}\"`"),
            (None, Some(v)) => {
                format!("`sites = [{}]`", v.iter().map(|s| format!("\"{s}\"")).collect::<Vec<_>>().join(", "))
            }
            (None, None) => "no site".into(),
        }
    }
}
