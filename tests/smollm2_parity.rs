//! SmolLM2-135M-Instruct from the GGUF fixture against transformers (tests/golden/smollm2).

mod common;

use common::*;
use ferrovene_models::arch::llama::{Llama, LlamaConfig};
use ferrovene_models::weights::Loader;
use ferrovene_models::weights::gguf::{GgufFile, GgufLlamaWeights};
use ferrovene_models::{Capture, Component, Input, Site, TextTokenizer, Transformer, forward};

fn load() -> (Llama<B>, TextTokenizer) {
    let file = GgufFile::open(&smollm2_gguf()).expect("open gguf");
    let tok = TextTokenizer::from_gguf(&file).expect("tokenizer");
    let cfg = LlamaConfig::from_gguf(&file).expect("config");
    let weights = GgufLlamaWeights::new(file, cfg.num_heads, cfg.num_kv_heads);
    let model = Llama::load(cfg, &Loader::new(&weights, &Default::default())).expect("load");
    (model, tok)
}

#[test]
fn tokenizer_matches_golden_ids_and_round_trips() {
    let file = GgufFile::open(&smollm2_gguf()).expect("open gguf");
    let tok = TextTokenizer::from_gguf(&file).expect("tokenizer");
    let golden: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("smollm2/tokenizer.json")).unwrap()).unwrap();
    for case in golden["cases"].as_array().unwrap() {
        let text = case["text"].as_str().unwrap();
        let want: Vec<u32> = case["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let got = tok.encode(text).unwrap();
        assert_eq!(got, want, "ids of {text:?}");
        assert_eq!(tok.decode(&got).unwrap(), text, "decode of {text:?}");
    }
}

#[test]
fn forward_matches_transformers() {
    let (model, _) = load();
    let golden_json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(golden("smollm2/forward.json")).unwrap()).unwrap();
    let st = read_st(&golden("smollm2/forward.safetensors"));
    let layers = [0usize, 1, 7, 15, 29];
    for (i, p) in golden_json["prompts"].as_array().unwrap().iter().enumerate() {
        let ids: Vec<u32> = p["ids"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect();
        let input = Input::<B>::from_ids(std::slice::from_ref(&ids), &Default::default());
        let mut sites: Vec<Site> = layers.iter().map(|&l| Site::new(l, Component::BlockOutput)).collect();
        sites.push(Site::new(0, Component::Embeddings));
        let mut cap = Capture::new(sites);
        let hidden = forward(&model, &input, &mut cap);
        let logits = model.head(hidden).unwrap();
        let emb = to_vec(cap.get(Site::new(0, Component::Embeddings)).unwrap());
        let e = rel_frobenius(&emb, &st.get(&format!("p{i}.embeddings")).0);
        assert!(e < 1e-3, "prompt {i}: embeddings rel err {e}");
        for &l in &layers {
            let h = to_vec(cap.get(Site::new(l, Component::BlockOutput)).unwrap());
            let e = rel_frobenius(&h, &st.get(&format!("p{i}.block_output.{l}")).0);
            assert!(e < 1e-3, "prompt {i}: block_output {l} rel err {e}");
        }
        let seq = ids.len();
        let last = to_vec(logits.slice([0..1, seq - 1..seq]));
        let want = &st.get(&format!("p{i}.last_logits")).0;
        let diff = max_abs_diff(&last, want);
        assert!(diff < 1e-2, "prompt {i}: max |logit diff| = {diff}");
        let want_top: Vec<usize> =
            p["top5"].as_array().unwrap().iter().map(|t| t["id"].as_u64().unwrap() as usize).collect();
        assert_eq!(top_k(&last, 5), want_top, "prompt {i}: top-5 ids");
    }
}

#[test]
fn pyvene_interchange_at_layer_6_position_3_through_hooks() {
    use burn::tensor::{Int, Tensor};
    use ferrovene_models::{Replace, gather_positions, run_to};
    let (model, _) = load();
    let st = read_st(&golden("smollm2/interchange_l6_pos3.safetensors"));
    let ids = |k: &str| -> Vec<u32> {
        st.meta_json(k).as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u32).collect()
    };
    let dev = Default::default();
    let site = Site::new(6, Component::BlockOutput);
    let pos = Tensor::<B, 1, Int>::from_ints([3], &dev).reshape([1, 1]);
    let source = Input::<B>::from_ids(&[ids("source_ids")], &dev);
    let base = Input::<B>::from_ids(&[ids("base_ids")], &dev);
    let source_vec = gather_positions(run_to(&model, &source, site).unwrap().activation, pos.clone());
    let mut swap = Replace::new().at(site, pos, source_vec);
    let hidden = forward(&model, &base, &mut swap);
    let seq = ids("base_ids").len();
    let last = to_vec(model.head(hidden.slice([0..1, seq - 1..seq])).unwrap());
    let d = max_abs_diff(&last, &st.get("last_logits").0);
    assert!(d < 1e-2, "interchange logits differ by {d}");
    let want_top: Vec<usize> =
        st.meta_json("top5").as_array().unwrap().iter().map(|t| t[0].as_u64().unwrap() as usize).collect();
    assert_eq!(top_k(&last, 5), want_top, "top-5 after interchange");
}
