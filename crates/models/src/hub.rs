//! Models from the Hugging Face hub (`org/name[@revision]`), through hf-hub's sync client, with
//! `HF_HOME`, `HF_ENDPOINT` and `HF_HUB_OFFLINE` honoured (hf-hub itself ignores the last: here,
//! offline means the local cache only, and a clear error when a file is not in it).
//!
//! hf-hub's client has no timeouts, so a server that accepts the connection and never answers
//! would hang a run forever: the requests run on a worker thread that reports every sign of
//! life (each request begun, each chunk received), and a download silent for longer than
//! `FERROVENE_HUB_TIMEOUT` seconds (default 60) is given up with an error naming the endpoint.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hf_hub::api::Progress;
use hf_hub::api::sync::{ApiBuilder, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{ModelError, Result};
use crate::weights::safetensors_folder::shard_names;

/// A hub model id with an optional revision (branch, tag or commit; default `main`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubId {
    /// `org/name`.
    pub repo: String,
    /// Revision.
    pub revision: String,
}

impl HubId {
    /// Parses `org/name` or `org/name@revision`; `None` if it does not look like a hub id.
    pub fn parse(spec: &str) -> Option<HubId> {
        let (repo, revision) = match spec.split_once('@') {
            Some((r, rev)) if !rev.is_empty() => (r, rev),
            Some(_) => return None,
            None => (spec, "main"),
        };
        let (org, name) = repo.split_once('/')?;
        let ok = |s: &str| !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        (ok(org) && ok(name)).then(|| HubId { repo: repo.to_string(), revision: revision.to_string() })
    }

    fn hf_repo(&self) -> Repo {
        Repo::with_revision(self.repo.clone(), RepoType::Model, self.revision.clone())
    }
}

impl std::fmt::Display for HubId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}@{}", self.repo, self.revision)
    }
}

/// Where and how to reach the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// Base URL (`HF_ENDPOINT`, default `https://huggingface.co`).
    pub endpoint: String,
    /// Cache root (`$HF_HOME/hub`, default `~/.cache/huggingface/hub`).
    pub cache_dir: PathBuf,
    /// Use the cache only (`HF_HUB_OFFLINE` = 1/true/yes/on).
    pub offline: bool,
    /// Show download progress bars.
    pub progress: bool,
    /// Give up on the hub after this long without a byte or an answer
    /// (`FERROVENE_HUB_TIMEOUT`, seconds; default 60).
    pub timeout: Duration,
}

/// `FERROVENE_HUB_TIMEOUT`'s default, in seconds.
pub const DEFAULT_TIMEOUT_S: u64 = 60;

impl HubConfig {
    /// From the environment, as the Python hub client reads it.
    pub fn from_env() -> Self {
        let endpoint = std::env::var("HF_ENDPOINT").unwrap_or_else(|_| "https://huggingface.co".into());
        let cache_dir = Cache::from_env().path().clone();
        let offline = std::env::var("HF_HUB_OFFLINE")
            .map(|v| matches!(v.to_ascii_lowercase().as_str(), "1" | "true" | "yes" | "on"))
            .unwrap_or(false);
        let timeout = std::env::var("FERROVENE_HUB_TIMEOUT")
            .ok()
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|s| s.is_finite() && *s > 0.0);
        let timeout = Duration::from_secs_f64(timeout.unwrap_or(DEFAULT_TIMEOUT_S as f64));
        HubConfig {
            endpoint,
            cache_dir,
            offline,
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            timeout,
        }
    }
}

/// The files of a model folder on the hub that ferrovene reads.
const CONFIG: &str = "config.json";
const SINGLE: &str = "model.safetensors";
const INDEX: &str = "model.safetensors.index.json";
const TOKENIZER: &str = "tokenizer.json";

/// Fetches (or finds in the cache) a hub model's config, safetensors weights and tokenizer, and
/// returns the local snapshot folder that holds them, with the resolved commit when known.
pub fn fetch(id: &HubId, cfg: &HubConfig) -> Result<PathBuf> {
    let err = |reason: String| ModelError::Hub { repo: id.to_string(), reason };
    if cfg.offline {
        let cache = Cache::new(cfg.cache_dir.clone()).repo(id.hf_repo());
        let missing = |file: &str| {
            err(format!(
                "HF_HUB_OFFLINE is set and `{file}` is not in the cache at {}; unset HF_HUB_OFFLINE to download it, \
                 or pass a local folder or .gguf file instead",
                cfg.cache_dir.display()
            ))
        };
        let config = cache.get(CONFIG).ok_or_else(|| missing(CONFIG))?;
        if cache.get(SINGLE).is_none() {
            let index = cache.get(INDEX).ok_or_else(|| missing(SINGLE))?;
            for shard in shard_names(&index)? {
                cache.get(&shard).ok_or_else(|| missing(&shard))?;
            }
        }
        return snapshot_dir(&config);
    }
    let worker = (id.clone(), cfg.clone());
    watched(id, cfg, move |life| fetch_online(&worker.0, &worker.1, life))
}

/// Runs `job` (hub requests) on a worker thread, giving up with an error naming the endpoint when
/// the hub stays silent longer than the timeout: hf-hub's client has none of its own.
fn watched<T: Send + 'static>(
    id: &HubId,
    cfg: &HubConfig,
    job: impl FnOnce(&Life) -> Result<T> + Send + 'static,
) -> Result<T> {
    let err = |reason: String| ModelError::Hub { repo: id.to_string(), reason };
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let life = Life::new();
    let worker_life = life.clone();
    std::thread::spawn(move || {
        let _ = done_tx.send(job(&worker_life));
    });
    loop {
        match done_rx.recv_timeout(Duration::from_millis(200)) {
            Ok(result) => return result,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                return Err(err("the download thread stopped without a result".into()));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if life.silent_for() > cfg.timeout => {
                // The worker stays blocked on its socket; the process goes on (or exits) without it.
                return Err(err(format!(
                    "no answer from {} for {:.0} s; check the network and HF_ENDPOINT, raise FERROVENE_HUB_TIMEOUT (seconds, now {:.0}), \
                     or set HF_HUB_OFFLINE=1 to use the cache",
                    cfg.endpoint,
                    life.silent_for().as_secs_f64(),
                    cfg.timeout.as_secs_f64()
                )));
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
    }
}

/// Fetches (or finds in the cache) `first` of a hub repo, then every file `then` names from
/// it (e.g. a pyvene folder's `config.json`, then the `intkey_<key>.bin` its `sorted_keys`
/// name); returns the local snapshot folder. Offline, everything comes from the cache.
pub fn fetch_files(
    id: &HubId,
    cfg: &HubConfig,
    first: &str,
    then: fn(&std::path::Path) -> std::result::Result<Vec<String>, String>,
) -> Result<PathBuf> {
    let err = |reason: String| ModelError::Hub { repo: id.to_string(), reason };
    if cfg.offline {
        let cache = Cache::new(cfg.cache_dir.clone()).repo(id.hf_repo());
        let missing = |file: &str| {
            err(format!(
                "HF_HUB_OFFLINE is set and `{file}` is not in the cache at {}; unset HF_HUB_OFFLINE to download it",
                cfg.cache_dir.display()
            ))
        };
        let head = cache.get(first).ok_or_else(|| missing(first))?;
        for file in then(&head).map_err(&err)? {
            cache.get(&file).ok_or_else(|| missing(&file))?;
        }
        return snapshot_dir(&head);
    }
    let (worker_id, worker_cfg, first) = (id.clone(), cfg.clone(), first.to_string());
    watched(id, cfg, move |life| {
        let (id, cfg) = (&worker_id, &worker_cfg);
        let err = |reason: String| ModelError::Hub { repo: id.to_string(), reason };
        let (repo, cache) = client(id, cfg)?;
        let get = |file: &str| {
            if let Some(path) = cache.get(file) {
                return Ok(path);
            }
            // hf-hub puts the name into the URL as it is, where `#` (in every pyvene key) would
            // start a fragment: it is asked for encoded, and the file is then given its own
            // name beside the encoded one in the snapshot.
            let asked = file.replace('%', "%25").replace('#', "%23");
            let path = get_watched(&repo, &cache, &asked, cfg, life).map_err(|e| {
                err(format!(
                    "downloading `{file}` from {}: {e}; check the id, the file name and HF_ENDPOINT",
                    cfg.endpoint
                ))
            })?;
            if asked == file {
                return Ok(path);
            }
            let named = path.with_file_name(file);
            std::fs::copy(&path, &named).map_err(|e| err(format!("naming `{file}` in the cache: {e}")))?;
            Ok(named)
        };
        let head = get(&first)?;
        for file in then(&head).map_err(&err)? {
            get(&file)?;
        }
        snapshot_dir(&head)
    })
}

/// When the hub last showed a sign of life, shared between the worker and the watchdog.
#[derive(Clone)]
struct Life {
    start: Instant,
    last_ms: Arc<AtomicU64>,
}

impl Life {
    fn new() -> Self {
        Life { start: Instant::now(), last_ms: Arc::new(AtomicU64::new(0)) }
    }
    fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::SeqCst);
    }
    fn silent_for(&self) -> Duration {
        self.start.elapsed().saturating_sub(Duration::from_millis(self.last_ms.load(Ordering::SeqCst)))
    }
}

/// A download's progress: every chunk is a sign of life; the bar is drawn when asked for.
struct Watched {
    life: Life,
    bar: Option<indicatif::ProgressBar>,
}

impl Progress for Watched {
    fn init(&mut self, size: usize, filename: &str) {
        self.life.touch();
        if let Some(b) = &mut self.bar {
            b.init(size, filename);
        }
    }
    fn update(&mut self, size: usize) {
        self.life.touch();
        if let Some(b) = &mut self.bar {
            b.update(size);
        }
    }
    fn finish(&mut self) {
        self.life.touch();
        if let Some(b) = &mut self.bar {
            b.finish();
        }
    }
}

/// `file` of `repo` from the cache, else downloaded with `life` told of every chunk.
fn get_watched(
    repo: &ApiRepo,
    cache: &hf_hub::CacheRepo,
    file: &str,
    cfg: &HubConfig,
    life: &Life,
) -> std::result::Result<PathBuf, hf_hub::api::sync::ApiError> {
    if let Some(path) = cache.get(file) {
        return Ok(path);
    }
    life.touch();
    repo.download_with_progress(
        file,
        Watched { life: life.clone(), bar: cfg.progress.then(indicatif::ProgressBar::no_length) },
    )
}

/// hf-hub's client for `id` at the configured endpoint and cache, and the cache's view of it.
fn client(id: &HubId, cfg: &HubConfig) -> Result<(ApiRepo, hf_hub::CacheRepo)> {
    let api = ApiBuilder::new()
        .with_endpoint(cfg.endpoint.clone())
        .with_cache_dir(cfg.cache_dir.clone())
        .with_progress(false)
        .build()
        .map_err(|e| ModelError::Hub { repo: id.to_string(), reason: format!("cannot start the hub client: {e}") })?;
    Ok((api.repo(id.hf_repo()), Cache::new(cfg.cache_dir.clone()).repo(id.hf_repo())))
}

/// The online half of [`fetch`], on the worker thread.
fn fetch_online(id: &HubId, cfg: &HubConfig, life: &Life) -> Result<PathBuf> {
    let err = |reason: String| ModelError::Hub { repo: id.to_string(), reason };
    let (repo, cache) = client(id, cfg)?;
    life.touch();
    let info = repo.info().map_err(|e| {
        err(format!("cannot list the repository at {} ({e}); check the id and revision, HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use the cache", cfg.endpoint))
    })?;
    let files: Vec<&str> = info.siblings.iter().map(|s| s.rfilename.as_str()).collect();
    let get =
        |file: &str| get_watched(&repo, &cache, file, cfg, life).map_err(|e| err(format!("downloading `{file}`: {e}")));
    if !files.contains(&CONFIG) {
        return Err(err(format!(
            "no `{CONFIG}` in the repository (files: {}); ferrovene loads Hugging Face model folders",
            files.join(", ")
        )));
    }
    let config = get(CONFIG)?;
    if files.contains(&SINGLE) {
        get(SINGLE)?;
    } else if files.contains(&INDEX) {
        let index = get(INDEX)?;
        for shard in shard_names(&index)? {
            get(&shard)?;
        }
    } else {
        return Err(err(format!("no `{SINGLE}` or `{INDEX}` in the repository; only safetensors weights are loaded")));
    }
    if files.contains(&TOKENIZER) {
        get(TOKENIZER)?;
    }
    snapshot_dir(&config)
}

fn snapshot_dir(config: &std::path::Path) -> Result<PathBuf> {
    config
        .parent()
        .map(|p| p.to_path_buf())
        .ok_or_else(|| ModelError::corrupt(config, "cached file has no parent folder"))
}
