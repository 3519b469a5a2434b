//! Published SAEs through the command line, on the tiny Llama (a SAELens folder this test
//! writes, reading `blocks.1.hook_resid_post`): `trainer sae --features` lists the latents the
//! library computes for the prompt's activations; `trainer apply --intervention FOLDER --latents
//! … --clamp V` gives the next-token probabilities of a forward with that clamped SAE hooked in
//! at the last position, and `--source` interchanges instead; the mistakes a user makes are
//! refused saying what to do.

mod common;

use std::path::Path;

use burn::tensor::activation::softmax;
use burn::tensor::{Int, Tensor};
use common::*;
use ferrovene_interventions::sae_formats::load_sae;
use ferrovene_interventions::{Composition, Intervene, Intervention, Placement};
use ferrovene_models::rng::Rng;
use ferrovene_models::{Cpu, Input, Site, Transformer, forward, load_folder, run_to};

/// A SAELens standard SAE (d = 32, m = 40) at `blocks.1.hook_resid_post`.
fn saelens_folder(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let (d, m) = (32, 40);
    let rng = &mut Rng::new(8);
    let mut v = |n: usize, s: f64| (0..n).map(|_| (rng.normal() * s) as f32).collect::<Vec<f32>>();
    let tensors = [
        ("W_enc", v(d * m, 0.5), vec![d, m]),
        ("b_enc", v(m, 0.1), vec![m]),
        ("W_dec", v(m * d, 0.5), vec![m, d]),
        ("b_dec", v(d, 0.1), vec![d]),
    ];
    let bytes: Vec<(String, Vec<u8>, Vec<usize>)> = tensors
        .iter()
        .map(|(n, t, s)| (n.to_string(), t.iter().flat_map(|x| x.to_le_bytes()).collect(), s.clone()))
        .collect();
    let views: Vec<_> = bytes
        .iter()
        .map(|(n, b, s)| {
            (n.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b).unwrap())
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("sae_weights.safetensors")).unwrap();
    let cfg = serde_json::json!({"architecture": "standard", "d_in": d, "d_sae": m, "apply_b_dec_to_input": true,
        "normalize_activations": "none", "hook_name": "blocks.1.hook_resid_post", "model_name": "tiny-llama"});
    std::fs::write(dir.join("cfg.json"), cfg.to_string()).unwrap();
}

fn json(out: &std::process::Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn sae_features_and_apply_with_clamped_or_interchanged_latents() {
    let tmp = tempfile::tempdir().unwrap();
    let model_dir = tmp.path().join("llama");
    tiny_with_tokenizer("llama", &model_dir);
    let sae_dir = tmp.path().join("sae");
    saelens_folder(&sae_dir);
    let prompt = "t5 t17 t42 t8 t61";
    let dev = Default::default();
    let model = load_folder::<Cpu>(&model_dir, &dev).unwrap().model;
    let ids: Vec<u32> = vec![5, 17, 42, 8, 61];
    let site: Site = "1.block_output".parse().unwrap();
    let sae = load_sae::<Cpu>(&sae_dir, &dev).unwrap().sae;

    // `trainer sae --features`: each position's most active latents, as the library encodes them.
    let out = trainer()
        .args(["sae", "--json", "--features", "--top", "3", "--sae"])
        .arg(&sae_dir)
        .arg("--model")
        .arg(&model_dir)
        .args(["--prompt", prompt])
        .output()
        .unwrap();
    let report = json(&out);
    assert_eq!((report["site"].as_str(), report["format"].as_str()), (Some("1.block_output"), Some("SAELens")));
    let acts = run_to(&model, &Input::<Cpu>::from_ids(std::slice::from_ref(&ids), &dev), site).unwrap().activation;
    let z: Vec<f32> = sae.encode(acts).into_data().to_vec().unwrap();
    for (p, row) in report["positions"].as_array().unwrap().iter().enumerate() {
        let zp = &z[p * 40..(p + 1) * 40];
        let mut order: Vec<usize> = (0..40).filter(|&j| zp[j] > 0.0).collect();
        order.sort_by(|a, b| zp[*b].total_cmp(&zp[*a]));
        let listed: Vec<usize> =
            row["top"].as_array().unwrap().iter().map(|e| e["latent"].as_u64().unwrap() as usize).collect();
        assert_eq!(listed, order[..order.len().min(3)], "position {p}");
        assert_eq!(row["active"].as_u64(), Some(order.len() as u64), "position {p}");
    }
    let text = trainer()
        .args(["sae", "--features", "--sae"])
        .arg(&sae_dir)
        .arg("--model")
        .arg(&model_dir)
        .args(["--prompt", prompt])
        .output()
        .unwrap();
    assert!(text.status.success() && String::from_utf8_lossy(&text.stdout).contains("top latents"));

    // `trainer apply --latents 3,7 --clamp 0`: the same probabilities as the SAE hooked in here.
    let out = trainer()
        .args(["apply", "--json", "--top", "97", "--latents", "3,7", "--clamp", "0", "--intervention"])
        .arg(&sae_dir)
        .arg("--model")
        .arg(&model_dir)
        .args(["--prompt", prompt])
        .output()
        .unwrap();
    let applied = json(&out);
    let clamped = Intervention::Sae(sae.clone().acting_on(vec![3, 7], Some(0.0)).unwrap());
    let last = Tensor::<Cpu, 2, Int>::from_ints([[4]], &dev);
    let placement = Placement::new(model.site_info(site).unwrap(), &clamped, last, None, vec![]).unwrap();
    let hidden = forward(
        &model,
        &Input::<Cpu>::from_ids(std::slice::from_ref(&ids), &dev),
        &mut Intervene::new(vec![placement], Composition::Parallel),
    );
    let probs: Vec<f32> = softmax(model.head(hidden.narrow(1, 4, 1)).unwrap(), 2).into_data().to_vec().unwrap();
    for row in applied["after"].as_array().unwrap() {
        let (id, p) = (row["id"].as_u64().unwrap() as usize, row["p_after"].as_f64().unwrap());
        assert!((p - probs[id] as f64).abs() < 1e-6, "token {id}: apply {p}, here {}", probs[id]);
    }
    // With a source instead of --clamp: the latents are interchanged.
    let out = trainer()
        .args(["apply", "--json", "--latents", "3,7", "--source", "t9 t9 t9 t9 t9", "--intervention"])
        .arg(&sae_dir)
        .arg("--model")
        .arg(&model_dir)
        .args(["--prompt", prompt])
        .output()
        .unwrap();
    assert_eq!(json(&out)["site"], "1.block_output");

    // Mistakes, each refused saying what to do.
    let refused = |args: &[&str], want: &str| {
        let out = trainer().args(args).output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(want), "{args:?}: {stderr}");
    };
    let (sae_arg, model_arg) = (sae_dir.to_str().unwrap(), model_dir.to_str().unwrap());
    refused(&["apply", "--intervention", sae_arg, "--prompt", prompt, "--latents", "3"], "give --model");
    refused(
        &["apply", "--intervention", sae_arg, "--model", model_arg, "--prompt", prompt, "--latents", "3"],
        "reads a source: give --source",
    );
    refused(
        &[
            "apply",
            "--intervention",
            sae_arg,
            "--model",
            model_arg,
            "--prompt",
            prompt,
            "--latents",
            "99",
            "--clamp",
            "1",
        ],
        "latent 99 is past the SAE's 40 latents",
    );
    refused(
        &["sae", "--sae", sae_arg, "--model", model_arg, "--prompt", prompt, "--site", "1.mlp_activation"],
        "reads 32-wide activations, but 1.mlp_activation of this model is 64 wide",
    );
}
