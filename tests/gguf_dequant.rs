//! Each GGUF dequantiser against blocks dequantised by the reference implementation (the `gguf`
//! Python package, a port of ggml-quants.c); see scripts/make_dequant_refs.py.

use ferrovene_models::weights::dequant::{GgmlType, dequantize};

fn check(ty: GgmlType, name: &str) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/dequant");
    let raw = std::fs::read(dir.join(format!("{name}.bin"))).expect("reference blocks");
    let want: Vec<f32> = std::fs::read(dir.join(format!("{name}.f32")))
        .expect("reference values")
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    let got = dequantize(ty, &raw).expect("supported type");
    assert_eq!(got.len(), want.len(), "{name}: value count");
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}[{i}]: got {g}, reference {w}");
    }
}

#[test]
fn f16_matches_reference() {
    check(GgmlType::F16, "F16");
}
#[test]
fn q4_0_matches_reference() {
    check(GgmlType::Q4_0, "Q4_0");
}
#[test]
fn q4_1_matches_reference() {
    check(GgmlType::Q4_1, "Q4_1");
}
#[test]
fn q8_0_matches_reference() {
    check(GgmlType::Q8_0, "Q8_0");
}
#[test]
fn q4_k_matches_reference() {
    check(GgmlType::Q4K, "Q4_K");
}
#[test]
fn q6_k_matches_reference() {
    check(GgmlType::Q6K, "Q6_K");
}

#[test]
fn unsupported_type_is_refused() {
    assert!(dequantize(GgmlType::from_id(6), &[0u8; 22]).is_none(), "Q5_0 is not supported");
    assert_eq!(GgmlType::from_id(6).name(), "ggml type 6 (Q5_0)");
}
