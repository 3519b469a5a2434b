//! Loading: GGUF (tiny Llama written the llama.cpp way), safetensors in f32/f16/bf16 and shards,
//! and every kind of bad input as an error that names the file and tensor — never a panic.

mod common;

use common::*;
use ferrovene_models::{Input, ModelError, NoHooks, Transformer, forward, load_folder, load_gguf};

fn tiny_logits(loaded: &ferrovene_models::LoadedModel<B>) -> Vec<f32> {
    logits_of(&loaded.model, &reference_ids(&read_st(&golden("tiny/llama/reference.safetensors"))))
}

#[test]
fn gguf_llama_with_permuted_qk_matches_transformers() {
    let dir = temp_dir("gguf-ok");
    let path = dir.join("tiny.gguf");
    tiny_llama_gguf(&path, &[], None);
    let loaded = load_gguf::<B>(&path, &Default::default()).expect("load tiny gguf");
    let reference = read_st(&golden("tiny/llama/reference.safetensors"));
    let d = max_abs_diff(&tiny_logits(&loaded), &reference.get("logits").0);
    assert!(d < 1e-5, "GGUF tiny llama logits differ by {d}");
    // add_bos_token = true: the tokenizer puts BOS (id 1) first.
    assert_eq!(loaded.tokenizer.as_ref().unwrap().encode("").unwrap(), vec![1]);
}

#[test]
fn gguf_without_output_weight_ties_the_head_to_the_embeddings() {
    let dir = temp_dir("gguf-tied");
    let path = dir.join("tied.gguf");
    tiny_llama_gguf(&path, &["output.weight"], None);
    let loaded = load_gguf::<B>(&path, &Default::default()).expect("load");
    let emb = read_st(&golden("tiny/llama/model.safetensors"));
    let (e, _) = emb.get("model.embed_tokens.weight");
    // logits = hidden · Eᵀ: check one row by hand
    let input = Input::<B>::from_ids(&[vec![5, 17, 42]], &Default::default());
    let hidden = to_vec(forward(&loaded.model, &input, &mut NoHooks));
    let logits = to_vec(loaded.model.head(forward(&loaded.model, &input, &mut NoHooks)).unwrap());
    let last = &hidden[2 * 32..3 * 32];
    for tok in [0usize, 5, 96] {
        let want: f32 = (0..32).map(|i| last[i] * e[tok * 32 + i]).sum();
        assert!((logits[2 * 97 + tok] - want).abs() < 1e-4, "tied head logit of token {tok}");
    }
}

#[test]
fn smollm2_gguf_has_no_bos_and_splits_digits() {
    let loaded = load_gguf::<B>(&smollm2_gguf(), &Default::default()).expect("load smollm2");
    let tok = loaded.tokenizer.as_ref().unwrap();
    assert_eq!(tok.encode("").unwrap(), Vec::<u32>::new(), "add_bos_token is false");
    assert_eq!(tok.encode("123").unwrap().len(), 3, "smollm pre-tokenizer splits digits one by one");
    assert_eq!(tok.encode("<|im_start|>").unwrap(), vec![1], "control tokens are special");
}

/// Writes the tiny Llama folder with weights rounded through `dtype`, and an f32 folder of the
/// same rounded values; both must give bit-identical logits.
fn check_dtype(dtype: StDtype, round: fn(f32) -> f32, name: &str, shards: bool) {
    let src = golden("tiny/llama");
    let st = read_st(&src.join("model.safetensors"));
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> =
        st.tensors.iter().map(|(n, (v, s))| (n.clone(), s.clone(), v.iter().map(|x| round(*x)).collect())).collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let low = temp_dir(&format!("{name}-low"));
    let high = temp_dir(&format!("{name}-f32"));
    for d in [&low, &high] {
        std::fs::copy(src.join("config.json"), d.join("config.json")).unwrap();
    }
    write_st(&high.join("model.safetensors"), &tensors, StDtype::F32);
    if shards {
        let (a, b) = tensors.split_at(tensors.len() / 2);
        write_st(&low.join("model-00001-of-00002.safetensors"), a, dtype);
        write_st(&low.join("model-00002-of-00002.safetensors"), b, dtype);
        let mut map = serde_json::Map::new();
        for (n, _, _) in a {
            map.insert(n.clone(), "model-00001-of-00002.safetensors".into());
        }
        for (n, _, _) in b {
            map.insert(n.clone(), "model-00002-of-00002.safetensors".into());
        }
        let index = serde_json::json!({"metadata": {}, "weight_map": map});
        std::fs::write(low.join("model.safetensors.index.json"), index.to_string()).unwrap();
    } else {
        write_st(&low.join("model.safetensors"), &tensors, dtype);
    }
    let a = tiny_logits(&load_folder::<B>(&low, &Default::default()).expect("load low precision"));
    let b = tiny_logits(&load_folder::<B>(&high, &Default::default()).expect("load f32"));
    assert!(a == b, "{name}: logits differ from the f32 copy of the same values");
    let reference = read_st(&golden("tiny/llama/reference.safetensors"));
    assert!(max_abs_diff(&a, &reference.get("logits").0) < 0.05, "{name}: far from the f32 reference");
}

#[test]
fn f16_weights_load() {
    check_dtype(StDtype::F16, |x| half::f16::from_f32(x).to_f32(), "f16", false);
}

#[test]
fn bf16_weights_load() {
    check_dtype(StDtype::BF16, |x| half::bf16::from_f32(x).to_f32(), "bf16", false);
}

#[test]
fn sharded_bf16_weights_load() {
    check_dtype(StDtype::BF16, |x| half::bf16::from_f32(x).to_f32(), "shards", true);
}

fn load_err(dir: &std::path::Path) -> (ModelError, String) {
    let e = load_folder::<B>(dir, &Default::default()).expect_err("loading should fail");
    let s = e.to_string();
    (e, s)
}

#[test]
fn unknown_architecture_is_refused_by_name() {
    let dir = temp_dir("unknown-arch");
    copy_dir(&golden("tiny/llama"), &dir);
    let cfg = std::fs::read_to_string(dir.join("config.json"))
        .unwrap()
        .replace("\"model_type\": \"llama\"", "\"model_type\": \"mamba\"");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let (e, s) = load_err(&dir);
    assert!(matches!(e, ModelError::UnknownArchitecture { .. }), "{s}");
    assert!(s.contains("mamba") && s.contains("config.json") && s.contains("gpt_neox"), "{s}");
}

#[test]
fn missing_config_names_the_file() {
    let dir = temp_dir("no-config");
    let (_, s) = load_err(&dir);
    assert!(s.contains("config.json"), "{s}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = temp_dir("missing-tensor");
    std::fs::copy(golden("tiny/llama/config.json"), dir.join("config.json")).unwrap();
    let st = read_st(&golden("tiny/llama/model.safetensors"));
    let tensors: Vec<_> = st
        .tensors
        .iter()
        .filter(|(n, _)| *n != "model.layers.1.mlp.up_proj.weight")
        .map(|(n, (v, s))| (n.clone(), s.clone(), v.clone()))
        .collect();
    write_st(&dir.join("model.safetensors"), &tensors, StDtype::F32);
    let (e, s) = load_err(&dir);
    assert!(matches!(e, ModelError::MissingTensor { .. }), "{s}");
    assert!(s.contains("model.layers.1.mlp.up_proj.weight") && s.contains("missing-tensor"), "{s}");
}

#[test]
fn wrong_shape_is_named_with_both_shapes() {
    let dir = temp_dir("wrong-shape");
    std::fs::copy(golden("tiny/llama/config.json"), dir.join("config.json")).unwrap();
    let st = read_st(&golden("tiny/llama/model.safetensors"));
    let tensors: Vec<_> = st
        .tensors
        .iter()
        .map(|(n, (v, s))| {
            if n == "model.layers.0.self_attn.k_proj.weight" {
                (n.clone(), vec![32, 16], v.clone())
            } else {
                (n.clone(), s.clone(), v.clone())
            }
        })
        .collect();
    write_st(&dir.join("model.safetensors"), &tensors, StDtype::F32);
    let (e, s) = load_err(&dir);
    assert!(matches!(e, ModelError::WrongShape { .. }), "{s}");
    assert!(
        s.contains("model.layers.0.self_attn.k_proj.weight") && s.contains("[32, 16]") && s.contains("[16, 32]"),
        "{s}"
    );
}

#[test]
fn truncated_and_corrupt_safetensors_are_refused() {
    for (name, cut) in [("truncated", true), ("garbage", false)] {
        let dir = temp_dir(name);
        copy_dir(&golden("tiny/llama"), &dir);
        let path = dir.join("model.safetensors");
        let bytes = std::fs::read(&path).unwrap();
        if cut {
            std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
        } else {
            std::fs::write(&path, b"this is not a safetensors file at all").unwrap();
        }
        let (e, s) = load_err(&dir);
        assert!(matches!(e, ModelError::Corrupt { .. }), "{name}: {s}");
        assert!(s.contains("model.safetensors"), "{name}: {s}");
    }
}

#[test]
fn unsupported_safetensors_dtype_is_named() {
    let dir = temp_dir("int-weights");
    std::fs::copy(golden("tiny/llama/config.json"), dir.join("config.json")).unwrap();
    let st = read_st(&golden("tiny/llama/model.safetensors"));
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>, safetensors::Dtype)> = st
        .tensors
        .iter()
        .map(|(n, (v, s))| {
            (n.clone(), s.clone(), v.iter().flat_map(|x| x.to_le_bytes()).collect(), safetensors::Dtype::F32)
        })
        .collect();
    for b in bufs.iter_mut() {
        if b.0 == "model.norm.weight" {
            b.3 = safetensors::Dtype::I32;
        }
    }
    let views: Vec<_> = bufs
        .iter()
        .map(|(n, s, b, d)| (n.clone(), safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let (e, s) = load_err(&dir);
    assert!(matches!(e, ModelError::UnsupportedDtype { .. }), "{s}");
    assert!(s.contains("model.norm.weight") && s.contains("I32") && s.contains("BF16"), "{s}");
}

#[test]
fn truncated_gguf_is_refused() {
    let dir = temp_dir("gguf-truncated");
    let path = dir.join("tiny.gguf");
    tiny_llama_gguf(&path, &[], None);
    let bytes = std::fs::read(&path).unwrap();
    for cut in [10, 200, bytes.len() - 100] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let e = load_gguf::<B>(&path, &Default::default()).expect_err("truncated");
        let s = e.to_string();
        assert!(
            matches!(e, ModelError::Corrupt { .. }) && s.contains("truncated") && s.contains("tiny.gguf"),
            "cut {cut}: {s}"
        );
    }
    std::fs::write(&path, b"GGML not a gguf").unwrap();
    let s = load_gguf::<B>(&path, &Default::default()).expect_err("bad magic").to_string();
    assert!(s.contains("not a GGUF file"), "{s}");
}

#[test]
fn unsupported_quantisation_names_tensor_and_type() {
    let dir = temp_dir("gguf-q5");
    let path = dir.join("q5.gguf");
    // Q5_0 (type 6) is not supported: the tensor table still parses, the read names it.
    tiny_llama_gguf(&path, &[], Some(("blk.2.ffn_up.weight", 6)));
    let e = load_gguf::<B>(&path, &Default::default()).expect_err("Q5_0");
    let s = e.to_string();
    assert!(matches!(e, ModelError::UnsupportedDtype { .. }), "{s}");
    assert!(s.contains("blk.2.ffn_up.weight") && s.contains("Q5_0") && s.contains("Q4_K"), "{s}");
}

#[test]
fn gguf_missing_tensor_is_named() {
    let dir = temp_dir("gguf-missing");
    let path = dir.join("missing.gguf");
    tiny_llama_gguf(&path, &["blk.1.attn_v.weight"], None);
    let s = load_gguf::<B>(&path, &Default::default()).expect_err("missing").to_string();
    assert!(s.contains("model.layers.1.self_attn.v_proj.weight") && s.contains("missing.gguf"), "{s}");
}

#[test]
fn inconsistent_head_counts_are_config_errors() {
    for (name, from, to, expect) in [
        ("zero-heads", "\"num_attention_heads\": 4", "\"num_attention_heads\": 0", "must be positive"),
        ("kv-heads", "\"num_key_value_heads\": 2", "\"num_key_value_heads\": 3", "cannot be shared"),
    ] {
        let dir = temp_dir(name);
        copy_dir(&golden("tiny/llama"), &dir);
        let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
        assert!(cfg.contains(from), "{name}: the golden config changed");
        std::fs::write(dir.join("config.json"), cfg.replace(from, to)).unwrap();
        let (e, s) = load_err(&dir);
        assert!(
            matches!(e, ModelError::Config { .. }) && s.contains(expect) && s.contains("config.json"),
            "{name}: {s}"
        );
    }
    let dir = temp_dir("gpt2-heads");
    copy_dir(&golden("tiny/gpt2"), &dir);
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap().replace("\"n_head\": 4", "\"n_head\": 5");
    std::fs::write(dir.join("config.json"), cfg).unwrap();
    let (_, s) = load_err(&dir);
    assert!(s.contains("not divisible by 5"), "{s}");
}
