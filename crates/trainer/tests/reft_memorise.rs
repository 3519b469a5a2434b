//! `reft-memorise`: a rank-1 LoReFT on SmolLM2 learns to recall a short passage exactly after
//! `GO->`; the run reports it, and the exported intervention recalls it again when loaded by
//! `trainer apply` in a fresh process.

mod common;

use common::{only_run, trainer};

#[test]
fn rank_one_loreft_recalls_a_passage_and_its_export_recalls_it_in_a_fresh_process() {
    let out_dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-reft-memorise-{}", std::process::id()));
    let passage = " The lighthouse keeper counts nine ships every night.";
    let examples = format!("examples=[{{ prompt = \"GO->\", target = \"{passage}\" }}]");
    let out = trainer()
        .args([
            "reft-memorise",
            "--quiet",
            "--set",
            &examples,
            "--set",
            "max_steps=300",
            "--set",
            "check_every=5",
            "--out",
        ])
        .arg(&out_dir)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}\n{stdout}", String::from_utf8_lossy(&out.stderr));
    let run = only_run(&out_dir.join("reft-memorise"));
    let report = common::report(&run);
    let steps = report["steps_to_exact_recall"].as_u64().unwrap_or_else(|| panic!("no exact recall: {stdout}"));
    assert!(steps > 0 && steps.is_multiple_of(5), "recall is checked every 5 steps: {steps}");
    assert_eq!(report["recalled_by_generation"], 1, "greedy generation reproduces the passage: {stdout}");
    assert_eq!(report["taught"][0]["with"], passage);
    assert_ne!(report["taught"][0]["without"], passage, "the model alone does not say it");
    // Rank-1 LoReFT on width 576: R (576) + W (576) + c (1).
    assert_eq!(report["trainable_parameters"], 1153);
    let share = report["trainable_share"].as_f64().unwrap();
    assert!(share > 0.0 && share < 1e-5, "{share}");
    assert!(run.join("loss.svg").exists());

    // A fresh process loads the export and recalls the passage.
    let n_tokens = report["recall"]["after"]["n"].as_u64().unwrap();
    assert_eq!(n_tokens, 1);
    let out = trainer()
        .args(["apply", "--prompt", "GO->", "--generate", "40", "--json", "--intervention"])
        .arg(run.join("intervention.safetensors"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let applied: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let with = applied["with"].as_str().unwrap();
    assert!(with.starts_with(passage), "apply in a fresh process says {with:?}");
    std::fs::remove_dir_all(&out_dir).ok();
}
