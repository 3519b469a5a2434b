//! Long commands lose nothing (#26): run folders that two processes cannot share, sweeps that
//! keep every finished unit and resume to the uninterrupted numbers after SIGTERM or SIGKILL,
//! names that cannot leave the run folder, and the bad inputs that used to panic, abort or
//! mislead.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::{Duration, Instant};

use common::{only_run, report, root, trainer};

/// A fresh, empty folder for one test.
fn fresh(tag: &str) -> PathBuf {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-lost-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Waits until the run folder under `out/name` has `units` finished units, then returns it.
fn wait_for_units(child: &mut Child, out: &Path, units: usize) -> PathBuf {
    let start = Instant::now();
    loop {
        if let Ok(entries) = std::fs::read_dir(out) {
            for run in entries.flatten() {
                let log = run.path().join("units.jsonl");
                if std::fs::read_to_string(&log).is_ok_and(|t| t.lines().count() >= units) {
                    return run.path();
                }
            }
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the sweep ended ({status}) before {units} units were kept");
        }
        assert!(start.elapsed() < Duration::from_secs(600), "no unit kept in 10 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts `args` into `out/<name>`, sends `signal` (`KILL`, `TERM`) once `units` units are kept,
/// checks how it ended (143 and the way on for SIGTERM), and resumes it; returns the run folder.
fn interrupt_and_resume(args: &[String], out: &Path, name: &str, units: usize, sig: &str) -> PathBuf {
    let mut child = trainer()
        .args(args)
        .arg("--out")
        .arg(out)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = wait_for_units(&mut child, &out.join(name), units);
    signal(&child, sig);
    let o = child.wait_with_output().unwrap();
    if sig == "TERM" || sig == "INT" {
        assert_eq!(o.status.code(), Some(if sig == "TERM" { 143 } else { 130 }), "{}", stderr(&o));
        assert!(stderr(&o).contains(&format!("go on with: trainer sweep {name} --resume")), "{}", stderr(&o));
    }
    if sig != "KILL" {
        assert!(temporaries(&run).is_empty(), "SIG{sig} left {:?}", temporaries(&run));
    }
    // The report of what was done so far says it is not the end.
    if run.join("report.json").exists() {
        assert_eq!(report(&run)["complete"], false);
    }
    let o = trainer().args(["sweep", name, "--resume"]).arg(&run).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(report(&run)["complete"], true);
    // A kill may land inside a write; the resumed run clears what the dead one left.
    assert!(temporaries(&run).is_empty(), "after SIG{sig} and --resume: {:?}", temporaries(&run));
    run
}

fn signal(child: &Child, name: &str) {
    let ok = Command::new("kill").args([format!("-{name}"), child.id().to_string()]).status().unwrap();
    assert!(ok.success());
}

/// Files of a run folder whose names start with a dot and hold `.tmp` (left-over temporaries).
fn temporaries(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in walk(dir) {
        let n = e.file_name().unwrap().to_string_lossy().into_owned();
        if n.contains(".tmp") {
            out.push(e);
        }
    }
    out
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        }
        out.push(p);
    }
    out
}

/// A small filler-gap sweep: four sites.
const FILLER_GAP: [&str; 11] = [
    "sweep",
    "das-filler-gap",
    "--layers",
    "18,20,22,24",
    "--positions",
    "verb",
    "--set",
    "train_pairs=16",
    "--set",
    "test_pairs=8",
    "--no-generalization",
];

fn filler_gap_args() -> Vec<&'static str> {
    FILLER_GAP.to_vec()
}

#[test]
fn a_filler_gap_sweep_killed_then_resumed_has_the_uninterrupted_numbers() {
    let out = fresh("fg");
    let whole = out.join("whole");
    let o = trainer().args(filler_gap_args()).arg("--out").arg(&whole).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let whole_run = only_run(&whole.join("das-filler-gap"));

    // SIGKILL once two sites are kept: nothing after them survives, nothing before is lost.
    let cut = out.join("cut");
    let mut child = trainer()
        .args(filler_gap_args())
        .arg("--out")
        .arg(&cut)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run = wait_for_units(&mut child, &cut.join("das-filler-gap"), 2);
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(run.join("sweep.csv").exists(), "the kept sites' numbers are on disk");
    let o = trainer().args(["sweep", "das-filler-gap", "--resume"]).arg(&run).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["sweep.csv", "units.jsonl"] {
        assert_eq!(
            std::fs::read_to_string(run.join(f)).unwrap(),
            std::fs::read_to_string(whole_run.join(f)).unwrap(),
            "{f} after a kill and --resume"
        );
    }
    assert_eq!(report(&run)["sweep"], report(&whole_run)["sweep"]);
    assert_eq!(report(&run)["best"], report(&whole_run)["best"]);
    let tensors = |p: &Path| safetensors_bytes(&p.join("intervention.safetensors"));
    assert_eq!(tensors(&run), tensors(&whole_run), "the best site's export");
    assert!(temporaries(&run).is_empty(), "{:?}", temporaries(&run));
    // Its export was trained at a named span, which a plain prompt does not have: refused.
    let o = trainer()
        .args(["apply", "--prompt", "Hello there, friend", "--intervention"])
        .arg(run.join("intervention.safetensors"))
        .output()
        .unwrap();
    assert!(
        !o.status.success()
            && stderr(&o).contains("the span `verb` of its training pairs")
            && stderr(&o).contains("--positions"),
        "{}",
        stderr(&o)
    );

    // A resume of a finished sweep trains nothing and changes no number.
    let o = trainer().args(["sweep", "das-filler-gap", "--resume"]).arg(&run).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::read_to_string(run.join("sweep.csv")).unwrap(),
        std::fs::read_to_string(whole_run.join("sweep.csv")).unwrap()
    );

    // SIGTERM after the first site: exit 143 saying how to go on, and the same end.
    let args: Vec<String> = filler_gap_args().iter().map(|s| s.to_string()).collect();
    let run = interrupt_and_resume(&args, &out.join("term"), "das-filler-gap", 1, "TERM");
    assert_eq!(
        std::fs::read_to_string(run.join("sweep.csv")).unwrap(),
        std::fs::read_to_string(whole_run.join("sweep.csv")).unwrap(),
        "after SIGTERM and --resume"
    );
    assert_eq!(tensors(&run), tensors(&whole_run));
    // Ctrl-C (SIGINT) after three sites: exit 130, and the same end.
    let run = interrupt_and_resume(&args, &out.join("int"), "das-filler-gap", 3, "INT");
    assert_eq!(
        std::fs::read_to_string(run.join("sweep.csv")).unwrap(),
        std::fs::read_to_string(whole_run.join("sweep.csv")).unwrap(),
        "after Ctrl-C and --resume"
    );
    let _ = std::fs::remove_dir_all(&out);
}

/// The tensors of a safetensors file (its bytes after the JSON header, which holds metadata).
fn safetensors_bytes(path: &Path) -> Vec<u8> {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    bytes[8 + n..].to_vec()
}

/// A small suite sweep: two tasks × three layers.
const SUITE: [&str; 15] = [
    "sweep",
    "syntax-suites",
    "--tasks",
    "agreement_simple,npi_licensing",
    "--layers",
    "2,6,10",
    "--regions",
    "label,last",
    "--methods",
    "mean,random",
    "--set",
    "train_pairs=40",
    "--set",
    "test_pairs=20",
    "--out",
];

#[test]
fn a_suite_sweep_stopped_by_sigterm_then_resumed_has_the_uninterrupted_numbers() {
    let out = fresh("suite");
    let args = |dir: &Path| -> Vec<String> {
        SUITE[..15].iter().map(|s| s.to_string()).chain([dir.display().to_string()]).collect()
    };
    let whole = out.join("whole");
    let o = trainer().args(args(&whole)).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let whole_run = only_run(&whole.join("syntax-suites"));

    // SIGTERM inside the first task (its facts and one layer kept): exit 143, saying how to go on.
    let cut = out.join("cut");
    let mut child = trainer()
        .args(args(&cut))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let run = wait_for_units(&mut child, &cut.join("syntax-suites"), 2);
    signal(&child, "TERM");
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(143), "{}", stderr(&o));
    assert!(stderr(&o).contains("go on with: trainer sweep syntax-suites --resume"), "{}", stderr(&o));
    assert!(temporaries(&run).is_empty(), "{:?}", temporaries(&run));
    let o = trainer().args(["sweep", "syntax-suites", "--resume"]).arg(&run).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    for f in ["results.csv", "results.json"] {
        assert_eq!(
            std::fs::read_to_string(run.join(f)).unwrap(),
            std::fs::read_to_string(whole_run.join(f)).unwrap(),
            "{f} after SIGTERM and --resume"
        );
    }
    // The kept units, but for the seconds the frozen runs took.
    let units = |p: &Path| -> Vec<serde_json::Value> {
        std::fs::read_to_string(p.join("units.jsonl"))
            .unwrap()
            .lines()
            .map(|l| {
                let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
                v.as_object_mut().unwrap().remove("frozen_s");
                v
            })
            .collect()
    };
    assert_eq!(units(&run), units(&whole_run));
    assert_eq!(report(&run)["summary"], report(&whole_run)["summary"]);
    // Every row is one JSON object without a key given twice (the task's name and its scores).
    let rows = ferrovene_data::strict_json::parse(&std::fs::read_to_string(run.join("results.json")).unwrap()).unwrap();
    assert!(rows[0]["on_task"]["iia"].is_number() && rows[0]["task"] == "agreement_simple", "{}", rows[0]);

    // SIGKILL in the second task (its facts kept, none of its layers): the same end.
    let args: Vec<String> = SUITE[..14].iter().map(|s| s.to_string()).collect();
    let run = interrupt_and_resume(&args, &out.join("kill"), "syntax-suites", 5, "KILL");
    for f in ["results.csv", "results.json"] {
        assert_eq!(
            std::fs::read_to_string(run.join(f)).unwrap(),
            std::fs::read_to_string(whole_run.join(f)).unwrap(),
            "{f} after SIGKILL and --resume"
        );
    }
    assert_eq!(units(&run), units(&whole_run));
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_region_only_some_tasks_have_skips_the_others_instead_of_panicking() {
    let out = fresh("region");
    // `verb` is a region (at or after the label) of some of the shipped tasks only.
    let o = trainer()
        .args([
            "sweep",
            "syntax-suites",
            "--regions",
            "verb",
            "--layers",
            "4",
            "--methods",
            "mean",
            "--set",
            "train_pairs=8",
            "--set",
            "test_pairs=4",
            "--tasks",
            "agreement_simple,reflexive_agreement",
            "--out",
        ])
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "exit {:?}: {}", o.status.code(), stderr(&o));
    assert!(stderr(&o).contains("skipped, having none of the regions asked: agreement_simple"), "{}", stderr(&o));
    let r = report(&only_run(&out.join("syntax-suites")));
    assert_eq!(r["skipped_tasks"], serde_json::json!(["agreement_simple"]));
    assert_eq!(r["tasks"][0]["task"], "reflexive_agreement");
    let _ = std::fs::remove_dir_all(&out);
}

/// A recipe run small enough to start many at once.
fn quick_hierarchical(out: &Path, seed: u64) -> Command {
    let mut c = trainer();
    c.args(["das-hierarchical-equality", "--quiet", "--seed", &seed.to_string()]);
    for s in
        ["mlp_examples=512", "mlp_epochs=1", "das_train_pairs=128", "das_test_pairs=64", "das_epochs=1", "layers=[1]"]
    {
        c.args(["--set", s]);
    }
    c.arg("--out").arg(out);
    c
}

#[test]
fn eight_runs_started_at_once_into_one_out_get_eight_consistent_folders() {
    let out = fresh("eight");
    let children: Vec<Child> = (0..8)
        .map(|seed| {
            quick_hierarchical(&out, seed)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        let o = c.wait_with_output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
    }
    let runs: Vec<PathBuf> =
        std::fs::read_dir(out.join("das-hierarchical-equality")).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(runs.len(), 8, "{runs:?}");
    let mut seeds = Vec::new();
    for run in &runs {
        let recipe: toml::Table = toml::from_str(&std::fs::read_to_string(run.join("recipe.toml")).unwrap()).unwrap();
        let seed = recipe["seeds"].as_array().unwrap()[0].as_integer().unwrap();
        let r = report(run);
        assert_eq!(
            r["config"]["seeds"][0].as_i64(),
            Some(seed),
            "{}: the report is of another run's recipe",
            run.display()
        );
        assert!(run.join("results.csv").exists(), "{}", run.display());
        seeds.push(seed);
    }
    seeds.sort();
    assert_eq!(seeds, (0..8).collect::<Vec<i64>>());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn a_run_folder_in_use_or_of_another_recipe_is_refused() {
    let out = fresh("lock");
    // The folder a run of das-capitals starts with (the recipe as run, under its name).
    let text = std::fs::read_to_string(root().join("recipes/das-capitals.toml")).unwrap();
    let run = ferrovene_trainer::run_dir::RunDir::create(&out, "das-capitals", &text).unwrap().path().to_path_buf();
    // Another recipe's name: refused, naming what the folder holds.
    let o = trainer().args(["das-boundless-capitals", "--resume"]).arg(&run).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("is a run of recipe `das-capitals`, not `das-boundless-capitals`"), "{}", stderr(&o));
    // A folder this process holds: a second process is refused, naming this pid.
    let _held = ferrovene_trainer::run_dir::RunDir::reopen(
        &run,
        "das-capitals",
        &std::fs::read_to_string(run.join("recipe.toml")).unwrap(),
    )
    .unwrap();
    let o = trainer().args(["das-capitals", "--resume"]).arg(&run).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains(&format!("is in use by process {}", std::process::id())), "{}", stderr(&o));
    let _ = std::fs::remove_dir_all(&out);
}

fn write_suite(dir: &Path, json: &str) -> PathBuf {
    let path = dir.join("suite.json");
    std::fs::write(&path, json).unwrap();
    path
}

fn task_json(name: &str, template: &str, extra_var: &str) -> String {
    format!(
        r#"{{"{name}": {{"templates": ["{template}"], "label": "subject", "labels": {{"singular": ["is"], "plural": ["are"]}},
            "variables": {{"subject": {{"singular": ["cat", "dog"], "plural": ["cats", "dogs"]}}, "{extra_var}": ["door", "table", "wall"]}}, "result_prepend_space": true}}}}"#
    )
}

#[test]
fn suite_names_are_data_never_paths_and_reserved_regions_are_refused() {
    let out = fresh("names");
    let sweep_regions = |suite: &Path, regions: &str| {
        trainer()
            .args(["sweep", "syntax-suites", "--layers", "4", "--methods", "mean", "--regions", regions])
            .args(["--set", "train_pairs=8", "--set", "test_pairs=4", "--templates"])
            .arg(suite)
            .arg("--out")
            .arg(out.join("runs"))
            .output()
            .unwrap()
    };
    let sweep = |suite: &Path| sweep_regions(suite, "label,last");
    // A task named to climb out of the run folder is refused when the suite is read.
    let suite = write_suite(&out, &task_json("../../../../escaped_task", "The {subject} near the {noun}", "noun"));
    let o = sweep(&suite);
    assert!(!o.status.success());
    assert!(
        stderr(&o).contains("task name \"../../../../escaped_task\"") && stderr(&o).contains("path separator"),
        "{}",
        stderr(&o)
    );
    assert!(!out.join("runs").exists(), "refused before any folder exists");
    assert!(walk(&out).iter().all(|p| !p.to_string_lossy().contains("escaped_task")));
    // A slot named as a region a sweep reserves.
    for reserved in ["last", "label", "all"] {
        let suite = write_suite(&out, &task_json("t", &format!("The {{subject}} {{{reserved}}} near"), reserved));
        let o = sweep(&suite);
        assert!(!o.status.success());
        assert!(
            stderr(&o).contains(&format!("task `t`: variable `{reserved}`")) && stderr(&o).contains("reserves"),
            "{}",
            stderr(&o)
        );
    }
    // Repeated fillers would put one sentence on both sides of the split: kept once, and said.
    let dry = |suite: &Path, regions: &str| {
        trainer()
            .args(["sweep", "syntax-suites", "--set", "train_pairs=4", "--set", "test_pairs=2", "--dry-run"])
            .args(["--regions", regions, "--templates"])
            .arg(suite)
            .output()
            .unwrap()
    };
    let suite = write_suite(
        &out,
        &task_json("t", "The {subject} near the {noun}", "noun").replace("\"door\", \"table\"", "\"door\", \"door\""),
    );
    let o = dry(&suite, "all");
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(
        o.status.success() && said.contains("note: `variables.noun` lists \"door\" more than once: kept once"),
        "{said}"
    );
    // A blank label filler (CausalGym's `""`) is a word in the pairs, and its slot is not swept.
    let suite = write_suite(
        &out,
        &task_json("t", "The {subject} near the {noun}", "noun").replace("\"cat\", \"dog\"", "\"cat\", \"\""),
    );
    let o = dry(&suite, "all");
    let said = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        said.contains("regions noun, last")
            && said.contains("not swept: `subject` has a blank filler in class `singular`"),
        "{said}"
    );
    // A blank filler of another slot: that slot is no region, and asking for it says so.
    let suite = write_suite(
        &out,
        &task_json("t", "The {subject} {noun} near", "noun").replace("\"door\", \"table\", \"wall\"", "\"\""),
    );
    let o = sweep_regions(&suite, "noun");
    assert!(!o.status.success());
    assert!(stderr(&o).contains("region `noun` is in none of the tasks run"), "{}", stderr(&o));
    assert!(!out.join("runs").exists());
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn counts_from_input_are_bounded_before_anything_is_allocated() {
    let o = trainer()
        .args([
            "sweep",
            "syntax-suites",
            "--tasks",
            "agreement_simple",
            "--layers",
            "4",
            "--methods",
            "mean",
            "--set",
            "train_pairs=1000000000000",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "an error, not an abort: {}", stderr(&o));
    assert!(stderr(&o).contains("more than the 1000000 a task may have"), "{}", stderr(&o));
}

#[test]
fn sweep_flags_are_checked_in_the_users_words() {
    let o = trainer().args(["sweep", "das-filler-gap", "--layers", "4,4", "--positions", "verb"]).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("with --layers 4,4") && stderr(&o).contains("lists layer 4 twice"), "{}", stderr(&o));
    let o = trainer().args(["sweep", "das-filler-gap", "--layers", "4", "--positions", "verb,verb"]).output().unwrap();
    assert!(stderr(&o).contains("`positions` lists `verb` twice"), "{}", stderr(&o));
    let o = trainer().args(["sweep", "das-filler-gap", "--layers", "99", "--positions", "verb"]).output().unwrap();
    assert!(
        stderr(&o).contains("layer 99 does not exist: the model has 30 layers, 0 to 29 (inclusive)"),
        "{}",
        stderr(&o)
    );
    let o = trainer()
        .args([
            "sweep",
            "syntax-suites",
            "--tasks",
            "agreement",
            "--layers",
            "4",
            "--set",
            "train_pairs=8",
            "--set",
            "test_pairs=4",
        ])
        .output()
        .unwrap();
    assert!(stderr(&o).contains("no task `agreement`") && stderr(&o).contains("agreement_simple"), "{}", stderr(&o));
}

#[test]
fn tasks_all_picks_every_task_and_an_unknown_task_lists_at_most_twenty_close_names() {
    use ferrovene_trainer::experiments::suite::{Names, select_tasks};
    let suite = ferrovene_data::suite::read_suite(&root().join("datasets/suites/syntax.json")).unwrap();
    let all = select_tasks(&suite, &Names::List(vec!["all".into()])).unwrap();
    assert_eq!(all.len(), suite.tasks.len(), "--tasks all");
    // A suite of 2,000 tasks: the error names 20, closest first.
    let mut big = suite.clone();
    let template = big.tasks.values().next().unwrap().clone();
    big.tasks = (0..2000).map(|i| (format!("task_{i:04}"), template.clone())).collect();
    let e = select_tasks(&big, &Names::List(vec!["task_19999".into()])).unwrap_err().to_string();
    assert!(e.contains("the closest of its 2000 tasks: task_1999"), "{e}");
    assert_eq!(e.matches("task_").count(), 21, "{e}");
}
