//! The `syntax-suites` recipe and `trainer sweep` on suites: CausalGym's defaults, clear errors
//! for flags of other kinds, a small sweep on SmolLM2 that writes every output and scores every
//! method with its control, the same numbers when every site and method runs the frozen model
//! again, and `--templates` with a suite of the user's own.

mod common;

use common::{only_run, report, root, trainer};
use ferrovene_trainer::experiments::Recipe;

fn run(args: &[&str], out: &std::path::Path) -> std::process::Output {
    trainer().args(["sweep", "syntax-suites"]).args(args).arg("--out").arg(out).output().unwrap()
}

fn temp(name: &str) -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-suite-{name}-{}", std::process::id()))
}

#[test]
fn the_recipe_has_causalgym_defaults_and_wrong_flags_are_refused() {
    let text = std::fs::read_to_string(root().join("recipes/syntax-suites.toml")).unwrap();
    let Recipe::Suite(r) = Recipe::from_toml(&text).unwrap() else { panic!("a suite recipe") };
    assert_eq!(
        (r.train_pairs, r.test_pairs, r.batch_size, r.epochs, r.lr),
        (400, 100, 4, 1, 0.005),
        "CausalGym's defaults"
    );
    assert_eq!(r.methods, ["das", "probe", "mean", "pca", "kmeans", "lda", "random"]);
    let e = format!("{:#}", Recipe::from_toml(&text.replace("\"lda\"", "\"ica\"")).unwrap_err());
    assert!(e.contains("method `ica`") && e.contains("kmeans"), "{e}");
    let e =
        format!("{:#}", Recipe::from_toml(&text.replace("[\" dog\", \" give\"]", "[\" dog\", \" dog\"]")).unwrap_err());
    assert!(e.contains("`control`"), "{e}");
    let out = temp("errors");
    for (args, says) in [
        (vec!["--positions", "verb"], "`--positions` does not apply"),
        (vec!["--no-generalization"], "no follow-up"),
        (vec!["--templates", "/nonexistent/suite.json"], "no such file"),
        (vec!["--tasks", "agreement_simple,nonsense"], "no task `nonsense`"),
        (vec!["--methods", "das,ica"], "method `ica`"),
        (vec!["--regions", "nowhere"], "region `nowhere`"),
    ] {
        let o = run(&args, &out);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success() && err.contains(says), "{args:?}: {err}");
    }
    let o = run(&["--tasks", "nonsense"], &out);
    assert!(String::from_utf8_lossy(&o.stderr).contains("npi_licensing"), "the error lists the suite's tasks");
}

/// `results.csv` as (task, method, layer, region) → the numbers.
fn rows(run: &std::path::Path) -> Vec<(String, Vec<f64>)> {
    let csv = std::fs::read_to_string(run.join("results.csv")).unwrap();
    let mut lines = csv.lines();
    assert_eq!(
        lines.next().unwrap(),
        "task,method,layer,region,iia,odds,control_iia,control_odds,selectivity_iia,selectivity_odds"
    );
    lines
        .map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            (f[..4].join(","), f[4..].iter().map(|x| x.parse().unwrap()).collect())
        })
        .collect()
}

#[test]
fn a_small_sweep_on_smollm2_scores_every_method_and_sharing_the_frozen_runs_changes_no_number() {
    let out = temp("shared");
    let small = [
        "--tasks",
        "agreement_simple",
        "--layers",
        "8,20",
        "--regions",
        "label,last",
        "--set",
        "train_pairs=40",
        "--set",
        "test_pairs=20",
    ];
    let o = run(&small, &out);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("best site") && stdout.contains("sel."), "{stdout}");
    let shared = only_run(&out.join("syntax-suites"));
    for m in ["das", "probe", "mean", "pca", "kmeans", "lda", "random"] {
        for kind in ["odds", "iia"] {
            for ext in ["svg", "png"] {
                assert!(
                    shared.join(format!("tasks/agreement_simple/{m}_{kind}.{ext}")).exists(),
                    "{m}_{kind}.{ext} missing"
                );
            }
        }
    }
    let all = rows(&shared);
    assert_eq!(all.len(), 7 * 2 * 2, "7 methods × 2 layers × 2 regions");
    let r = report(&shared);
    assert!(std::fs::read_to_string(shared.join("results.json")).unwrap().contains("\"control\""));
    let summary = r["summary"].as_array().unwrap();
    assert_eq!(summary.len(), 7);
    let best =
        |m: &str, key: &str| summary.iter().find(|s| s["method"] == m).unwrap()["best_site"][key].as_f64().unwrap();
    // Subject number is linearly readable in SmolLM2: the difference of means moves the odds far;
    // a random direction does not.
    assert!(
        best("mean", "iia") > 0.8 && best("mean", "odds") > 2.0,
        "mean: {} / {}",
        best("mean", "iia"),
        best("mean", "odds")
    );
    assert!(best("random", "odds").abs() < 1.0, "random: {}", best("random", "odds"));
    for s in summary {
        let b = &s["best_site"];
        assert!(b["selectivity_odds"].is_number() && b["selectivity_iia"].is_number(), "{s}");
    }
    assert!(r["tasks"][0]["model_accuracy"].as_f64().unwrap() > 0.9, "SmolLM2 agrees subject and verb");

    // Every site and method on its own frozen run: the same numbers.
    let out2 = temp("separate");
    let o = run(&[&small[..], &["--methods", "das,mean,random", "--set", "share_frozen=false"]].concat(), &out2);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let separate = rows(&only_run(&out2.join("syntax-suites")));
    assert_eq!(separate.len(), 3 * 2 * 2);
    for (key, values) in &separate {
        let (_, shared_values) =
            all.iter().find(|(k, _)| k == key).unwrap_or_else(|| panic!("{key} missing from the shared run"));
        for (a, b) in values.iter().zip(shared_values) {
            assert!((a - b).abs() < 1e-4, "{key}: {values:?} alone vs {shared_values:?} shared");
        }
    }
    std::fs::remove_dir_all(&out).ok();
    std::fs::remove_dir_all(&out2).ok();
}

/// A suite of the user's own, with a task laid out as CausalGym's `gss_subord*` (a label of two
/// variables, one with a blank filler): the dry run lists both tasks' pairs and regions and
/// writes nothing; the sweep (with the whole-vector interchange and CausalGym's source index)
/// runs both and reports the prefix and the slot it left out.
#[test]
fn templates_runs_a_suite_of_the_users_own() {
    let out = temp("templates");
    std::fs::create_dir_all(&out).unwrap();
    let file = out.join("mine.json");
    std::fs::write(
        &file,
        r#"{"pronoun_gender": {
            "templates": ["The {person} said that"],
            "label": "person",
            "labels": {"female": ["she"], "male": ["he"]},
            "variables": {"person": {"female": ["queen", "aunt", "mother", "sister"], "male": ["king", "uncle", "father", "brother"]}},
            "result_prepend_space": true},
          "subordinate": {"source": "https://example.org/suite/2",
            "templates": ["{sub}{det} {noun} {verb} the {object}"],
            "label": ["sub", "det"], "result_prepend_space": false,
            "labels": {"open": [","], "closed": ["."]},
            "variables": {"sub": {"open": ["When", "Because", "After", "Before"], "closed": [""]},
                          "det": {"open": [" the"], "closed": ["The"]},
                          "noun": ["cats", "dogs", "owls"], "verb": ["saw", "ate"], "object": ["hall", "seeds", "moon"]}}}"#,
    )
    .unwrap();
    let common = [
        &["--templates", file.to_str().unwrap(), "--tasks", "all", "--layers", "20"][..],
        &["--set", "train_pairs=8", "--set", "test_pairs=4"],
    ]
    .concat();
    let o = run(&[&common[..], &["--regions", "all", "--dry-run"]].concat(), &out.join("runs"));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout.contains("pronoun_gender: 8 train + 4 test pairs of 16 filler combinations"), "{stdout}");
    assert!(stdout.contains("subordinate: 8 train + 4 test pairs of 72 filler combinations"), "{stdout}");
    assert!(stdout.contains("label sub + det (closed vs open); regions det, noun, verb, object, last"), "{stdout}");
    assert!(stdout.contains("not swept: `sub` has a blank filler in class `closed`"), "{stdout}");
    assert!(stdout.contains("nothing trained (--dry-run)"), "{stdout}");
    assert!(!out.join("runs").exists(), "a dry run writes nothing");
    let o = trainer().args(["sweep", "das-filler-gap", "--dry-run"]).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("`--dry-run` checks a template suite") && e.contains("filler-gap"),
        "{e}"
    );

    let o = run(
        &[&common[..], &["--methods", "mean,vanilla", "--regions", "last", "--set", "source_index=\"base\""]].concat(),
        &out.join("runs"),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let run = only_run(&out.join("runs/syntax-suites"));
    let rows = rows(&run);
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert!(rows[0].0.starts_with("pronoun_gender,vanilla,20,last"), "{rows:?}");
    assert!(rows.iter().any(|r| r.0.starts_with("subordinate,mean,20,last")), "{rows:?}");
    let r = report(&run);
    assert!(r["suite"].as_str().unwrap().ends_with("mine.json"));
    assert!(r["prefix"].as_str().unwrap().starts_with("<|endoftext|> (token 0)"), "{}", r["prefix"]);
    assert_eq!(r["source_index"], "base");
    let sub = r["tasks"].as_array().unwrap().iter().find(|t| t["task"] == "subordinate").unwrap();
    assert_eq!(sub["not_swept"][0], "`sub` has a blank filler in class `closed`");
    assert_eq!(sub["about"]["source"], "https://example.org/suite/2");
    std::fs::remove_dir_all(&out).ok();
}
