//! `--devices`: a recipe's training shared between several devices (src/replicas.rs). On the
//! tiny Llama of tests/golden/tiny, through the `trainer` binary, `--devices cpu,cpu` (two
//! replicas, each with its own part of every batch) trains what `--device cpu` trains with the
//! whole batch: the loss of every step within 1e-5 and the trained intervention within float
//! tolerance, for DAS, Boundless DAS, LoReFT and a probe, with batches that two devices cannot
//! share evenly and a short last batch. Validation and the held-out metrics run on the whole sets.

mod common;
#[path = "common/shared_runs.rs"]
mod shared_runs;

use std::path::{Path, PathBuf};

use common::*;
use shared_runs::*;

/// Trains `recipe` on one device and on two, and compares them; returns the two run folders.
fn one_and_two_devices(recipe: &Path, epochs: usize, dir: &Path, tolerance: f32) -> (PathBuf, PathBuf) {
    let one = run(recipe, &["--device", "cpu"], &dir.join("one"));
    let two = run(recipe, &["--devices", "cpu,cpu"], &dir.join("two"));
    let name = recipe.file_stem().unwrap().to_string_lossy().to_string();
    let (a, b) = (losses(&one), losses(&two));
    assert!(a.len() >= 6, "{name}: {} steps", a.len());
    let d_loss = max_diff(&a, &b);
    let d_trained = max_diff(&trained(&one), &trained(&two));
    eprintln!("{name}: {} steps, losses differ by {d_loss:.2e}, the trained parameters by {d_trained:.2e}", a.len());
    assert!(d_loss < 1e-5, "{name}: losses {a:?} vs {b:?}");
    assert!(d_trained < tolerance, "{name}: trained parameters differ by {d_trained}");
    // Every epoch sees the same batches (in another order): training lowered their mean loss.
    let epoch = a.len() / epochs;
    let mean = |s: &[f32]| s.iter().sum::<f32>() / s.len() as f32;
    let (first, last) = (mean(&a[..epoch]), mean(&a[a.len() - epoch..]));
    assert!(first - last > 1e-3, "{name}: mean loss of the first epoch {first}, of the last {last}");
    let (ra, rb) = (report(&one), report(&two));
    assert_eq!(rb["compute"]["devices"], serde_json::json!(["cpu", "cpu"]), "report.json says how it ran");
    assert!(ra["compute"].get("devices").is_none(), "{}", ra["compute"]);
    assert_eq!(ra["data"], rb["data"], "{name}: the same examples");
    (one, two)
}

#[test]
fn two_devices_train_what_one_device_trains_for_every_pair_kind() {
    let tmp = tempfile::tempdir().unwrap();
    let mut state = 3;
    // 42 pairs: 31 train in batches of 5 (parts of 2 and 3) and a last batch of 1.
    let pairs = das_pairs(&mut state, 42);
    let das = recipe(
        tmp.path(),
        "das",
        "site = \"1.block_output\"\nrank = 4\nbatch_size = 5\nepochs = 2\nlr = 0.02\nwarmup = 0.1\ngrad_clip = 5.0\n",
        &pairs,
    );
    // DAS's loss does not change when R turns inside its subspace, and Adam's per-coordinate
    // m/(√v + ε) turns the two runs' different f32 sums in small gradient coordinates into
    // steps of the learning rate's size (golden_runs::DAS_W_TOLERANCE): the subspace matches to
    // 1e-3 (measured 3.8e-4 after 14 steps at lr 0.02) while every step's loss matches to 1e-5
    // (5.7e-6). Weighting the two parts of a batch of 5 equally instead of 2:3 moves the losses
    // by far more than that.
    let (_, two) = one_and_two_devices(&das, 2, &tmp.path().join("das"), 1e-3);
    // A last batch of one pair: the first device's part of it is empty.
    let r = report(&two);
    assert_eq!(r["data"]["train"].as_u64().map(|n| n % 5), Some(1), "{}", r["data"]);
    // The held-out metrics are computed on the first device on the whole set.
    assert!(r["metrics"]["dev"]["n"].as_u64().unwrap() >= 10);

    let boundless = recipe(
        tmp.path(),
        "boundless",
        "site = \"1.block_output\"\nbatch_size = 5\nepochs = 2\nlr = 0.02\nboundary_init = 0.3\n\
         temperature = { start = 1.0, end = 0.1 }\n",
        &pairs,
    );
    one_and_two_devices(&boundless, 2, &tmp.path().join("boundless"), 1e-4);

    let prompts: Vec<String> = (0..14)
        .map(|i| {
            serde_json::json!({"prompt": text(&ids(&mut state, 5)), "target": format!(" {}", text(&ids(&mut state, 2))), "positions": ["last"], "meta": {"pair": i.to_string()}}).to_string()
        })
        .collect();
    let reft = recipe(
        tmp.path(),
        "reft",
        "family = \"loreft\"\nsite = \"1.block_output\"\nrank = 2\nbatch_size = 3\nepochs = 3\nlr = 0.01\n",
        &prompts,
    );
    one_and_two_devices(&reft, 3, &tmp.path().join("reft"), 1e-4);

    let texts: Vec<String> = (0..30)
        .map(|i| {
            let words = ids(&mut state, 4);
            serde_json::json!({"text": text(&words), "class": words[0] % 2, "positions": [0], "meta": {"pair": i.to_string()}}).to_string()
        })
        .collect();
    let probe =
        recipe(tmp.path(), "probe", "site = \"0.block_output\"\nbatch_size = 7\nepochs = 3\nlr = 0.05\n", &texts);
    one_and_two_devices(&probe, 3, &tmp.path().join("probe"), 1e-4);
}

/// reft-memorise's one batch of every example, cut between two devices: every validation's
/// loss, the recall losses and the trained LoReFT as on one device.
#[test]
fn two_devices_memorise_what_one_device_memorises() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("llama");
    tiny_with_tokenizer("llama", &model);
    let mut state = 9;
    let examples: Vec<String> = (0..5)
        .map(|_| {
            format!("{{ prompt = \"{}\", target = \" {}\" }}", text(&ids(&mut state, 4)), text(&ids(&mut state, 3)))
        })
        .collect();
    let recipe = tmp.path().join("memorise-shared.toml");
    std::fs::write(
        &recipe,
        format!(
            "description = \"ReFT memorisation on the tiny Llama\"\nkind = \"reft-memorise\"\nmodel = {:?}\n\
             site = \"1.block_output\"\nrank = 2\npositions = \"last\"\nlr = 0.02\nmax_steps = 12\ncheck_every = 3\n\
             seed = 4\ngenerate = 3\nexamples = [{}]\n",
            model.display().to_string(),
            examples.join(", ")
        ),
    )
    .unwrap();
    let one = run(&recipe, &["--device", "cpu"], &tmp.path().join("one"));
    let two = run(&recipe, &["--devices", "cpu,cpu"], &tmp.path().join("two"));
    let (a, b) = (report(&one), report(&two));
    let losses = |r: &serde_json::Value| -> Vec<f32> {
        let mut v: Vec<f32> =
            r["history"].as_array().unwrap().iter().map(|e| e["loss"].as_f64().unwrap() as f32).collect();
        v.push(r["recall"]["after"]["loss"].as_f64().unwrap() as f32);
        v
    };
    let (la, lb) = (losses(&a), losses(&b));
    assert_eq!(la.len(), 5, "four validations and the final recall: {la:?}");
    assert!(la[0] - la[3] > 1e-2, "it trains: {la:?}");
    let (d_loss, d_trained) = (max_diff(&la, &lb), max_diff(&trained(&one), &trained(&two)));
    eprintln!("reft-memorise: losses differ by {d_loss:.2e}, the LoReFT by {d_trained:.2e}");
    assert!(d_loss < 1e-5, "{la:?} vs {lb:?}");
    assert!(d_trained < 1e-4, "the trained LoReFTs differ by {d_trained}");
    assert_eq!(b["compute"]["devices"], serde_json::json!(["cpu", "cpu"]));
}

#[test]
fn devices_are_in_the_help_and_wrong_uses_are_refused_by_name() {
    let out = trainer().args(["das-capitals", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--devices") && help.contains("data-parallel"), "{help}");

    let refused = |args: &[&str]| {
        let o = trainer().args(args).output().unwrap();
        assert!(!o.status.success(), "{args:?} ran");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = refused(&["das-capitals", "--devices", "cpu"]);
    assert!(e.contains("give two or more devices (one device is --device cpu)"), "{e}");
    let e = refused(&["das-capitals", "--devices", "cpu,cpu", "--device", "cpu"]);
    assert!(e.contains("--devices") && e.contains("--device"), "{e}");
    let e = refused(&["das-hierarchical-equality", "--devices", "cpu,cpu"]);
    assert!(e.contains("recipes of kind `hierarchical-equality` train on one device"), "{e}");
    let e = refused(&["das-filler-gap", "--devices", "cpu,cpu", "--set", "shard=\"0/2\""]);
    assert!(e.contains("--devices splits the sweep between devices itself"), "{e}");
    let out = trainer().args(["sweep", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("--devices") && help.contains("one shard of the units"), "{help}");
    let e = refused(&["das-capitals", "--devices", "cpu,cpu", "--set", "batch_size=1"]);
    assert!(e.contains("batch_size = 1 cannot be shared by 2 devices"), "{e}");
}
