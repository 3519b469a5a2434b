//! The tiny random checkpoints of tests/golden/tiny (GPT-2, GPT-NeoX, Llama, Gemma 2 and 3,
//! Qwen 3, Phi-3, OLMo 2, Mistral with its sliding window), loaded from their Hugging Face
//! folders, against transformers' logits and hidden states (1e-5), and the tiny GPT-2 pyvene
//! interchange reproduced through the hook API.

mod common;

use common::*;
use ferrovene_models::{
    Capture, Component, Input, Replace, Site, Transformer, forward, gather_positions, load_folder, run_to,
};

fn check(name: &str) {
    let dir = golden(&format!("tiny/{name}"));
    let loaded = load_folder::<B>(&dir, &Default::default()).expect("load tiny folder");
    let model = &loaded.model;
    let reference = read_st(&dir.join("reference.safetensors"));
    let ids = reference_ids(&reference);
    let input = Input::<B>::from_ids(&ids, &Default::default());
    let n = model.n_layers();
    let mut sites = vec![Site::new(0, Component::Embeddings)];
    sites.extend((0..n).map(|l| Site::new(l, Component::BlockOutput)));
    let mut cap = Capture::new(sites);
    let hidden = forward(model, &input, &mut cap);
    let logits = to_vec(model.head(hidden.clone()).unwrap());
    let d = max_abs_diff(&logits, &reference.get("logits").0);
    assert!(d < 1e-5, "{name}: logits differ by {d}");
    for l in 0..=n {
        let got = if l == 0 {
            to_vec(cap.get(Site::new(0, Component::Embeddings)).unwrap())
        } else if l < n {
            to_vec(cap.get(Site::new(l - 1, Component::BlockOutput)).unwrap())
        } else {
            to_vec(hidden.clone()) // transformers' last hidden state is after the final norm
        };
        let d = max_abs_diff(&got, &reference.get(&format!("hidden_states.{l}")).0);
        assert!(d < 1e-5, "{name}: hidden_states.{l} differs by {d}");
    }
}

#[test]
fn tiny_gpt2_matches_transformers() {
    check("gpt2");
}

#[test]
fn tiny_gpt_neox_matches_transformers() {
    check("gpt_neox");
}

#[test]
fn tiny_llama_matches_transformers() {
    check("llama");
}

/// Every parameter of these checkpoints was perturbed and their 12-token inputs are longer than
/// the 4-token sliding windows, so the (1 + w) norms, biases, soft caps, q/k norms and windows
/// all move the numbers checked.
#[test]
fn tiny_gemma2_matches_transformers() {
    check("gemma2");
}

#[test]
fn tiny_gemma3_matches_transformers() {
    check("gemma3");
}

#[test]
fn tiny_qwen3_matches_transformers() {
    check("qwen3");
}

#[test]
fn tiny_phi3_matches_transformers() {
    check("phi3");
}

#[test]
fn tiny_olmo2_matches_transformers() {
    check("olmo2");
}

#[test]
fn tiny_mistral_matches_transformers() {
    check("mistral");
}

/// The window is what makes Mistral's golden differ from plain causal attention: the same
/// checkpoint with its `sliding_window` removed must not match (so `check("mistral")` can fail).
#[test]
fn mistral_without_its_window_differs() {
    let dir = golden("tiny/mistral");
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().to_path_buf();
    copy_dir(&dir, &work);
    let config_path = work.join("config.json");
    let mut config: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&config_path).unwrap()).unwrap();
    config["sliding_window"] = serde_json::Value::Null;
    std::fs::write(&config_path, config.to_string()).unwrap();
    let model = load_folder::<B>(&work, &Default::default()).expect("load").model;
    let reference = read_st(&dir.join("reference.safetensors"));
    let logits = logits_of(&model, &reference_ids(&reference));
    let d = max_abs_diff(&logits, &reference.get("logits").0);
    assert!(d > 1e-3, "removing the sliding window changed the logits by only {d}");
}

#[test]
fn tiny_gpt2_interchange_matches_pyvene() {
    let dir = golden("tiny/gpt2");
    let model = load_folder::<B>(&dir, &Default::default()).expect("load").model;
    let golden_file = read_st(&dir.join("interchange.safetensors"));
    let ids = |k: &str| -> Vec<u32> {
        golden_file.meta_json(k).as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
    };
    let dev = Default::default();
    let site = Site::new(1, Component::BlockOutput);
    let source = Input::<B>::from_ids(&[ids("source_ids")], &dev);
    let base = Input::<B>::from_ids(&[ids("base_ids")], &dev);
    let pos = |p: i64| burn::tensor::Tensor::<B, 1, burn::tensor::Int>::from_ints([p], &dev).reshape([1, 1]);
    let source_vec = gather_positions(run_to(&model, &source, site).unwrap().activation, pos(5));
    let mut swap = Replace::new().at(site, pos(2), source_vec);
    let logits = to_vec(model.head(forward(&model, &base, &mut swap)).unwrap());
    let d = max_abs_diff(&logits, &golden_file.get("logits").0);
    assert!(d < 1e-5, "interchange logits differ by {d}");
}
