//! `trainer steer` on SmolLM2: the exported vector is the difference of the mean last-token
//! activations of the two text sets (recomputed here), and `trainer apply --every-token` with it
//! changes greedy generation at a large scale and leaves it unchanged at scale 0.

use std::process::Command;

use ferrovene_interventions::Intervention;
use ferrovene_models::{Component, Site, load};

type B = ferrovene_models::Cpu;

fn trainer() -> Command {
    Command::new(env!("CARGO_BIN_EXE_trainer"))
}

#[test]
fn steer_builds_the_mean_difference_and_apply_uses_it() {
    let dir =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("ferrovene-steer-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let positive = [
        "I love this, it is wonderful.",
        "What a great and happy day.",
        "{\"text\": \"Everything is lovely and bright.\"}",
    ];
    let negative = ["I hate this, it is awful.", "What a terrible and sad day.", "Everything is gloomy and dark."];
    std::fs::write(dir.join("pos.txt"), positive.join("\n")).unwrap();
    std::fs::write(dir.join("neg.txt"), negative.join("\n\n")).unwrap();
    let out_path = dir.join("steer.safetensors");
    let out = trainer()
        .args(["steer", "--layer", "10", "--scale", "6", "--positive"])
        .arg(dir.join("pos.txt"))
        .arg("--negative")
        .arg(dir.join("neg.txt"))
        .arg("--out")
        .arg(&out_path)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // the vector is the mean difference, recomputed here
    let dev = Default::default();
    let loaded = load::<B>("smollm2-135m", &dev).unwrap();
    let tok = loaded.tokenizer.clone().unwrap();
    let texts = |t: &[&str]| {
        t.iter()
            .map(|s| if s.starts_with('{') { "Everything is lovely and bright.".to_string() } else { s.to_string() })
            .collect::<Vec<_>>()
    };
    let site = Site::new(10, Component::BlockOutput);
    let p = ferrovene_trainer::commands::steer::last_token_activations(
        &loaded.model,
        &tok,
        &texts(&positive),
        site,
        "positive",
        &dev,
    )
    .unwrap();
    let n = ferrovene_trainer::commands::steer::last_token_activations(
        &loaded.model,
        &tok,
        &texts(&negative),
        site,
        "negative",
        &dev,
    )
    .unwrap();
    let expected: Vec<f32> = (p.mean_dim(0) - n.mean_dim(0)).into_data().to_vec().unwrap();
    let (iv, config) = ferrovene_interventions::export::load::<B>(&out_path, &dev).unwrap();
    let Intervention::Steering(s) = iv else { panic!("a steering vector") };
    let got: Vec<f32> = s.vector.val().into_data().to_vec().unwrap();
    let diff = got.iter().zip(&expected).map(|(a, b)| (a - b).abs()).fold(0.0, f32::max);
    assert!(diff < 1e-4, "vector differs from the mean difference by {diff}");
    assert_eq!((s.alpha, config.placement.sites[0].as_str()), (6.0, "10.block_output"));

    let apply = |scale: &str| -> serde_json::Value {
        let out = trainer()
            .args([
                "apply",
                "--json",
                "--prompt",
                "Today I feel",
                "--generate",
                "8",
                "--every-token",
                "--scale",
                scale,
                "--intervention",
            ])
            .arg(&out_path)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let zero = apply("0");
    assert_eq!(zero["with"], zero["without"], "scale 0 changes nothing");
    let strong = apply("-12");
    assert_ne!(strong["with"], strong["without"], "a strong negative scale changes the text: {strong}");
    eprintln!("without: {} | with α = −12: {}", strong["without"], strong["with"]);
    // `trainer steer` at `layer` from two text files into `out`.
    let steer = |layer: &str, positive: &str, negative: &str, out: &std::path::Path| {
        trainer()
            .args(["steer", "--layer", layer, "--positive"])
            .arg(dir.join(positive))
            .arg("--negative")
            .arg(dir.join(negative))
            .arg("--out")
            .arg(out)
            .output()
            .unwrap()
    };
    let bad = steer("99", "pos.txt", "neg.txt", &dir.join("bad.safetensors"));
    assert!(!bad.status.success() && String::from_utf8_lossy(&bad.stderr).contains("99"));
    // An existing --out is kept unless --force; a non-finite --scale is refused.
    let again = steer("10", "pos.txt", "neg.txt", &out_path);
    let e = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.code() == Some(1) && e.contains("exists") && e.contains("--force"), "{e}");
    let nan =
        trainer().args(["apply", "--prompt", "x", "--scale", "nan", "--intervention"]).arg(&out_path).output().unwrap();
    let e = String::from_utf8_lossy(&nan.stderr);
    assert!(nan.status.code() == Some(1) && e.contains("--scale must be a finite number"), "{e}");
    // A scale that swamps the residual stream is not shown as a result without a word.
    let huge = trainer()
        .args(["apply", "--prompt", "Today I feel", "--scale", "1e38", "--intervention"])
        .arg(&out_path)
        .output()
        .unwrap();
    let e = String::from_utf8_lossy(&huge.stderr);
    assert!(e.contains("not finite numbers") || e.contains("about uniform"), "{e}");
    // The same texts on both sides make a zero vector: refused.
    let same = steer("10", "pos.txt", "pos.txt", &dir.join("zero.safetensors"));
    let e = String::from_utf8_lossy(&same.stderr);
    assert!(!same.status.success() && e.contains("give the same mean activation"), "{e}");
    assert!(!dir.join("zero.safetensors").exists());
    // Text files are read as strictly as pair files, errors naming the file and line.
    std::fs::write(dir.join("dup.jsonl"), "{\"text\": \"fine\"}\n{\"text\": \"a\", \"text\": \"b\"}\n").unwrap();
    std::fs::write(dir.join("empty.jsonl"), "{\"text\": \"fine\"}\n\n{\"text\": \"\"}\n").unwrap();
    for (file, says) in
        [("dup.jsonl", "dup.jsonl:2: not valid JSON"), ("empty.jsonl", "empty.jsonl:3: `text` is empty")]
    {
        let e = ferrovene_trainer::commands::steer::read_texts(&dir.join(file)).unwrap_err().to_string();
        assert!(e.contains(says), "{e}");
    }
}
