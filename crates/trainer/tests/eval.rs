//! `trainer eval` end to end: a vanilla-interchange export at layer 6 of SmolLM2 on capital pairs
//! moves every capital (IIA 1 against 0 without intervention), overall and per base country; a
//! mismatched export is refused.

use std::process::Command;

use burn::tensor::Tensor;
use ferrovene_interventions::Intervention;
use ferrovene_interventions::export::{self, ExportConfig, ModelConfig, PlacementConfig};
use ferrovene_interventions::fixed::{Fixed, FixedOp};
use ferrovene_interventions::steering::Steering;

type B = ferrovene_models::Cpu;

fn dir() -> std::path::PathBuf {
    let d =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-eval-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pairs() -> std::path::PathBuf {
    let countries = [("France", " Paris"), ("Germany", " Berlin"), ("Japan", " Tokyo"), ("Greece", " Athens")];
    let mut lines = vec!["this line is broken".to_string()];
    for (b, bl) in countries {
        for (s, sl) in countries {
            if b != s {
                let span = |c: &str| serde_json::json!({"country": [15, 15 + c.len()]});
                lines.push(
                    serde_json::json!({
                        "base": format!("The capital of {b} is"), "spans": span(b),
                        "sources": [format!("The capital of {s} is")], "source_spans": [span(s)],
                        "positions": [{"span": "country"}], "base_label": bl, "label": sl, "meta": {"base": b}
                    })
                    .to_string(),
                );
            }
        }
    }
    // Parses, but its ids are past SmolLM2's vocabulary: a bad line for --skip-bad too.
    lines.push(r#"{"base_ids": [1, 2, 999999], "source_ids": [[1, 2, 3]], "positions": [1], "label": " x", "meta": {"base": "France"}}"#.to_string());
    let p = dir().join("capitals.jsonl");
    std::fs::write(&p, lines.join("\n")).unwrap();
    p
}

fn config(width: usize) -> ExportConfig {
    ExportConfig {
        format: 0,
        kind: String::new(),
        width,
        hyper: Default::default(),
        placement: PlacementConfig {
            sites: vec!["6.block_output".into()],
            positions: "span:country".into(),
            site_width: width,
            dims: vec![],
            composition: Default::default(),
        },
        model: ModelConfig { id: "smollm2-135m".into(), revision: None, arch: "llama".into(), hidden_size: width },
        training: serde_json::Value::Null,
        set: None,
    }
}

#[test]
fn eval_of_an_interchange_export() {
    let export_path = dir().join("interchange.safetensors");
    export::save(&Intervention::<B>::Fixed(Fixed::new(FixedOp::Interchange)), config(576), &export_path).unwrap();
    let pairs = pairs();
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["eval", "--intervention"])
        .arg(&export_path)
        .arg("--pairs")
        .arg(&pairs)
        .args(["--by", "base", "--json", "--skip-bad"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("skipped 1 bad line") && stderr.contains("line 1: malformed JSON"), "{stderr}");
    assert!(stderr.contains("capitals.jsonl:14:") && stderr.contains("token id 999999"), "{stderr}");
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["overall"]["n"], 12);
    assert_eq!(r["overall"]["iia"], 1.0, "{r}");
    assert_eq!(r["overall"]["iia_no_intervention"], 0.0, "{r}");
    assert_eq!(r["overall"]["label_beats_base"], 1.0, "{r}");
    assert_eq!(r["overall"]["base_label_accuracy_no_intervention"], 1.0, "the model knows these capitals: {r}");
    assert!(r["overall"]["iia_random_rotation"].is_null(), "an interchange has no rotation to randomise");
    let groups = r["groups"].as_array().unwrap();
    assert_eq!(groups.len(), 4);
    assert!(groups.iter().all(|g| g["n"] == 3 && g["iia"] == 1.0), "{r}");

    // stopping at the first bad line is the default
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["eval", "--intervention"])
        .arg(&export_path)
        .arg("--pairs")
        .arg(&pairs)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("capitals.jsonl:1: malformed JSON"));
}

#[test]
fn eval_refuses_an_export_for_another_width() {
    let export_path = dir().join("narrow.safetensors");
    let v = Tensor::<B, 1>::ones([64], &Default::default());
    export::save(&Intervention::Steering(Steering::fixed(v, 1.0)), config(64), &export_path).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .args(["eval", "--intervention"])
        .arg(&export_path)
        .arg("--pairs")
        .arg(pairs())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("width 64") && e.contains("width 576") && e.contains("narrow.safetensors"), "{e}");
}
