//! Sweeps sharded over a job array (`trainer sweep … --shard I/N`, or Slurm's variables) and
//! joined by `trainer merge`: the merged folder has the unsharded run's files, with the same
//! numbers (CSV, JSON, heatmaps, the report's rows and summary, the best site's export bit for
//! bit); a missing, doubled or unfinished shard is refused, naming it.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{only_run, report, trainer};

fn ok(o: Output, what: &str) -> String {
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert!(o.status.success(), "{what}: {err}");
    format!("{out}{err}")
}

/// The files of a run folder, relative and sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                todo.push(p);
            } else if p.file_name().is_some_and(|n| n != ".lock") {
                out.push(p.strip_prefix(dir).unwrap().display().to_string());
            }
        }
    }
    out.sort();
    out
}

/// Runs `args` as three shards (the last through Slurm's variables) and unsharded, merges the
/// shards, and checks the merged folder against the unsharded one. Returns the shard folders
/// and the unsharded run.
fn shards_merge_to_the_unsharded_run(tmp: &Path, args: &[&str], same: &[&str]) -> (Vec<PathBuf>, PathBuf) {
    let mut shard_dirs = vec![];
    for i in 0..3 {
        let out = tmp.join(format!("shard{i}"));
        let mut cmd = trainer();
        cmd.args(args).arg("--out").arg(&out);
        if i < 2 {
            cmd.args(["--shard", &format!("{i}/3")]);
        } else {
            // A Slurm array `--array=1-3`: task 3 is shard 2/3.
            cmd.env("SLURM_ARRAY_TASK_ID", "3").env("SLURM_ARRAY_TASK_MIN", "1").env("SLURM_ARRAY_TASK_COUNT", "3");
        }
        let log = ok(cmd.output().unwrap(), &format!("shard {i}"));
        assert!(log.contains(&format!("shard {i}/3")), "shard {i}: {log}");
        shard_dirs.push(only_run(&only_run(&out)));
    }
    let merged_out = tmp.join("merged");
    ok(trainer().arg("merge").args(&shard_dirs).arg("--out").arg(&merged_out).output().unwrap(), "merge");
    let whole_out = tmp.join("whole");
    ok(trainer().args(args).arg("--out").arg(&whole_out).output().unwrap(), "unsharded");
    let (merged, whole) = (only_run(&only_run(&merged_out)), only_run(&only_run(&whole_out)));
    same_run(&merged, &whole, same);
    (shard_dirs, whole)
}

/// Checks that run folder `a` has `b`'s files, the files ending in one of `same` with the same
/// bytes, and the same numbers in report.json.
fn same_run(a: &Path, b: &Path, same: &[&str]) {
    assert_eq!(files(a), files(b), "{} has {}'s files", a.display(), b.display());
    for f in files(b).iter().filter(|f| same.iter().any(|s| f.ends_with(s))) {
        let (x, y) = (std::fs::read(a.join(f)).unwrap(), std::fs::read(b.join(f)).unwrap());
        assert!(x == y, "{f}: {} differs from {}", a.display(), b.display());
    }
    let (x, y) = (report(a), report(b));
    for key in ["complete", "rows", "summary", "sweep", "best", "tasks"] {
        assert_eq!(x[key], y[key], "report.json `{key}`");
    }
}

#[test]
fn three_suite_shards_merged_give_the_unsharded_sweep_and_bad_sets_of_shards_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "sweep",
        "syntax-suites",
        "--tasks",
        "agreement_simple,npi_licensing",
        "--methods",
        "mean,das",
        "--layers",
        "2,4,6",
        "--regions",
        "label",
        "--set",
        "train_pairs=40",
        "--set",
        "test_pairs=20",
    ];
    let same = ["results.csv", "results.json", ".png", ".svg"];
    let (shards, whole) = shards_merge_to_the_unsharded_run(tmp.path(), &args, &same);

    // `--devices cpu,cpu`: a shard per device at once, merged into the one-device run's folder.
    let out = tmp.path().join("devices");
    let log = ok(trainer().args(args).args(["--devices", "cpu,cpu", "--out"]).arg(&out).output().unwrap(), "--devices");
    assert!(
        log.contains("on 2 devices, one shard each") && log.contains("2 shards of `syntax-suites` merged"),
        "{log}"
    );
    same_run(&only_run(&only_run(&out)), &whole, &same);
    assert!(!out.join(".shards").exists(), "the shards' folders are removed once merged");

    let merge = |dirs: &[&PathBuf]| {
        let o = trainer().arg("merge").args(dirs).arg("--out").arg(tmp.path().join("bad")).output().unwrap();
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = merge(&[&shards[0], &shards[2]]);
    assert!(e.contains("shard 1/3 is missing"), "{e}");
    let e = merge(&[&shards[0], &shards[1], &shards[1], &shards[2]]);
    assert!(e.contains("shard 1/3 is given twice"), "{e}");
    // An unfinished shard (as a kill leaves it) is named, with the command that finishes it.
    let text = std::fs::read_to_string(shards[1].join("report.json")).unwrap();
    std::fs::write(shards[1].join("report.json"), text.replace("\"complete\": true", "\"complete\": false")).unwrap();
    let e = merge(&[&shards[0], &shards[1], &shards[2]]);
    assert!(e.contains("shard 1/3 has not finished") && e.contains("--resume"), "{e}");
}

#[test]
fn three_filler_gap_shards_merged_give_the_unsharded_sweep_and_its_best_export() {
    let tmp = tempfile::tempdir().unwrap();
    let args = [
        "sweep",
        "das-filler-gap",
        "--layers",
        "2,4,6",
        "--positions",
        "filler,verb",
        "--no-generalization",
        "--set",
        "train_pairs=40",
        "--set",
        "test_pairs=20",
    ];
    let _ = shards_merge_to_the_unsharded_run(
        tmp.path(),
        &args,
        &["sweep.csv", "intervention.safetensors", "iia.png", "log_odds.svg"],
    );
}
