//! GGUF files of Qwen 3, Phi-3, Gemma 2 and 3 and OLMo 2: the tiny checkpoints of
//! tests/golden/tiny written the way llama.cpp's `convert_hf_to_gguf.py` writes these
//! architectures (its tensor names per architecture from gguf-py's `constants.py`; no q/k
//! permutation outside `llama`; Gemma's norm weights stored as `1 + w`; `{arch}.*` metadata),
//! loaded back and run against transformers' logits (1e-5).

mod common;

use common::*;
use ferrovene_models::{Transformer, load_gguf};

/// The GGUF name llama.cpp gives a Hugging Face tensor of `arch`.
fn gguf_name(arch: &str, hf: &str) -> String {
    match hf {
        "model.embed_tokens.weight" => return "token_embd.weight".into(),
        "model.norm.weight" => return "output_norm.weight".into(),
        "lm_head.weight" => return "output.weight".into(),
        _ => {}
    }
    let rest = hf.strip_prefix("model.layers.").unwrap_or_else(|| panic!("{hf}"));
    let (layer, tail) = rest.split_once('.').unwrap();
    let name = match (arch, tail) {
        (_, "self_attn.q_proj.weight") => "attn_q",
        (_, "self_attn.k_proj.weight") => "attn_k",
        (_, "self_attn.v_proj.weight") => "attn_v",
        (_, "self_attn.o_proj.weight") => "attn_output",
        (_, "self_attn.qkv_proj.weight") => "attn_qkv",
        (_, "self_attn.q_norm.weight") => "attn_q_norm",
        (_, "self_attn.k_norm.weight") => "attn_k_norm",
        (_, "mlp.gate_proj.weight") => "ffn_gate",
        (_, "mlp.up_proj.weight" | "mlp.gate_up_proj.weight") => "ffn_up",
        (_, "mlp.down_proj.weight") => "ffn_down",
        (_, "input_layernorm.weight") => "attn_norm",
        ("gemma2" | "gemma3" | "olmo2", "post_attention_layernorm.weight") => "post_attention_norm",
        (_, "post_attention_layernorm.weight") => "ffn_norm",
        (_, "pre_feedforward_layernorm.weight") => "ffn_norm",
        (_, "post_feedforward_layernorm.weight") => "post_ffw_norm",
        other => panic!("no GGUF name for {other:?}"),
    };
    format!("blk.{layer}.{name}.weight")
}

/// `tests/golden/tiny/<folder>` as a GGUF file of architecture `arch` with extra metadata, its
/// Gemma norms shifted by 1 as llama.cpp stores them unless `unshifted`, and a byte-level BPE
/// vocabulary unless `tokenizer` names another `tokenizer.ggml.model`.
fn write(folder: &str, arch: &str, extra: Vec<(&str, Meta)>, path: &std::path::Path, unshifted: bool, tokenizer: &str) {
    let st = read_st(&golden(&format!("tiny/{folder}/model.safetensors")));
    let mut names: Vec<&String> = st.tensors.keys().collect();
    names.sort();
    let gemma = arch.starts_with("gemma") && !unshifted;
    let tensors: Vec<(String, Vec<usize>, u32, Vec<u8>)> = names
        .into_iter()
        .map(|hf| {
            let (values, shape) = st.get(hf);
            // llama.cpp's Gemma converters add 1 to every norm weight.
            let values: Vec<f32> = if gemma && hf.ends_with("norm.weight") {
                values.iter().map(|w| w + 1.0).collect()
            } else {
                values.clone()
            };
            (gguf_name(arch, hf), shape.clone(), 0, values.iter().flat_map(|x| x.to_le_bytes()).collect())
        })
        .collect();
    let k = |key: &str| -> &'static str { Box::leak(format!("{arch}.{key}").into_boxed_str()) };
    let tokens: Vec<String> = (0..97).map(|i| format!("t{i}")).collect();
    let mut meta = vec![
        ("general.architecture", Meta::Str(arch.into())),
        (k("block_count"), Meta::U32(3)),
        (k("embedding_length"), Meta::U32(32)),
        (k("feed_forward_length"), Meta::U32(64)),
        (k("attention.head_count"), Meta::U32(4)),
        (k("attention.head_count_kv"), Meta::U32(2)),
        (k("attention.key_length"), Meta::U32(8)),
        (k("attention.value_length"), Meta::U32(8)),
        ("tokenizer.ggml.model", Meta::Str(tokenizer.into())),
        ("tokenizer.ggml.pre", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        ("tokenizer.ggml.merges", Meta::Strs(vec![])),
        ("tokenizer.ggml.token_type", Meta::I32s(vec![1; 97])),
    ];
    meta.extend(extra.into_iter().map(|(key, v)| (k(key), v)));
    write_gguf(path, &meta, &tensors);
}

fn check(folder: &str, arch: &str, extra: Vec<(&str, Meta)>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{folder}.gguf"));
    write(folder, arch, extra, &path, false, "gpt2");
    let loaded = load_gguf::<B>(&path, &Default::default()).unwrap_or_else(|e| panic!("{arch}: {e}"));
    assert!(loaded.tokenizer.is_some(), "{arch}: the byte-level BPE vocabulary is rebuilt");
    let reference = read_st(&golden(&format!("tiny/{folder}/reference.safetensors")));
    let logits = logits_of(&loaded.model, &reference_ids(&reference));
    let d = max_abs_diff(&logits, &reference.get("logits").0);
    assert!(d < 1e-5, "{arch} GGUF: logits differ from transformers' by {d}");
    assert_eq!(loaded.model.arch(), arch, "{folder}");
}

#[test]
fn qwen3_gguf_matches_transformers() {
    check(
        "qwen3",
        "qwen3",
        vec![("attention.layer_norm_rms_epsilon", Meta::F32(1e-6)), ("rope.freq_base", Meta::F32(1e6))],
    );
}

#[test]
fn phi3_gguf_matches_transformers() {
    // The converter writes a window of 0 where the config has none (Phi-4).
    check(
        "phi3",
        "phi3",
        vec![
            ("attention.layer_norm_rms_epsilon", Meta::F32(1e-5)),
            ("rope.freq_base", Meta::F32(1e4)),
            ("rope.dimension_count", Meta::U32(8)),
            ("attention.sliding_window", Meta::U32(0)),
        ],
    );
}

/// Gemma 2's `gemma2.*` keys beyond the dimensions, as the converter writes them.
fn gemma2_metadata() -> Vec<(&'static str, Meta)> {
    vec![
        ("attention.layer_norm_rms_epsilon", Meta::F32(1e-6)),
        ("rope.freq_base", Meta::F32(1e4)),
        ("attention.sliding_window", Meta::U32(4)),
        ("attn_logit_softcapping", Meta::F32(50.0)),
        ("final_logit_softcapping", Meta::F32(30.0)),
    ]
}

#[test]
fn gemma2_gguf_matches_transformers() {
    check("gemma2", "gemma2", gemma2_metadata());
}

#[test]
fn gemma3_gguf_matches_transformers() {
    // The tiny checkpoint's global layer is every third (llama.cpp's default pattern is 6).
    check(
        "gemma3",
        "gemma3",
        vec![
            ("attention.layer_norm_rms_epsilon", Meta::F32(1e-6)),
            ("rope.freq_base", Meta::F32(1e6)),
            ("attention.sliding_window", Meta::U32(4)),
            ("attention.sliding_window_pattern", Meta::U32(3)),
        ],
    );
}

#[test]
fn olmo2_gguf_matches_transformers() {
    check(
        "olmo2",
        "olmo2",
        vec![("attention.layer_norm_rms_epsilon", Meta::F32(1e-5)), ("rope.freq_base", Meta::F32(1e4))],
    );
}

/// A Gemma GGUF's norms are stored as `1 + w`: read as a Hugging Face folder's `w` they would
/// be off by one, which this check sees (so the offset is not a no-op).
#[test]
fn gemma_gguf_norms_are_not_shifted_twice() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gemma2.gguf");
    write("gemma2", "gemma2", gemma2_metadata(), &path, true, "llama");
    let loaded = load_gguf::<B>(&path, &Default::default()).unwrap();
    assert!(loaded.tokenizer.is_none(), "a SentencePiece vocabulary is not rebuilt");
    let reference = read_st(&golden("tiny/gemma2/reference.safetensors"));
    let d = max_abs_diff(&logits_of(&loaded.model, &reference_ids(&reference)), &reference.get("logits").0);
    assert!(d > 1e-2, "norms stored without the +1 should not match, but differ by only {d}");
}
