//! `steer-iti` on SmolLM2, shortened (fewer probe steps and scales): per-head probes find heads
//! that tell truthful from false text well above chance, the ITI shift raises p(true answer) on
//! held-out prompts step by step over small α while random directions on the same heads do not,
//! and the per-layer exports load and apply.

use std::path::PathBuf;

mod common;

use common::{only_run, trainer};

#[test]
fn iti_probes_heads_steers_and_exports() {
    let out_dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-iti-{}", std::process::id()));
    let out = trainer()
        .args([
            "steer-iti",
            "--quiet",
            "--set",
            "probe_c=1",
            "--set",
            "contexts_per_fact=1",
            "--set",
            "alphas=[0.0, 1.0, 2.0]",
            "--set",
            "random_controls=1",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let run = only_run(&out_dir.join("steer-iti"));
    for f in ["head-accuracy.svg", "head-accuracy.png", "head-accuracy.csv", "alpha.svg", "alpha.csv", "report.json"] {
        assert!(run.join(f).exists(), "{f} missing");
    }
    let report = common::report(&run);
    let top = report["top_heads"].as_array().unwrap();
    assert_eq!(top.len(), 16);
    let best = top[0]["accuracy"].as_f64().unwrap();
    assert!(best > 0.7, "the best head's probe should tell true from false well above chance: {best}");
    let csv = std::fs::read_to_string(run.join("head-accuracy.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + 30 * 9, "one row per head");
    let curve = report["alpha_curve"].as_array().unwrap();
    let p = |i: usize, k: &str| curve[i][k].as_f64().unwrap();
    assert_eq!(p(0, "p_true"), p(0, "p_true_random"), "α = 0 is the model alone for both");
    // ITI's claim at this size: each step of α raises p(true answer), by more than the same
    // heads moved along random directions (which barely move it).
    for i in 1..curve.len() {
        assert!(p(i, "p_true") > p(i - 1, "p_true") + 0.005, "p(true) should rise with α: {stdout}");
        assert!(
            p(i, "p_true") - p(0, "p_true") > 2.0 * (p(i, "p_true_random") - p(0, "p_true")).abs(),
            "ITI should beat random directions: {stdout}"
        );
    }

    // Each layer's export applies at every token.
    let exports: Vec<PathBuf> = std::fs::read_dir(run.join("iti")).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!exports.is_empty());
    let out = trainer()
        .args([
            "apply",
            "--prompt",
            "The capital of France is",
            "--generate",
            "4",
            "--every-token",
            "--json",
            "--intervention",
        ])
        .arg(&exports[0])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let applied: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(applied["with"].is_string() && applied["kind"] == "steering");
    std::fs::remove_dir_all(&out_dir).ok();
}
