//! `trainer predict` end to end: the real binary on the SmolLM2 fixture against the golden top-5.

use std::process::Command;

fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
}

fn golden_forward() -> serde_json::Value {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/smollm2/forward.json");
    assert!(p.exists(), "golden file {} is missing", p.display());
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}

#[test]
fn predict_json_matches_transformers_top5() {
    let out = trainer()
        .args(["predict", "--model", "smollm2-135m", "--prompt", "The capital of France is", "--top", "5", "--json"])
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stdout is JSON");
    let want = &golden_forward()["prompts"][0];
    assert_eq!(got["ids"], want["ids"]);
    for (g, w) in got["top"].as_array().unwrap().iter().zip(want["top5"].as_array().unwrap()) {
        assert_eq!(g["id"], w["id"]);
        assert_eq!(g["token"], w["token"]);
        let (gp, wp) = (g["p"].as_f64().unwrap(), w["p"].as_f64().unwrap());
        assert!((gp - wp).abs() < 2e-3, "p({}) = {gp}, transformers {wp}", w["token"]);
    }
}

#[test]
fn predict_table_is_readable() {
    let out = trainer().args(["predict", "--prompt", "The capital of France is", "--top", "3"]).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("\" Paris\"") && text.lines().count() == 5, "{text}");
}

#[test]
fn a_device_this_build_lacks_is_a_clear_error() {
    if cfg!(feature = "wgpu") {
        return;
    }
    let out = trainer().args(["predict", "--prompt", "x", "--device", "wgpu"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--features wgpu") && err.contains("cpu"), "{err}");
}

/// Device names are checked before anything loads, each error saying what to give instead.
#[test]
fn malformed_devices_and_precisions_are_clear_errors() {
    for (device, says) in [("gpu", "not a device"), ("cuda:x", "must be a number"), ("cpu:1", "one device")] {
        let out = trainer().args(["predict", "--prompt", "x", "--device", device]).output().unwrap();
        assert!(!out.status.success(), "--device {device} was accepted");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says) && err.contains("cpu"), "--device {device}: {err}");
    }
    let out = trainer().args(["predict", "--prompt", "x", "--dtype", "f8"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("f16") && err.contains("bf16"), "{err}");
}

/// A half-precision model on the CPU. All in bf16 (`FERROVENE_BF16_KERNEL=off`, and any CPU
/// without AVX512-BF16): its weights take half the memory (said on stderr). With the bf16
/// products, where the CPU has them: said on stderr. Both still predict " Paris" first, with
/// probabilities near the f32 ones.
#[test]
fn predict_in_half_precision_on_the_cpu() {
    let memory = |stderr: &str| -> f64 {
        let line =
            stderr.lines().find(|l| l.contains("MiB of weights")).unwrap_or_else(|| panic!("no memory line: {stderr}"));
        line.split(" MiB").next().unwrap().rsplit(' ').next().unwrap().parse().unwrap()
    };
    let run = |dtype: &str, kernel: &str, says: &str| {
        let out = trainer()
            .args(["predict", "--prompt", "The capital of France is", "--top", "5", "--json", "--dtype", dtype])
            .env("FERROVENE_BF16_KERNEL", kernel)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(out.status.success(), "--dtype {dtype}: {stderr}");
        assert!(stderr.contains(&format!("in {says} on")), "{stderr}");
        (serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap(), memory(&stderr))
    };
    let (full, full_mib) = run("f32", "on", "f32");
    let (half, half_mib) = run("bf16", "off", "bf16");
    assert!((half_mib / full_mib - 0.5).abs() < 1e-3, "bf16 weights take {half_mib} MiB, f32 {full_mib}");
    let p_full = full["top"][0]["p"].as_f64().unwrap();
    let mut runs = vec![("all bf16", half)];
    if ferrovene_models::bf16_gemm::available() {
        runs.push(("bf16 products", run("bf16", "on", "bf16 products (AVX512-BF16), f32 elsewhere").0));
    }
    for (name, out) in runs {
        assert_eq!(out["top"][0]["token"], " Paris", "{name}: {out}");
        let p = out["top"][0]["p"].as_f64().unwrap();
        assert!((p_full - p).abs() < 0.05, "p(Paris) {p} in {name}, {p_full} in f32");
    }
}

#[test]
fn an_encoder_has_no_next_token() {
    let out = trainer().args(["predict", "--model", "minilm-l6", "--prompt", "hello"]).output().unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("encoder") && err.contains("minilm-l6"), "{err}");
}
