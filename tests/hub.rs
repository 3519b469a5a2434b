//! Hub loading against a loopback HTTP server, started here, that serves the tiny GPT-2 in the
//! hub's URL layout (`/api/models/{repo}/revision/{rev}`, `/{repo}/resolve/{rev}/{file}` with
//! `ETag`, `X-Repo-Commit` and `Content-Range` on ranged replies); offline mode; env variables.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::*;
use ferrovene_models::hub::{HubConfig, HubId};
use ferrovene_models::load_with_hub;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Serves `files` for any repo and revision; counts file downloads.
fn start_server(files: HashMap<String, Vec<u8>>) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let files = Arc::new(files);
    let h = hits.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let files = files.clone();
            let hits = h.clone();
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
                let mut range = None;
                loop {
                    let mut h = String::new();
                    if reader.read_line(&mut h).unwrap() == 0 || h == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = h.split_once(':')
                        && k.eq_ignore_ascii_case("range")
                    {
                        range = Some(v.trim().trim_start_matches("bytes=").to_string());
                    }
                }
                let reply = |stream: &mut std::net::TcpStream, status: &str, headers: Vec<String>, body: &[u8]| {
                    let mut head =
                        format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
                    for h in headers {
                        head.push_str(&h);
                        head.push_str("\r\n");
                    }
                    head.push_str("\r\n");
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(body);
                };
                if path.starts_with("/api/models/") {
                    let mut names: Vec<&String> = files.keys().collect();
                    names.sort();
                    let siblings: Vec<_> = names.iter().map(|n| serde_json::json!({"rfilename": n})).collect();
                    let body = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
                    reply(&mut stream, "200 OK", vec!["Content-Type: application/json".into()], body.as_bytes());
                    return;
                }
                // /{org}/{name}/resolve/{rev}/{file}
                // As real servers do, the path is percent-decoded (`%23` is `#`).
                let file = percent_decode(path.splitn(6, '/').nth(5).unwrap_or(""));
                let Some(data) = files.get(&file) else {
                    reply(&mut stream, "404 Not Found", vec!["X-Error-Code: EntryNotFound".into()], b"not found");
                    return;
                };
                let size = data.len();
                let (start, end) = match range.as_deref().and_then(|r| r.split_once('-')) {
                    Some((a, b)) => (
                        a.parse::<usize>().unwrap_or(0),
                        b.parse::<usize>().map(|e| e.min(size - 1)).unwrap_or(size - 1),
                    ),
                    None => (0, size - 1),
                };
                if range.is_some() && start > 0 || end == size - 1 {
                    hits.fetch_add(1, Ordering::SeqCst); // a download of (the rest of) the file
                }
                let headers = vec![
                    format!("ETag: \"etag-{file}-{size}\""),
                    format!("X-Repo-Commit: {COMMIT}"),
                    format!("Content-Range: bytes {start}-{end}/{size}"),
                ];
                let status = if range.is_some() { "206 Partial Content" } else { "200 OK" };
                reply(&mut stream, status, headers, &data[start..=end]);
            });
        }
    });
    (addr, hits)
}

fn tiny_gpt2_files() -> HashMap<String, Vec<u8>> {
    let dir = golden("tiny/gpt2");
    ["config.json", "model.safetensors"].iter().map(|f| (f.to_string(), std::fs::read(dir.join(f)).unwrap())).collect()
}

fn tiny_logits(loaded: &ferrovene_models::LoadedModel<B>) -> Vec<f32> {
    logits_of(&loaded.model, &reference_ids(&read_st(&golden("tiny/gpt2/reference.safetensors"))))
}

#[test]
fn hub_id_parsing() {
    assert_eq!(
        HubId::parse("EleutherAI/pythia-1.4b"),
        Some(HubId { repo: "EleutherAI/pythia-1.4b".into(), revision: "main".into() })
    );
    assert_eq!(HubId::parse("org/name@v1.0").unwrap().revision, "v1.0");
    assert_eq!(HubId::parse("smollm2-135m"), None);
    assert_eq!(HubId::parse("org/name@"), None);
    assert_eq!(HubId::parse("a/b/c"), None);
}

#[test]
fn loads_from_the_hub_then_from_the_cache_offline() {
    let (endpoint, hits) = start_server(tiny_gpt2_files());
    let cache = temp_dir("hub-cache");
    let online = HubConfig {
        endpoint: endpoint.clone(),
        cache_dir: cache.clone(),
        offline: false,
        progress: false,
        timeout: std::time::Duration::from_secs(30),
    };
    let loaded = load_with_hub::<B>("tiny-org/tiny-gpt2@main", &online, &Default::default()).expect("hub load");
    let reference = read_st(&golden("tiny/gpt2/reference.safetensors"));
    assert!(max_abs_diff(&tiny_logits(&loaded), &reference.get("logits").0) < 1e-5);
    assert_eq!(loaded.revision.as_deref(), Some(COMMIT), "the snapshot is the served commit");
    assert!(loaded.path.starts_with(&cache), "files are in the given cache");
    let downloads = hits.load(Ordering::SeqCst);
    assert_eq!(downloads, 2, "config.json and model.safetensors downloaded once each");

    // Online again: everything comes from the cache.
    load_with_hub::<B>("tiny-org/tiny-gpt2", &online, &Default::default()).expect("cached load");
    assert_eq!(hits.load(Ordering::SeqCst), downloads, "a second load downloads nothing");

    // Offline with the server gone from the picture (wrong endpoint): the cache alone.
    let offline = HubConfig {
        endpoint: "http://127.0.0.1:9".into(),
        cache_dir: cache,
        offline: true,
        progress: false,
        timeout: std::time::Duration::from_secs(30),
    };
    let again =
        load_with_hub::<B>("tiny-org/tiny-gpt2", &offline, &Default::default()).expect("offline load from cache");
    assert!(tiny_logits(&again) == tiny_logits(&loaded));
}

#[test]
fn offline_with_an_empty_cache_fails_clearly() {
    let cache = temp_dir("hub-empty");
    let offline = HubConfig {
        endpoint: "http://127.0.0.1:9".into(),
        cache_dir: cache.clone(),
        offline: true,
        progress: false,
        timeout: std::time::Duration::from_secs(30),
    };
    let err = load_with_hub::<B>("tiny-org/tiny-gpt2", &offline, &Default::default()).unwrap_err().to_string();
    assert!(
        err.contains("HF_HUB_OFFLINE") && err.contains("config.json") && err.contains("tiny-org/tiny-gpt2@main"),
        "{err}"
    );
    assert!(err.contains(&cache.display().to_string()), "names the cache: {err}");
}

#[test]
fn a_repository_without_weights_is_refused() {
    let mut files = tiny_gpt2_files();
    files.remove("model.safetensors");
    let (endpoint, _) = start_server(files);
    let cfg = HubConfig {
        endpoint,
        cache_dir: temp_dir("hub-noweights"),
        offline: false,
        progress: false,
        timeout: std::time::Duration::from_secs(30),
    };
    let err = load_with_hub::<B>("tiny-org/no-weights", &cfg, &Default::default()).unwrap_err().to_string();
    assert!(err.contains("model.safetensors") && err.contains("tiny-org/no-weights"), "{err}");
}

#[test]
fn environment_variables_are_honoured() {
    // The only test in this binary that reads the environment.
    let (endpoint, _) = start_server(tiny_gpt2_files());
    let home = temp_dir("hf-home");
    unsafe {
        std::env::set_var("HF_ENDPOINT", &endpoint);
        std::env::set_var("HF_HOME", &home);
        std::env::set_var("HF_HUB_OFFLINE", "1");
    }
    let err = ferrovene_models::load::<B>("env-org/tiny", &Default::default()).unwrap_err().to_string();
    assert!(err.contains("HF_HUB_OFFLINE"), "offline from the environment: {err}");
    unsafe { std::env::set_var("HF_HUB_OFFLINE", "0") };
    let loaded = ferrovene_models::load::<B>("env-org/tiny", &Default::default()).expect("load via HF_ENDPOINT");
    assert!(loaded.path.starts_with(home.join("hub")), "cache under HF_HOME/hub: {}", loaded.path.display());
}

/// A server that accepts the connection and never answers: the fetch gives up after the
/// timeout with an error naming the endpoint and the ways out, instead of hanging.
#[test]
fn a_silent_endpoint_times_out_with_a_clear_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for conn in listener.incoming() {
            held.push(conn); // keep it open, say nothing
        }
    });
    let cfg = HubConfig {
        endpoint: endpoint.clone(),
        cache_dir: temp_dir("hub-silent"),
        offline: false,
        progress: false,
        timeout: std::time::Duration::from_secs(1),
    };
    let started = std::time::Instant::now();
    let err = ferrovene_models::hub::fetch(&HubId::parse("silent-org/model").unwrap(), &cfg).unwrap_err().to_string();
    let waited = started.elapsed().as_secs_f64();
    assert!((1.0..10.0).contains(&waited), "gave up after {waited:.1} s");
    assert!(
        err.contains(&endpoint)
            && err.contains("no answer")
            && err.contains("HF_HUB_OFFLINE=1")
            && err.contains("FERROVENE_HUB_TIMEOUT"),
        "{err}"
    );
}

/// What the fuzzing server answers: the repository listing's body, and the `ETag`,
/// `X-Repo-Commit` and `Content-Range` values and body of every file reply.
#[derive(Clone, Default)]
struct Replies {
    listing: Vec<u8>,
    etag: String,
    commit: String,
    range: String,
    file: Vec<u8>,
}

/// A server that answers every request from the shared `Replies`.
fn start_fuzz_server(replies: Arc<std::sync::Mutex<Replies>>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let r = replies.lock().unwrap().clone();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (headers, body) = if path.starts_with("/api/models/") {
                ("Content-Type: application/json\r\n".to_string(), r.listing)
            } else {
                (format!("ETag: {}\r\nX-Repo-Commit: {}\r\nContent-Range: {}\r\n", r.etag, r.commit, r.range), r.file)
            };
            let status = if path.starts_with("/api/models/") { "200 OK" } else { "206 Partial Content" };
            let _ = stream.write_all(
                format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n{headers}\r\n", body.len())
                    .as_bytes(),
            );
            let _ = stream.write_all(&body);
        }
    });
    addr
}

/// Fuzzing the hub client's replies: 10,000 cases of a mutated repository listing and mutated
/// `ETag` / `X-Repo-Commit` / `Content-Range` headers and file bodies. The fetch ends with a
/// folder or an error, never a panic of the caller or a hang (hf-hub parses these replies; a
/// panic inside it stays on the download thread and comes back as an error).
#[test]
fn mutated_hub_replies_never_panic() {
    let cases: usize = std::env::var("FERROVENE_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000);
    let replies = Arc::new(std::sync::Mutex::new(Replies::default()));
    let endpoint = start_fuzz_server(replies.clone());
    let listing = serde_json::json!({"sha": COMMIT, "siblings": [{"rfilename": "config.json"}, {"rfilename": "model.safetensors"}]}).to_string();
    let config = br#"{"model_type": "gpt2"}"#;
    let mut rng = ferrovene_models::rng::Rng::new(20);
    let root = temp_dir("hub-fuzz");
    let (mut answered, mut listed) = (0, 0);
    for case in 0..cases {
        let text = |rng: &mut ferrovene_models::rng::Rng, s: &str| {
            String::from_utf8_lossy(&rng.mutated(s.as_bytes())).replace(['\r', '\n'], "")
        };
        let r = Replies {
            listing: if rng.below(4) == 0 { listing.clone().into_bytes() } else { rng.mutated(listing.as_bytes()) },
            etag: text(&mut rng, "\"etag-config\""),
            commit: text(&mut rng, COMMIT),
            range: text(&mut rng, &format!("bytes 0-0/{}", config.len())),
            file: rng.mutated(config),
        };
        listed += (r.listing == listing.as_bytes()) as usize;
        *replies.lock().unwrap() = r;
        let cache = root.join(format!("{}", case % 8));
        let _ = std::fs::remove_dir_all(&cache);
        let cfg = HubConfig {
            endpoint: endpoint.clone(),
            cache_dir: cache,
            offline: false,
            progress: false,
            timeout: std::time::Duration::from_secs(10),
        };
        let outcome = std::panic::catch_unwind(|| {
            ferrovene_models::hub::fetch(&HubId::parse("fuzz-org/model").unwrap(), &cfg).is_err()
        });
        match outcome {
            Ok(_) => answered += 1,
            Err(_) => panic!("case {case} panicked"),
        }
    }
    assert_eq!(answered, cases);
    assert!(listed > cases / 8, "only {listed} cases listed the repository: the file replies were barely exercised");
}

/// A folder pyvene saved, fetched by hub id (its `config.json`, then the `intkey_*.bin` files its
/// `sorted_keys` name), reads as the golden folder reads; then again offline from the cache.
#[test]
fn a_pyvene_folder_comes_from_the_hub_and_then_from_the_cache() {
    let dir = golden("pyvene_saves/two_sites");
    let files: HashMap<String, Vec<u8>> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap() != "reference.safetensors")
        .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&p).unwrap()))
        .collect();
    let (endpoint, hits) = start_server(files);
    let cache = temp_dir("hub-pyvene");
    let mut cfg = HubConfig {
        endpoint,
        cache_dir: cache,
        offline: false,
        progress: false,
        timeout: std::time::Duration::from_secs(30),
    };
    let id = HubId::parse("someone/two-sites-das").unwrap();
    let pyvene_files = ferrovene_trainer::commands::pyvene_files;
    let fetched = ferrovene_models::hub::fetch_files(&id, &cfg, "config.json", pyvene_files).unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 3, "config.json and both intkey files");
    let read = |d: &std::path::Path| ferrovene_interventions::pyvene::read_folder::<B>(d, &Default::default()).unwrap();
    let (ours, theirs) = (read(&fetched), read(&dir));
    assert_eq!(ours.keys, theirs.keys);
    for (a, b) in ours.set.members.iter().zip(&theirs.set.members) {
        assert!(a.rotation().unwrap().matrix().into_data() == b.rotation().unwrap().matrix().into_data());
    }
    cfg.offline = true;
    cfg.endpoint = "http://127.0.0.1:9".into();
    let again = ferrovene_models::hub::fetch_files(&id, &cfg, "config.json", pyvene_files).unwrap();
    assert_eq!(again, fetched, "offline, the same snapshot from the cache");
    let e =
        ferrovene_models::hub::fetch_files(&HubId::parse("someone/other").unwrap(), &cfg, "config.json", pyvene_files)
            .unwrap_err()
            .to_string();
    assert!(e.contains("HF_HUB_OFFLINE") && e.contains("config.json"), "{e}");
}

/// `%XX` escapes decoded.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match (
            bytes[i],
            bytes.get(i + 1..i + 3).and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()),
        ) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
