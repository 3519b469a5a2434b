//! Shared helpers for the integration tests: fixture and golden paths, safetensors reading,
//! tensor comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::tensor::Tensor;

pub type B = ferrovene_models::Cpu;

/// `tests/golden/<rel>`, or a loud failure naming what is missing.
pub fn golden(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(rel);
    assert!(
        p.exists(),
        "golden file {} is missing: these tests read tests/golden (copied from ../shared/golden)",
        p.display()
    );
    p
}

/// Where `scripts/fetch-fixtures` put the real models.
pub fn fixtures() -> PathBuf {
    if let Ok(p) = std::env::var("FERROVENE_FIXTURES") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache"));
    cache.join("ferrovene/fixtures")
}

/// A fixture file, or a loud failure saying how to get it.
pub fn fixture(rel: &str) -> PathBuf {
    let p = fixtures().join(rel);
    assert!(p.exists(), "fixture {} is missing: run scripts/fetch-fixtures", p.display());
    p
}

/// The SmolLM2 GGUF fixture.
pub fn smollm2_gguf() -> PathBuf {
    fixture("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// All tensors of a safetensors file (as f32) with their shapes, and its metadata.
pub struct StFile {
    pub tensors: HashMap<String, (Vec<f32>, Vec<usize>)>,
    pub metadata: HashMap<String, String>,
}

impl StFile {
    pub fn get(&self, name: &str) -> &(Vec<f32>, Vec<usize>) {
        self.tensors.get(name).unwrap_or_else(|| panic!("tensor {name} not in file"))
    }
    pub fn meta_json(&self, key: &str) -> serde_json::Value {
        serde_json::from_str(self.metadata.get(key).unwrap_or_else(|| panic!("metadata {key} missing")))
            .expect("metadata is JSON")
    }
}

pub fn read_st(path: &std::path::Path) -> StFile {
    let bytes = std::fs::read(path).expect("read safetensors");
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).expect("header");
    let st = safetensors::SafeTensors::deserialize(&bytes).expect("safetensors");
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        assert_eq!(view.dtype(), safetensors::Dtype::F32, "{name} is not f32");
        let v: Vec<f32> = view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.insert(name, (v, view.shape().to_vec()));
    }
    StFile { tensors, metadata: meta.metadata().clone().unwrap_or_default() }
}

pub fn to_vec<const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().to_vec::<f32>().expect("f32 data")
}

pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// ‖a − b‖ / ‖b‖ (Frobenius).
pub fn rel_frobenius(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len(), "length mismatch");
    let num: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let den: f64 = b.iter().map(|y| (*y as f64).powi(2)).sum();
    (num / den).sqrt() as f32
}

/// Indices of the `k` largest values, largest first.
pub fn top_k(v: &[f32], k: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[b].total_cmp(&v[a]));
    idx.truncate(k);
    idx
}

/// A fresh temporary directory under the target dir's tmp (removed at the end of the test run by nobody:
/// each test uses its own name, and re-runs overwrite).
pub fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("ferrovene-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create temp dir");
    d
}

/// Copies a folder's files (not recursive).
pub fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        if e.file_type().unwrap().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

/// How to store f32 values in a safetensors file.
#[derive(Clone, Copy)]
pub enum StDtype {
    F32,
    F16,
    BF16,
}

/// Writes tensors (name, shape, f32 values) to a safetensors file in the given dtype.
pub fn write_st(path: &std::path::Path, tensors: &[(String, Vec<usize>, Vec<f32>)], dtype: StDtype) {
    let bufs: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| {
            let bytes: Vec<u8> = match dtype {
                StDtype::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                StDtype::F16 => v.iter().flat_map(|x| half::f16::from_f32(*x).to_le_bytes()).collect(),
                StDtype::BF16 => v.iter().flat_map(|x| half::bf16::from_f32(*x).to_le_bytes()).collect(),
            };
            (n.clone(), s.clone(), bytes)
        })
        .collect();
    let dt = match dtype {
        StDtype::F32 => safetensors::Dtype::F32,
        StDtype::F16 => safetensors::Dtype::F16,
        StDtype::BF16 => safetensors::Dtype::BF16,
    };
    let views: Vec<(String, safetensors::tensor::TensorView)> = bufs
        .iter()
        .map(|(n, s, b)| (n.clone(), safetensors::tensor::TensorView::new(dt, s.clone(), b).unwrap()))
        .collect();
    safetensors::serialize_to_file(views, None, path).unwrap();
}

/// A GGUF metadata value for [`write_gguf`].
pub enum Meta {
    U32(u32),
    F32(f32),
    Bool(bool),
    Str(String),
    Strs(Vec<String>),
    I32s(Vec<i32>),
}

/// Writes a GGUF v3 file: metadata, then tensors given as (name, PyTorch-order shape, ggml type, raw bytes).
pub fn write_gguf(path: &std::path::Path, meta: &[(&str, Meta)], tensors: &[(String, Vec<usize>, u32, Vec<u8>)]) {
    fn s(out: &mut Vec<u8>, v: &str) {
        out.extend((v.len() as u64).to_le_bytes());
        out.extend(v.as_bytes());
    }
    let mut out = Vec::new();
    out.extend(b"GGUF");
    out.extend(3u32.to_le_bytes());
    out.extend((tensors.len() as u64).to_le_bytes());
    out.extend((meta.len() as u64).to_le_bytes());
    for (k, v) in meta {
        s(&mut out, k);
        match v {
            Meta::U32(x) => {
                out.extend(4u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::F32(x) => {
                out.extend(6u32.to_le_bytes());
                out.extend(x.to_le_bytes());
            }
            Meta::Bool(x) => {
                out.extend(7u32.to_le_bytes());
                out.push(*x as u8);
            }
            Meta::Str(x) => {
                out.extend(8u32.to_le_bytes());
                s(&mut out, x);
            }
            Meta::Strs(xs) => {
                out.extend(9u32.to_le_bytes());
                out.extend(8u32.to_le_bytes());
                out.extend((xs.len() as u64).to_le_bytes());
                for x in xs {
                    s(&mut out, x);
                }
            }
            Meta::I32s(xs) => {
                out.extend(9u32.to_le_bytes());
                out.extend(5u32.to_le_bytes());
                out.extend((xs.len() as u64).to_le_bytes());
                for x in xs {
                    out.extend(x.to_le_bytes());
                }
            }
        }
    }
    let mut offset = 0u64;
    let mut offsets = Vec::new();
    for (name, shape, ty, bytes) in tensors {
        s(&mut out, name);
        out.extend((shape.len() as u32).to_le_bytes());
        for d in shape.iter().rev() {
            out.extend((*d as u64).to_le_bytes());
        }
        out.extend(ty.to_le_bytes());
        out.extend(offset.to_le_bytes());
        offsets.push(offset);
        offset += (bytes.len() as u64).div_ceil(32) * 32;
    }
    while out.len() % 32 != 0 {
        out.push(0);
    }
    for (_, _, _, bytes) in tensors {
        out.extend(bytes);
        while out.len() % 32 != 0 {
            out.push(0);
        }
    }
    std::fs::write(path, out).unwrap();
}

/// llama.cpp's rotary permutation of q/k rows (what its converter does): per head, rows
/// `[2, d/2]` become `[d/2, 2]`.
pub fn llama_cpp_permute(values: &[f32], rows: usize, cols: usize, heads: usize) -> Vec<f32> {
    let half = rows / heads / 2;
    let mut out = vec![0.0; values.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let src = (h * 2 * half + j * half + i) * cols;
                let dst = (h * half * 2 + i * 2 + j) * cols;
                out[dst..dst + cols].copy_from_slice(&values[src..src + cols]);
            }
        }
    }
    out
}

/// The tiny Llama of the goldens written as a llama.cpp-style GGUF (F32, q/k permuted, HF names
/// mapped to GGUF names, a 97-token byte-level vocabulary). `skip` drops tensors by GGUF name;
/// `override_type` stores one tensor with another ggml type number (bytes unchanged).
pub fn tiny_llama_gguf(path: &std::path::Path, skip: &[&str], override_type: Option<(&str, u32)>) {
    let st = read_st(&golden("tiny/llama/model.safetensors"));
    let map = |hf: &str| -> Option<String> {
        Some(match hf {
            "model.embed_tokens.weight" => "token_embd.weight".into(),
            "model.norm.weight" => "output_norm.weight".into(),
            "lm_head.weight" => "output.weight".into(),
            _ => {
                let rest = hf.strip_prefix("model.layers.")?;
                let (l, tail) = rest.split_once('.')?;
                let n = match tail {
                    "self_attn.q_proj.weight" => "attn_q.weight",
                    "self_attn.k_proj.weight" => "attn_k.weight",
                    "self_attn.v_proj.weight" => "attn_v.weight",
                    "self_attn.o_proj.weight" => "attn_output.weight",
                    "mlp.gate_proj.weight" => "ffn_gate.weight",
                    "mlp.up_proj.weight" => "ffn_up.weight",
                    "mlp.down_proj.weight" => "ffn_down.weight",
                    "input_layernorm.weight" => "attn_norm.weight",
                    "post_attention_layernorm.weight" => "ffn_norm.weight",
                    _ => return None,
                };
                format!("blk.{l}.{n}")
            }
        })
    };
    let mut names: Vec<&String> = st.tensors.keys().collect();
    names.sort();
    let mut tensors = Vec::new();
    for hf in names {
        let g = map(hf).unwrap_or_else(|| panic!("no GGUF name for {hf}"));
        if skip.contains(&g.as_str()) {
            continue;
        }
        let (v, shape) = st.get(hf);
        let v = if g.ends_with("attn_q.weight") {
            llama_cpp_permute(v, shape[0], shape[1], 4)
        } else if g.ends_with("attn_k.weight") {
            llama_cpp_permute(v, shape[0], shape[1], 2)
        } else {
            v.clone()
        };
        let ty = match override_type {
            Some((n, t)) if n == g => t,
            _ => 0,
        };
        tensors.push((g, shape.clone(), ty, v.iter().flat_map(|x| x.to_le_bytes()).collect()));
    }
    let tokens: Vec<String> = (0..97).map(|i| format!("t{i}")).collect();
    let meta = vec![
        ("general.architecture", Meta::Str("llama".into())),
        ("llama.block_count", Meta::U32(3)),
        ("llama.embedding_length", Meta::U32(32)),
        ("llama.feed_forward_length", Meta::U32(64)),
        ("llama.attention.head_count", Meta::U32(4)),
        ("llama.attention.head_count_kv", Meta::U32(2)),
        ("llama.attention.layer_norm_rms_epsilon", Meta::F32(1e-6)),
        ("llama.rope.freq_base", Meta::F32(10000.0)),
        ("tokenizer.ggml.model", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.pre", Meta::Str("gpt2".into())),
        ("tokenizer.ggml.tokens", Meta::Strs(tokens)),
        ("tokenizer.ggml.merges", Meta::Strs(vec![])),
        ("tokenizer.ggml.token_type", Meta::I32s(vec![1; 97])),
        ("tokenizer.ggml.add_bos_token", Meta::Bool(true)),
        ("tokenizer.ggml.bos_token_id", Meta::U32(1)),
    ];
    write_gguf(path, &meta, &tensors);
}

/// The `input_ids` rows recorded in a reference file's metadata.
pub fn reference_ids(reference: &StFile) -> Vec<Vec<u32>> {
    reference
        .meta_json("input_ids")
        .as_array()
        .expect("input_ids is an array")
        .iter()
        .map(|r| r.as_array().expect("a row").iter().map(|v| v.as_u64().expect("an id") as u32).collect())
        .collect()
}

/// All-position logits of a language model on equal-length rows, flattened.
pub fn logits_of<M: ferrovene_models::Transformer<B>>(model: &M, rows: &[Vec<u32>]) -> Vec<f32> {
    let input = ferrovene_models::Input::<B>::from_ids(rows, &Default::default());
    let hidden = ferrovene_models::forward(model, &input, &mut ferrovene_models::NoHooks);
    to_vec(model.head(hidden).expect("a language model"))
}
