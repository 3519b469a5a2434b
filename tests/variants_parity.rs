//! Architecture variants the golden files do not cover — Qwen2 (q/k/v biases, tied head), Llama 3
//! rope scaling, Mistral with linear scaling and a wide head_dim, sequential GPT-NeoX — against an
//! independent float64 NumPy forward (scripts/make_numpy_refs.py, itself checked against
//! transformers on the golden tiny models). Also: padding on either side changes nothing.

mod common;

use common::*;
use ferrovene_models::{Capture, Component, Input, NoHooks, Site, Transformer, forward, load_folder};

fn data(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/numpy_refs").join(name)
}

fn check(name: &str) {
    let loaded = load_folder::<B>(&data(name), &Default::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let model = &loaded.model;
    let reference = read_st(&data(name).join("reference.safetensors"));
    let ids = reference_ids(&reference);
    let input = Input::<B>::from_ids(&ids, &Default::default());
    let n = model.n_layers();
    let mut cap = Capture::new((0..n).map(|l| Site::new(l, Component::BlockOutput)));
    let hidden = forward(model, &input, &mut cap);
    for l in 0..n - 1 {
        let d = max_abs_diff(
            &to_vec(cap.get(Site::new(l, Component::BlockOutput)).unwrap()),
            &reference.get(&format!("hidden_states.{}", l + 1)).0,
        );
        assert!(d < 1e-4, "{name}: block {l} differs by {d}");
    }
    let d = max_abs_diff(&to_vec(model.head(hidden).unwrap()), &reference.get("logits").0);
    assert!(d < 1e-4, "{name}: logits differ by {d}");
}

#[test]
fn qwen2_with_qkv_biases() {
    check("qwen2");
}

#[test]
fn llama3_rope_scaling() {
    check("llama3");
}

#[test]
fn mistral_linear_scaling_wide_heads() {
    check("mistral");
}

#[test]
fn gpt_neox_sequential_residual() {
    check("neox_seq");
}

#[test]
fn padding_on_either_side_changes_nothing() {
    for name in ["tiny/llama", "tiny/gpt2", "tiny/gpt_neox"] {
        let model = load_folder::<B>(&golden(name), &Default::default()).unwrap().model;
        let dev = Default::default();
        let short = vec![5u32, 17, 42, 8];
        let long = vec![1u32, 2, 3, 4, 5, 6, 7];
        let alone = to_vec(
            model.head(forward(&model, &Input::from_ids(std::slice::from_ref(&short), &dev), &mut NoHooks)).unwrap(),
        );
        for left in [false, true] {
            let batch = Input::<B>::padded(&[long.clone(), short.clone()], 0, left, &dev);
            let logits = to_vec(model.head(forward(&model, &batch, &mut NoHooks)).unwrap());
            let row = &logits[7 * 97..];
            let real = if left { &row[3 * 97..] } else { &row[..4 * 97] };
            let d = max_abs_diff(real, &alone);
            assert!(d < 1e-5, "{name}: {} padding changes the logits by {d}", if left { "left" } else { "right" });
        }
    }
}
