//! Recipes: parsing (unknown keys named), overrides, `trainer list`, and a short run of the
//! shipped `das-capitals` recipe whose export `trainer eval` reproduces on the held-out pairs.

use std::path::{Path, PathBuf};
use std::process::Command;

use trainer::recipe::Recipe;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.current_dir(root());
    c
}

#[test]
fn recipes_parse_and_refuse_unknown_keys() {
    let r = Recipe::from_file(&root().join("recipes/das-capitals.toml")).unwrap();
    assert_eq!(r.site, "6.block_output");
    let text = std::fs::read_to_string(root().join("recipes/das-capitals.toml")).unwrap();
    let e = format!("{:#}", Recipe::from_toml(&format!("{text}\nlearning_rate = 0.1\n")).unwrap_err());
    assert!(e.contains("learning_rate"), "{e}");
    let e = format!("{:#}", Recipe::from_toml(&text.replace("kind = \"das\"", "kind = \"reft\"")).unwrap_err());
    assert!(e.contains("reft") && e.contains("supported: das"), "{e}");
    let o = r.with_overrides(&["lr=0.05".into(), "site=\"8.block_output\"".into(), "split_by=template".into()]).unwrap();
    assert_eq!((o.lr, o.site.as_str(), o.split_by.as_str()), (0.05, "8.block_output", "template"));
    let e = format!("{:#}", r.with_overrides(&["lrr=1".into()]).unwrap_err());
    assert!(e.contains("unknown recipe key `lrr`"), "{e}");
}

#[test]
fn list_describes_the_recipes() {
    let out = trainer().arg("list").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("das-capitals") && text.contains("DAS (rank 32)"), "{text}");
    let out = trainer().arg("no-such-recipe").output().unwrap();
    assert!(!out.status.success());
    let e = String::from_utf8_lossy(&out.stderr);
    assert!(e.contains("no recipe `no-such-recipe`") && e.contains("das-capitals"), "{e}");
}

#[test]
fn a_short_run_leaves_export_report_and_recipe_and_eval_reproduces_it() {
    let out_dir = std::env::temp_dir().join(format!("ferrovene-runs-{}", std::process::id()));
    let out = trainer().args(["das-capitals", "--epochs", "1", "--out"]).arg(&out_dir).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let runs: Vec<PathBuf> = std::fs::read_dir(out_dir.join("das-capitals")).unwrap().map(|e| e.unwrap().path()).collect();
    let [run] = runs.as_slice() else { panic!("one run folder: {runs:?}") };
    for f in ["intervention.safetensors", "report.json", "recipe.toml", "dev.jsonl"] {
        assert!(run.join(f).exists(), "{f} missing in {}", run.display());
    }
    let as_run = Recipe::from_file(&run.join("recipe.toml")).unwrap();
    assert_eq!(as_run.epochs, 1, "the recipe as run records the override");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(run.join("report.json")).unwrap()).unwrap();
    assert_eq!(report["metrics"]["controls"]["no_intervention"]["iia"], 0.0);
    assert!(report["data"]["hash_fnv1a64"].as_str().unwrap().len() == 16);
    let out = trainer()
        .args(["eval", "--json", "--intervention"]).arg(run.join("intervention.safetensors"))
        .arg("--pairs").arg(run.join("dev.jsonl"))
        .output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let eval: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(eval["overall"]["iia"], report["metrics"]["dev"]["iia"], "eval reproduces the run's dev IIA");
    assert_eq!(eval["overall"]["iia_no_intervention"], report["metrics"]["controls"]["no_intervention"]["iia"]);
}
