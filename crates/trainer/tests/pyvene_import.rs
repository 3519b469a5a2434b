//! `trainer import` of the folders pyvene and pyreft saved (tests/golden/pyvene_saves), then
//! `trainer apply` of the export in a fresh process: the next-token probabilities at the last
//! position are pyvene's (from its reference logits) within 1e-5. A folder saved for another
//! model is refused before anything is written.

mod common;

use common::*;

/// Softmax of the last row of `[1, seq, vocab]` logits.
fn last_probs(logits: &[f32], vocab: usize) -> Vec<f64> {
    let row = &logits[logits.len() - vocab..];
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
    row.iter().map(|&x| (x as f64 - max).exp() / z).collect()
}

fn reference_logits(case: &str) -> Vec<f32> {
    let bytes =
        std::fs::read(root().join("tests/golden/pyvene_saves").join(case).join("reference.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    ferrovene_models::weights::f32_from_le(st.tensor("logits").unwrap().data())
}

/// `trainer import` of the golden folder `case` for `model`, written to `out`.
fn import(case: &str, model: impl AsRef<std::ffi::OsStr>, out: &std::path::Path) -> std::process::Output {
    trainer()
        .arg("import")
        .arg(root().join("tests/golden/pyvene_saves").join(case))
        .arg("--model")
        .arg(model)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap()
}

#[test]
fn imported_pyvene_and_pyreft_folders_apply_with_pyvenes_numbers() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("gpt2");
    tiny_with_tokenizer("gpt2", &model);
    let prompt = "t5 t17 t42 t8 t91 t3 t3 t60";
    // (case, extra apply arguments as pyvene placed it)
    let cases: [(&str, &[&str]); 3] = [
        ("lowrank_das", &["--positions", "2", "--source", "t1 t2 t3 t4 t5 t6 t7 t8", "--source-positions", "5"]),
        ("boundless_das", &["--positions", "2", "--source", "t1 t2 t3 t4 t5 t6 t7 t8", "--source-positions", "5"]),
        ("loreft", &["--positions", "2,7"]),
    ];
    for (case, extra) in cases {
        let out = tmp.path().join(format!("{case}.safetensors"));
        let o = import(case, &model, &out);
        assert!(o.status.success(), "{case}: {}", String::from_utf8_lossy(&o.stderr));
        let o = trainer()
            .args(["apply", "--json", "--top", "97", "--intervention"])
            .arg(&out)
            .args(["--prompt", prompt])
            .args(extra)
            .output()
            .unwrap();
        assert!(o.status.success(), "{case}: {}", String::from_utf8_lossy(&o.stderr));
        let applied: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let want = last_probs(&reference_logits(case), 97);
        let after = applied["after"].as_array().unwrap();
        assert_eq!(after.len(), 97);
        for row in after {
            let (id, p) = (row["id"].as_u64().unwrap() as usize, row["p_after"].as_f64().unwrap());
            assert!((p - want[id]).abs() < 1e-5, "{case}: token {id}: {p} against pyvene's {}", want[id]);
        }
    }
    // Two representations import as one file with a member per site.
    let out = tmp.path().join("two.safetensors");
    let o = import("two_sites", &model, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (set, config) =
        ferrovene_interventions::export::load_set::<ferrovene_models::Cpu>(&out, &Default::default()).unwrap();
    assert_eq!(
        (set.layout.members.as_slice(), config.format),
        (["0.block_output".to_string(), "2.block_output".to_string()].as_slice(), 3)
    );
    // pyvene's folder does not say which model it was saved for: a model of another width is
    // refused, naming the site and both widths, and nothing is written.
    let o = import("two_sites", "smollm2-135m", &tmp.path().join("refused.safetensors"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && !tmp.path().join("refused.safetensors").exists(), "{stderr}");
    assert!(stderr.contains("acts on 32 dims, but that site of `smollm2-135m` is 576 wide"), "{stderr}");
}

#[test]
fn a_recipe_starts_from_an_imported_folder_with_init_from() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("gpt2");
    tiny_with_tokenizer("gpt2", &model);
    let imported = tmp.path().join("das.safetensors");
    let o = import("lowrank_das", &model, &imported);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let lines: Vec<String> = (0..12)
        .map(|i| {
            serde_json::json!({"base": format!("t{} t{} t{} t4", i + 1, i + 2, i + 3), "sources": [format!("t{} t9 t9 t4", i + 20)],
                "positions": [2], "label": format!(" t{}", i + 40), "meta": {"pair": i.to_string()}})
            .to_string()
        })
        .collect();
    let pairs = tmp.path().join("pairs.jsonl");
    std::fs::write(&pairs, lines.join("\n") + "\n").unwrap();
    let run = |rank: usize, out: &str| {
        trainer()
            .args(["das-capitals", "--quiet", "--epochs", "1", "--model"])
            .arg(&model)
            .arg("--set")
            .arg(format!("pairs=\"{}\"", pairs.display()))
            .arg("--set")
            .arg(format!("init_from=\"{}\"", imported.display()))
            .args(["--set", "site=\"1.block_output\"", "--set", &format!("rank={rank}"), "--set", "lr=1e-9"])
            .args(["--set", "split_by=\"pair\"", "--out"])
            .arg(tmp.path().join(out))
            .output()
            .unwrap()
    };
    let o = run(4, "runs");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let trained = only_run(&tmp.path().join("runs/das-capitals")).join("intervention.safetensors");
    let r = |p: &std::path::Path| -> Vec<f32> {
        let (set, _) =
            ferrovene_interventions::export::load_set::<ferrovene_models::Cpu>(p, &Default::default()).unwrap();
        set.members[0].rotation().unwrap().matrix().into_data().to_vec().unwrap()
    };
    let (start, end) = (r(&imported), r(&trained));
    let worst = start.iter().zip(&end).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(worst < 1e-6, "with lr 1e-9 the run ends where the imported rotation starts: {worst}");
    // A rank the export does not have is refused, naming both shapes.
    let o = run(2, "refused");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && stderr.contains("init_from") && stderr.contains("the recipe trains"), "{stderr}");
}

#[test]
fn exports_are_written_as_pyvene_and_pyreft_folders() {
    let tmp = tempfile::tempdir().unwrap();
    for (case, flavour, wrong) in [("two_sites", "pyvene", "pyreft"), ("loreft", "pyreft", "pyvene")] {
        let ours = tmp.path().join(format!("{case}.safetensors"));
        let o = import(case, root().join("tests/golden/tiny/gpt2"), &ours);
        assert!(o.status.success(), "{case}: {}", String::from_utf8_lossy(&o.stderr));
        let dir = tmp.path().join(case);
        let o = trainer().arg("export").arg(&ours).args(["--to", flavour]).arg(&dir).output().unwrap();
        assert!(o.status.success(), "{case}: {}", String::from_utf8_lossy(&o.stderr));
        // pyreft rebuilds the projection in bfloat16: the command says how to load our numbers.
        let stdout = String::from_utf8_lossy(&o.stdout);
        let hint = if flavour == "pyreft" { "iv.float(); iv.load_state_dict(" } else { "IntervenableModel.load(" };
        assert!(stdout.contains(hint), "{case}: {stdout}");
        // pyvene's own file names and config, as the golden folder has them.
        let names = |d: &std::path::Path| {
            let mut v: Vec<String> = std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .filter(|n| n != "reference.safetensors")
                .collect();
            v.sort();
            v
        };
        assert_eq!(names(&dir), names(&root().join("tests/golden/pyvene_saves").join(case)), "{case}");
        let o =
            trainer().arg("export").arg(&ours).args(["--to", wrong]).arg(tmp.path().join("wrong")).output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && stderr.contains(&format!("use --to {flavour}")), "{case}: {stderr}");
    }
}
