//! Shared helpers for the integration tests: fixture and golden paths, safetensors reading,
//! tensor comparison.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;

use burn::backend::NdArray;
use burn::tensor::Tensor;

pub type B = NdArray<f32>;

/// `../shared/golden/<rel>`, or a loud failure naming what is missing.
pub fn golden(rel: &str) -> PathBuf {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/golden").join(rel);
    assert!(p.exists(), "golden file {} is missing: these tests need ../shared/golden beside the checkout", p.display());
    p
}

/// Where `scripts/fetch-fixtures` put the real models.
pub fn fixtures() -> PathBuf {
    if let Ok(p) = std::env::var("FERROVENE_FIXTURES") {
        return PathBuf::from(p);
    }
    let cache = std::env::var("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|_| {
        PathBuf::from(std::env::var("HOME").expect("HOME is set")).join(".cache")
    });
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
        serde_json::from_str(self.metadata.get(key).unwrap_or_else(|| panic!("metadata {key} missing"))).expect("metadata is JSON")
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
