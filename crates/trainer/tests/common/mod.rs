//! Helpers shared by the trainer's tests that drive the `trainer` binary: the repository root,
//! the command run from it, and a run folder's report.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

use protobuf::Message;

/// Every tensor of a safetensors file as (name, raw bytes), sorted by name: for comparing two
/// exports bit for bit.
pub fn tensors_by_name(path: &Path) -> Vec<(String, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<u8>)> = st.tensors().into_iter().map(|(n, t)| (n, t.data().to_vec())).collect();
    out.sort();
    out
}

/// The repository root (recipes, datasets and `runs/` are relative to it).
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The `trainer` binary, run from the repository root.
pub fn trainer() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_trainer"));
    c.current_dir(root());
    c
}

/// `tests/golden/tiny/<arch>` copied to `dir` with a word-level tokenizer whose token `tN` is id
/// N (the tiny checkpoints have 97 tokens and no tokenizer of their own).
pub fn tiny_with_tokenizer(arch: &str, dir: &Path) {
    let golden = root().join("tests/golden/tiny").join(arch);
    assert!(golden.exists(), "golden checkpoint {} is missing (copied from ../shared/golden)", golden.display());
    std::fs::create_dir_all(dir).unwrap();
    for f in ["config.json", "model.safetensors"] {
        std::fs::copy(golden.join(f), dir.join(f)).unwrap();
    }
    let vocab: serde_json::Map<String, serde_json::Value> =
        (0..97).map(|i| (format!("t{i}"), serde_json::json!(i))).collect();
    let tokenizer = serde_json::json!({
        "version": "1.0", "truncation": null, "padding": null, "added_tokens": [], "normalizer": null,
        "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": null, "decoder": null,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}
    });
    std::fs::write(dir.join("tokenizer.json"), tokenizer.to_string()).unwrap();
}

/// The one run folder under `dir` (`<out>/<recipe>`); panics if there is not exactly one.
pub fn only_run(dir: &Path) -> PathBuf {
    let runs: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    let [run] = runs.as_slice() else { panic!("one run folder: {runs:?}") };
    run.clone()
}

/// A run folder's `report.json`.
pub fn report(run: &Path) -> serde_json::Value {
    let path = run.join("report.json");
    serde_json::from_str(&std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Masked CRC-32C as TFRecord uses it, written independently of tensorboard-rs (bitwise).
pub fn masked_crc(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= b as u32;
        for _ in 0..8 {
            crc = if crc & 1 != 0 { (crc >> 1) ^ 0x82F6_3B78 } else { crc >> 1 };
        }
    }
    let crc = !crc;
    crc.rotate_right(15).wrapping_add(0xA282_EAD8)
}

/// `(tag, step, value)` of every scalar in the event files of `dir`; panics on a bad record.
pub fn read_scalars(dir: &Path) -> Vec<(String, i64, f32)> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if !path.file_name().unwrap().to_string_lossy().starts_with("events.out.tfevents.") {
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        let mut at = 0;
        let mut first = true;
        while at < bytes.len() {
            let len_bytes = &bytes[at..at + 8];
            let len = u64::from_le_bytes(len_bytes.try_into().unwrap()) as usize;
            let len_crc = u32::from_le_bytes(bytes[at + 8..at + 12].try_into().unwrap());
            assert_eq!(len_crc, masked_crc(len_bytes), "length CRC at byte {at} of {}", path.display());
            let data = &bytes[at + 12..at + 12 + len];
            let data_crc = u32::from_le_bytes(bytes[at + 12 + len..at + 16 + len].try_into().unwrap());
            assert_eq!(data_crc, masked_crc(data), "data CRC at byte {at} of {}", path.display());
            let event = tensorboard_proto::event::Event::parse_from_bytes(data).unwrap();
            if first {
                assert_eq!(event.get_file_version(), "brain.Event:2");
                first = false;
            }
            if event.has_summary() {
                for v in event.get_summary().get_value() {
                    out.push((v.get_tag().to_string(), event.get_step(), v.get_simple_value()));
                }
            }
            at += 16 + len;
        }
    }
    out
}
