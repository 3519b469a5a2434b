//! Whole runs of the `trainer` binary, timed from process start to exit: `das-capitals` end to
//! end (load, frozen cache, training, evaluation with controls, export), and the filler-gap
//! sweep's cost per site (the same sweep over one site and over three, the difference halved,
//! so that loading and caching cancel out).
//!
//! Run: `cargo bench -p trainer --bench end_to_end` (needs the fixture: scripts/fetch-fixtures;
//! about 4 minutes on 2 cores). `--features ndarray` measures burn's ndarray backend instead.

use std::path::Path;
use std::process::Command;
use std::time::Instant;

/// Runs `trainer args…` from the repository root; returns the wall time in seconds.
fn timed(args: &[&str]) -> f64 {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let t = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_trainer"))
        .current_dir(&root)
        .args(args)
        .output()
        .expect("the trainer binary runs");
    let secs = t.elapsed().as_secs_f64();
    assert!(out.status.success(), "trainer {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr));
    secs
}

fn main() {
    let out = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("ferrovene-bench-e2e-{}", std::process::id()));
    let out = out.to_str().expect("a UTF-8 temporary folder");
    let capitals = timed(&["das-capitals", "--quiet", "--out", out]);
    println!("das-capitals end to end: {capitals:.1} s");
    let sweep = |layers: &str| {
        timed(&[
            "sweep",
            "das-filler-gap",
            "--layers",
            layers,
            "--positions",
            "verb",
            "--no-generalization",
            "--out",
            out,
        ])
    };
    let (one, three) = (sweep("16"), sweep("8,16,24"));
    println!("filler-gap sweep: one site {one:.1} s, three sites {three:.1} s: {:.1} s per site", (three - one) / 2.0);
    let _ = std::fs::remove_dir_all(out);
}
