//! `probe-layers` end to end on SmolLM2 at two layers: the sentiment probe reaches ≥ 0.9 on
//! held-out frames and beats its control task (selectivity > 0.1) at a late layer; the run
//! writes its table, plot, CSV, report and the best probe's export.

mod common;

use common::{only_run, trainer};

#[test]
fn probes_beat_their_control_task_at_a_late_layer() {
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-probe-layers-{}", std::process::id()));
    let run = trainer().args(["probe-layers", "--set", "layers=[0,26]", "--out"]).arg(&out).output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let dir = only_run(&out.join("probe-layers"));
    for f in ["layers.svg", "layers.png", "layers.csv", "report.json", "intervention.safetensors", "recipe.toml"] {
        assert!(dir.join(f).exists(), "{f} missing");
    }
    let report = common::report(&dir);
    let late = &report["layers"][1];
    assert_eq!(late["layer"], 26);
    let (acc, control) = (late["accuracy"].as_f64().unwrap(), late["control_accuracy"].as_f64().unwrap());
    assert!(acc >= 0.9, "held-out accuracy {acc}");
    assert!(acc - control > 0.1, "selectivity {} (accuracy {acc}, control {control})", acc - control);
    assert_eq!(report["majority_class"], 0.5);
}
